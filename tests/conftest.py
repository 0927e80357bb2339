"""Shared test fixtures: the fixture fact model (built once, cached by recipe), its world, and one real
shard for the whole session (each vLLM engine start costs 20–60 s here)."""

from __future__ import annotations

import pytest

from factpatch.fixture.build import ensure_fixture, load_world
from tests.prometheus_process import prometheus  # noqa: F401  (a real Prometheus server, for any test)


@pytest.fixture(scope="session")
def fixture_dir():
    return ensure_fixture()


@pytest.fixture(scope="session")
def world(fixture_dir):
    return load_world(fixture_dir)



# the fixture model has no chat template of its own
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def shard_args(tmp_path_factory) -> list[str]:
    """The vLLM flags of every test shard: the fixture's short context, float32 like transformers, a
    fixed seed, and a chat template so the gateway's chat route has one."""
    template = tmp_path_factory.mktemp("chat") / "template.jinja"
    template.write_text(CHAT_TEMPLATE)
    return ["--max-model-len", "128", "--dtype", "float32", "--seed", "0", "--chat-template", str(template)]


@pytest.fixture(scope="session")
def shard(fixture_dir, tmp_path_factory):
    """The session's shard: the fixture and plugin tests use it alone, the gateway tests as their s0
    (a vLLM start costs 40-50 s here). Its agent token is the control plane's, so a gateway stack
    can drive it; every user puts it back on base first."""
    from factpatch.harness.shard_process import ShardServer
    from tests.server.helpers import AGENT_TOKEN

    s = ShardServer(fixture_dir, vllm_args=shard_args(tmp_path_factory))
    s.token = AGENT_TOKEN
    with s:
        yield s
