"""`factpatch patch inspect FILE` reads a local patch file; `patch show`, its first name, still works
but warns (`ctl patch show DIGEST` is the stored patch)."""

from __future__ import annotations

from typer.testing import CliRunner

from factpatch.cli import _register_subcommands, app
from factpatch.core.patchfile import read
from tests.factories import random_patch

_register_subcommands()
W = "model.layers.1.mlp.down_proj.weight"


def _patch(tmp_path):
    f = tmp_path / "p.fpatch"
    f.write_bytes(random_patch({W: (64, 128)}, "sha256:" + "0" * 64))
    return f, read(f)[1]


def test_inspect_prints_the_manifest(tmp_path):
    f, digest = _patch(tmp_path)
    r = CliRunner().invoke(app, ["patch", "inspect", str(f)])
    assert r.exit_code == 0, r.output
    assert digest in r.stdout and "down_proj" in r.stdout and "deprecated" not in r.stderr
    r = CliRunner().invoke(app, ["patch", "inspect", "--json", str(f)])
    assert r.exit_code == 0 and f'"digest": "{digest}"' in r.stdout


def test_show_is_the_old_name_and_warns_once(tmp_path):
    f, digest = _patch(tmp_path)
    new = CliRunner().invoke(app, ["patch", "inspect", "--json", str(f)])
    old = CliRunner().invoke(app, ["patch", "show", "--json", str(f)])
    assert old.exit_code == 0, old.output
    assert old.stdout == new.stdout  # the warning goes to stderr: piped JSON stays parseable
    assert old.stderr.count("deprecated") == 1 and "patch inspect" in old.stderr


def test_help_lists_inspect_not_show():
    r = CliRunner().invoke(app, ["patch", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    commands = [line.strip("│ ").split(" ")[0] for line in r.stdout.splitlines()]
    assert "inspect" in commands and "show" not in commands
