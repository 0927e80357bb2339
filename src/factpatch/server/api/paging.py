"""How much one page of a list call may carry.

A gRPC client accepts 4 MiB in a message by default, and what a list returns can carry what callers
sent (audit records' details; patches' manifests, which grow with their edits: a chain of 1,000 edits
is megabytes). A page therefore stops before its items pass MAX_PAGE_BYTES, and the caller pages on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from google.protobuf.message import Message

MAX_PAGE_BYTES = 3 * 2**20

M = TypeVar("M", bound=Message)


def within_page_bytes(items: Sequence[M], budget: int = MAX_PAGE_BYTES) -> list[M]:
    """The leading items that fit in `budget` bytes (the first always: a page is never empty while there
    are items, even one larger than the budget)."""
    out: list[M] = []
    size = 0
    for item in items:
        size += item.ByteSize() + 8  # the field's tag and length
        if out and size > budget:
            break
        out.append(item)
    return out
