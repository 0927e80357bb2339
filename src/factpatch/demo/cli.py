"""`factpatch demo`: the whole story on the fixture model, in a few minutes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from factpatch.harness.signals import stop_children_on_sigterm

from .story import DemoFailed, Settings, Story, console


def demo_cmd(
    report: Optional[Path] = typer.Option(None, "--report", help="Report folder (default: reports/demo-<time>)."),
    fast: bool = typer.Option(False, "--fast", help="Fewer requests and a shorter analysis window (end-to-end test)."),
    fixture: Optional[Path] = typer.Option(None, "--fixture", envvar="FACTPATCH_FIXTURE", show_default=False,
                                           help="Another build of the fixture to run on (`factpatch fixture build --seed N "
                                                "--out DIR`); default: the recipe's own build, made on first use."),
) -> None:
    """Build the fixture, start two shards, the control plane and the gateway, then: stale answers →
    MEMIT patch → canary at 25 % → promotion → revert to base. Exits non-zero if any stage fails."""
    out = report or Path("reports") / time.strftime("demo-%Y%m%d-%H%M%S")
    stop_children_on_sigterm()
    try:
        Story(Settings.for_mode(out, fast, fixture)).run()
    except DemoFailed as e:
        console.print(f"[red]demo failed:[/red] {e}")
        raise typer.Exit(1)


