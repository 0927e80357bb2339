"""The `version` label every factpatch series carries: "base", or the first 12 hex digits of the patch
digest. Short enough for a graph legend; 48 bits make a clash between two stored patches practically
impossible. `factpatch_version_info{version, digest}` maps a label back to its full digest."""

from __future__ import annotations

BASE = "base"
VERSION_HEX = 12


def version_label(version: str | None) -> str:
    if not version:
        return BASE
    return version.removeprefix("sha256:")[:VERSION_HEX]
