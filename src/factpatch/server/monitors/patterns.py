"""Whether hyperscan can stream a pattern: the check a monitor must pass before it joins the database."""

from __future__ import annotations

import hyperscan

FLAGS = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_UTF8  # every monitor: once per response, UTF-8


def hyperscan_error(pattern: str, ignore_case: bool = False) -> str | None:
    """Hyperscan's message when it cannot compile `pattern` for streaming, else None."""
    db = hyperscan.Database(mode=hyperscan.HS_MODE_STREAM)
    try:
        db.compile(expressions=[pattern.encode()], ids=[0],
                   flags=FLAGS | (hyperscan.HS_FLAG_CASELESS if ignore_case else 0))
    except hyperscan.error as e:
        return str(e.args[0] if e.args else e)
    return None
