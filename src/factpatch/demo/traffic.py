"""The demo's traffic generator: billing questions through the gateway, each from its own user key.

Every answer is classified against the policy (stale / updated / other) and tagged with the version and
shard the gateway names in its response headers, so the stale-answer rate can be shown per version.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable

import httpx

from .scenario import Question


@dataclass
class Sample:
    t: float
    phase: str
    key: str
    version: str
    shard: str
    relation: str
    prompt: str
    phrasing: str
    answer: str
    verdict: str
    status: int
    error: str = ""  # for a failed request: the status and the gateway's error code and message

    def to_json(self) -> dict:
        return asdict(self)


class Traffic:
    def __init__(self, gateway_url: str, questions: list[Question], *, seed: int = 0, concurrency: int = 4):
        self.url = gateway_url
        self.questions = questions
        self.rng = random.Random(seed)
        self.concurrency = concurrency
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._n = 0
        self.t0 = time.time()
        self.http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=concurrency * 2))
        self.model = self.http.get(f"{self.url}/v1/models").json()["data"][0]["id"]

    def close(self) -> None:
        self.http.close()

    def _one(self, phase: str) -> Sample:
        with self._lock:
            self._n += 1
            key = f"user-{self._n:05d}"
            q = self.rng.choice(self.questions)
        body = {"model": self.model, "prompt": q.prompt, "max_tokens": 4, "temperature": 0.0, "stop": ["."], "user": key}
        r = self.http.post(f"{self.url}/v1/completions", json=body)
        ok = r.status_code == 200
        answer = r.json()["choices"][0]["text"].strip() if ok else ""
        s = Sample(time.time() - self.t0, phase, key, r.headers.get("x-factpatch-version", "?"),
                   r.headers.get("x-factpatch-shard", "?"), q.relation, q.prompt, q.phrasing, answer,
                   q.verdict(answer) if ok else "error", r.status_code, "" if ok else _error_text(r))
        with self._lock:
            self.samples.append(s)
        return s

    def send(self, phase: str, n: int) -> list[Sample]:
        """n requests, `concurrency` at a time."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda _: self._one(phase), range(n)))

    def send_until(self, phase: str, done: Callable[[], bool], *, max_requests: int, poll_every: int = 8) -> list[Sample]:
        """Keep asking until `done()` says so (checked every few requests) or max_requests is reached."""
        out: list[Sample] = []
        while len(out) < max_requests:
            out += self.send(phase, min(poll_every, max_requests - len(out)))
            if done():
                break
        return out


def _error_text(r: httpx.Response) -> str:
    try:
        e = r.json()["error"]
        return f"{r.status_code} {e.get('code')}: {e.get('message')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{r.status_code} {r.text[:200]}"


def error_summary(samples: list[Sample]) -> str:
    """The distinct errors among the samples, with counts, for a failure message."""
    counts = Counter(s.error for s in samples if s.error)
    return "; ".join(f"{n}x {e}" for e, n in counts.items())


def stale_rates(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Per served version: requests, stale / updated share and errors."""
    by: dict[str, list[Sample]] = {}
    for s in samples:
        by.setdefault(s.version, []).append(s)
    out = {}
    for version, xs in by.items():
        ok = [s for s in xs if s.status == 200]
        out[version] = {
            "requests": len(xs),
            "errors": len(xs) - len(ok),
            "stale": sum(s.verdict == "stale" for s in ok) / max(1, len(ok)),
            "updated": sum(s.verdict == "updated" for s in ok) / max(1, len(ok)),
        }
    return out
