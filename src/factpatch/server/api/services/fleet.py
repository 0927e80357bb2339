"""FleetService: the shards the control plane drives and what they last reported."""

from __future__ import annotations

import grpc
import httpx

from factpatch.core.shard_endpoints import ShardEndpoints
from factpatch.server.api import convert
from factpatch.server.api.context import ControlPlane
from factpatch.server.api.errors import ApiError, invalid, not_found, precondition
from factpatch.server.control.shard_addresses import AddressNotAllowed
from factpatch.v1 import fleet_pb2, fleet_pb2_grpc


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or len(name) > 63:
        raise invalid("BAD_SHARD_NAME", f"shard name must be 1-63 letters, digits, '-', '_' or '.', got {name!r}", field="name")


def _check_address(address: str, field: str = "address") -> None:
    # Parsed as the agent client will parse it: an address it cannot use would fail every
    # reconcile pass, for every shard, and every RevertToBase.
    try:
        url = httpx.URL(address.rstrip("/") + "/factpatch/v1")
        usable = (url.scheme in ("http", "https") and bool(url.host) and (url.port is None or 0 < url.port < 65536)
                  and not url.query and not url.fragment and len(url.host.encode("idna")) <= 253)
    except (httpx.InvalidURL, TypeError, ValueError):  # UnicodeError: a DNS label empty or over 63
        usable = False
    usable = usable and len(address) <= 2048 and not any(c.isspace() for c in address)
    if not address.startswith(("http://", "https://")) or len(address) < 10 or not usable:
        raise invalid("BAD_ADDRESS", f"{field} must be the shard's http(s) base URL, got {address!r}", field=field)


class FleetService(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, cp: ControlPlane):
        self.cp = cp

    def _shard(self, name: str):
        s = self.cp.db.shard(name)
        if s is None:
            raise not_found("SHARD_NOT_FOUND", f"no shard named {name!r}", shard=name)
        return s

    def RegisterShard(self, request, context):
        _check_name(request.name)
        _check_address(request.address)
        if request.agent_address:
            _check_address(request.agent_address, "agent_address")
        endpoints = ShardEndpoints.of(request.address, request.agent_address)
        for given in (endpoints.address, endpoints.agent_address):  # the agent address is where the token goes
            try:
                self.cp.shard_addresses.check(given)
            except AddressNotAllowed as e:
                raise ApiError(grpc.StatusCode.PERMISSION_DENIED, "SHARD_ADDRESS_NOT_ALLOWED", str(e),
                               address=given[:200]) from None
        address = endpoints.address
        existing = self.cp.db.shard(request.name)
        if existing is not None:
            if (existing.address, existing.agent_address) != (endpoints.address, endpoints.agent_address):
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, "SHARD_EXISTS",
                               f"shard {request.name!r} is registered at {existing.address} "
                               f"(agent {existing.agent_address})", shard=request.name)
            return convert.shard(existing)
        self.cp.db.add_shard(request.name, address, endpoints.agent_address)
        self.cp.reconciler.kick()
        return convert.shard(self.cp.db.shard(request.name))

    def DeregisterShard(self, request, context):
        self._shard(request.name)
        for r in self.cp.db.rollouts(active_only=True):
            if request.name in r.target_shards:
                raise precondition("ROLLOUT_CONFLICT", f"unfinished rollout {r.id} includes {request.name}", rollout=r.id)
        self.cp.db.remove_shard(request.name)
        return fleet_pb2.DeregisterShardResponse(name=request.name)

    def ListShards(self, request, context):
        return fleet_pb2.ListShardsResponse(shards=[convert.shard(s) for s in self.cp.db.shards()])

    def GetShard(self, request, context):
        return convert.shard(self._shard(request.name))
