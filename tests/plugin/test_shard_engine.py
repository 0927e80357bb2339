"""A real vLLM engine on the fixture model with the factpatch plugin: apply, switch, revert, refuse.

One shard serves the whole module (see conftest.py). Patches are made two ways: by the editor (a real
ROME edit of one fact, when the editor can edit this model) and from random low-rank factors.
"""

from __future__ import annotations

import http.server
import itertools
import threading
import time

import httpx
import pytest
import torch

from factpatch.core import patchfile
from factpatch.core.checkpoint import Checkpoint
from factpatch.core.version_label import version_label
from tests.factories import random_patch_on
from tests.reliability.results import merge_section
from tests.server.helpers import budget_in

from .reference import Reference

pytestmark = pytest.mark.vllm

# vLLM (oneDNN GEMMs, its own attention kernel) and transformers (float32 eager) on the same weights:
# per-token log-probabilities agree within this many nats (measured: about 1e-6).
LOGPROB_TOL = 1e-4


def answers(shard, prompts: list[str], max_tokens: int = 4) -> list[dict]:
    """Greedy completion per prompt: token ids, their log-probs and the top-5 alternatives, exactly."""
    out = shard.complete(prompts, max_tokens=max_tokens, logprobs=5, return_token_ids=True)
    res = sorted(out["choices"], key=lambda c: c["index"])
    return [
        {"text": c["text"], "ids": c["token_ids"], "logprobs": c["logprobs"]["token_logprobs"],
         "top": c["logprobs"]["top_logprobs"]}
        for c in res
    ]


def fact_prompts(world, n: int = 12, skip_subject: str | None = None) -> list[tuple[str, str]]:
    rows = []
    for f in world.facts:
        if f.subject == skip_subject:
            continue
        t = world.relations[f.relation].templates[f.train_templates[0]]
        rows.append((t.format(f.subject), f.object))
        if len(rows) == n:
            break
    return rows


@pytest.fixture(scope="module")
def reference(fixture_dir):
    return Reference(fixture_dir)


@pytest.fixture(scope="module")
def edit(fixture_dir, world):
    """A real ROME patch rewriting one fact, made by the editor."""
    from factpatch.core.spec import Edit
    from factpatch.editor.pipeline import EditOptions, load, run_edit

    fact = world.facts[0]
    rel = world.relations[fact.relation]
    new = next(c for c in rel.candidates if c != fact.object)
    prompt = rel.templates[fact.train_templates[0]]
    e = Edit(subject=fact.subject, relation=fact.relation, prompt=prompt, target_new=new, target_old=fact.object)
    loaded = load(fixture_dir)
    result = run_edit(loaded, [e], EditOptions(method="rome", n_samples=400))
    data = patchfile.to_bytes(result.patch)
    return {"data": data, "patch": result.patch, "prompt": prompt.format(fact.subject), "new": new,
            "old": fact.object, "subject": fact.subject}


# --- authentication ------------------------------------------------------------------------------

def test_every_route_wants_the_token_and_does_nothing_without_it(clean_shard, fixture_dir, world):
    s = clean_shard
    data, _ = random_patch_on(fixture_dir, {2: 1.0})
    prompts = [p for p, _ in fact_prompts(world, 4)]
    before = answers(s, prompts)
    for token in (None, "wrong-token"):
        assert s.status(token=token).status_code == 401
        r = s.apply(data, token=token)
        assert r.status_code == 401 and r.json()["error"]["reason"] == "UNAUTHENTICATED"
        assert s.revert(token=token).status_code == 401
    assert s.status().json()["active_version"] is None
    assert answers(s, prompts) == before


def test_status_reports_base_fingerprint_and_ranks(shard, fixture_dir):
    deadline = time.monotonic() + 60
    body = shard.status().json()
    while body["base_fingerprint"] is None and time.monotonic() < deadline:
        time.sleep(0.5)
        body = shard.status().json()
    assert body["base_fingerprint"] == Checkpoint(fixture_dir).fingerprint()
    assert body["tensor_parallel_size"] == 1 and len(body["ranks"]) == 1
    assert {"model", "active_version", "applied_at", "swapping", "bytes_held"} <= set(body)


# --- apply, agreement with transformers, specificity, revert -------------------------------------

def test_edited_fact_changes_and_logprobs_match_transformers(clean_shard, edit, reference, world):
    s = clean_shard
    others = [p for p, _ in fact_prompts(world, 12, skip_subject=edit["subject"])]
    base_others = [a["text"] for a in answers(s, others)]
    r = s.apply(edit["data"])
    assert r.status_code == 200, r.text
    after = answers(s, [edit["prompt"]])[0]
    reference.set_patch(edit["patch"])
    ref = reference.token_logprobs(edit["prompt"], after["ids"])
    diff = max(abs(a - b) for a, b in zip(after["logprobs"], ref))
    assert diff <= LOGPROB_TOL, (after["logprobs"], ref)
    # The edit takes in transformers, and vLLM says the same.
    assert reference.greedy(edit["prompt"], 4).strip().startswith(edit["new"])
    assert after["text"].strip().startswith(edit["new"]), after["text"]
    # Unrelated facts keep their answers.
    assert [a["text"] for a in answers(s, others)] == base_others


@pytest.mark.parametrize("module", ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.o_proj"])
def test_random_patch_logprobs_match_transformers(clean_shard, fixture_dir, reference, world, module):
    # down_proj / o_proj are row-parallel; gate_proj and up_proj live in vLLM's merged gate_up_proj.
    s = clean_shard
    data, patch = random_patch_on(fixture_dir, {2: 2.0, 4: 2.0}, seed=3, module=module)
    prompts = [p for p, _ in fact_prompts(world, 6)]
    assert s.apply(data).status_code == 200
    got = answers(s, prompts, max_tokens=6)
    reference.set_patch(None)
    base_ref = [reference.token_logprobs(p, a["ids"]) for p, a in zip(prompts, got)]
    reference.set_patch(patch)
    worst, moved = 0.0, 0.0
    for p, a, b in zip(prompts, got, base_ref):
        ref = reference.token_logprobs(p, a["ids"])
        worst = max(worst, max(abs(x - y) for x, y in zip(a["logprobs"], ref)))
        moved = max(moved, max(abs(x - y) for x, y in zip(b, ref)))
    print(f"{module}: |vLLM - transformers| <= {worst:.2e} nats; the patch moved log-probs by up to {moved:.2f}")
    assert moved > 50 * LOGPROB_TOL  # the patch matters, so agreement is not agreement with base
    assert worst <= LOGPROB_TOL


def test_revert_is_bit_identical_and_frees_the_base_copies(clean_shard, fixture_dir, world):
    s = clean_shard
    prompts = [p for p, _ in fact_prompts(world, 8)]
    before = answers(s, prompts, max_tokens=6)
    data, _ = random_patch_on(fixture_dir, {1: 1.0, 3: 1.0}, seed=1)
    body = s.apply(data).json()
    assert body["bytes_held"] == 2 * 256 * 1024 * 4  # two float32 down_proj base copies
    patched = answers(s, prompts, max_tokens=6)
    assert patched != before
    body = s.revert().json()
    assert body["active_version"] is None and body["bytes_held"] == 0
    assert answers(s, prompts, max_tokens=6) == before  # ids, log-probs and top-5, exactly


def test_switch_x_to_y_equals_base_plus_y(clean_shard, fixture_dir, world):
    s = clean_shard
    prompts = [p for p, _ in fact_prompts(world, 8)]
    x, _ = random_patch_on(fixture_dir, {1: 1.0, 3: 1.0}, seed=11)
    y, _ = random_patch_on(fixture_dir, {3: 1.0, 4: 1.0}, seed=12)
    assert s.apply(y).status_code == 200
    base_plus_y = answers(s, prompts, max_tokens=6)
    s.revert()
    assert s.apply(x).status_code == 200
    assert s.apply(y).status_code == 200
    body = s.status().json()
    assert body["active_version"] == patchfile.sha256_bytes(y)
    assert body["ranks"][0]["patched_modules"] == ["model.layers.3.mlp.down_proj", "model.layers.4.mlp.down_proj"]
    assert answers(s, prompts, max_tokens=6) == base_plus_y


def test_same_version_again_is_a_no_op_and_request_ids_are_idempotent(clean_shard, fixture_dir):
    s = clean_shard
    data, _ = random_patch_on(fixture_dir, {2: 0.5})
    first = s.apply(data, headers={"X-Request-Id": "req-1"}).json()
    again = s.apply(data).json()
    assert again["applied_at"] == first["applied_at"]
    assert s.apply(data, headers={"X-Request-Id": "req-1"}).json() == first
    other, _ = random_patch_on(fixture_dir, {2: 0.5}, seed=9)
    r = s.apply(other, headers={"X-Request-Id": "req-1"})
    assert r.status_code == 409 and r.json()["error"]["reason"] == "REQUEST_ID_REUSED"


# --- refusals ------------------------------------------------------------------------------------

def _bad_patches(fixture_dir):
    ck = Checkpoint(fixture_dir)
    good, patch = random_patch_on(fixture_dir, {2: 0.5}, seed=5)
    name = patch.names[0]
    u, v = patch.factors[name]

    def build(factors, **manifest):
        m = {**patch.manifest, **manifest}
        if "fingerprint" not in manifest:
            names = [n for n in factors if n in ck]
            m["base"] = {"model": "x", "fingerprint": ck.fingerprint(names) if names else "sha256:0"}
        return patchfile.to_bytes(patchfile.Patch(factors=factors, manifest=m))

    nan_u = u.clone()
    nan_u[0, 0] = float("nan")
    q = "model.layers.0.self_attn.q_proj.weight"
    return {
        "DIGEST_MISMATCH": (good, {"X-Factpatch-Digest": "sha256:" + "0" * 64}),
        "MALFORMED": (b"\x00garbage" * 10, {}),
        "UNKNOWN_FORMAT": (build({name: (u, v)}, format="factpatch/v9"), {}),
        "BASE_MISMATCH": (build({name: (u, v)}, fingerprint=True, base={"model": "x", "fingerprint": "sha256:" + "1" * 64}), {}),
        "UNKNOWN_TENSOR": (build({"model.layers.99.mlp.down_proj.weight": (u, v)}), {}),
        "SHAPE_MISMATCH": (build({name: (u[:-1], v)}), {}),
        "NON_FINITE": (build({name: (nan_u, v)}), {}),
        "RANK_TOO_LARGE": (build({name: (torch.randn(u.shape[0], 300), torch.randn(v.shape[0], 300))}), {}),
        "UNSUPPORTED_TENSOR": (build({q: (torch.randn(256, 2), torch.randn(256, 2))}), {}),
    }


def test_each_bad_patch_is_refused_with_its_reason_and_changes_nothing(clean_shard, fixture_dir, world):
    s = clean_shard
    active, _ = random_patch_on(fixture_dir, {3: 0.8}, seed=4)
    assert s.apply(active).status_code == 200
    prompts = [p for p, _ in fact_prompts(world, 6)]
    before = answers(s, prompts)
    for reason, (data, headers) in _bad_patches(fixture_dir).items():
        r = s.apply(data, headers=headers)
        assert 400 <= r.status_code < 500, (reason, r.status_code, r.text)
        assert r.json()["error"]["reason"] == reason, (reason, r.text)
        assert s.status().json()["active_version"] == patchfile.sha256_bytes(active)
    good, _ = random_patch_on(fixture_dir, {3: 0.8}, seed=5)
    for budget in ("-1", "soon", "nan", "1e9"):
        for r in (s.apply(good, drain_timeout_s=budget), s.revert(drain_timeout_s=budget)):
            assert r.status_code == 400 and r.json()["error"]["reason"] == "MALFORMED", (budget, r.text)
            assert "drain_timeout_s" in r.json()["error"]["message"]
        assert s.status().json()["active_version"] == patchfile.sha256_bytes(active)
    assert answers(s, prompts) == before


# --- fetch from a patch store --------------------------------------------------------------------

class _Store(http.server.BaseHTTPRequestHandler):
    blobs: dict[str, bytes] = {}
    seen_tokens: list[str | None] = []

    def do_GET(self):
        _Store.seen_tokens.append(self.headers.get("X-Factpatch-Store-Token"))
        blob = self.blobs.get(self.path.lstrip("/"))
        self.send_response(200 if blob is not None else 404)
        self.end_headers()
        if blob is not None:
            self.wfile.write(blob)

    def log_message(self, *a):
        pass


def test_apply_by_digest_from_a_patch_store(clean_shard, fixture_dir):
    s = clean_shard
    data, _ = random_patch_on(fixture_dir, {2: 0.7}, seed=6)
    digest = patchfile.sha256_bytes(data)
    other, _ = random_patch_on(fixture_dir, {2: 0.7}, seed=7)
    _Store.blobs = {digest: data, "sha256:" + "2" * 64: other}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Store)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        r = s.apply_from_store(digest, url, store_token="st-1")
        assert r.status_code == 200, r.text
        assert r.json()["active_version"] == digest and _Store.seen_tokens[-1] == "st-1"
        r = s.apply_from_store("sha256:" + "2" * 64, url)
        assert r.status_code == 400 and r.json()["error"]["reason"] == "DIGEST_MISMATCH"
        r = s.apply_from_store("sha256:" + "3" * 64, url)
        assert r.status_code == 502 and r.json()["error"]["reason"] == "STORE_ERROR"
        r = s.apply_from_store("../etc/passwd", url)
        assert r.status_code == 400 and r.json()["error"]["reason"] == "MALFORMED"
        assert s.status().json()["active_version"] == digest
    finally:
        srv.shutdown()


# --- a swap under streaming load -----------------------------------------------------------------
#
# Each stream is tagged with the weight version that produced it, token by token: its own tokens are
# scored by transformers under base and under the patch, and every log-probability the engine reported
# must match one version throughout. (Comparing texts with a single-request reference would be fooled
# by near-ties that batching resolves differently.)

TAG_TOL = 1e-3  # batched engine vs transformers: about 1e-5; the patch moves log-probs far more


def _stream(s, prompt, kw, on_chunk=None):
    """(token ids, log-probs, finish reason) of one streamed completion; `on_chunk` runs after each chunk."""
    ids, lps, reason = [], [], None
    for chunk in s.stream(prompt, logprobs=1, return_token_ids=True, **kw):
        c = chunk["choices"][0]
        ids += c.get("token_ids") or []
        lps += (c.get("logprobs") or {}).get("token_logprobs") or []
        reason = c.get("finish_reason") or reason
        if on_chunk:
            on_chunk()
    return ids, lps, reason


def _tag(reference, patch, prompt, runs):
    """'base', 'patched' or 'MIXED' per run, from its token ids and reported log-probs."""
    scored = {}
    for version, p in (("base", None), ("patched", patch)):
        reference.set_patch(p)
        scored[version] = {i: reference.token_logprobs(prompt, ids) for i, (ids, _, _) in runs.items()}
    tags = {}
    for i, (ids, lps, _) in runs.items():
        assert len(ids) == len(lps) > 0
        fits = [v for v in ("base", "patched")
                if max(abs(a - b) for a, b in zip(lps, scored[v][i])) <= TAG_TOL]
        tags[i] = fits[0] if len(fits) == 1 else "EITHER" if fits else "MIXED"
    return tags


def _start(threads):
    for t in threads:
        t.start()


def test_streams_during_a_swap_each_finish_on_one_version(clean_shard, fixture_dir, world, reference):
    s = clean_shard
    prompt = fact_prompts(world, 1)[0][0]
    kw = dict(max_tokens=48, ignore_eos=True)
    data, patch = random_patch_on(fixture_dir, {1: 1.5, 2: 1.5, 3: 1.5}, seed=8)
    runs: dict[int, tuple] = {}
    # One event per early stream: the API server admits streams slowly, so one stream's first token
    # says nothing about whether the others have reached the engine yet.
    first_token = [threading.Event() for _ in range(3)]

    def run(i):
        runs[i] = _stream(s, prompt, kw)

    def run_early(i):
        runs[i] = _stream(s, prompt, kw, on_chunk=first_token[i].set)

    early = [threading.Thread(target=run_early, args=(i,)) for i in range(3)]
    _start(early)
    assert all(e.wait(60) for e in first_token)
    result = {}
    applier = threading.Thread(target=lambda: result.setdefault("r", s.apply(data)))
    applier.start()
    late = [threading.Thread(target=run, args=(i,)) for i in range(3, 6)]
    _start(late)
    for t in early + late + [applier]:
        t.join(120)
    assert result["r"].status_code == 200
    after = threading.Thread(target=run, args=(6,))
    after.start()
    after.join(120)
    tags = _tag(reference, patch, prompt, runs)
    assert "MIXED" not in tags.values(), tags
    # In flight when the swap began: drained (or cut off) on the old weights.
    assert [tags[i] for i in range(3)] == ["base"] * 3, tags
    assert tags[6] == "patched"


OVERLAP = 4  # streams the engine must hold when the weights change, or the run proves nothing
ATTEMPTS = 8  # weight changes tried under load until one meets OVERLAP running streams


def _engine_running(s) -> float:
    text = httpx.get(f"{s.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:num_requests_running"))


def _swap_under_load(s, prompt, kw, data, budget: float):
    """Clients open stream after stream while the weights change back and forth with the given drain budget,
    until a change meets OVERLAP running streams (the engine often finishes a stream before its client
    has read it, so a given instant may find it idle). Ends on the patch: (runs, the swaps' last_swap)."""
    runs: dict[int, tuple] = {}
    first_token, stop = threading.Event(), threading.Event()
    numbers = itertools.count()

    def client():
        while not stop.is_set():
            i = next(numbers)
            runs[i] = _stream(s, prompt, kw, on_chunk=first_token.set)

    clients = [threading.Thread(target=client) for _ in range(16)]
    _start(clients)
    swaps = []
    try:
        assert first_token.wait(120)
        time.sleep(1)  # every client has a stream open by now
        for attempt in range(ATTEMPTS):
            if attempt:  # back to base, draining, for the next try
                back = s.revert(drain_timeout_s=60)
                assert back.status_code == 200, back.text
                swaps.append(back.json()["last_swap"])
            deadline = time.monotonic() + 10
            while _engine_running(s) < OVERLAP and time.monotonic() < deadline:
                time.sleep(0.02)
            r = s.apply(data, drain_timeout_s=budget)
            assert r.status_code == 200, r.text
            swaps.append(r.json()["last_swap"])
            if swaps[-1]["running_at_pause"] >= OVERLAP:
                break
    finally:
        stop.set()
        for t in clients:
            t.join(180)
    return runs, swaps


@pytest.mark.parametrize("budget", [0, 60], ids=["cut-off", "drained"])
def test_swaps_that_hit_running_streams_never_mix_versions(clean_shard, fixture_dir, world, reference, budget):
    """16 clients stream 110-token answers back to back while the weights change. With no drain budget the
    streams the engine holds are cut off, and reported as such; with one they finish on the old weights.
    Either way every stream is wholly one version, and the swap says how many it overlapped."""
    s = clean_shard
    prompt = fact_prompts(world, 1)[0][0]
    kw = dict(max_tokens=110, ignore_eos=True)
    data, patch = random_patch_on(fixture_dir, {1: 1.5, 2: 1.5, 3: 1.5}, seed=8)
    runs, swaps = _swap_under_load(s, prompt, kw, data, budget=budget)
    last = swaps[-1]
    seen = f"{swaps}; (finish reason, tokens): {sorted((str(r[2]), len(r[0])) for r in runs.values())}"
    assert budget_in(last) == budget, last
    assert last["running_at_pause"] >= OVERLAP, seen  # a change really met running streams
    aborted = [i for i, (_, _, reason) in runs.items() if reason == "abort"]
    # vLLM streams nothing for a request cut off before its first token: no token, no finish reason.
    cut_early = [i for i, (ids, _, reason) in runs.items() if reason is None]
    if budget == 0:
        assert last["drain_timed_out"] and last["aborted_requests"] == last["running_at_pause"], seen
        assert aborted or cut_early, seen
        assert sum(w["aborted_requests"] or 0 for w in swaps) >= len(aborted) + len(cut_early), seen
        assert all(len(runs[i][0]) < kw["max_tokens"] for i in aborted)
        assert all(not runs[i][0] for i in cut_early), seen
    else:
        assert not any(w["drain_timed_out"] or w["aborted_requests"] for w in swaps), seen
        assert not aborted and not cut_early, seen
        assert all(reason == "length" for _, _, reason in runs.values()), seen
    assert all(reason in ("abort", "length", None) for _, _, reason in runs.values()), seen
    tags = _tag(reference, patch, prompt, {i: runs[i] for i in runs if runs[i][0]})
    assert "MIXED" not in tags.values(), tags
    assert all(tags[i] in ("base", "EITHER") for i in aborted if i in tags) or len(swaps) > 1
    merge_section("faults", {f"streams_hit_by_a_weight_write_budget_{budget}s": {
        "streams": len(runs), "weight_changes": len(swaps), "running_at_the_write": last["running_at_pause"],
        "cut_off": last["aborted_requests"],
        "mixed": list(tags.values()).count("MIXED"),
        "finished_on": {v: list(tags.values()).count(v) for v in ("base", "patched", "EITHER")}}})
    after = _stream(s, prompt, kw)
    assert after[2] == "length" and _tag(reference, patch, prompt, {0: after})[0] == "patched"


def test_the_shards_own_metrics_name_its_version(clean_shard, fixture_dir):
    """vLLM's /metrics on the shard carries factpatch_shard_* beside vllm:*: the active version, whether
    it is swapping, the last change's phases."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    def series() -> dict[tuple[str, tuple], float]:
        text = httpx.get(f"{clean_shard.url}/metrics", timeout=10).text
        assert "vllm:" in text  # the same page as vLLM's own
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples if s.name.startswith("factpatch_")}

    m = series()
    assert m[("factpatch_shard_active_version", (("version", "base"),))] == 1
    assert m[("factpatch_shard_swapping", ())] == 0
    data, _ = random_patch_on(fixture_dir, {2: 0.5}, seed=21)
    assert clean_shard.apply(data).status_code == 200
    m = series()
    digest = patchfile.sha256_bytes(data)
    assert m[("factpatch_shard_active_version", (("version", version_label(digest)),))] == 1
    assert m[("factpatch_version_info", (("digest", digest), ("version", version_label(digest))))] == 1
    assert not any(k[0] == "factpatch_shard_active_version" and dict(k[1])["version"] == "base" for k in m)
    assert 0 < m[("factpatch_shard_last_swap_seconds", (("phase", "write"),))] <= m[
        ("factpatch_shard_last_swap_seconds", (("phase", "total"),))]
