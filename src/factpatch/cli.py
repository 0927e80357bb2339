"""The `factpatch` command: one entry point, one sub-command group per component."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="factpatch",
    help="Hot-patch facts inside running LLM servers: compute ROME/MEMIT edits, ship them as versioned "
    "weight patches to vLLM, watch the outputs, roll back in one command.",
    no_args_is_help=True,
)


def _flags_show_no_type() -> None:
    """typer 0.29 prints `<bool>` beside every flag, as if `--wait` took a value; a flag shows none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "flags_show_no_type", False):
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.flags_show_no_type = True
    TyperOption.display_type_rich = display_type_rich


_flags_show_no_type()


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        from factpatch.core.patchfile import FORMAT

        typer.echo(f"factpatch {version('factpatch')} (patches {FORMAT}, API factpatch.v1)")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Hot-patch facts inside running LLM servers."""


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
    import sys

    from factpatch.server.cli.ctl import hoisted_argv

    _register_subcommands()
    app(args=hoisted_argv(sys.argv[1:]), prog_name="factpatch")
