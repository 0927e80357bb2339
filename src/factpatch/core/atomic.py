"""Writing a file so that a crash leaves the old file or the new one, never half of one.

    with atomic_path("report.png") as tmp:    # a temporary name beside the target, same suffix
        figure.savefig(tmp)                  # whatever writes a file by name
    write_bytes(path, data)                  # the same for bytes or text in hand

The temporary file is renamed over the target only when the block succeeds, and removed when it
fails. `durable=True` (the default) also fsyncs the file and its folder, so the rename survives a
power loss, not only a crash of the process; caches may pass False.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from factpatch.core.failpoints import hit as failpoints_hit


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True, prefix: str | None = None,
                failpoints: str | None = None) -> Iterator[Path]:
    """`failpoints`: a name prefix for the crash points between the steps (core.failpoints)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix or f".{target.name}.", suffix=target.suffix)
    os.close(fd)
    step = (lambda name: failpoints_hit(f"{failpoints}.{name}")) if failpoints else (lambda name: None)
    try:
        yield Path(tmp)
        step("after_temp_write")
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        step("after_file_fsync")
        os.replace(tmp, target)
        step("after_rename")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if durable:
        fsync_dir(target.parent)
    step("after_dir_fsync")


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True, prefix: str | None = None,
                failpoints: str | None = None) -> None:
    with atomic_path(path, durable=durable, prefix=prefix, failpoints=failpoints) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> None:
    write_bytes(path, text.encode(), durable=durable)
