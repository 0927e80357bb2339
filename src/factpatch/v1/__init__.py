"""The factpatch gRPC API (package factpatch.v1), generated from proto/factpatch/v1 by scripts/gen_protos.py.

Do not edit: change the .proto and run `make proto`. The .proto sources ship beside this code in the wheel.
"""

from factpatch.v1 import audit_pb2, audit_pb2_grpc, common_pb2, common_pb2_grpc, fleet_pb2, fleet_pb2_grpc, gateway_pb2, gateway_pb2_grpc, monitor_pb2, monitor_pb2_grpc, patch_pb2, patch_pb2_grpc, probe_pb2, probe_pb2_grpc, rollout_pb2, rollout_pb2_grpc  # noqa: F401

__all__ = ["audit_pb2", "audit_pb2_grpc", "common_pb2", "common_pb2_grpc", "fleet_pb2", "fleet_pb2_grpc", "gateway_pb2", "gateway_pb2_grpc", "monitor_pb2", "monitor_pb2_grpc", "patch_pb2", "patch_pb2_grpc", "probe_pb2", "probe_pb2_grpc", "rollout_pb2", "rollout_pb2_grpc"]
