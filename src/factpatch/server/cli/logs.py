"""Log output of `factpatch serve`: text for a terminal, or one JSON object per line for a log shipper.

Every line carries its time, level and logger; JSON lines also carry the structured fields a call
passes in `extra` (the reconciler's rollout and shard transitions name `rollout`, `shard`, `state`,
`version`), so a log search can follow one rollout without parsing messages.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure(fmt: str = "text", verbose: bool = False) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
