"""Hostile ImportPatch uploads on a running control plane: truncated, bit-flipped, oversize, lying
about their size or digest, framed wrongly, cut off by the client. The answer is the one the
documented checks give, in their order; a refused upload stores nothing; a changed file is never
stored under the original's digest."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time

import grpc
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from factpatch.core import patchfile
from factpatch.server.monitors.stale import monitor_name
from factpatch.v1 import monitor_pb2, patch_pb2
from tests.server.helpers import OPERATOR_TOKEN, random_patch, rid

from . import served as sv
from .conftest import fuzz
from .rpc import all_rpcs, call, error_info

TARGET = "grpc_import_patch"
FOUND_AND_FIXED = [
    "an upload shorter or longer than its header's size_bytes was accepted when its bytes were a valid patch "
    "(now INVALID_ARGUMENT / SIZE_MISMATCH)",
    "MISSING_HEADER, DUPLICATE_HEADER, PATCH_TOO_LARGE, DIGEST_MISMATCH and MALFORMED_PATCH named no field",
    "an upload cancelled by its client was audited as INTERNAL (now CANCELLED; when gRPC reports the cancel as "
    "the end of the stream instead, the upload is short of its size_bytes and refused as SIZE_MISMATCH)",
    "a stored patch whose edit's target_old hyperscan cannot compile (a NUL first, ~5000 non-ASCII characters) "
    "failed every monitor compile from then on: CreateMonitor answered INTERNAL and the control plane could "
    "not start again (such a stale monitor is now left out, logged)",
]
IMPORT = {r.key: r for r in all_rpcs()}["PatchService/ImportPatch"]
LIMIT = sv.LIMIT_MB << 20
VALID = random_patch({"model.layers.1.mlp.down_proj.weight": (64, 128)}, "sha256:" + "0" * 64, seed=11)
ORIGINAL = patchfile.sha256_bytes(VALID)


def _flip(data: bytes, bits: list[int]) -> bytes:
    out = bytearray(data)
    for b in bits:
        out[(b // 8) % len(out)] ^= 1 << (b % 8)
    return bytes(out)


bodies = st.one_of(
    st.just(VALID),
    st.builds(lambda n: VALID[:n], st.integers(0, len(VALID) - 1)),
    st.builds(_flip, st.just(VALID), st.lists(st.integers(0, len(VALID) * 8 - 1), min_size=1, max_size=4)),
    st.builds(lambda tail: VALID + tail, st.binary(min_size=1, max_size=64)),
    st.binary(max_size=512),
    st.just(b"\0" * (LIMIT + 1)),
)


def expected(messages: list, body: bytes) -> str:
    """What the service answers (proto/factpatch/v1/patch.proto), following its checks in order."""
    if not messages or messages[0].WhichOneof("part") != "header":
        return "INVALID_ARGUMENT/MISSING_HEADER"
    header = messages[0].header
    if header.size_bytes > LIMIT:
        return "INVALID_ARGUMENT/PATCH_TOO_LARGE"
    if header.expected_digest and (len(header.expected_digest) != 71 or not header.expected_digest.startswith("sha256:")
                                   or any(c not in "0123456789abcdef" for c in header.expected_digest[7:])):
        return "INVALID_ARGUMENT/BAD_DIGEST"
    received = 0
    for m in messages[1:]:
        if m.WhichOneof("part") != "chunk":
            return "INVALID_ARGUMENT/DUPLICATE_HEADER"
        received += len(m.chunk)
        if received > LIMIT:
            return "INVALID_ARGUMENT/PATCH_TOO_LARGE"
    if header.expected_digest and header.expected_digest != patchfile.sha256_bytes(body):
        return "INVALID_ARGUMENT/DIGEST_MISMATCH"
    if header.size_bytes and header.size_bytes != len(body):
        return "INVALID_ARGUMENT/SIZE_MISMATCH"
    try:
        patchfile.from_bytes(body)
    except patchfile.PatchError:
        return "INVALID_ARGUMENT/MALFORMED_PATCH"
    return "OK"


@fuzz(150)
@given(
    body=bodies,
    # weighted towards well-framed uploads, so most examples reach the patch checks
    digest=st.sampled_from(["original", "actual", "none"] * 3 + ["sha256:x", "sha256:" + "A" * 64, "md5:00", "../x"]),
    size=st.sampled_from(["actual", "none"]) | st.sampled_from(["actual", "none"]) | st.integers(-(2**63), 2**63 - 1)
    | st.just(LIMIT + 1),
    chunk=st.integers(1, 1 << 16),
    framing=st.sampled_from(["header first"] * 6 + ["no header", "nothing", "header twice", "header only"]),
)
@example(body=VALID[:-1], digest="none", size="none", chunk=1 << 16, framing="header first")
@example(body=VALID[:-1], digest="none", size="actual", chunk=1 << 16, framing="header first")
@example(body=_flip(VALID, [8 * (len(VALID) - 1)]), digest="original", size="actual", chunk=4096, framing="header first")
@example(body=VALID, digest="none", size=len(VALID) + 1, chunk=1 << 16, framing="header first")
def test_uploads(served, tally, body, digest, size, chunk, framing):
    header = patch_pb2.ImportPatchHeader(
        request_id=rid(),
        expected_digest={"original": ORIGINAL, "actual": patchfile.sha256_bytes(body), "none": ""}.get(digest, digest),
        size_bytes={"actual": len(body), "none": 0}.get(size, size) if not isinstance(size, int) else size,
    )
    chunk = max(chunk, len(body) // 64)  # at most ~64 messages, also for the oversize body
    chunks = [patch_pb2.ImportPatchRequest(chunk=body[i:i + chunk]) for i in range(0, len(body), chunk)]
    first = [patch_pb2.ImportPatchRequest(header=header)]
    messages = {"header first": first + chunks, "no header": chunks, "nothing": [], "header only": first,
                "header twice": first + chunks[:1] + first + chunks[1:]}[framing]
    body_sent = b"".join(m.chunk for m in messages[1:]) if framing != "header twice" else body
    want = expected(messages, body if framing != "header only" else b"")
    before = served.op(served.op.patches.ListPatches, patch_pb2.ListPatchesRequest(page_size=1000))
    try:
        got_patch = call(served.op.channel, IMPORT, messages, OPERATOR_TOKEN, timeout=30)
        got = "OK"
    except grpc.RpcError as e:
        reason, md = error_info(e)
        got = f"{e.code().name}/{reason}"
        assert md.get("field", "").split(".")[0] in ("header", "chunk"), (got, md)
        assert len(e.details().encode()) <= 1024
    tally.record(TARGET, got)
    assert got == want, (framing, digest, size, len(body))
    after = served.op(served.op.patches.ListPatches, patch_pb2.ListPatchesRequest(page_size=1000))
    if got == "OK":
        assert got_patch.digest == patchfile.sha256_bytes(body_sent)
        blob = served.op.patches.GetPatchBlob(patch_pb2.GetPatchBlobRequest(digest=got_patch.digest), metadata=served.op.md)
        assert b"".join(c.data for c in blob) == body_sent  # stored as received, under its own digest
        assert got_patch.digest == ORIGINAL or body_sent != VALID
    else:
        assert after == before, "a refused upload changed the store"


def test_a_message_past_the_grpc_limit(served, tally):
    """One 9 MiB chunk is past the server's 8 MiB message limit: gRPC itself refuses it."""
    header = patch_pb2.ImportPatchHeader(request_id=rid(), size_bytes=0)
    big = [patch_pb2.ImportPatchRequest(header=header), patch_pb2.ImportPatchRequest(chunk=b"\0" * (9 << 20))]
    with pytest.raises(grpc.RpcError) as e:
        call(served.op.channel, IMPORT, big, OPERATOR_TOKEN, timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in e.value.details()
    tally.record(TARGET, "RESOURCE_EXHAUSTED (gRPC message limit)")
    sv.assert_healthy(served)


def test_an_upload_cut_off_by_its_client(served, tally):
    """Nothing is stored, the audit row says how the call ended, and the server goes on.

    gRPC's server sees a cancel either as such (CANCELLED) or as the end of the stream, whichever it
    notices first; then the upload is short of its size_bytes (SIZE_MISMATCH). Never INTERNAL."""
    release = threading.Event()
    request_id = "cut-off-" + rid()

    def parts():
        yield patch_pb2.ImportPatchRequest(header=patch_pb2.ImportPatchHeader(request_id=request_id, size_bytes=len(VALID)))
        yield patch_pb2.ImportPatchRequest(chunk=VALID[:100])
        release.wait(10)

    before = served.op(served.op.patches.ListPatches, patch_pb2.ListPatchesRequest(page_size=1000))
    future = served.op.patches.ImportPatch.future(parts(), metadata=served.op.md, timeout=30)
    db = sqlite3.connect(f"file:{served.root / 'state' / 'state.db'}?mode=ro", uri=True)
    try:
        time.sleep(0.5)
        future.cancel()
        deadline, result = time.monotonic() + 10, None
        while result in (None, "PENDING") and time.monotonic() < deadline:
            row = db.execute("SELECT result FROM audit WHERE request_id=?", (request_id,)).fetchone()
            result = row[0] if row else None
            time.sleep(0.1)
    finally:
        release.set()
        db.close()
    assert result in ("CANCELLED", "INVALID_ARGUMENT/SIZE_MISMATCH"), result
    tally.record(TARGET, f"cancelled by the client: {result}")
    assert served.op(served.op.patches.ListPatches, patch_pb2.ListPatchesRequest(page_size=1000)) == before
    sv.assert_healthy(served)


def test_uploads_left_the_store_contained(served, tally):
    tally.fixed[TARGET] = FOUND_AND_FIXED
    assert hashlib.sha256(VALID).hexdigest() == ORIGINAL.split(":")[1]
    sv.assert_healthy(served)
    sv.assert_contained(served)


def test_a_stored_patch_cannot_break_the_monitors(tmp_path, tally):
    """Edits become stale-value monitors; one whose target_old hyperscan cannot compile (a NUL first,
    thousands of non-ASCII characters) is left out, and every other monitor, and the next start, work."""
    edits = [{"subject": "Harbor Support", "relation": "refund period", "prompt": "The refund period of {} is",
              "target_new": "30 days", "target_old": old} for old in ("\x00 days", "é" * 5000, "14 days")]
    s = sv.start(tmp_path)
    try:
        for i, e in enumerate(edits):
            data = random_patch({"model.layers.1.mlp.down_proj.weight": (8, 4)}, "sha256:" + "0" * 64, seed=i)
            patch = patchfile.from_bytes(data)
            patch.manifest["edits"] = [e]
            s.op.push(patchfile.to_bytes(patch))
        m = monitor_pb2.Monitor(name="competitor", kind=monitor_pb2.MONITOR_KIND_LITERAL, pattern="Acme Corp")
        s.op(s.monitors.CreateMonitor, monitor_pb2.CreateMonitorRequest(request_id=rid(), monitor=m))
        sv.assert_healthy(s)
    finally:
        sv.stop(s)
    s = sv.start(tmp_path)  # the stored patches are read again at start
    try:
        listed = {x.name for x in s.op(s.monitors.ListMonitors, monitor_pb2.ListMonitorsRequest()).monitors}
        assert "competitor" in listed and monitor_name("Harbor Support", "refund period", "14 days") in listed, listed
        assert "monitors left out" in s.log
        sv.assert_healthy(s)
        tally.record(TARGET, "stored, its stale monitor left out")
    finally:
        sv.stop(s)
