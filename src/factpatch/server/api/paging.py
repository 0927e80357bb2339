"""How much one page of a list call may carry.

A gRPC client accepts 4 MiB in a message by default, and what a list returns can carry what callers
sent (audit records' details; patches' manifests, which grow with their edits: a chain of 1,000 edits
is megabytes). A page therefore stops before its items pass MAX_PAGE_BYTES, and the caller pages on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

from factpatch.server.api.errors import invalid

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


def page_offset(token: str) -> int:
    """The offset a list's page_token stands for ("" is the first page); anything this server did not
    give is refused (BAD_PAGE_TOKEN)."""
    try:
        offset = int(token or 0)
    except ValueError:
        offset = -1
    if not 0 <= offset < 2**62:  # SQLite's OFFSET is a signed 64-bit integer
        raise invalid("BAD_PAGE_TOKEN", "page_token is not one this server gave", field="page_token")
    return offset


def page_size(value: int, default: int = 100, most: int = 1000) -> int:
    """A request's page_size (0: the default); outside 1..most is refused (BAD_PAGE_SIZE): SQLite would
    read a negative LIMIT as "no limit"."""
    size = value or default
    if not 0 < size <= most:
        raise invalid("BAD_PAGE_SIZE", f"page_size must be between 1 and {most}", field="page_size")
    return size


def offset_page(rows: Sequence[Any], size: int, offset: int, message: Callable[[Any], M]) -> tuple[list[M], str]:
    """One page of an offset-paged list: `rows` were read from `offset` with a limit of size + 1 (one more
    tells whether a next page exists). Returns up to `size` messages within MAX_PAGE_BYTES, and the
    next_page_token ("" on the last page)."""
    page = within_page_bytes([message(r) for r in rows[:size]])
    return page, str(offset + len(page)) if len(rows) > len(page) else ""
