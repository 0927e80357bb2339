"""Monitor definitions, their validation, and the monitors file.

The monitors file (YAML or JSON) given to `factpatch serve --monitors`:

    max_monitors: 10000            # file + API monitors together
    max_monitor_labels: 1000       # monitors exported under their own `monitor` label; the rest
                                   # are summed into `<kind>:other` (series = labels x versions x shards)
    stale_values: {enabled: true, scope: subject}   # scope: subject | none
    monitors:
      - {name: competitor, kind: literal, pattern: "Acme Corp", ignore_case: true}
      - {name: old-price, kind: regex, pattern: "\\$ ?49(\\.00)?\\b", scope_subject: Harbor Support}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from factpatch.server.monitors.patterns import hyperscan_error

LITERAL, REGEX, STALE = "literal", "regex", "stale_value"
KINDS = (LITERAL, REGEX, STALE)
CONFIG, API, PATCH = "config", "api", "patch"
NAME_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")
MAX_PATTERN = 4096
DEFAULT_LIMIT = 10_000
DEFAULT_LABEL_LIMIT = 1_000


class MonitorError(ValueError):
    """A monitor is refused; `reason` is machine-readable, `field` names what is wrong."""

    def __init__(self, reason: str, message: str, field: str = "", position: int | None = None):
        super().__init__(message)
        self.reason, self.field, self.position = reason, field, position


@dataclass(frozen=True)
class Monitor:
    name: str
    kind: str
    pattern: str
    ignore_case: bool = True
    scope_subject: str = ""
    source: str = API
    patches: tuple[str, ...] = ()
    created_by: str = ""
    created: float = 0.0

    def expression(self) -> str:
        """The hyperscan expression this monitor compiles to."""
        if self.kind == REGEX:
            return self.pattern
        body = re.escape(self.pattern)
        if self.kind == STALE:
            # whole words only: "14 days" must not fire on "114 days"
            if self.pattern[:1].isalnum():
                body = r"\b" + body
            if self.pattern[-1:].isalnum():
                body += r"\b"
        return body


def regex_error(pattern: str) -> MonitorError | None:
    """Why `pattern` cannot be a monitor, with the error's position when one is known.

    Python's parser finds syntax errors and their position; hyperscan then refuses what it cannot
    stream (back-references, look-around, patterns that match the empty string)."""
    try:
        re.compile(pattern)
    except re.error as e:
        return MonitorError("INVALID_REGEX", f"invalid regex at position {e.pos}: {e.msg}", "pattern", e.pos)
    msg = hyperscan_error(pattern)
    if msg is None:
        return None
    m = re.search(r"at index (\d+)", msg)
    pos = int(m.group(1)) if m else None
    where = f" at position {pos}" if pos is not None else ""
    return MonitorError("INVALID_REGEX", f"regex not supported{where}: {msg}", "pattern", pos)


def validate(m: Monitor) -> Monitor:
    if not NAME_RE.fullmatch(m.name or ""):
        raise MonitorError("BAD_MONITOR", f"name {m.name!r} must be 1-128 of letters, digits and _.:/-", "name")
    if m.kind not in (LITERAL, REGEX):
        raise MonitorError("BAD_MONITOR", f"kind must be literal or regex, got {m.kind!r}", "kind")
    if not m.pattern:
        raise MonitorError("BAD_MONITOR", "pattern must not be empty", "pattern")
    if len(m.pattern) > MAX_PATTERN:
        raise MonitorError("BAD_MONITOR", f"pattern is longer than {MAX_PATTERN} characters", "pattern")
    if m.kind == REGEX:
        err = regex_error(m.pattern)
        if err:
            raise err
    else:  # a literal hyperscan cannot take (a NUL, too many bytes) would fail every later compile
        msg = hyperscan_error(m.expression(), m.ignore_case)
        if msg is not None:
            raise MonitorError("BAD_MONITOR", f"pattern cannot be matched: {msg}", "pattern")
    return m


@dataclass
class MonitorsConfig:
    monitors: list[Monitor] = field(default_factory=list)
    max_monitors: int = DEFAULT_LIMIT
    max_monitor_labels: int = DEFAULT_LABEL_LIMIT
    stale_enabled: bool = True
    stale_scope_subject: bool = True


def load(path: str | Path | None) -> MonitorsConfig:
    if path is None:
        return MonitorsConfig()
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise MonitorError("BAD_MONITORS_FILE", f"{path}: not YAML/JSON: {e}") from e
    if not isinstance(doc, dict):
        raise MonitorError("BAD_MONITORS_FILE", f"{path}: expected a mapping with a 'monitors' list")
    unknown = set(doc) - {"monitors", "max_monitors", "max_monitor_labels", "stale_values"}
    if unknown:
        raise MonitorError("BAD_MONITORS_FILE", f"{path}: unknown keys {sorted(unknown)}")
    limits = {}
    for key, default in (("max_monitors", DEFAULT_LIMIT), ("max_monitor_labels", DEFAULT_LABEL_LIMIT)):
        value = doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MonitorError("BAD_MONITORS_FILE", f"{path}: {key} must be a whole number >= 0, got {value!r}", key)
        limits[key] = value
    cfg = MonitorsConfig(**limits)
    stale = doc.get("stale_values") or {}
    cfg.stale_enabled = bool(stale.get("enabled", True))
    scope = stale.get("scope", "subject")
    if scope not in ("subject", "none"):
        raise MonitorError("BAD_MONITORS_FILE", f"{path}: stale_values.scope must be subject or none, got {scope!r}")
    cfg.stale_scope_subject = scope == "subject"
    seen: set[str] = set()
    for i, item in enumerate(doc.get("monitors") or []):
        if not isinstance(item, dict):
            raise MonitorError("BAD_MONITORS_FILE", f"{path}: monitors[{i}] is not a mapping")
        extra = set(item) - {"name", "kind", "pattern", "ignore_case", "scope_subject"}
        if extra:
            raise MonitorError("BAD_MONITORS_FILE", f"{path}: monitors[{i}]: unknown keys {sorted(extra)}")
        m = Monitor(
            name=str(item.get("name", "")), kind=str(item.get("kind", LITERAL)), pattern=str(item.get("pattern", "")),
            ignore_case=bool(item.get("ignore_case", True)), scope_subject=str(item.get("scope_subject") or ""),
            source=CONFIG,
        )
        try:
            validate(m)
        except MonitorError as e:
            raise MonitorError(e.reason, f"{path}: monitors[{i}].{e.field}: {e}", e.field, e.position) from None
        if m.name in seen:
            raise MonitorError("BAD_MONITORS_FILE", f"{path}: monitors[{i}]: duplicate name {m.name!r}")
        seen.add(m.name)
        cfg.monitors.append(m)
    if len(cfg.monitors) > cfg.max_monitors:
        raise MonitorError("TOO_MANY_MONITORS",
                           f"{path}: {len(cfg.monitors)} monitors exceed max_monitors={cfg.max_monitors}")
    return cfg
