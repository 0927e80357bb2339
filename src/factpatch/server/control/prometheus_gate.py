"""Analysis gates answered by Prometheus: a PromQL query per gate, asked once for the canary and once
for base, with the side filled in (Argo Rollouts' Prometheus provider, in this project's gate shape).

Placeholders: `$version` (regex of the side's version labels), `$shards` (regex of its shard names),
`$window` (the measurement's length as a PromQL duration). A query answers one number; an empty
answer, NaN, an error or a Prometheus that cannot be reached is inconclusive, never a pass.
"""

from __future__ import annotations

import math
import re

import httpx

from factpatch.core.version_label import version_label

PROMETHEUS = "prometheus"


class PrometheusUnreachable(RuntimeError):
    pass


def _alternation(values) -> str:
    # inside a double-quoted PromQL string a regex backslash is written twice
    return "|".join(sorted(re.escape(v).replace("\\", "\\\\") for v in values)) or "^$"


def fill(query: str, versions, shards, window_s: float) -> str:
    """The query for one side: `versions` are digests ("" = base), `shards` names."""
    return (query.replace("$version", _alternation({version_label(v) for v in versions}))
            .replace("$shards", _alternation(shards))
            .replace("$window", f"{max(1, round(window_s))}s"))


class PrometheusQueries:
    def __init__(self, url: str, timeout_s: float = 5.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _ask(self, promql: str, at: float | None = None) -> dict:
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            r = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=self.timeout_s)
            body = r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise PrometheusUnreachable(f"Prometheus at {self.url} did not answer: {e}") from e
        if body.get("status") != "success" and body.get("errorType") != "bad_data":
            raise PrometheusUnreachable(f"Prometheus at {self.url}: {body.get('errorType')}: {body.get('error')}")
        return body

    def parse_error(self, promql: str) -> str | None:
        """Prometheus's own parser on the query (placeholders filled with sample values): its message
        when the query does not parse, None when it does. PrometheusUnreachable when it cannot tell."""
        body = self._ask(fill(promql, ["sha256:" + "0" * 64], ["s0"], 60))
        return body.get("error") if body.get("status") != "success" else None

    def value(self, promql: str, at: float) -> tuple[float | None, str]:
        """(number, "") or (None, why there is none)."""
        try:
            body = self._ask(promql, at)
        except PrometheusUnreachable as e:
            return None, str(e)
        if body.get("status") != "success":
            return None, f"query refused: {body.get('error')}"
        data = body["data"]
        if data["resultType"] == "scalar":
            found = [data["result"][1]]
        elif data["resultType"] == "vector":
            found = [s["value"][1] for s in data["result"]]
        else:
            return None, f"the query answers a {data['resultType']}, not one number"
        if len(found) != 1:
            return None, f"the query answers {len(found)} series, not one number" if found else "no data"
        v = float(found[0])
        return (None, "NaN (no traffic in the window?)") if math.isnan(v) else (v, "")
