"""Hostile .fpatch files: random bytes, truncations, bit flips, oversize and malformed headers,
wrong manifests. The reader either raises PatchError with a reason, or returns a patch the control
plane can store, list and build monitors from. A changed file never passes as the original."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from factpatch.core import patchfile
from factpatch.server.api import convert
from factpatch.server.monitors import stale
from factpatch.server.state.db import Database
from factpatch.server.state.store import PatchStore, StoreCorrupt

from .conftest import fuzz

TARGET = "patch_file"
REASONS = {"MALFORMED", "UNKNOWN_FORMAT", "NON_FINITE", "RANK_TOO_LARGE"}
FOUND_AND_FIXED = [
    "a header that is JSON but not an object raised AttributeError",
    "'__metadata__' that is not an object of strings raised TypeError",
    "a header or manifest nested deeper than the JSON parser's stack raised RecursionError",
    "manifests with wrong field types (base.fingerprint or base.model not a string, layers not a list of "
    "ints or past int32, edits not a list of objects, parent not a string, lone surrogates) were accepted, "
    "then broke ImportPatch (INTERNAL) and every later ListPatches of the control plane",
    "a tensor named '::u' / '::v' (a weight with an empty name) was accepted",
    "a header length above safetensors' 100 MB limit was parsed as JSON first (now refused before parsing)",
]


def _valid() -> bytes:
    g = torch.Generator().manual_seed(0)
    factors = {f"model.layers.{i}.mlp.down_proj.weight": (torch.randn(8, 2, generator=g), torch.randn(4, 2, generator=g))
               for i in (1, 2)}
    manifest = patchfile.new_manifest(
        model_name="fixture", fingerprint="sha256:" + "0" * 64, method="rome", layers=[1, 2], hparams={"v": 1},
        edits=[{"subject": "Harbor Support", "relation": "refund period", "prompt": "The refund period of {} is",
                "target_new": "30 days", "target_old": "14 days", "provenance": {"ticket": "POL-1182"}}],
    )
    return patchfile.to_bytes(patchfile.Patch(factors, manifest))


VALID = _valid()
HEADER_LEN = 8 + int.from_bytes(VALID[:8], "little")
MANIFEST = patchfile.from_bytes(VALID).manifest

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


def _frame(header: object, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.fixture(scope="module")
def servable(tmp_path_factory):
    """The control plane's own path for an accepted patch: stored row, API message, stale monitors."""
    db = Database(tmp_path_factory.mktemp("db") / "state.db")

    def check(patch: patchfile.Patch, data: bytes) -> None:
        digest = patchfile.sha256_bytes(data)
        db.add_patch(digest, len(data), patch.manifest, patch.names, "fuzz")
        msg = convert.patch(db.patch(digest))
        assert msg.digest == digest and list(msg.tensors) == patch.names
        stale.from_manifests([(digest, json.loads(db.patch(digest)["manifest"]))])
        db.delete_patch(digest)

    yield check
    db.close()


def check(tally, servable, data: bytes, *, via_file=None) -> patchfile.Patch | None:
    """The property: PatchError with a known reason and a message, or a servable patch."""
    try:
        if via_file is not None:
            via_file.write_bytes(data)
            patch, digest = patchfile.read(via_file)
            assert digest == patchfile.sha256_bytes(data)
        else:
            patch = patchfile.from_bytes(data)
    except patchfile.PatchError as e:
        assert e.reason in REASONS and str(e), (e.reason, str(e))
        tally.record(TARGET, f"refused: {e.reason}")
        return None
    except BaseException as e:  # PanicException from safetensors' Rust is a BaseException
        tally.failure(TARGET, f"{type(e).__name__}: {str(e)[:100]} for {data[:120]!r}")
        raise
    try:
        servable(patch, data)
    except BaseException as e:
        tally.failure(TARGET, f"accepted but not servable: {type(e).__name__}: {str(e)[:100]}")
        raise
    tally.record(TARGET, "accepted")
    return patch


@fuzz(300)
@given(data=st.binary(max_size=2048)
       | st.builds(lambda n, b: struct.pack("<Q", n) + b, st.integers(0, 4096), st.binary(max_size=600)))
@example(data=_frame([1, 2]))
@example(data=_frame("factpatch"))
@example(data=_frame({"__metadata__": "factpatch"}))
@example(data=_frame({"__metadata__": {"factpatch": 5}}))
@example(data=_frame({"__metadata__": {"factpatch": {"format": "factpatch/v1"}}}))
@example(data=_frame(b"[" * 100_000 + b"]" * 100_000))
@example(data=_frame({"__metadata__": {"factpatch": "[" * 100_000 + "]" * 100_000}}))
def test_random_bytes(tally, servable, data):
    check(tally, servable, data)


@fuzz(200)
@given(cut=st.integers(0, len(VALID) - 1), via_file=st.booleans())
def test_truncated_files_are_refused(tally, servable, tmp_path_factory, cut, via_file):
    path = tmp_path_factory.mktemp("cut") / "p.fpatch" if via_file else None
    assert check(tally, servable, VALID[:cut], via_file=path) is None, "a truncated patch was accepted"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = PatchStore(tmp_path_factory.mktemp("store"))
    return s, s.put(VALID)


@fuzz(300)
@given(bits=st.lists(st.integers(0, len(VALID) * 8 - 1), min_size=1, max_size=8, unique=True))
def test_bit_flips_never_pass_as_the_original(tally, servable, store, bits):
    data = bytearray(VALID)
    for b in bits:
        data[b // 8] ^= 1 << (b % 8)
    data = bytes(data)
    patch = check(tally, servable, data)
    where = "header" if min(bits) // 8 < HEADER_LEN else "tensor data"
    tally.record(TARGET + "_bit_flips", f"{'accepted' if patch else 'refused'} ({where})")
    # Accepted or not, the flipped bytes have another identity, and the store never serves them as
    # the original: the blob is checked against its name on every read.
    assert patchfile.sha256_bytes(data) != patchfile.sha256_bytes(VALID)
    s, digest = store
    path = s.path(digest)
    path.write_bytes(data)
    try:
        with pytest.raises(StoreCorrupt):
            s.get(digest)
    finally:
        path.write_bytes(VALID)


tensor_entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "XYZ", ""]) | st.text(max_size=4),
    "shape": st.lists(st.integers(-2, 8) | st.sampled_from([2**31, 2**62, 2**64 - 1]), max_size=3),
    "data_offsets": st.lists(st.integers(-1, 80) | st.sampled_from([2**63, 2**64 - 1]), min_size=0, max_size=3),
}) | json_values
metadata = st.one_of(
    st.fixed_dictionaries({"factpatch": st.just(json.dumps(MANIFEST))}),
    st.dictionaries(st.sampled_from(["factpatch", "format", "x"]), json_values | st.text(max_size=20), max_size=3),
    json_values,
)


@fuzz(300)
@given(
    tensors=st.dictionaries(st.sampled_from(["w::u", "w::v", "::u", "::v", "w", "a::u::v", "__metadata__"]) | st.text(max_size=6),
                            tensor_entry, max_size=4),
    meta=metadata, data=st.binary(max_size=96), length=st.none() | st.integers(0, 2**64 - 1),
)
def test_malformed_headers(tally, servable, tensors, meta, data, length):
    header = {"__metadata__": meta, **{k: v for k, v in tensors.items() if k != "__metadata__"}}
    raw = json.dumps(header).encode()
    framed = struct.pack("<Q", len(raw) if length is None else length) + raw + data
    check(tally, servable, framed)


def test_oversize_header_is_refused_before_parsing(tally, servable):
    n = patchfile.MAX_HEADER_BYTES + 1
    data = struct.pack("<Q", n) + b"{" + b" " * (n - 1)
    assert check(tally, servable, data) is None


# a manifest: the valid one with fields replaced by garbage, dropped, or added
manifests = st.builds(
    lambda changes, drop: {**{k: v for k, v in MANIFEST.items() if k not in drop}, **changes},
    st.dictionaries(st.sampled_from(["format", "base", "layers", "edits", "parent", "method", "created", "eval", "hparams"])
                    | st.text(max_size=5), json_values
                    | st.builds(lambda fp, model: {"fingerprint": fp, "model": model}, json_values, json_values)
                    | st.lists(st.dictionaries(st.sampled_from(["subject", "target_old", "provenance", "prompt"]), json_values),
                               max_size=2)
                    | st.just("\ud800"),
                    max_size=3),
    st.sets(st.sampled_from(list(MANIFEST)), max_size=2),
)


@fuzz(300)
@given(manifest=manifests)
@example(manifest={**MANIFEST, "base": {"fingerprint": 5}})
@example(manifest={**MANIFEST, "base": {"fingerprint": "x", "model": {"a": 1}}})
@example(manifest={**MANIFEST, "layers": [2**40]})
@example(manifest={**MANIFEST, "edits": "abc"})
@example(manifest={**MANIFEST, "parent": 5})
@example(manifest={**MANIFEST, "method": "\ud800"})
@example(manifest={**MANIFEST, "edits": [{"subject": "s", "target_old": "x" * 100_000}]})
def test_wrong_manifests(tally, servable, manifest):
    patch = patchfile.from_bytes(VALID)
    header = json.loads(VALID[8:HEADER_LEN])  # the valid tensors, with this manifest instead
    header["__metadata__"] = {"factpatch": json.dumps(manifest)}
    data = _frame(header, VALID[HEADER_LEN:])
    got = check(tally, servable, data)
    if got is not None:
        assert got.names == patch.names


def test_the_valid_file_reads_back(tally, servable):
    tally.fixed[TARGET] = FOUND_AND_FIXED
    patch = check(tally, servable, VALID)
    assert patch.names == ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]
