"""Tokens that guard weight changes: weak ones refused where they are configured, whitespace never
standing in for one, and the shard agent token rotated without a restart."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from factpatch.core.tokens import WeakTokenError, weakness
from factpatch.server.api.auth import TokenTable
from factpatch.server.control.agent_client import AgentClient
from factpatch.server.control.agent_token import AgentToken

from .helpers import AGENT_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, write_tokens

NEXT_TOKEN = "agent-N3wT0k3nR0t4t3dKq8Xz5Vb2Lm7Jc"


def test_strong_tokens_pass_and_weak_ones_say_why():
    for token in (AGENT_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, NEXT_TOKEN):
        assert weakness(token) is None
    assert "empty" in weakness("")
    assert "at least 32" in weakness("short-but-random-9f2K")
    assert "placeholder" in weakness("change-me" * 4)
    assert "outside" in weakness(AGENT_TOKEN + " ")


def test_a_weak_client_token_entry_is_refused_naming_the_entry(tmp_path):
    with pytest.raises(ValueError, match=r"token entry 1 \(ci\): refused, it is 6 characters"):
        TokenTable([{"principal": "ok", "role": "viewer", "token": VIEWER_TOKEN},
                    {"principal": "ci", "role": "operator", "token": "s3cret"}])
    with pytest.raises(ValueError, match="token_sha256 must be 64 hex digits"):
        TokenTable([{"principal": "ci", "role": "operator", "token_sha256": "abc"}])


def test_whitespace_never_authenticates():
    table = TokenTable([{"principal": "ci", "role": "operator", "token": OPERATOR_TOKEN}])
    assert table.authenticate(f"Bearer {OPERATOR_TOKEN}").name == "ci"
    for header in ("Bearer \xa0", "Bearer  ", "Bearer \t", f"Bearer  {OPERATOR_TOKEN}", f"Bearer {OPERATOR_TOKEN}\xa0"):
        assert table.authenticate(header) is None, repr(header)


def test_serve_refuses_a_weak_agent_token_before_creating_anything(tmp_path):
    for env in ({"FACTPATCH_AGENT_TOKEN": "change-me"}, {"FACTPATCH_AGENT_TOKEN": " "}, {}):
        r = subprocess.run([sys.executable, "-c", "from factpatch.cli import main; main()", "serve",
                            "--state-dir", str(tmp_path / "state"),
                            "--client-tokens-file", str(write_tokens(tmp_path / "t.yaml")),
                            "--listen", "127.0.0.1:0", "--gateway-listen", "off"],
                           env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert "agent token" in r.stderr
        assert not (tmp_path / "state").exists()


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):
        type(self).seen.append(self.headers.get("Authorization", ""))
        body = json.dumps({"active_version": None, "swap_in_progress": False}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_agent_token_file_is_read_again_before_each_call(tmp_path):
    token_file = tmp_path / "agent.token"
    token_file.write_text(AGENT_TOKEN + "\n")
    source = AgentToken(file=token_file)
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = AgentClient(f"http://127.0.0.1:{server.server_port}", source, timeout=5)
    try:
        client.status()
        token_file.write_text(NEXT_TOKEN + "\n" + AGENT_TOKEN + "\n")  # rotated: the new one first
        client.status()
        token_file.write_text("change-me\n")  # a broken edit keeps the last good token
        client.status()
    finally:
        client.close()
        server.shutdown()
    assert _Recorder.seen == [f"Bearer {AGENT_TOKEN}", f"Bearer {NEXT_TOKEN}", f"Bearer {NEXT_TOKEN}"]


def test_the_agent_token_is_checked_at_start(tmp_path):
    with pytest.raises(WeakTokenError, match="no shard agent token"):
        AgentToken()
    with pytest.raises(WeakTokenError, match="placeholder"):
        AgentToken("change-me-change-me-change-me-change-me")
    empty = tmp_path / "empty.token"
    empty.write_text("# nothing yet\n")
    with pytest.raises(WeakTokenError, match="holds no token"):
        AgentToken(file=empty)


def test_a_shard_with_a_token_of_its_own_is_sent_that_one(tmp_path):
    own = tmp_path / "tokens"
    own.mkdir()
    (own / "s0").write_text(NEXT_TOKEN + "\n")
    source = AgentToken(AGENT_TOKEN, shard_dir=own)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.seen = []
    clients = [AgentClient(f"http://127.0.0.1:{server.server_port}", source.for_shard(n), timeout=5) for n in ("s0", "s1")]
    try:
        for c in clients:
            c.status()
    finally:
        for c in clients:
            c.close()
        server.shutdown()
    assert _Recorder.seen == [f"Bearer {NEXT_TOKEN}", f"Bearer {AGENT_TOKEN}"]  # s1 has no file: the fleet's
    (own / "s2").write_text("change-me\n")
    with pytest.raises(WeakTokenError, match="--agent-token-dir file s2"):
        AgentToken(AGENT_TOKEN, shard_dir=own)


def test_the_gateway_refuses_a_weak_token_file_naming_it(tmp_path):
    weak = tmp_path / "gateway.token"
    for content, says in (("change-me\n", "line 1: refused"), ("  \n", "holds no token")):
        weak.write_text(content)
        r = subprocess.run([sys.executable, "-c", "from factpatch.cli import main; main()", "gateway",
                            "--token-file", str(weak), "--control-plane", "127.0.0.1:1", "--listen", "127.0.0.1:0"],
                           env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert f"--token-file {weak}" in r.stderr and says in r.stderr


def test_the_client_tokens_file_is_read_again_when_it_changes(tmp_path, caplog):
    """A client token added, rotated or revoked in the file takes effect on a running control plane;
    a file broken by a bad edit keeps the tokens it held, and says why."""
    import grpc

    from factpatch.server.app import ControlPlaneServer, ServeConfig
    from factpatch.server.cli.client import Client
    from factpatch.v1 import patch_pb2

    tokens = write_tokens(tmp_path / "tokens.yaml")
    srv = ControlPlaneServer(ServeConfig(state_dir=tmp_path / "state", listen="127.0.0.1:0", tokens_file=tokens,
                                         agent_token=AGENT_TOKEN, reconcile_interval=0.2))
    srv.start()
    address = f"127.0.0.1:{srv.port}"

    def lists(token: str) -> bool:
        c = Client(address, token)
        try:
            c(c.patches.ListPatches, patch_pb2.ListPatchesRequest(), timeout=10)
            return True
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
            return False
        finally:
            c.close()

    try:
        assert lists(OPERATOR_TOKEN) and not lists(NEXT_TOKEN)
        original = tokens.read_text()
        tokens.write_text(original + f"- {{principal: new-bot, role: viewer, token: {NEXT_TOKEN}}}\n")
        assert lists(NEXT_TOKEN) and lists(OPERATOR_TOKEN)  # added: both accepted
        tokens.write_text(f"- {{principal: new-bot, role: operator, token: {NEXT_TOKEN}}}\n")
        assert lists(NEXT_TOKEN) and not lists(OPERATOR_TOKEN)  # the old one revoked, no restart
        with caplog.at_level("ERROR", logger="factpatch.auth"):
            tokens.write_text("- {principal: typo, role: operatr, token: %s}\n" % OPERATOR_TOKEN)
            assert lists(NEXT_TOKEN) and not lists(OPERATOR_TOKEN)  # the broken file changed nothing
        assert "role must be one of" in caplog.text and "still accepting" in caplog.text
        # /metrics says so, read at scrape time (no client call needed), and counts the tokens in use.
        valid = lambda: srv.metrics.registry.get_sample_value("factpatch_client_tokens_file_valid")
        assert valid() == 0.0 and srv.metrics.registry.get_sample_value("factpatch_client_tokens") == 1
        tokens.unlink()
        assert lists(NEXT_TOKEN) and valid() == 0.0  # nor does a deleted one
        write_tokens(tokens)
        assert valid() == 1.0 and srv.metrics.registry.get_sample_value("factpatch_client_tokens") == 3
        assert lists(OPERATOR_TOKEN) and not lists(NEXT_TOKEN)
    finally:
        srv.stop(0)
