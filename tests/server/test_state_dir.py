"""The control plane's state directory: one control plane at a time, crash leftovers cleaned at start,
a damaged blob repaired by the next import of its bytes, digests matched whole."""

from __future__ import annotations

import subprocess
import sys

import pytest

from factpatch.server.app import ControlPlaneServer, ServeConfig
from factpatch.server.state.dir_lock import StateDirInUse
from factpatch.server.state.store import PatchStore, StoreCorrupt, valid_digest
from factpatch.v1 import patch_pb2
from tests.factories import random_patch

from .helpers import AGENT_TOKEN, OPERATOR_TOKEN, Client, rid, write_tokens

W = "model.layers.0.mlp.down_proj.weight"
FP = "sha256:" + "0" * 64


def _server(tmp_path) -> ControlPlaneServer:
    return ControlPlaneServer(ServeConfig(
        state_dir=tmp_path / "state", listen="127.0.0.1:0", tokens_file=write_tokens(tmp_path / "tokens.yaml"),
        agent_token=AGENT_TOKEN, reconcile_interval=0.2,
    ))


def test_a_second_control_plane_on_one_state_directory_is_refused(tmp_path):
    first = _server(tmp_path)
    first.start()
    try:
        with pytest.raises(StateDirInUse, match=r"in use by another control plane \(pid \d+\)"):
            _server(tmp_path)
        # the same through the command line: exit 2, the reason on stderr, the first one unharmed
        r = subprocess.run([sys.executable, "-c", "from factpatch.cli import main; main()", "serve",
                            "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0",
                            "--client-tokens-file", str(tmp_path / "tokens.yaml"), "--gateway-listen", "off"],
                           env={"FACTPATCH_AGENT_TOKEN": AGENT_TOKEN, "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "in use by another control plane" in r.stderr, r.stderr
        c = Client(f"127.0.0.1:{first.port}", OPERATOR_TOKEN)
        assert list(c(c.patches.ListPatches, patch_pb2.ListPatchesRequest()).patches) == []
        c.close()
    finally:
        first.stop(0)
    second = _server(tmp_path)  # stopped: the directory is free again
    second.stop(0)


def test_a_refused_start_leaves_the_directory_free(tmp_path):
    bad = ServeConfig(state_dir=tmp_path / "state", listen="127.0.0.1:0", tokens_file=write_tokens(tmp_path / "t.yaml"),
                      agent_token=AGENT_TOKEN, monitors_file=tmp_path / "missing-monitors.yaml")
    with pytest.raises(Exception):
        ControlPlaneServer(bad)
    _server(tmp_path).stop(0)


def test_crash_leftovers_are_removed_at_start_and_stored_patches_kept(tmp_path):
    srv = _server(tmp_path)
    srv.start()
    data = random_patch({W: (8, 4)}, FP)
    c = Client(f"127.0.0.1:{srv.port}", OPERATOR_TOKEN)
    kept = c.push(data, request_id=rid()).digest
    c.close()
    srv.stop(0)
    store = PatchStore(tmp_path / "state" / "patches")
    # what kill -9 can leave: a write that never got renamed, a blob whose record was never committed
    partial = store.blobs / "ab" / ".incoming-x1y2"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"half a patch")
    orphan = store.put(random_patch({W: (8, 4)}, FP, seed=7))
    assert orphan in store.digests()

    srv = _server(tmp_path)
    srv.stop(0)
    assert not partial.exists()
    assert store.digests() == [kept]
    assert store.get(kept) == data


def test_a_damaged_blob_is_rewritten_when_its_bytes_come_again(tmp_path):
    store = PatchStore(tmp_path / "patches")
    data = random_patch({W: (8, 4)}, FP)
    digest = store.put(data)
    store.path(digest).write_bytes(data[: len(data) // 2])  # truncated on disk
    with pytest.raises(StoreCorrupt):
        store.get(digest)
    assert store.put(data) == digest
    assert store.get(digest) == data


def test_a_digest_is_matched_whole():
    good = "sha256:" + "a" * 64
    assert valid_digest(good)
    for bad in (good + "\n", good + " ", " " + good, good.upper(), "sha256:" + "a" * 63, good + "0"):
        assert not valid_digest(bad), repr(bad)


def test_a_state_database_from_before_the_added_columns_opens_and_gains_them(tmp_path):
    """Columns added since the first release are added to an older database on open; its rows keep
    their values and read the columns' defaults."""
    import sqlite3

    from factpatch.server.state.db import Database

    path = tmp_path / "state.db"
    Database(path).close()
    added = {"audit": ["source"], "patches": ["signature", "signed_by"], "shards": ["agent_address"], "requests": ["metadata"]}
    with sqlite3.connect(path) as c:
        for table, columns in added.items():
            for column in columns:
                c.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        c.execute("INSERT INTO requests (request_id, method, request_hash, code, reason, message, created) "
                  "VALUES ('r1', 'M', 'h', 'ALREADY_EXISTS', 'SHARD_EXISTS', 'taken', 0)")
    db = Database(path)
    try:
        for table, columns in added.items():
            have = {r["name"] for r in db.q(f"PRAGMA table_info({table})")}
            assert set(columns) <= have, (table, have)
        row = db.request("r1")
        assert (row["reason"], row["metadata"]) == ("SHARD_EXISTS", "{}")
    finally:
        db.close()
