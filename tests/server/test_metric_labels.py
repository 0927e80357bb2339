"""Label values the control plane exports: short versions mapped by factpatch_version_info, a capped
monitor label whose overflow is summed (not dropped) and counted, error series that exist at zero."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from factpatch.core.version_label import version_label
from factpatch.server.metrics import ERROR_REASONS, Metrics
from factpatch.server.monitors.config import MonitorError, load

DIGEST = "sha256:" + "0123456789abcdef" * 4


def samples(m: Metrics) -> dict[tuple[str, tuple], float]:
    text = generate_latest(m.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_version_label_is_a_digest_prefix_and_info_maps_it_back():
    assert version_label(None) == version_label("") == "base"
    assert version_label(DIGEST) == "0123456789ab"
    m = Metrics()
    m.sources(versions=lambda: [DIGEST])
    got = samples(m)
    assert got[("factpatch_version_info", (("digest", DIGEST), ("version", "0123456789ab")))] == 1


def test_monitor_label_is_capped_and_the_rest_summed_by_kind():
    m = Metrics(monitor_label_limit=2)
    counts = m.monitor_counts
    names = ["competitor", "stale:t1:aaaa", "stale:t2:bbbb", "stale:t3:cccc", "old-price"]
    counts.activate((n, "") for n in names)  # all unscoped: every response is evaluated by each
    for _ in range(3):
        counts.record([""], "base", "s0")
    counts.match(["stale:t2:bbbb", "stale:t3:cccc", "old-price"], "base", "s0")
    got = samples(m)

    def ev(monitor):
        return got.get(("factpatch_monitor_evaluated_total", (("monitor", monitor), ("shard", "s0"), ("version", "base"))))

    def hit(monitor):
        return got.get(("factpatch_monitor_matches_total", (("monitor", monitor), ("shard", "s0"), ("version", "base"))))

    assert ev("competitor") == 3 and ev("stale:t1:aaaa") == 3  # the first two keep their names
    assert ev("stale:t2:bbbb") is None and ev("old-price") is None
    assert ev("stale:*") == 6 and hit("stale:*") == 2  # two stale monitors past the cap, summed
    assert ev("*") == 3 and hit("*") == 1
    assert got[("factpatch_monitor_labels", (("state", "own"),))] == 2
    assert got[("factpatch_monitor_labels", (("state", "folded"),))] == 3
    assert got[("factpatch_monitor_labels_limit", ())] == 2
    # the cap bounds the series: own labels + the two shared ones, per (version, shard)
    monitors = {dict(k[1])["monitor"] for k in got if k[0] == "factpatch_monitor_evaluated_total"}
    assert monitors == {"competitor", "stale:t1:aaaa", "stale:*", "*"}


def test_error_series_start_at_zero_with_the_first_request():
    m = Metrics()
    m.request_series("base", "s0")
    got = samples(m)
    for reason in ERROR_REASONS:
        assert got[("factpatch_gateway_errors_total", (("reason", reason), ("shard", "s0"), ("version", "base")))] == 0
    assert got[("factpatch_gateway_retries_total", (("shard", "s0"), ("version", "base")))] == 0


@pytest.mark.parametrize("value", [-1, "many", 1.5, True])
def test_monitors_file_refuses_a_bad_label_cap(tmp_path, value):
    f = tmp_path / "monitors.yaml"
    f.write_text(f"max_monitor_labels: {value!r}\n" if not isinstance(value, str) else f"max_monitor_labels: {value}\n")
    with pytest.raises(MonitorError, match="max_monitor_labels"):
        load(f)
    f.write_text("max_monitor_labels: 50\n")
    assert load(f).max_monitor_labels == 50
