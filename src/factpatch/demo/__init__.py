"""The main job, end to end, on the fixture model (`factpatch demo`)."""
