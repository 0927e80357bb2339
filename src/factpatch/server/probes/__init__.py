"""Live edit probes: does every deployed edit still hold on every shard, and how far has the fleet drifted?"""
