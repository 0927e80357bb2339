"""Refusal reasons: one table of HTTP statuses, and no module spelling a reason code itself."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from factpatch.core.reasons import HTTP_STATUS, PERMANENT, Refusal, http_status

SRC = Path(__file__).resolve().parents[2] / "src" / "factpatch"


def test_every_reason_has_an_http_status_and_travels_as_its_plain_string():
    assert set(HTTP_STATUS) == set(Refusal)
    for reason in Refusal:
        assert 400 <= http_status(reason) < 500
        assert http_status(str(reason)) == HTTP_STATUS[reason]
        assert json.loads(json.dumps({"reason": reason})) == {"reason": reason.value}


def test_a_reason_outside_the_table_gets_the_callers_default():
    assert http_status("STAGE_FAILED") == 500
    assert http_status(None) == 500
    assert http_status("NOT_A_REASON", default=400) == 400


def test_permanent_refusals_are_the_patch_and_not_the_moment():
    assert Refusal.SWAP_IN_PROGRESS not in PERMANENT  # another swap holds the shard: try again
    assert {Refusal.BASE_MISMATCH, Refusal.SHAPE_MISMATCH, Refusal.DIGEST_MISMATCH} <= PERMANENT


def test_no_module_spells_a_reason_code_as_a_string():
    codes = {r.value for r in Refusal}
    spelled = []
    for path in SRC.rglob("*.py"):
        if path.name == "reasons.py" and path.parent.name == "core" or "v1" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in codes:
                spelled.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value}")
    assert spelled == [], "use factpatch.core.reasons.Refusal: " + ", ".join(spelled)
