"""The agent's weight-writing routes live on a port of their own, never on the OpenAI port, can require
mutual TLS and signed patches: real vLLM shards, real certificates and keys, the control plane's own
agent client and reconciler."""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from factpatch.core.signing import SIGNATURE_HEADER, generate_key, sign
from factpatch.harness.shard_process import ShardServer
from factpatch.plugin.agent import PREFIX
from factpatch.plugin.agent_server import AgentServerConfig, AgentServerConfigError
from factpatch.plugin.shard_cli import shard_command
from factpatch.server.app import ControlPlaneServer, ServeConfig
from factpatch.server.control.agent_client import AgentClient, AgentError, agent_tls_context
from factpatch.v1 import fleet_pb2, rollout_pb2
from tests.factories import random_patch_on
from tests.reliability.results import merge_section
from tests.server.helpers import AGENT_TOKEN, OPERATOR_TOKEN, Client, rid, write_tokens
from tests.tls_certs import TestCA

TOKEN_ENV = {"FACTPATCH_AGENT_TOKEN": "Zq7-longer-than-thirty-two-characters-token-0123"}


def test_the_openai_port_answers_404_for_agent_routes_and_the_agent_port_answers(shard):
    for method, route in (("GET", "status"), ("POST", "apply"), ("POST", "revert")):
        r = httpx.request(method, f"{shard.url}{PREFIX}/{route}", headers=shard.headers(), timeout=30)
        assert r.status_code == 404, (route, r.status_code, r.text[:200])
    assert shard.agent_url != shard.url
    st = shard.status()
    assert st.status_code == 200 and st.json()["model"]
    # and the agent's port serves nothing of the model's
    assert httpx.get(f"{shard.agent_url}/v1/models", timeout=30).status_code == 404


def test_agent_settings_that_cannot_work_stop_the_shard_before_it_starts(tmp_path):
    (tmp_path / "cert.pem").write_text("x")
    with pytest.raises(ValueError, match="OpenAI port"):
        shard_command("m", port=8000, agent_port=8000, env=TOKEN_ENV)
    with pytest.raises(ValueError, match="go together"):
        shard_command("m", agent_tls_cert=str(tmp_path / "cert.pem"), env=TOKEN_ENV)
    with pytest.raises(ValueError, match="needs"):
        shard_command("m", agent_client_ca=str(tmp_path / "cert.pem"), env=TOKEN_ENV)
    with pytest.raises(ValueError, match="no such file"):
        shard_command("m", agent_tls_cert=str(tmp_path / "nope.pem"), agent_tls_key=str(tmp_path / "nope.key"), env=TOKEN_ENV)
    with pytest.raises(ValueError, match="do not load"):  # files that are there but are not a certificate
        shard_command("m", agent_tls_cert=str(tmp_path / "cert.pem"), agent_tls_key=str(tmp_path / "cert.pem"), env=TOKEN_ENV)
    argv, env = shard_command("m", port=9000, env=TOKEN_ENV)
    assert env["FACTPATCH_AGENT_PORT"] == "9001" and env["FACTPATCH_AGENT_HOST"] == "127.0.0.1"
    with pytest.raises(AgentServerConfigError, match="not set"):
        AgentServerConfig.from_env({})
    with pytest.raises(AgentServerConfigError, match="not a port"):
        AgentServerConfig.from_env({"FACTPATCH_AGENT_PORT": "70000"})


def test_a_taken_agent_port_is_refused_with_its_address():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(AgentServerConfigError, match=f"127.0.0.1:{port}"):
            AgentServerConfig("127.0.0.1", port).bind()


def test_the_shard_binds_its_agent_port_before_vllm_starts(tmp_path, fixture_dir):
    """`factpatch shard` takes the agent port itself and hands the socket to vLLM: a port in use stops it
    with exit 2 naming the address before any engine start (no vLLM log line), and no process can take
    the port while the engine loads."""
    import socket
    import subprocess
    import sys

    token = tmp_path / "token"
    token.write_text(TOKEN_ENV["FACTPATCH_AGENT_TOKEN"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-c", "from factpatch.cli import main; main()", "shard", "--model", str(fixture_dir),
                            "--port", str(port + 1 if port < 65535 else port - 1), "--agent-port", str(port),
                            "--agent-token-file", str(token)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"127.0.0.1:{port}" in r.stderr and "in use" in r.stderr
    assert "vllm" not in (r.stdout + r.stderr).lower()


def test_an_inherited_agent_socket_is_adopted_only_when_it_listens_on_the_agent_port(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        cfg = AgentServerConfig.from_env({"FACTPATCH_AGENT_PORT": str(port), "FACTPATCH_AGENT_LISTEN_FD": str(s.fileno())})
        adopted = cfg.bind()
        assert adopted.fileno() == s.fileno() and adopted.getsockname()[1] == port
        assert not adopted.get_inheritable()
        adopted.detach()  # `s` still owns the descriptor
        with pytest.raises(AgentServerConfigError, match=f"not a TCP socket listening on port {port + 1}"):
            AgentServerConfig("127.0.0.1", port + 1, listen_fd=s.fileno()).bind()
    with open(tmp_path / "f", "w") as f:
        with pytest.raises(AgentServerConfigError, match="FACTPATCH_AGENT_LISTEN_FD"):
            AgentServerConfig("127.0.0.1", port, listen_fd=f.fileno()).bind()
    with pytest.raises(AgentServerConfigError, match="not a file descriptor number"):
        AgentServerConfig.from_env({"FACTPATCH_AGENT_PORT": "8001", "FACTPATCH_AGENT_LISTEN_FD": "three"})


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    agents, control, stranger = TestCA(d, "agents"), TestCA(d, "control"), TestCA(d, "stranger")
    release_id = generate_key(d / "release.key", d / "release.pub")
    generate_key(d / "other.key", d / "other.pub")
    return {
        "dir": d, "agents_ca": agents.cert_path, "server": agents.issue("shard", server_names=["localhost", "127.0.0.1"]),
        "control_ca": control.cert_path, "client": control.issue("control-plane"),
        "stranger_client": stranger.issue("intruder"), "release_id": release_id,
    }


@pytest.fixture(scope="module")
def hardened(fixture_dir, pki):
    """A shard as a careful operator runs it: agent over mutual TLS, only patches signed by the release key."""
    cert, key = pki["server"]
    shard = ShardServer(fixture_dir, agent_args=[
        "--agent-tls-cert", str(cert), "--agent-tls-key", str(key), "--agent-client-ca", str(pki["control_ca"]),
        "--trusted-key", str(pki["dir"] / "release.pub"), "--require-signatures",
    ], agent_http={"verify": agent_tls_context(pki["agents_ca"], *pki["client"])})
    shard.token = AGENT_TOKEN
    with shard:
        yield shard


def test_mutual_tls_agent_takes_only_callers_with_a_certificate_from_its_ca(hardened, pki):
    shard = hardened
    assert shard.agent_url.startswith("https://")
    assert shard.status().status_code == 200  # CA-signed client certificate and the token

    # the control plane's own client, as `serve --agent-ca --agent-client-cert --agent-client-key` builds it
    good = AgentClient(shard.agent_url, shard.token, tls=agent_tls_context(pki["agents_ca"], *pki["client"]))
    assert good.status().model
    cells = {"control plane's client certificate and token": "200"}
    for name, tls in (
        ("no client certificate", agent_tls_context(pki["agents_ca"])),
        ("a certificate from another CA", agent_tls_context(pki["agents_ca"], *pki["stranger_client"])),
    ):
        with pytest.raises(AgentError) as e:
            AgentClient(shard.agent_url, shard.token, tls=tls).status()
        assert e.value.reason == "UNREACHABLE", name
        cells[name + ", right token"] = "refused at the TLS handshake"
    # a caller that does not trust the agents' CA refuses the shard's certificate itself
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{shard.agent_url}{PREFIX}/status", timeout=30)
    # plain HTTP to the TLS port gets nowhere
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{shard.agent_port}{PREFIX}/status", headers=shard.headers(), timeout=30).raise_for_status()
    # the certificate is not the credential alone: a wrong token is still 401
    assert shard.status(token="W" * 40).status_code == 401
    cells["control plane's client certificate, wrong token"] = "401"
    merge_section("access_matrix", {"agent_mutual_tls": {"cells": cells, "calls": len(cells)}})
    # and the model's own port still serves plain HTTP to everyone
    assert shard.complete("The refund period of", max_tokens=1)["choices"]


def _sign(pki, data: bytes, key: str = "release") -> bytes:
    f = pki["dir"] / f"patch-{key}.fpatch"
    f.write_bytes(data)
    return sign(f, pki["dir"] / f"{key}.key").read_bytes()


def test_a_shard_requiring_signatures_applies_only_signed_bytes(hardened, pki, fixture_dir):
    shard = hardened
    data, _ = random_patch_on(fixture_dir, {1: 0.01}, seed=11)
    signature = _sign(pki, data)
    cells = {}
    flipped = bytearray(data)
    flipped[-3] ^= 0x01
    for name, body, sig, reason in (
        ("unsigned", data, None, "SIGNATURE_REQUIRED"),
        ("another key", data, _sign(pki, data, "other"), "SIGNATURE_UNTRUSTED"),
        ("one bit changed", bytes(flipped), signature, "SIGNATURE_INVALID"),
    ):
        headers = {SIGNATURE_HEADER: base64.b64encode(sig).decode()} if sig else {}
        r = shard.apply(body, headers=headers)
        assert r.status_code == 403 and r.json()["error"]["reason"] == reason, (name, r.text)
        assert shard.status().json()["active_version"] is None, f"{name}: the shard changed"
        cells[name] = f"403 {reason}, engine unchanged"
    r = shard.apply(data, headers={SIGNATURE_HEADER: "not base64!"})
    assert r.status_code == 400 and r.json()["error"]["reason"] == "MALFORMED"

    # end to end: the control plane verifies at import, stores the signature, and sends it (over mutual
    # TLS) with the patch, so the shard applies it
    client_cert, client_key = pki["client"]
    srv = ControlPlaneServer(ServeConfig(
        state_dir=pki["dir"] / "state", listen="127.0.0.1:0", tokens_file=write_tokens(pki["dir"] / "tokens.yaml"),
        agent_token=AGENT_TOKEN, reconcile_interval=0.2, shards={"s0": shard.endpoints},
        agent_ca=pki["agents_ca"], agent_client_cert=client_cert, agent_client_key=client_key,
        trusted_keys=[pki["dir"] / "release.pub"], require_signatures=True,
    ))
    srv.start()
    c = Client(f"127.0.0.1:{srv.port}", OPERATOR_TOKEN)
    try:
        digest = c.push(data, signature=signature).digest
        c(c.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
            request_id=rid(), patch=digest, steps=[rollout_pb2.RolloutStep(shards=["s0"])]))
        deadline = time.monotonic() + 120
        while shard.status().json()["active_version"] != digest and time.monotonic() < deadline:
            time.sleep(0.5)
        assert shard.status().json()["active_version"] == digest
        cells["signed by the release key, through the control plane"] = "applied"
        merge_section("access_matrix", {"agent_signed_patches": {"cells": cells, "calls": len(cells)}})
        shards = c(c.fleet.ListShards, fleet_pb2.ListShardsRequest()).shards
        assert [(s.address, s.agent_address) for s in shards] == [(shard.url, shard.agent_url)]
        c(c.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()))
        assert shard.status().json()["active_version"] is None
    finally:
        c.close()
        srv.stop(0)
