"""Shards can be registered only where the control plane's allow-list says: no fake shard to collect
the agent token or user prompts, no metadata service or API server as a "shard"."""

from __future__ import annotations

import grpc
import pytest

from factpatch.server.app import ControlPlaneServer, ServeConfig
from factpatch.server.control.shard_addresses import AddressNotAllowed, ShardAddressPolicy
from factpatch.v1 import audit_pb2, fleet_pb2

from .helpers import AGENT_TOKEN, OPERATOR_TOKEN, Client, rid, write_tokens


def test_the_default_list_is_loopback_only():
    policy = ShardAddressPolicy.from_entries([])
    policy.check("http://127.0.0.1:8001")
    policy.check("http://[::1]:8001")
    for address in ("http://169.254.169.254/latest", "https://localhost:6443", "http://10.0.0.1:2379", "http://shard-0:8000"):
        with pytest.raises(AddressNotAllowed, match="not on the control plane's allow-list"):
            policy.check(address)


def test_networks_hosts_ports_and_domains():
    policy = ShardAddressPolicy.from_entries(["10.1.0.0/16", "shard-0.shards.svc:8000", "*.gpu.example"],
                                             fixed=["http://203.0.113.7:8000"])
    policy.check("http://10.1.2.3:9999")
    policy.check("http://shard-0.shards.svc:8000/")
    policy.check("https://a.gpu.example")
    policy.check("http://203.0.113.7:8000")  # given with --shard at start
    for address in ("http://10.2.0.1:8000", "http://shard-0.shards.svc:8001", "http://gpu.example:8000",
                    "http://evil.example/?x=a.gpu.example", "http://127.0.0.1:8000"):
        with pytest.raises(AddressNotAllowed):
            policy.check(address)


@pytest.mark.parametrize("entry", ["", "10.0.0.0/33", "host:0", "host:http", "*.a/8"])
def test_a_bad_entry_is_refused_at_start(entry):
    with pytest.raises(ValueError, match="allow-list entry"):
        ShardAddressPolicy.from_entries([entry])


def test_register_shard_refuses_an_address_off_the_list_and_records_the_attempt(tmp_path):
    srv = ControlPlaneServer(ServeConfig(
        state_dir=tmp_path / "state", listen="127.0.0.1:0", tokens_file=write_tokens(tmp_path / "tokens.yaml"),
        agent_token=AGENT_TOKEN, allowed_shard_addresses=["10.9.0.0/16"],
    ))
    srv.start()
    c = Client(f"127.0.0.1:{srv.port}", OPERATOR_TOKEN)
    try:
        with pytest.raises(grpc.RpcError) as e:
            c(c.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name="meta",
                                                                    address="http://169.254.169.254"))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "allow-list" in e.value.details()
        assert list(c(c.fleet.ListShards, fleet_pb2.ListShardsRequest()).shards) == []
        c(c.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name="s0", address="http://10.9.0.5:8000"))
        records = c(c.audit.ListAuditRecords, audit_pb2.ListAuditRecordsRequest(limit=10)).records
        refused = next(r for r in records if "name=meta" in r.target)
        assert refused.result == "PERMISSION_DENIED/SHARD_ADDRESS_NOT_ALLOWED"
        assert "address=http://169.254.169.254" in refused.target and refused.principal == "release-bot"
    finally:
        c.close()
        srv.stop(0)
