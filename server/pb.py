"""The generated protobuf/gRPC modules, regenerated first if proto/ changed (see protos.py)."""

from factpatch.server.protos import ensure_generated

ensure_generated()

from factpatch.v1 import common_pb2, fleet_pb2, fleet_pb2_grpc, patch_pb2, patch_pb2_grpc  # noqa: E402
from factpatch.v1 import monitor_pb2, monitor_pb2_grpc, probe_pb2, probe_pb2_grpc, rollout_pb2, rollout_pb2_grpc  # noqa: E402

__all__ = [
    "common_pb2",
    "fleet_pb2",
    "fleet_pb2_grpc",
    "monitor_pb2",
    "monitor_pb2_grpc",
    "patch_pb2",
    "patch_pb2_grpc",
    "probe_pb2",
    "probe_pb2_grpc",
    "rollout_pb2",
    "rollout_pb2_grpc",
]
