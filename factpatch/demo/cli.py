"""`factpatch demo`: the whole story on the fixture model, in a few minutes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from .story import DemoFailed, Settings, Story, console


def demo_cmd(
    report: Optional[Path] = typer.Option(None, "--report", help="Report folder (default: reports/demo-<time>)."),
    fast: bool = typer.Option(False, "--fast", help="Fewer requests and a shorter analysis window (end-to-end test)."),
) -> None:
    """Build the fixture, start two shards, the control plane and the gateway, then: stale answers →
    MEMIT patch → canary at 25 % → promotion → revert to base. Exits non-zero if any stage fails."""
    out = report or Path("reports") / time.strftime("demo-%Y%m%d-%H%M%S")
    try:
        Story(Settings.for_mode(out, fast)).run()
    except DemoFailed as e:
        console.print(f"[red]demo failed:[/red] {e}")
        raise typer.Exit(1)
