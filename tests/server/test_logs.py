"""`factpatch serve --log-format json`: one JSON object per line, with the fields of state changes."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from factpatch.server.cli import logs
from factpatch.server.control.agent_token import AgentToken
from factpatch.server.control.reconciler import Reconciler
from factpatch.server.state.audit import AuditLog
from factpatch.server.state.db import Database, Rollout, RolloutShard
from factpatch.server.state.rollout_state import RolloutState
from factpatch.server.state.store import PatchStore

from .helpers import AGENT_TOKEN

P = "sha256:" + "a" * 64


@pytest.fixture
def root_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], level = saved
    root.setLevel(level)


def test_json_lines_carry_level_and_the_rollout_transition(tmp_path, capsys, root_logging):
    logs.configure("json")
    db = Database(tmp_path / "state.db")
    db.add_patch(P, 1, {}, [], "test")
    db.add_shard("s0", "http://127.0.0.1:9")
    now = time.time()
    r = Rollout("ro-1", P, RolloutState.PROGRESSING, [{"shards": ["s0"], "traffic_percent": 100}], 0, "e", "", "", [],
                300, "alice", now, now, now, [RolloutShard("s0", None, P)])
    with db.tx() as c:
        db.insert_rollout(c, r)
        db.upsert_rollout_shard(c, r.id, r.shards[0])
        db.set_desired(c, "s0", P)
    db.observe("s0", {"active_version": P}, "SERVING")
    rec = Reconciler(db, PatchStore(tmp_path / "blobs"), AuditLog(db), AgentToken(AGENT_TOKEN), threading.RLock())
    rec.advance_rollouts()
    rec.stop()
    db.close()
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    done = [x for x in lines if x.get("rollout") == "ro-1"]
    assert done and done[-1]["state"] == "SUCCEEDED" and done[-1]["from_state"] == "PROGRESSING"
    assert done[-1]["level"] == "INFO" and done[-1]["logger"] == "factpatch.reconciler" and "time" in done[-1]


def test_text_format_has_the_level_and_an_unknown_format_is_refused(capsys, root_logging):
    logs.configure("text")
    logging.getLogger("factpatch.test").warning("careful")
    assert " WARNING factpatch.test careful" in capsys.readouterr().err
    with pytest.raises(ValueError, match="xml"):
        logs.configure("xml")
