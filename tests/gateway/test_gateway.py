"""The gateway in front of two real vLLM shards: weighted split, sticky keys, QA override, headers,
streaming with monitors, OpenAI-style errors, and a connection retry on another shard."""

from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor

import pytest

from factpatch.core.version_label import version_label
from factpatch.server.monitors.stale import monitor_name
from tests.server.helpers import VIEWER_TOKEN

pytestmark = pytest.mark.vllm


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_split_sticky_keys_and_override(stack, fix_patch, fact):
    patch = stack.cl.push(fix_patch).digest
    r = stack.start(patch, canary_shards=["s0"], canary_traffic_percent=25)
    r = stack.wait_state(r.id, {"PAUSED"})
    stack.wait_split(r.id, ("s0",))

    def send(i: int):
        key = f"customer-{i}"
        # half the keys as a header, half as the OpenAI `user` field
        resp = stack.complete(fact.prompts[0], key=key, max_tokens=1) if i % 2 else \
            stack.complete(fact.prompts[0], max_tokens=1, user=key)
        assert resp.status_code == 200, resp.text
        return key, (resp.headers["X-Factpatch-Version"], resp.headers["X-Factpatch-Shard"])

    n = 200  # 4.5 sd of a 25 % split is ±28: a split of 0, 50 or 100 % still fails
    with ThreadPoolExecutor(4) as ex:
        served = dict(ex.map(send, range(n)))
    canary = sum(v == patch for v, _ in served.values())
    sd = math.sqrt(n * 0.25 * 0.75)
    assert abs(canary - n * 0.25) <= 4.5 * sd, f"{canary} of {n} on the canary"
    assert all((s == "s0") == (v == patch) for v, s in served.values())
    assert {v for v, _ in served.values()} == {patch, "base"}

    # the same key lands on the same version, whichever way it is given
    for i in range(0, 60, 3):
        key = f"customer-{i}"
        again = stack.complete(fact.prompts[1], key=key, max_tokens=1) if i % 2 == 0 else \
            stack.complete(fact.prompts[1], max_tokens=1, user=key)
        assert again.headers["X-Factpatch-Version"] == served[key][0]

    # QA override: only with an operator token, and never a sample for the canary's analysis
    for token in ("", VIEWER_TOKEN, "not-a-token"):
        refused = stack.complete(fact.prompts[0], route="canary", route_token=token)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "route_override_forbidden"
    seen = len(stack.srv.observations.since(0))
    stack.complete(fact.prompts[0], route="canary")
    assert len(stack.srv.observations.since(0)) == seen
    # ... and with one it wins over the key
    for route, version, shard in (("canary", patch, "s0"), ("base", "base", "s1")):
        resp = stack.complete(fact.prompts[0], key="customer-1", route=route)
        assert (resp.headers["X-Factpatch-Version"], resp.headers["X-Factpatch-Shard"],
                resp.headers["X-Factpatch-Route"]) == (version, shard, route)
    # the canary answers with the new value, base with the old one
    assert fact.new in stack.complete(fact.prompts[0], route="canary").json()["choices"][0]["text"]
    assert fact.old in stack.complete(fact.prompts[0], route="base").json()["choices"][0]["text"]

    # metrics per version and shard
    assert stack.metric("factpatch_gateway_requests_total", version=version_label(patch), shard="s0") >= canary
    assert stack.metric("factpatch_shard_active_version", shard="s0", version=version_label(patch)) == 1
    assert stack.metric("factpatch_version_info", version=version_label(patch), digest=patch) == 1
    assert stack.metric("factpatch_rollout_state", rollout=r.id, state="PAUSED") == 1
    assert stack.metric("factpatch_patch_apply_duration_seconds_count", shard="s0") == 1


def test_streamed_stale_value_counted_once_and_chat(stack, fix_patch, fact):
    stack.cl.push(fix_patch)  # its edit gives the stale-value monitor
    name = monitor_name(fact.subject, fact.relation, fact.old, "TEST-GW")
    stack.srv.monitors.refresh_patches()
    assert name in {m.name for m in stack.srv.monitors.list()}

    chunks = []
    with stack.http.stream("POST", "/v1/completions", json={
            "model": stack.model, "prompt": fact.prompts[0], "max_tokens": 6, "temperature": 0.0, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["X-Factpatch-Version"] == "base"
        shard = r.headers["X-Factpatch-Shard"]
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks += [c["text"] for c in json.loads(line[6:])["choices"]]
    text = "".join(chunks)
    assert fact.old in text
    assert not any(fact.old in c for c in chunks), f"the value came in one chunk: {chunks}"  # it did cross a boundary
    assert stack.metric("factpatch_monitor_matches_total", monitor=name, version="base", shard=shard) == 1
    assert stack.metric("factpatch_monitor_evaluated_total", monitor=name, version="base", shard=shard) == 1
    # a stream has a time to its first token and per token after it; a whole answer has neither
    assert stack.metric("factpatch_gateway_time_to_first_token_seconds_count", version="base", shard=shard) == 1
    assert stack.metric("factpatch_gateway_time_per_output_token_seconds_count", version="base", shard=shard) == 1
    assert 0 < stack.metric("factpatch_gateway_time_to_first_token_seconds_sum") <= stack.metric(
        "factpatch_gateway_request_duration_seconds_sum", shard=shard)

    # a prompt that does not mention the subject is not evaluated by the scoped monitor
    assert stack.complete("The refund period of Harbor Vezin is").status_code == 200
    assert stack.metric("factpatch_monitor_evaluated_total", monitor=name) == 1

    # chat, streamed and not
    body = {"model": stack.model, "messages": [{"role": "user", "content": fact.prompts[0]}], "max_tokens": 6,
            "temperature": 0.0}
    resp = stack.http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.status_code == 200 and resp.headers["X-Factpatch-Shard"] in ("s0", "s1")
    assert fact.old in resp.json()["choices"][0]["message"]["content"]
    with stack.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and "text/event-stream" in r.headers["content-type"]
        r.read()
    assert stack.metric("factpatch_monitor_matches_total", monitor=name) == 3
    assert stack.metric("factpatch_gateway_time_to_first_token_seconds_count") == 2  # the two streams
    assert "_created" not in stack.http.get("/metrics").text

    models = stack.http.get("/v1/models")
    assert models.status_code == 200 and models.json()["data"][0]["id"] == stack.model


def test_bad_requests_get_openai_errors(stack):
    def err(resp, status):
        assert resp.status_code == status, resp.text
        e = resp.json()["error"]
        assert set(e) >= {"message", "type", "param", "code"}
        return e

    assert err(stack.http.post("/v1/completions", content=b"{not json"), 400)["code"] == "invalid_json"
    assert err(stack.http.post("/v1/completions", json=[1, 2]), 400)["code"] == "invalid_json"
    assert err(stack.http.post("/v1/completions", json={"model": stack.model}), 400)["param"] == "prompt"
    assert err(stack.http.post("/v1/chat/completions", json={"model": stack.model, "messages": []}), 400)["param"] == "messages"
    assert err(stack.complete("x", stream="yes"), 400)["param"] == "stream"
    assert err(stack.complete("x", route="blue"), 400)["param"] == "X-Factpatch-Route"
    # no rollout: nothing is a canary
    assert err(stack.complete("x", route="canary"), 503)["code"] == "no_shard_available"
    # what vLLM refuses comes back as vLLM's own OpenAI error, and is not an error of the version
    assert err(stack.complete("x", max_tokens=-1), 400)["type"]
    assert stack.metric("factpatch_gateway_errors_total") == 0


def test_failed_connection_is_retried_on_same_version(stack, shards, fact):
    """A shard registered at a dead address is routable until the reconciler notices; the gateway
    retries on the other base shard meanwhile, so every request still gets an answer."""
    from factpatch.harness.shard_process import free_port

    srv = stack.srv
    srv.cp.reconciler.stop()  # freeze the fleet view: s0 is healthy as far as routing knows
    dead = f"http://127.0.0.1:{free_port()}"
    with srv.cp.db.tx() as c:
        c.execute("UPDATE shards SET address=? WHERE name='s0'", (dead,))
    srv.gateway.router.refresh()
    assert {v.name: v.url for v in srv.gateway.router.shards()}["s0"] == dead
    for i in range(12):
        resp = stack.complete(fact.prompts[0], key=f"k{i}", max_tokens=1)
        assert resp.status_code == 200 and resp.headers["X-Factpatch-Shard"] == "s1"
    assert stack.metric("factpatch_gateway_errors_total", shard="s0", reason="connect") >= 1
    assert stack.metric("factpatch_gateway_retries_total", shard="s0") >= 1


def test_dropped_connection_is_tried_again(stack, shards, fact):
    """A connection dropped before any answer (a pooled keep-alive connection the shard closed as the
    request went out) is tried again, on the same shard when it is the only one of its version; a
    shard that drops every connection gets one more try, then a clear 502."""
    from urllib.parse import urlsplit

    from .relay import DroppingRelay

    srv = stack.srv
    srv.cp.reconciler.stop()  # freeze the fleet view
    target = urlsplit(shards["s0"].url)
    with DroppingRelay((target.hostname, target.port), drop=1) as once, \
            DroppingRelay((target.hostname, target.port), drop=10**6) as always:
        with srv.cp.db.tx() as c:
            c.execute("UPDATE shards SET address=? WHERE name='s0'", (once.url,))
            c.execute("UPDATE shards SET health='UNREACHABLE' WHERE name='s1'")
        srv.gateway.router.refresh()
        assert [v.name for v in srv.gateway.router.shards() if v.available] == ["s0"]
        resp = stack.complete(fact.prompts[0], max_tokens=1)
        assert resp.status_code == 200 and resp.headers["X-Factpatch-Shard"] == "s0", resp.text
        assert once.dropped == 1
        assert stack.metric("factpatch_gateway_retries_total", shard="s0") == 1
        assert stack.metric("factpatch_gateway_errors_total") == 0

        with srv.cp.db.tx() as c:
            c.execute("UPDATE shards SET address=? WHERE name='s0'", (always.url,))
        srv.gateway.router.refresh()
        resp = stack.complete(fact.prompts[0], max_tokens=1)
        assert resp.status_code == 502 and resp.json()["error"]["code"] == "shard_unreachable", resp.text
        assert always.dropped == 2
        assert stack.metric("factpatch_gateway_errors_total", shard="s0", reason="dropped") == 1
