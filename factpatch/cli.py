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
    from factpatch.fixture.cli import app as fixture_app

    from factpatch.demo import demo_cmd

    app.add_typer(fixture_app, name="fixture")
    from factpatch.plugin.shard_cli import register as register_shard

    register_shard(app)
    app.command("demo")(demo_cmd)
    from factpatch.editor.cli import register as register_editor

    register_editor(app)
    from factpatch.server.ctl import register as register_control_plane

    register_control_plane(app)


def main() -> None:
    _register_subcommands()
    app()
