from __future__ import annotations

import pytest

from factpatch.server.app import ControlPlaneServer, ServeConfig

from .helpers import AGENT_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, Client, write_tokens


@pytest.fixture
def control_plane(tmp_path):
    """A real control plane on a free loopback port, stopped after the test."""
    srv = ControlPlaneServer(ServeConfig(
        state_dir=tmp_path / "state", listen="127.0.0.1:0", tokens_file=write_tokens(tmp_path / "tokens.yaml"),
        agent_token=AGENT_TOKEN, reconcile_interval=0.2, max_patch_bytes=1 << 20,
    ))
    srv.start()
    yield srv
    srv.stop(0)


@pytest.fixture
def op(control_plane):
    c = Client(f"127.0.0.1:{control_plane.port}", OPERATOR_TOKEN)
    yield c
    c.close()


@pytest.fixture
def viewer(control_plane):
    c = Client(f"127.0.0.1:{control_plane.port}", VIEWER_TOKEN)
    yield c
    c.close()


@pytest.fixture
def anon(control_plane):
    c = Client(f"127.0.0.1:{control_plane.port}", None)
    yield c
    c.close()
