"""The `factpatch` entry point: version and shell completion."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from factpatch.cli import _register_subcommands, app
from factpatch.core.patchfile import FORMAT


def test_version_names_the_package_the_patch_format_and_the_api():
    _register_subcommands()
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0
    assert r.stdout.strip() == f"factpatch {version('factpatch')} (patches {FORMAT}, API factpatch.v1)"


def test_shell_completion_is_offered():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0 and "--install-completion" in r.stdout and "--show-completion" in r.stdout
