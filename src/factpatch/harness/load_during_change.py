"""Load during change: streaming clients through the gateway while the fleet's weights change, and
the check that every response came whole from the version its header names.

Greedy decoding makes each version's answer to a prompt a fixed text. The references are read at
steady state (every shard on one version); a response during churn is correct only if its text is
exactly the reference of the version in its `X-Factpatch-Version` header. A response that started on
one set of weights and finished on another, or was tagged with the wrong version, does not match.

Used by `bench/soak.py` (long runs, figures) and by a short test in `make test`.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field

import httpx


@dataclass
class Outcome:
    start: float
    latency: float
    status: int
    version: str
    shard: str
    prompt: str
    text: str
    error: str = ""


@dataclass
class Window:
    """A stretch of time in which some shard's weights were changing."""

    what: str
    start: float
    end: float


def stream_completion(http: httpx.Client, model: str, prompt: str, key: str, max_tokens: int) -> Outcome:
    t0 = time.time()
    text, version, shard, status, error = [], "", "", 0, ""
    try:
        with http.stream("POST", "/v1/completions", headers={"X-Factpatch-Route-Key": key}, json={
            "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
        }) as r:
            status = r.status_code
            version = r.headers.get("X-Factpatch-Version", "")
            shard = r.headers.get("X-Factpatch-Shard", "")
            if status != 200:
                error = r.read().decode(errors="replace")[:200]
            else:
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    obj = json.loads(line[6:])
                    if "error" in obj:
                        error = str(obj["error"])[:200]
                        break
                    for ch in obj.get("choices") or ():
                        text.append(ch.get("text") or "")
    except (httpx.HTTPError, ValueError) as e:
        error = f"{type(e).__name__}: {e}"
    return Outcome(t0, time.time() - t0, status, version, shard, prompt, "".join(text), error)


def reference_texts(gateway_url: str, model: str, prompts: list[str], max_tokens: int) -> dict[str, str]:
    """Each prompt's answer now (call it with every shard on one version)."""
    with httpx.Client(base_url=gateway_url, timeout=120) as http:
        out = {}
        for i, p in enumerate(prompts):
            o = stream_completion(http, model, p, f"reference-{i}", max_tokens)
            if o.status != 200 or o.error:
                raise RuntimeError(f"reference request for {p!r} failed: {o.status} {o.error}")
            out[p] = o.text
        return out


class Clients:
    """`n` threads, each streaming completions back to back with its own sticky key."""

    def __init__(self, gateway_url: str, model: str, prompts: list[str], n: int, max_tokens: int = 8):
        self.url, self.model, self.prompts, self.n, self.max_tokens = gateway_url, model, prompts, n, max_tokens
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self, c: int) -> None:
        i = 0
        with httpx.Client(base_url=self.url, timeout=120) as http:
            while not self._stop.is_set():
                o = stream_completion(http, self.model, self.prompts[(c + i) % len(self.prompts)],
                                      f"client-{c}-{i}", self.max_tokens)
                with self._lock:
                    self.outcomes.append(o)
                i += 1

    @property
    def finished(self) -> int:
        """Requests answered (or failed) so far."""
        with self._lock:
            return len(self.outcomes)

    def __enter__(self) -> "Clients":
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(self.n)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=180)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


@dataclass
class Verdict:
    sent: int
    failed: int
    mismatched: int  # text differs from the reference of the tagged version
    untagged: int  # 200 without a version header
    during_swaps: int
    latency: dict[str, dict[str, float | None]] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def judge(outcomes: list[Outcome], references: dict[str, dict[str, str]], windows: list[Window]) -> Verdict:
    """Count failures and mismatches, and split latency into steady state and during swaps."""
    failed = [o for o in outcomes if o.status != 200 or o.error]
    ok = [o for o in outcomes if o.status == 200 and not o.error]
    untagged = [o for o in ok if not o.version]
    bad = [o for o in ok if o.version and references.get(o.version, {}).get(o.prompt) != o.text]

    def in_swap(o: Outcome) -> bool:
        return any(o.start < w.end and o.start + o.latency > w.start for w in windows)

    swap = [o.latency for o in ok if in_swap(o)]
    steady = [o.latency for o in ok if not in_swap(o)]
    v = Verdict(len(outcomes), len(failed), len(bad), len(untagged), len(swap))
    for name, values in (("steady", steady), ("during_swaps", swap)):
        v.latency[name] = {"p50_s": _pct(values, 50), "p99_s": _pct(values, 99), "n": len(values)}
    for o in (failed + bad)[:10]:
        v.examples.append({"prompt": o.prompt, "version": o.version, "shard": o.shard, "status": o.status,
                           "text": o.text, "error": o.error,
                           "expected": references.get(o.version, {}).get(o.prompt)})
    return v


def gateway_settled(router):
    """`settled` for Churn: the gateway routes to every named shard, each on its expected version."""

    def settled(expect: dict[str, str]) -> bool:
        views = {v.name: v for v in router.shards()}
        return all(n in views and views[n].available and (views[n].version or "base") == want
                   for n, want in expect.items())

    return settled


class Churn:
    """Canary → promote → revert, over and over, recording when weights were changing.

    `client` is a factpatch.server.cli.client.Client with an operator token; `settled` says whether the
    gateway's view has caught up (every shard routable on the expected version; see gateway_settled).
    """

    def __init__(self, client, patch: str, canary: list[str], percent: int, settled, timeout: float = 180):
        self.cl, self.patch, self.canary, self.percent = client, patch, canary, percent
        self.settled = settled
        self.timeout = timeout
        self.windows: list[Window] = []
        self.cycles = 0

    def _wait(self, rollout_id: str, state: str):
        from factpatch.server.state.rollout_state import to_proto
        from factpatch.v1 import rollout_pb2

        want = to_proto(state)
        for r in self.cl.rollouts.WatchRollout(rollout_pb2.WatchRolloutRequest(id=rollout_id), metadata=self.cl.md,
                                               timeout=self.timeout):
            if r.state == want:
                return r
        raise RuntimeError(f"rollout {rollout_id} never reached {state}")

    def references(self, gateway_url: str, model: str, prompts: list[str], shards: list[str],
                   max_tokens: int = 8) -> dict[str, dict[str, str]]:
        """Each version's exact answers, read with the whole fleet on it: base, then the patch; the
        fleet is left on base."""
        base = {s: "base" for s in shards}
        if not self.settle_within(base):
            raise RuntimeError(f"the fleet did not settle on {base}")
        refs = {"base": reference_texts(gateway_url, model, prompts, max_tokens)}
        self.promote_all(shards)
        if not self.settle_within({s: self.patch for s in shards}):
            raise RuntimeError(f"the fleet did not settle on {self.patch}")
        refs[self.patch] = reference_texts(gateway_url, model, prompts, max_tokens)
        self.revert()
        if not self.settle_within(base):
            raise RuntimeError(f"the fleet did not settle back on {base}")
        return refs

    def settle_within(self, expect: dict[str, str]) -> bool:
        deadline = time.monotonic() + self.timeout
        while not self.settled(expect):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _step(self, what: str, act, expect: dict[str, str]) -> None:
        t0 = time.time()
        act()
        if not self.settle_within(expect):
            raise RuntimeError(f"{what}: the fleet did not settle on {expect}")
        self.windows.append(Window(what, t0, time.time()))

    def cycle(self, shards: list[str]) -> None:
        from factpatch.server.cli.client import new_request_id
        from factpatch.v1 import rollout_pb2

        state: dict = {}

        def start():
            r = self.cl(self.cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
                request_id=new_request_id(), patch=self.patch, canary_shards=self.canary,
                canary_traffic_percent=self.percent), timeout=self.timeout)
            state["r"] = self._wait(r.id, "PAUSED")

        def promote():
            r = state["r"]
            self.cl(self.cl.rollouts.Promote, rollout_pb2.PromoteRequest(request_id=new_request_id(), id=r.id, etag=r.etag),
                    timeout=self.timeout)
            self._wait(r.id, "SUCCEEDED")

        base = {s: "base" for s in shards}
        self._step("canary", start, {**base, **{s: self.patch for s in self.canary}})
        self._step("promote", promote, {s: self.patch for s in shards})
        self._step("revert", self.revert, base)
        self.cycles += 1

    def revert(self) -> None:
        from factpatch.server.cli.client import new_request_id
        from factpatch.v1 import rollout_pb2

        self.cl(self.cl.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=new_request_id()),
                timeout=self.timeout)

    def promote_all(self, shards: list[str]) -> None:
        """Straight to every shard (no canary step): for reading a version's reference answers."""
        from factpatch.server.cli.client import new_request_id
        from factpatch.v1 import rollout_pb2

        r = self.cl(self.cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
            request_id=new_request_id(), patch=self.patch,
            steps=[rollout_pb2.RolloutStep(shards=shards)]))
        self._wait(r.id, "SUCCEEDED")
