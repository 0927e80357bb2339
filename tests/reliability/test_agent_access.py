"""The agent routes of a real vLLM shard (the session's shard): who may call them, and what
hostile patch bodies get. Only 'Bearer <the shard's token>' is let in (the scheme in any case, as HTTP
allows); no token, another token, a control-plane client token or another scheme get 401
UNAUTHENTICATED and change nothing. Bad bodies get a 4xx with a reason and leave the weights alone;
changed bytes never pass for the digest they were sent with."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from factpatch.core import patchfile
from factpatch.plugin.agent import PREFIX
from tests.factories import random_patch_on
from tests.server.helpers import OPERATOR_TOKEN

from .conftest import fuzz
from .results import merge_section

pytestmark = pytest.mark.vllm

TARGET = "agent_apply"
REASONS = {"MALFORMED", "UNKNOWN_FORMAT", "DIGEST_MISMATCH", "BASE_MISMATCH", "UNKNOWN_TENSOR", "SHAPE_MISMATCH",
           "NON_FINITE", "RANK_TOO_LARGE", "UNSUPPORTED_TENSOR"}
CELLS: dict[str, dict[str, int]] = {}


def callers(token: str) -> dict[str, dict[str, str]]:
    return {
        "no token": {},
        "wrong token": {"Authorization": "Bearer not-the-shard-token"},
        "control-plane operator token": {"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        "token without scheme": {"Authorization": token},
        "Basic scheme": {"Authorization": f"Basic {token}"},
        "scheme only": {"Authorization": "Bearer"},
        "token with a suffix": {"Authorization": f"Bearer {token}x"},
        # sent as the raw byte 0xA0 (HTTP header values are bytes); a stripped comparison let it in
        "non-breaking space as the token": {"Authorization": "Bearer \xa0".encode("latin-1")},
        "lower-case scheme": {"Authorization": f"bearer {token}"},
        "shard token": {"Authorization": f"Bearer {token}"},
    }


ALLOWED = {"lower-case scheme", "shard token"}


@pytest.fixture(scope="module")
def patch_bytes(fixture_dir):
    return random_patch_on(fixture_dir, {2: 0.5}, seed=21)[0]


@pytest.fixture(scope="module", autouse=True)
def record_matrix():
    yield
    if CELLS:
        merge_section("access_matrix", {"agent_routes": {"cells": CELLS, "calls": sum(len(c) for c in CELLS.values())}})


def route_calls(base: str, body: bytes) -> dict:
    return {
        "GET status": lambda h: httpx.get(f"{base}{PREFIX}/status", headers=h, timeout=60),
        "POST apply": lambda h: httpx.post(f"{base}{PREFIX}/apply", content=body, timeout=120,
                                           headers={**h, "Content-Type": "application/octet-stream"}),
        "POST apply (store form)": lambda h: httpx.post(f"{base}{PREFIX}/apply", timeout=120, headers=h, json={
            "digest": patchfile.sha256_bytes(body), "store_url": "http://127.0.0.1:9/patches"}),
        "POST revert": lambda h: httpx.post(f"{base}{PREFIX}/revert", headers=h, timeout=120),
    }


def test_agent_route_matrix(shard, patch_bytes):
    assert shard.revert().status_code == 200
    digest = patchfile.sha256_bytes(patch_bytes)
    for route, send in route_calls(shard.url, patch_bytes).items():  # the port every model client reaches
        for caller, headers in callers(shard.token).items():
            r = send(headers)
            CELLS.setdefault(f"{route} on the OpenAI port", {})[caller] = r.status_code
            assert r.status_code == 404, (route, caller, r.status_code, r.text[:200])
            assert shard.status().json()["active_version"] is None, f"{caller} changed the shard through the OpenAI port"
    for route, send in route_calls(shard.agent_url, patch_bytes).items():
        for caller, headers in callers(shard.token).items():
            r = send(headers)
            CELLS.setdefault(route, {})[caller] = r.status_code
            active = shard.status().json()["active_version"]
            if caller not in ALLOWED:
                assert r.status_code == 401 and r.json()["error"]["reason"] == "UNAUTHENTICATED", (route, caller, r.text)
                assert active is None, f"{caller} changed the shard"
                continue
            if route == "POST apply":
                assert r.status_code == 200 and active == digest, r.text
                assert shard.revert().status_code == 200
            elif route == "POST apply (store form)":  # nothing listens at the store: authenticated, then refused
                assert r.status_code == 502 and r.json()["error"]["reason"] == "STORE_UNREACHABLE", r.text
            else:
                assert r.status_code == 200 and active is None, r.text


def _flip(data: bytes, bits: list[int]) -> bytes:
    out = bytearray(data)
    for b in bits:
        out[(b // 8) % len(out)] ^= 1 << (b % 8)
    return bytes(out)


@pytest.fixture(scope="module")
def at_base(shard):
    assert shard.revert().status_code == 200
    return shard


@fuzz(30)
@given(data=st.data())
def test_hostile_bodies(at_base, tally, patch_bytes, data):
    shard = at_base
    original = patchfile.sha256_bytes(patch_bytes)
    body = data.draw(st.one_of(
        st.builds(lambda n: patch_bytes[:n], st.integers(0, len(patch_bytes) - 1)),
        st.builds(_flip, st.just(patch_bytes),
                  st.lists(st.integers(0, len(patch_bytes) * 8 - 1), min_size=1, max_size=3, unique=True)),
        st.binary(max_size=256),
    ), label="body")
    claim = data.draw(st.sampled_from(["original digest", "no digest"]), label="digest header")
    headers = {"X-Factpatch-Digest": original} if claim == "original digest" else {}
    r = shard.apply(body, headers=headers)
    active = shard.status().json()["active_version"]
    try:
        if r.status_code == 200:  # a changed but well-formed patch, sent without a digest: it is itself
            assert claim == "no digest" and active == patchfile.sha256_bytes(body) != original, (claim, active)
            tally.record(TARGET, "200 (well-formed, applied as its own version)")
            return
        reason = r.json()["error"]["reason"]
        assert 400 <= r.status_code < 500 and reason in REASONS, (r.status_code, r.text)
        if claim == "original digest":
            assert reason == "DIGEST_MISMATCH"
        assert active is None
        tally.record(TARGET, f"{r.status_code} {reason}")
    finally:
        if active is not None:
            assert shard.revert().status_code == 200
