"""Output monitors: the matching engine, the monitors file, and the MonitorService over real gRPC."""

from __future__ import annotations

import random
import re

import grpc
import pytest

from factpatch.server.api.errors import reason_of
from factpatch.server.monitors import config as mconfig
from factpatch.server.monitors.config import LITERAL, REGEX, STALE, Monitor, MonitorError
from factpatch.server.monitors.engine import CompiledMonitors
from factpatch.server.monitors.stale import edit_id, from_manifests
from factpatch.v1 import monitor_pb2, monitor_pb2_grpc
from tests.server.helpers import OPERATOR_TOKEN, VIEWER_TOKEN, rid


def scan(compiled: CompiledMonitors, chunks: list[str]) -> set[str]:
    s = compiled.scanner()
    for c in chunks:
        s.feed(c)
    return {compiled.monitors[i].name for i in s.close()}


def test_stale_value_split_across_chunks_counts_once():
    c = CompiledMonitors([Monitor("stale", STALE, "14 days"), Monitor("other", LITERAL, "refund")])
    s = c.scanner()
    for chunk in [" The refund period is 1", "4 da", "ys", ", yes 14 days."]:
        s.feed(chunk)
    assert s.close() == {0, 1}  # a set: one response, one count, however often the value appears
    # whole words only for stale values; end of text still closes a word
    assert scan(c, ["it is 114 days"]) == set()
    assert scan(c, ["it is 14 days"]) == {"stale"}
    assert scan(c, ["14 DAYS"]) == {"stale"}


def test_thousand_monitors_load_and_match_like_python_re():
    rng = random.Random(7)
    words = [f"w{i:04d}x" for i in range(1000)]
    monitors = []
    for i, w in enumerate(words):
        if i % 3 == 0:
            monitors.append(Monitor(f"re-{i}", REGEX, rf"\b{w}[0-9]{{2}}\b", ignore_case=False))
        else:
            monitors.append(Monitor(f"lit-{i}", LITERAL, w, ignore_case=i % 2 == 0))
    c = CompiledMonitors(monitors)
    assert len(c) == 1000
    for trial in range(20):
        picked = rng.sample(range(1000), 15)
        parts = []
        for i in picked:
            w = words[i]
            parts.append(f"{w}{rng.randint(10, 99)}" if i % 3 == 0 else (w.upper() if rng.random() < 0.5 else w))
        text = "filler " + " and ".join(parts) + " end"
        expected = {m.name for m in monitors
                    if re.search(m.expression(), text, re.IGNORECASE if m.ignore_case else 0)}
        # split the text at random places: the chunking must not change the result
        cuts = sorted(rng.sample(range(1, len(text)), 8))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert scan(c, chunks) == expected
        assert expected  # the trial did exercise matches


def test_scope_to_prompts_that_mention_the_subject():
    mons = from_manifests([("sha256:a", {"edits": [
        {"subject": "Harbor Support", "relation": "refund period", "target_old": "14 days", "target_new": "30 days",
         "provenance": {"ticket": "POL-1182"}},
        {"subject": "Harbor Support", "relation": "shipping cutoff", "target_old": None, "target_new": "6 pm"}]}),
        ("sha256:b", {"edits": [
            {"subject": "harbor support ", "relation": "Refund period", "target_old": "14 Days", "target_new": "45 days",
             "provenance": {"ticket": "POL-1190"}}]})])
    # one monitor for the one edit, named by ticket and edit id: no fact text in a label value
    assert [m.name for m in mons] == [f"stale:pol-1182:{edit_id('Harbor Support', 'refund period', '14 days')}"]
    assert not any(word in mons[0].name for word in ("harbor", "refund", "14"))
    assert mons[0].pattern == "14 days"  # the old value stays in the pattern, for the API
    assert mons[0].patches == ("sha256:a", "sha256:b") and mons[0].scope_subject == "Harbor Support"
    c = CompiledMonitors([*mons, Monitor("any", LITERAL, "days")])
    assert c.mentioned("what is harbor SUPPORT's refund period?") == {"harbor support"}
    assert c.evaluated(c.mentioned("unrelated prompt")) == {1}
    assert c.evaluated(c.mentioned("Harbor Support refunds")) == {0, 1}


@pytest.mark.parametrize("pattern,pos", [("(refund", 0), ("a{3,1}", 2), ("ab[c", 2), ("days)", 4)])
def test_invalid_regex_names_the_position(pattern, pos):
    with pytest.raises(MonitorError) as ei:
        mconfig.validate(Monitor("bad", REGEX, pattern))
    assert ei.value.reason == "INVALID_REGEX" and ei.value.position == pos and f"position {pos}" in str(ei.value)


def test_regex_hyperscan_cannot_stream_is_refused():
    for pattern in [r"(a)\1", r"a(?=b)", r"x*"]:
        with pytest.raises(MonitorError) as ei:
            mconfig.validate(Monitor("bad", REGEX, pattern))
        assert ei.value.reason == "INVALID_REGEX"


def test_monitors_file(tmp_path):
    f = tmp_path / "monitors.yaml"
    f.write_text("max_monitors: 2\nstale_values: {scope: none}\nmonitors:\n"
                 "  - {name: comp, kind: literal, pattern: Acme}\n  - {name: price, kind: regex, pattern: '\\$ ?49\\b'}\n")
    cfg = mconfig.load(f)
    assert [m.name for m in cfg.monitors] == ["comp", "price"] and not cfg.stale_scope_subject
    f.write_text("max_monitors: 1\nmonitors:\n  - {name: a, pattern: x}\n  - {name: b, pattern: y}\n")
    with pytest.raises(MonitorError, match="exceed max_monitors=1"):
        mconfig.load(f)
    f.write_text("monitors:\n  - {name: a, kind: regex, pattern: '(x'}\n")
    with pytest.raises(MonitorError, match=r"monitors\[0\]\.pattern: invalid regex at position 0"):
        mconfig.load(f)


# the API, on a real control plane

@pytest.fixture
def monitor_plane(tmp_path):
    from factpatch.server.app import ControlPlaneServer, ServeConfig
    from tests.server.helpers import AGENT_TOKEN, write_tokens

    f = tmp_path / "monitors.yaml"
    f.write_text("max_monitors: 3\nmonitors:\n  - {name: from-file, kind: literal, pattern: Acme}\n")
    srv = ControlPlaneServer(ServeConfig(state_dir=tmp_path / "state", listen="127.0.0.1:0",
                                         tokens_file=write_tokens(tmp_path / "tokens.yaml"), agent_token=AGENT_TOKEN,
                                         monitors_file=f))
    srv.start()
    ch = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    yield srv, monitor_pb2_grpc.MonitorServiceStub(ch)
    ch.close()
    srv.stop(0)


OP = (("authorization", f"Bearer {OPERATOR_TOKEN}"),)


def create(stub, name, pattern, kind=monitor_pb2.MONITOR_KIND_REGEX, md=OP, **kw):
    return stub.CreateMonitor(monitor_pb2.CreateMonitorRequest(
        request_id=rid(), monitor=monitor_pb2.Monitor(name=name, kind=kind, pattern=pattern, **kw)), metadata=md, timeout=10)


def test_monitor_api_create_list_delete_and_refusals(monitor_plane):
    srv, stub = monitor_plane
    m = create(stub, "old-price", r"\$ ?49\b", ignore_case=True, scope_subject="Harbor Support")
    assert m.source == monitor_pb2.MONITOR_SOURCE_API and m.created_by == "release-bot"
    assert {x.name for x in srv.monitors.compiled.monitors} == {"from-file", "old-price"}
    assert srv.monitors.compiled.match("now $49") == {1}

    with pytest.raises(grpc.RpcError) as ei:
        create(stub, "broken", "refund (period")
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(ei.value) == "INVALID_REGEX"
    assert "position 7" in ei.value.details()
    with pytest.raises(grpc.RpcError) as ei:
        create(stub, "old-price", "x")
    assert ei.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as ei:
        create(stub, "bad name!", "x")
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and reason_of(ei.value) == "BAD_MONITOR"

    create(stub, "third", "x", kind=monitor_pb2.MONITOR_KIND_LITERAL)
    with pytest.raises(grpc.RpcError) as ei:  # file (1) + API (2) = the limit of 3
        create(stub, "fourth", "y", kind=monitor_pb2.MONITOR_KIND_LITERAL)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason_of(ei.value) == "TOO_MANY_MONITORS"

    view = (("authorization", f"Bearer {VIEWER_TOKEN}"),)
    listed = stub.ListMonitors(monitor_pb2.ListMonitorsRequest(), metadata=view, timeout=10)
    assert listed.limit == 3 and [x.name for x in listed.monitors] == ["from-file", "old-price", "third"]
    with pytest.raises(grpc.RpcError) as ei:
        create(stub, "viewer-made", "x", md=view)
    assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED

    with pytest.raises(grpc.RpcError) as ei:
        stub.DeleteMonitor(monitor_pb2.DeleteMonitorRequest(request_id=rid(), name="from-file"), metadata=OP, timeout=10)
    assert reason_of(ei.value) == "MONITOR_NOT_DELETABLE"
    stub.DeleteMonitor(monitor_pb2.DeleteMonitorRequest(request_id=rid(), name="third"), metadata=OP, timeout=10)
    with pytest.raises(grpc.RpcError) as ei:
        stub.DeleteMonitor(monitor_pb2.DeleteMonitorRequest(request_id=rid(), name="third"), metadata=OP, timeout=10)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    # API monitors live in the state database: a restarted server has them
    assert [r["name"] for r in srv.cp.db.q("SELECT name FROM monitors")] == ["old-price"]
