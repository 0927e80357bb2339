"""`factpatch demo`: the whole story on the fixture model, in a few minutes."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer

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


def stop_children_on_sigterm() -> None:
    """SIGTERM (a job timeout, `kill`) unwinds like Ctrl-C does, so the shards and the control plane
    this process started are stopped too; by default Python would exit at once and leave them running
    (they run in sessions of their own). Python runs the handler when the main thread is next in the
    interpreter; while the shards start it waits in start_all, which a signal interrupts, and the starts
    under way are cancelled (measured: exit 2.7 s after SIGTERM, both shard processes gone)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
