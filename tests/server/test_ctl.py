"""`factpatch ctl` against a real in-process control plane: output, --json and exit codes."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from factpatch.server.cli.ctl import app

from .helpers import OPERATOR_TOKEN, VIEWER_TOKEN, random_patch

W = "model.layers.1.mlp.down_proj.weight"


def ctl(control_plane, *args, token=OPERATOR_TOKEN):
    base = ["--address", f"127.0.0.1:{control_plane.port}", "--token", token, "--timeout", "10"]
    return CliRunner().invoke(app, [*base, *args])


def test_push_list_show_and_exit_codes(control_plane, tmp_path):
    f = tmp_path / "p.fpatch"
    f.write_bytes(random_patch({W: (64, 128)}, "sha256:" + "0" * 64))
    r = ctl(control_plane, "--json", "patch", "push", str(f))
    assert r.exit_code == 0, r.output
    digest = json.loads(r.stdout)["digest"]
    r = ctl(control_plane, "--json", "patch", "list", token=VIEWER_TOKEN)
    assert r.exit_code == 0 and [p["digest"] for p in json.loads(r.stdout)["patches"]] == [digest]
    r = ctl(control_plane, "patch", "show", digest)
    assert r.exit_code == 0 and "30 days" in r.stdout
    assert ctl(control_plane, "patch", "show", "sha256:" + "b" * 64).exit_code == 3
    assert ctl(control_plane, "patch", "delete", digest, token=VIEWER_TOKEN).exit_code == 5
    assert ctl(control_plane, "patch", "list", token="nope").exit_code == 5
    assert ctl(control_plane, "rollout", "start", digest).exit_code == 4  # no shards registered
    r = ctl(control_plane, "--json", "rollout", "status", "ro-missing")
    assert r.exit_code == 3 and json.loads(r.stderr)["error"]["reason"] == "ROLLOUT_NOT_FOUND"
    assert ctl(control_plane, "shards", "add", "s1", "not-a-url").exit_code == 2
    assert ctl(control_plane, "shards", "add", "s1", "http://127.0.0.1:9").exit_code == 0
    r = ctl(control_plane, "shards")
    assert r.exit_code == 0 and "s1" in r.stdout
    assert ctl(control_plane, "patch", "delete", digest).exit_code == 0


def test_patch_list_reads_every_page(control_plane, op):
    """Pages stop at about 3 MiB of manifests (test_api.py); `patch list` pages on to the last one."""
    from tests.factories import DEMO_EDIT

    digests = set()
    for seed in range(6):
        edits = [{**DEMO_EDIT, "subject": f"Harbor Support {seed}-{i}", "target_new": f"{i} days"} for i in range(1800)]
        digests.add(op.push(random_patch({W: (64, 128)}, "sha256:" + "0" * 64, seed=seed, edits=edits)).digest)
    r = ctl(control_plane, "--json", "patch", "list", token=VIEWER_TOKEN)
    assert r.exit_code == 0, r.output
    assert sorted(p["digest"] for p in json.loads(r.stdout)["patches"]) == sorted(digests)


def test_unreachable_control_plane_exit_code():
    r = CliRunner().invoke(app, ["--address", "127.0.0.1:9", "--timeout", "1", "patch", "list"])
    assert r.exit_code == 6


def test_a_rerun_with_the_same_request_id_changes_nothing(control_plane, tmp_path):
    """A CI job that runs again (same --request-id) gets the first answer instead of a second change."""
    f = tmp_path / "p.fpatch"
    f.write_bytes(random_patch({W: (64, 128)}, "sha256:" + "1" * 64))
    digest = json.loads(ctl(control_plane, "--json", "patch", "push", str(f)).stdout)["digest"]
    delete = ["patch", "delete", digest]
    first = ctl(control_plane, "--json", "--request-id", "ci-job-41", *delete)
    assert first.exit_code == 0, first.output
    again = ctl(control_plane, "--json", "--request-id", "ci-job-41", *delete)
    assert again.exit_code == 0 and json.loads(again.stdout) == json.loads(first.stdout)
    assert ctl(control_plane, *delete).exit_code == 3  # a new request id is a new change: the patch is gone
    # the same id for a different change is refused, naming the id, and changes nothing
    assert ctl(control_plane, "shards", "add", "s-rerun", "http://127.0.0.1:9").exit_code == 0
    r = ctl(control_plane, "--request-id", "ci-job-41", "shards", "remove", "s-rerun")
    assert r.exit_code == 2 and "ci-job-41" in r.stderr
    assert "s-rerun" in ctl(control_plane, "shards").stdout


def test_help_lists_exit_codes_and_watch_has_until_paused():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0 and "8 a probe found a condition" in " ".join(r.stdout.split())
    r = CliRunner().invoke(app, ["rollout", "watch", "--help"])
    assert r.exit_code == 0 and "--until-paused" in r.stdout


def test_output_formats_carry_the_same_message(control_plane):
    import yaml

    assert ctl(control_plane, "shards", "add", "s-out", "http://127.0.0.1:9").exit_code == 0
    deadline = time.monotonic() + 30
    # the first reconcile pass marks the shard unreachable; compare the two formats after that
    while json.loads(ctl(control_plane, "-o", "json", "shards", token=VIEWER_TOKEN).stdout)["shards"][0].get("health") \
            != "SHARD_HEALTH_UNREACHABLE":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    as_json = ctl(control_plane, "-o", "json", "shards", token=VIEWER_TOKEN)
    as_yaml = ctl(control_plane, "-o", "yaml", "shards", token=VIEWER_TOKEN)
    assert as_json.exit_code == as_yaml.exit_code == 0
    assert yaml.safe_load(as_yaml.stdout) == json.loads(as_json.stdout)
    assert "s-out" in [s["name"] for s in json.loads(as_json.stdout)["shards"]]
    r = ctl(control_plane, "-o", "xml", "shards", token=VIEWER_TOKEN)
    assert r.exit_code == 2 and "'xml' is not one of table, json, yaml" in " ".join(r.output.split())


def test_rollback_and_releases_commands(control_plane, tmp_path):
    """Nothing released yet: rollback refuses naming the shard (exit 4); after a revert the history
    holds base, and `releases` lists it; rolling back an unreachable shard exits 6."""
    assert ctl(control_plane, "shards", "add", "s1", "http://127.0.0.1:9").exit_code == 0
    r = ctl(control_plane, "--json", "rollback")
    assert r.exit_code == 4 and json.loads(r.stderr)["error"]["reason"] == "NO_PREVIOUS_VERSION" and "s1" in r.stderr
    f = tmp_path / "p.fpatch"
    f.write_bytes(random_patch({W: (64, 128)}, "sha256:" + "2" * 64))
    digest = json.loads(ctl(control_plane, "--json", "patch", "push", str(f)).stdout)["digest"]
    r = ctl(control_plane, "rollback", "--to", digest)
    assert r.exit_code == 4 and "NOT_IN_HISTORY" in r.stderr
    assert ctl(control_plane, "rollback", "--to", "not-a-digest").exit_code == 2
    assert ctl(control_plane, "revert").exit_code == 9  # the shard is unreachable, but base is now its release
    r = ctl(control_plane, "--json", "releases", token=VIEWER_TOKEN)
    assert r.exit_code == 0 and [(x["shard"], x.get("version", ""), x["source"]) for x in json.loads(r.stdout)["releases"]] == [
        ("s1", "", "revert")]
    assert ctl(control_plane, "rollback", token=VIEWER_TOKEN).exit_code == 5


def test_rollout_start_analysis_policy_flags(control_plane, tmp_path):
    """The policy flags reach the rollout; a policy without gates is refused naming the field (exit 2)."""
    f = tmp_path / "p.fpatch"
    f.write_bytes(random_patch({W: (64, 128)}, "sha256:" + "3" * 64))
    digest = json.loads(ctl(control_plane, "--json", "patch", "push", str(f)).stdout)["digest"]
    assert ctl(control_plane, "shards", "add", "s1", "http://127.0.0.1:9").exit_code == 0
    r = ctl(control_plane, "--json", "rollout", "start", digest, "--failure-limit", "1")
    assert r.exit_code == 2 and json.loads(r.stderr)["error"]["reason"] == "BAD_ANALYSIS_POLICY"
    r = ctl(control_plane, "--json", "rollout", "start", digest, "--gate", "error_rate:1.5:20", "--analysis-seconds", "120",
            "--measurement-seconds", "30", "--failure-limit", "1", "--inconclusive-limit", "2",
            "--watch-after-promotion", "300")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["analysis_policy"] == {"failure_limit": 1, "inconclusive_limit": 2,
                                                       "measurement_seconds": 30, "post_promotion_seconds": 300}


def test_output_options_after_the_subcommand(control_plane):
    from factpatch.server.cli.ctl import hoisted_argv

    assert hoisted_argv(["ctl", "rollout", "list", "-o", "yaml"]) == ["ctl", "-o", "yaml", "rollout", "list"]
    assert hoisted_argv(["ctl", "patch", "list", "--json", "--output=json"]) == ["ctl", "--json", "--output=json", "patch", "list"]
    assert hoisted_argv(["ctl", "rollout", "abort", "ro-1", "--", "-o"]) == ["ctl", "rollout", "abort", "ro-1", "--", "-o"]
    assert hoisted_argv(["edit", "--json", "x.json"]) == ["edit", "--json", "x.json"]  # not ctl: untouched
    base = ["--address", f"127.0.0.1:{control_plane.port}", "--token", OPERATOR_TOKEN]
    assert ctl(control_plane, "shards", "add", "s1", "http://127.0.0.1:9").exit_code == 0
    r = CliRunner().invoke(app, hoisted_argv(["ctl", *base, "shards", "-o", "json"])[1:])
    assert r.exit_code == 0 and [s["name"] for s in json.loads(r.stdout)["shards"]] == ["s1"], r.output


def test_every_command_has_help_and_an_example():
    import typer.main

    def leaves(cmd, path):
        if hasattr(cmd, "commands"):  # a group (typer's own click, so no isinstance against click's)
            if cmd.invoke_without_command:  # `ctl shards` runs on its own too
                yield path, cmd
            for name, sub in cmd.commands.items():
                yield from leaves(sub, [*path, name])
        else:
            yield path, cmd

    found = list(leaves(typer.main.get_command(app), ["ctl"]))
    assert len(found) >= 20
    for path, cmd in found:
        r = CliRunner().invoke(app, [*path[1:], "--help"])
        assert r.exit_code == 0, path
        assert (cmd.help or "").strip(), f"{' '.join(path)} has no help text"
        assert "Example: factpatch ctl" in r.stdout.replace("\n", " "), f"{' '.join(path)} has no example"


def test_monitors_list_create_delete_map_a_label_to_its_pattern(control_plane, tmp_path):
    f = tmp_path / "p.fpatch"
    f.write_bytes(random_patch({W: (64, 128)}, "sha256:" + "0" * 64))
    assert ctl(control_plane, "patch", "push", str(f)).exit_code == 0
    r = ctl(control_plane, "-o", "json", "monitors", "list", "--kind", "stale", token=VIEWER_TOKEN)
    assert r.exit_code == 0, r.output
    stale = json.loads(r.stdout)["monitors"]
    assert stale and all(m["name"].startswith("stale:") and m["pattern"] for m in stale)  # the label, then its value
    r = ctl(control_plane, "monitors", "create", "old-price", r"\$ ?49\b", "--kind", "regex", "--subject", "Harbor")
    assert r.exit_code == 0, r.output
    assert ctl(control_plane, "monitors", "create", "old-price", "x").exit_code == 4  # exists
    assert ctl(control_plane, "monitors", "create", "bad", "(", "--kind", "regex").exit_code == 2
    assert ctl(control_plane, "monitors", "list", "--kind", "nope").exit_code == 2
    r = ctl(control_plane, "-o", "json", "monitors", "list")
    mine = [m for m in json.loads(r.stdout)["monitors"] if m["name"] == "old-price"]
    assert mine and mine[0]["scope_subject"] == "Harbor" and mine[0]["source"] == "MONITOR_SOURCE_API"
    assert ctl(control_plane, "monitors", "delete", stale[0]["name"]).exit_code == 4  # comes from a patch
    assert ctl(control_plane, "monitors", "delete", "old-price", token=VIEWER_TOKEN).exit_code == 5
    assert ctl(control_plane, "monitors", "delete", "old-price").exit_code == 0
    assert ctl(control_plane, "monitors", "delete", "old-price").exit_code == 3


def test_rollout_gates_file(control_plane, tmp_path):
    f = tmp_path / "p.fpatch"
    f.write_bytes(random_patch({W: (64, 128)}, "sha256:" + "0" * 64))
    digest = json.loads(ctl(control_plane, "--json", "patch", "push", str(f)).stdout)["digest"]
    assert ctl(control_plane, "shards", "add", "s1", "http://127.0.0.1:9").exit_code == 0
    gates = tmp_path / "gates.yaml"
    gates.write_text("gates:\n  - {metric: prometheus, query: 'sum(up)', max_ratio: 0.5, treshold: 1}\n")
    r = ctl(control_plane, "rollout", "start", digest, "--gates-file", str(gates))
    assert r.exit_code == 2 and "treshold" in r.output
    gates.write_text("- {metric: prometheus, query: 'sum(up{job=\"x\"})', max_ratio: 0.5}\n")
    r = ctl(control_plane, "--json", "rollout", "start", digest, "--gates-file", str(gates))
    # parsed and sent: this control plane has no Prometheus, so the gate is refused by name
    assert r.exit_code == 4 and json.loads(r.stderr)["error"]["reason"] == "NO_PROMETHEUS"


def test_flags_show_no_value_type_in_help():
    from factpatch.cli import _register_subcommands
    from factpatch.cli import app as root

    _register_subcommands()
    r = CliRunner().invoke(root, ["ctl", "rollout", "start", "--help"], terminal_width=200)
    lines = {ln.split()[1]: ln for ln in r.stdout.splitlines() if ln.strip().startswith("│ --")}
    assert "<bool>" not in lines["--wait"] and "<int>" in lines["--traffic"], r.stdout


def test_rollout_list_pages_up_to_its_limit(control_plane, op):
    from factpatch.v1 import fleet_pb2, rollout_pb2

    from .helpers import rid

    digest = op.push(random_patch({W: (64, 128)}, "sha256:" + "2" * 64)).digest
    for n in ("q1", "q2", "q3"):
        op(op.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=rid(), name=n, address="http://127.0.0.1:9"))
        op(op.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(request_id=rid(), patch=digest, shards=[n],
                                                                     canary_shards=[n], canary_traffic_percent=0))
    listed = lambda *a: json.loads(ctl(control_plane, "--json", "rollout", "list", *a, token=VIEWER_TOKEN).stdout)["rollouts"]
    assert len(listed("--limit", "2")) == 2
    assert len(listed("--limit", "0")) == len(listed()) == 3
