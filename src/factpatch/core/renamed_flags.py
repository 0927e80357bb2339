"""Command-line names kept after a rename: the old name is hidden from --help, still works, and says on
stderr which name replaces it, so scripts and unit files keep running through the deprecation period.
Old and new names given together are refused rather than one silently winning."""

from __future__ import annotations

from typing import TypeVar

import typer

T = TypeVar("T")


def deprecated(old: str, new: str) -> None:
    """One line on stderr: stdout stays clean for callers that parse it."""
    typer.echo(f"warning: {old} is deprecated and will be removed in a later release; use {new}", err=True)


def renamed(new_value: T | None, old_value: T | None, *, new: str, old: str) -> T | None:
    """The value of a renamed flag: the new name's, or the old name's with a deprecation warning."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise typer.BadParameter(f"{old} and {new} are the same option ({old} is its old name); give only {new}")
    deprecated(old, new)
    return old_value
