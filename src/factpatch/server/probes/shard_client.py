"""Asking a shard directly: its OpenAI completions route, greedy, many prompts per request.

Probes go to the shard's own port, not the gateway, so user metrics and output monitors never see
them. Requests carry batches of prompts; `concurrency` bounds how many are in flight at once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx


class ProbeTransportError(Exception):
    pass


class ShardCompletions:
    def __init__(self, address: str, *, timeout: float = 60.0, max_tokens: int = 6):
        self.address = address.rstrip("/")
        self.max_tokens = max_tokens
        self._http = httpx.Client(base_url=self.address, timeout=timeout)
        self._model: str | None = None

    def close(self) -> None:
        self._http.close()

    def model(self) -> str:
        if self._model is None:
            try:
                r = self._http.get("/v1/models")
                r.raise_for_status()
                self._model = r.json()["data"][0]["id"]
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
                raise ProbeTransportError(f"{self.address}: cannot list models ({e})") from None
        return self._model

    def _batch(self, prompts: list[str]) -> list[str]:
        body = {"model": self.model(), "prompt": prompts, "max_tokens": self.max_tokens, "temperature": 0.0,
                "stop": ["."]}
        try:
            r = self._http.post("/v1/completions", json=body)
        except httpx.HTTPError as e:
            raise ProbeTransportError(f"{self.address}: {type(e).__name__}: {e}") from None
        if r.status_code != 200:
            raise ProbeTransportError(f"{self.address}: HTTP {r.status_code}: {r.text[:200]}")
        out = [""] * len(prompts)
        for choice in r.json().get("choices", []):
            out[choice["index"]] = choice.get("text", "")
        return out

    def complete(self, prompts: list[str], concurrency: int) -> list[str]:
        if not prompts:
            return []
        n = max(1, min(concurrency, len(prompts)))
        size = -(-len(prompts) // n)
        chunks = [prompts[i : i + size] for i in range(0, len(prompts), size)]
        with ThreadPoolExecutor(max_workers=len(chunks), thread_name_prefix="probe") as pool:
            parts = list(pool.map(self._batch, chunks))
        return [a for part in parts for a in part]
