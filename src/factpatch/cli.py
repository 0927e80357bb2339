"""The `factpatch` command: one entry point, one sub-command group per component."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="factpatch",
    help="Hot-patch facts inside running LLM servers: compute ROME/MEMIT edits, ship them as versioned "
    "weight patches to vLLM, watch the outputs, roll back in one command.",
    no_args_is_help=True,
    add_completion=False,
)


def _register_subcommands() -> None:
    # Imported here so `factpatch --help` stays quick and each component owns its commands.
    from factpatch.demo.cli import demo_cmd
    from factpatch.editor.cli import register as register_editor
    from factpatch.fixture.cli import app as fixture_app
    from factpatch.plugin.shard_cli import register as register_shard
    from factpatch.server.cli.ctl import register as register_control_plane

    app.command("demo")(demo_cmd)
    app.add_typer(fixture_app, name="fixture")
    register_editor(app)
    register_shard(app)
    register_control_plane(app)


def main() -> None:
    _register_subcommands()
    app()
