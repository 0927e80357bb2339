"""Gateway tests on two real vLLM shards (fixture model) behind a real control plane and gateway.

s0 is the session's shard, s1 the package's own; the test patches are made once for the package. Each
test gets a fresh control plane (state, gateway, metrics) and leaves the shards on base.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from factpatch.v1 import rollout_pb2
from tests.server.helpers import AGENT_TOKEN, OPERATOR_TOKEN, Client, rid, write_tokens

S = rollout_pb2.RolloutState


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    old: str
    new: str
    prompts: tuple[str, ...]  # every phrasing of the relation, subject filled in


@pytest.fixture(scope="package")
def fact(world) -> Fact:
    f = next(f for f in world.facts if f.subject == "Harbor Support" and f.relation == "refund period")
    rel = world.relations[f.relation]
    new = next(c for c in rel.candidates if c != f.object)
    return Fact(f.subject, f.relation, f.object, new, tuple(t.replace("{}", f.subject) for t in rel.templates))


@pytest.fixture(scope="package")
def fix_patch(fixture_dir, fact) -> bytes:
    """Makes the canary answer the new value for the fact's prompts (see patches.py)."""
    from .patches import push_token_patch

    return push_token_patch(fixture_dir, fact)


@pytest.fixture(scope="package")
def weak_patch(fixture_dir, fact) -> bytes:
    """The same edit claimed, with a change too small to alter any answer: it must fail analysis."""
    from .patches import push_token_patch

    return push_token_patch(fixture_dir, fact, weaken=1e-6)


@pytest.fixture(scope="package")
def shards(shard, fixture_dir, tmp_path_factory):
    """s0 is the session's shard; s1 accepts lower ranks than s0 (the gateway's patches are rank 1), so
    test_fleet can land one patch on s0 that s1 refuses."""
    from factpatch.harness.shard_process import ShardServer
    from tests.conftest import shard_args

    s1 = ShardServer(fixture_dir, vllm_args=shard_args(tmp_path_factory), env={"FACTPATCH_MAX_RANK": "4"})
    s1.token = AGENT_TOKEN
    with s1:
        yield {"s0": shard, "s1": s1}


class Stack:
    """A control plane with its gateway over the package's shards."""

    def __init__(self, srv, model: str):
        self.srv = srv
        self.model = model
        self.url = f"http://127.0.0.1:{srv.gateway.port}"
        self.cl = Client(f"127.0.0.1:{srv.port}", OPERATOR_TOKEN)
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def wait_routable(self, names=("s0", "s1"), timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ok = {v.name for v in self.srv.gateway.router.shards() if v.available}
            if set(names) <= ok:
                return
            assert time.monotonic() < deadline, f"shards not routable: {self.srv.gateway.router.shards()}"
            time.sleep(0.1)

    def wait_split(self, rollout_id: str, canary: tuple[str, ...], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            sp = self.srv.gateway.router.table.split_of(rollout_id)
            if sp and sp.canary == canary:
                self.wait_routable()
                return
            assert time.monotonic() < deadline, f"split not in place: {sp}"
            time.sleep(0.1)

    def complete(self, prompt: str, *, key: str | None = None, route: str | None = None, max_tokens: int = 4,
                 route_token: str = OPERATOR_TOKEN, **body) -> httpx.Response:
        headers = {}
        if key:
            headers["X-Factpatch-Route-Key"] = key
        if route:
            headers["X-Factpatch-Route"] = route
            headers["X-Factpatch-Route-Token"] = route_token
        return self.http.post("/v1/completions", headers=headers, json={
            "model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, **body})

    @contextmanager
    def traffic(self, prompts: tuple[str, ...], max_tokens: int = 4):
        """Requests with distinct sticky keys in the background; yields counts per served version."""
        stop, counts = threading.Event(), Counter()

        def run():
            i = 0
            with httpx.Client(base_url=self.url, timeout=120) as h:
                while not stop.is_set():
                    r = h.post("/v1/completions", headers={"X-Factpatch-Route-Key": f"traffic-{i}"}, json={
                        "model": self.model, "prompt": prompts[i % len(prompts)], "max_tokens": max_tokens,
                        "temperature": 0.0})
                    counts[r.headers.get("X-Factpatch-Version", str(r.status_code))] += 1
                    i += 1

        t = threading.Thread(target=run, daemon=True)
        t.start()
        try:
            yield counts
        finally:
            stop.set()
            t.join(timeout=120)

    def start(self, patch: str, **kw) -> rollout_pb2.Rollout:
        return self.cl(self.cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=patch, **kw))

    def wait_state(self, rollout_id: str, states: set[str], timeout: float = 180) -> rollout_pb2.Rollout:
        want = {S.Value("ROLLOUT_STATE_" + s) for s in states}
        last = None
        for r in self.cl.rollouts.WatchRollout(rollout_pb2.WatchRolloutRequest(id=rollout_id), metadata=self.cl.md,
                                               timeout=timeout):
            last = r
            if r.state in want:
                return r
        raise AssertionError(f"rollout ended as {last}")

    def metric(self, name: str, **labels) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(self.http.get("/metrics").text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


@contextmanager
def open_stack(tmp_path, shards, fixture_dir, gateway_port: int = 0, **serve):
    """A control plane with its gateway over the package's shards, every shard on base first;
    `serve` adds ServeConfig fields (probes file, base dirs); `gateway_port` 0: any free port."""
    from factpatch.server.app import ControlPlaneServer, ServeConfig
    from factpatch.server.gateway.app import GatewayConfig

    for s in shards.values():  # every test starts on base
        assert s.revert().status_code == 200
    srv = ControlPlaneServer(ServeConfig(
        state_dir=tmp_path / "state", listen="127.0.0.1:0", tokens_file=write_tokens(tmp_path / "tokens.yaml"),
        agent_token=AGENT_TOKEN, reconcile_interval=0.2, shards={n: s.endpoints for n, s in shards.items()},
        gateway=GatewayConfig(listen=f"127.0.0.1:{gateway_port}"), **serve,
    ))
    srv.start()
    st = Stack(srv, str(fixture_dir))
    try:
        st.wait_routable()
        yield st
    finally:
        st.http.close()
        st.cl.close()
        srv.stop(0)


@pytest.fixture
def stack(tmp_path, shards, fixture_dir):
    with open_stack(tmp_path, shards, fixture_dir) as st:
        yield st
