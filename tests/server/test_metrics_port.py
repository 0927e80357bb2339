"""`factpatch serve --metrics-listen`: /metrics on its own port, and gone from the gateway's."""

from __future__ import annotations

import httpx

from factpatch.server.app import ControlPlaneServer, ServeConfig
from factpatch.server.gateway.app import GatewayConfig

from .helpers import AGENT_TOKEN, write_tokens


def test_metrics_leave_the_gateway_port(tmp_path):
    srv = ControlPlaneServer(ServeConfig(
        state_dir=tmp_path / "state", listen="127.0.0.1:0", tokens_file=write_tokens(tmp_path / "tokens.yaml"),
        agent_token=AGENT_TOKEN, gateway=GatewayConfig(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0")))
    srv.start()
    try:
        gw, metrics = srv.gateway.port, srv.gateway.metrics_port
        assert metrics and metrics != gw
        assert httpx.get(f"http://127.0.0.1:{gw}/metrics").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{gw}/health").status_code == 200
        page = httpx.get(f"http://127.0.0.1:{metrics}/metrics")
        assert page.status_code == 200 and "factpatch_monitors" in page.text
        assert httpx.post(f"http://127.0.0.1:{metrics}/v1/completions", json={}).status_code in (404, 405)
    finally:
        srv.stop(0)

    # without it, /metrics stays where it was
    srv = ControlPlaneServer(ServeConfig(
        state_dir=tmp_path / "state2", listen="127.0.0.1:0", tokens_file=tmp_path / "tokens.yaml",
        agent_token=AGENT_TOKEN, gateway=GatewayConfig(listen="127.0.0.1:0")))
    srv.start()
    try:
        assert srv.gateway.metrics_port is None
        assert httpx.get(f"http://127.0.0.1:{srv.gateway.port}/metrics").status_code == 200
    finally:
        srv.stop(0)
