"""The matching engine: every monitor in one hyperscan streaming database.

Hyperscan scans each chunk once for all patterns and keeps its automaton state between chunks, so
a value split across two streamed chunks is found, and the cost grows little with the number of
monitors. SINGLEMATCH reports a monitor at most once per response. Which prompts mention a scoped
monitor's subject is one Aho-Corasick pass over the prompt.

The hyperscan binding dereferences the stream's context even when none was given (a crash when a
match is reported at close), so every stream here is opened with an explicit context object.
"""

from __future__ import annotations

from typing import Iterable

import ahocorasick
import hyperscan

from factpatch.server.monitors.config import Monitor
from factpatch.server.monitors.patterns import FLAGS


def _flags(m: Monitor) -> int:
    return FLAGS | (hyperscan.HS_FLAG_CASELESS if m.ignore_case else 0)


def _on_match(monitor_id, start, end, flags, matched):
    matched.add(monitor_id)


class CompiledMonitors:
    """An immutable compiled monitor set; swap in a new one to change monitors."""

    def __init__(self, monitors: Iterable[Monitor]):
        self.monitors: list[Monitor] = list(monitors)
        self.db = None
        if self.monitors:
            self.db = hyperscan.Database(mode=hyperscan.HS_MODE_STREAM)
            self.db.compile(expressions=[m.expression().encode() for m in self.monitors],
                            ids=list(range(len(self.monitors))), flags=[_flags(m) for m in self.monitors])
        # scope: lower-cased subject -> monitor ids; ids of unscoped monitors
        self.unscoped = frozenset(i for i, m in enumerate(self.monitors) if not m.scope_subject)
        self.scoped: dict[str, frozenset[int]] = {}
        for i, m in enumerate(self.monitors):
            if m.scope_subject:
                key = m.scope_subject.lower()
                self.scoped[key] = self.scoped.get(key, frozenset()) | {i}
        self._subjects = None
        if self.scoped:
            self._subjects = ahocorasick.Automaton()
            for key in self.scoped:
                self._subjects.add_word(key, key)
            self._subjects.make_automaton()

    def __len__(self) -> int:
        return len(self.monitors)

    def mentioned(self, prompt: str) -> frozenset[str]:
        """Scoped subjects (lower-cased) that the prompt mentions."""
        if self._subjects is None or not prompt:
            return frozenset()
        return frozenset(key for _, key in self._subjects.iter(prompt.lower()))

    def evaluated(self, mentioned: frozenset[str]) -> frozenset[int]:
        """Monitor ids that apply to a response whose prompt mentions these subjects."""
        if not mentioned:
            return self.unscoped
        out = set(self.unscoped)
        for key in mentioned:
            out |= self.scoped.get(key, frozenset())
        return frozenset(out)

    def scanner(self) -> "Scanner":
        return Scanner(self)

    def match(self, text: str) -> set[int]:
        """All monitor ids found in one whole text (ignoring scope)."""
        s = self.scanner()
        try:
            s.feed(text)
        finally:
            return s.close()


class Scanner:
    """Incremental matching over one response's text; close() gives the ids of monitors that matched."""

    __slots__ = ("compiled", "matched", "_stream")

    def __init__(self, compiled: CompiledMonitors):
        self.compiled = compiled  # holds the database alive while the stream is open
        self.matched: set[int] = set()
        self._stream = None
        if compiled.db is not None:
            self._stream = compiled.db.stream(match_event_handler=_on_match, context=self.matched)
            self._stream.__enter__()

    def feed(self, text: str) -> None:
        if self._stream is not None and text:
            self._stream.scan(text.encode(), match_event_handler=_on_match, context=self.matched)

    def close(self) -> set[int]:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close(match_event_handler=_on_match, context=self.matched)  # end-of-data matches (`\b`, `$`)
        return self.matched
