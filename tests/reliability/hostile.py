"""Generators of hostile input for the gRPC tests: names meant to escape a folder or break a
parser, and random messages of any request type built from its descriptor."""

from __future__ import annotations

import uuid

from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import strategies as st

HOSTILE_NAMES = [
    "../x", "/etc/passwd", "a/../../b", "..", ".", "", "a\x00b", "\x00", "..\\..\\windows\\win.ini", "%2e%2e%2f",
    "~root", "$(touch pwned)", "`id`", "name;rm -rf /", "' OR 1=1 --", "\n", " ", "\u202egnp.exe", "é", "😀" * 10,
    "sha256:" + "0" * 64, "sha256:../../../etc/passwd", "sha256:" + "A" * 64, "sha256:" + "0" * 63 + "/",
    "ro-000000000000", "stale:x:y:z", "*", "%s%s%n", "x" * 63, "x" * 64, "x" * 129,
]
names = st.one_of(
    st.sampled_from(HOSTILE_NAMES),
    st.text(max_size=80),
    st.text(alphabet="./\\\x00%~:-_aZ9", max_size=40),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "/", "."]), st.integers(60, 200_000)),
)

_INTS = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1), F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1), F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1), F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field, depth: int):
    t = field.type
    if field.name == "request_id":  # mostly fresh (hypothesis repeats its own uuids), so calls get past it
        return st.builds(lambda: uuid.uuid4().hex) | st.builds(lambda: uuid.uuid4().hex) | names
    if t == F.TYPE_STRING:
        return names
    if t == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t in _INTS:
        lo, hi = _INTS[t]
        return st.integers(lo, hi) | st.sampled_from([lo, hi, 0, -1 if lo else 1])
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(width=32 if t == F.TYPE_FLOAT else 64)
    if t == F.TYPE_ENUM:
        return st.integers(-3, 12)  # proto3 enums are open: unknown numbers arrive as they are
    if t == F.TYPE_MESSAGE:
        return fields(field.message_type, depth + 1) if depth < 2 else st.just({})
    raise AssertionError(f"no strategy for field type {t}")


def _is_map(f) -> bool:
    return f.type == F.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def fields(descriptor, depth: int = 0):
    """A dict of field name -> value (nested messages as dicts) for any subset of the fields."""
    optional = {}
    for f in descriptor.fields:
        if _is_map(f):
            key, value = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            optional[f.name] = st.dictionaries(_scalar(key, depth), _scalar(value, depth), max_size=3)
            continue
        s = _scalar(f, depth)
        optional[f.name] = st.lists(s, max_size=3) if f.is_repeated else s
    return st.fixed_dictionaries({}, optional=optional)


def build(cls, values: dict):
    """A message of class `cls` from `fields` output."""
    msg = cls()
    _fill(msg, values)
    return msg


def _fill(msg, values: dict) -> None:
    for name, value in values.items():
        f = msg.DESCRIPTOR.fields_by_name[name]
        if _is_map(f):
            for k, v in value.items():
                if f.message_type.fields_by_name["value"].type == F.TYPE_MESSAGE:
                    _fill(getattr(msg, name)[k], v)
                else:
                    getattr(msg, name)[k] = v
        elif f.type == F.TYPE_MESSAGE:
            if f.is_repeated:
                for v in value:
                    _fill(getattr(msg, name).add(), v)
            else:
                _fill(getattr(msg, name), value)
                getattr(msg, name).SetInParent()
        elif f.is_repeated:
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)
