#!/usr/bin/env python3
"""Writes docs/api.md, the gRPC API reference, from the comments in proto/factpatch/v1/*.proto.

protoc (grpcio-tools) parses the files with source info; comments are read from the descriptor set,
so the reference says exactly what the proto files say.

    python scripts/gen_api_docs.py            # rewrite docs/api.md
    python scripts/gen_api_docs.py --check    # exit 1 when docs/api.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gen_protos  # same folder: one protoc invocation for code and docs

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "api.md"

# Paths in a FileDescriptorProto (descriptor.proto field numbers).
MESSAGE, ENUM, SERVICE, SYNTAX, PACKAGE = 4, 5, 6, 12, 2
FIELD, NESTED, NESTED_ENUM, ENUM_VALUE, METHOD = 2, 3, 4, 2, 2

SCALARS = {1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 6: "fixed64", 7: "fixed32", 8: "bool",
           9: "string", 12: "bytes", 13: "uint32", 15: "sfixed32", 16: "sfixed64", 17: "sint32", 18: "sint64"}


def descriptor_set():
    return gen_protos.descriptor_set(source_info=True)


def _escape(text: str) -> str:
    """`<hex>` outside code spans would read as an HTML tag."""
    parts = text.split("`")
    return "`".join(p.replace("<", "&lt;").replace(">", "&gt;") if i % 2 == 0 else p for i, p in enumerate(parts))


def _clean(text: str) -> str:
    lines = [ln[1:] if ln.startswith(" ") else ln for ln in text.rstrip().split("\n")]
    return _escape("\n".join(lines).strip())


class Comments:
    def __init__(self, f):
        self.by_path = {tuple(loc.path): loc for loc in f.source_code_info.location}

    def get(self, path: tuple) -> str:
        loc = self.by_path.get(path)
        if loc is None:
            return ""
        return _clean(loc.leading_comments or loc.trailing_comments)

    def detached(self, path: tuple) -> str:
        loc = self.by_path.get(path)
        parts = [_clean(c) for c in loc.leading_detached_comments] if loc else []
        return "\n\n".join(p for p in parts if p)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _anchor(full_name: str) -> str:
    return full_name.lower().replace(".", "")


def _type(field, package: str) -> str:
    if field.type_name:
        name = field.type_name.lstrip(".")
        short = name[len(package) + 1:] if name.startswith(package + ".") else name
        t = f"[{short}](#{_anchor(name)})" if name.startswith("factpatch.") else f"`{name}`"
    else:
        t = f"`{SCALARS.get(field.type, str(field.type))}`"
    if field.label == 3:
        t = "repeated " + t
    if field.proto3_optional:
        t = "optional " + t
    return t


def _message(lines, msg, path, prefix, package, c: Comments, map_entries: set):
    full = f"{prefix}.{msg.name}"
    if msg.options.map_entry:
        return
    lines += [f"### {full[len(package) + 1:]}", f'<a id="{_anchor(full)}"></a>', ""]
    doc = c.get(path)
    if doc:
        lines += [doc, ""]
    if msg.field:
        lines += ["| field | type | description |", "|---|---|---|"]
        for j, f in enumerate(msg.field):
            lines.append(f"| `{f.name}` | {_type(f, package)} | {_cell(c.get(path + (FIELD, j)))} |")
        lines.append("")
    for k, e in enumerate(msg.enum_type):
        _enum(lines, e, path + (NESTED_ENUM, k), full, package, c)
    for k, nested in enumerate(msg.nested_type):
        _message(lines, nested, path + (NESTED, k), full, package, c, map_entries)


def _enum(lines, e, path, prefix, package, c: Comments):
    full = f"{prefix}.{e.name}"
    lines += [f"### enum {full[len(package) + 1:]}", f'<a id="{_anchor(full)}"></a>', ""]
    doc = c.get(path)
    if doc:
        lines += [doc, ""]
    lines += ["| value | number | description |", "|---|---|---|"]
    for j, v in enumerate(e.value):
        lines.append(f"| `{v.name}` | {v.number} | {_cell(c.get(path + (ENUM_VALUE, j)))} |")
    lines.append("")


def render() -> str:
    fds = descriptor_set()
    ours = [f for f in fds.file if f.package.startswith("factpatch.")]
    lines = ["# factpatch gRPC API reference", "",
             "Generated from the comments in `proto/factpatch/v1/*.proto` by `scripts/gen_api_docs.py`; "
             "do not edit by hand. Servers offer reflection, so `grpcurl` works without the files.", ""]
    for f in ours:
        lines.append(f"- [{f.name}](#{_anchor(f.name)})")
    lines.append("")
    for f in ours:
        c = Comments(f)
        lines += [f"## {f.name}", f'<a id="{_anchor(f.name)}"></a>', "", f"Package `{f.package}`.", ""]
        header = "\n\n".join(t for t in (c.detached((SYNTAX,)), c.get((SYNTAX,)), c.detached((PACKAGE,)), c.get((PACKAGE,))) if t)
        if header:
            lines += [header, ""]
        for i, s in enumerate(f.service):
            full = f"{f.package}.{s.name}"
            lines += [f"### service {s.name}", f'<a id="{_anchor(full)}"></a>', ""]
            doc = c.get((SERVICE, i))
            if doc:
                lines += [doc, ""]
            for j, m in enumerate(s.method):
                req = ("stream " if m.client_streaming else "") + _type_ref(m.input_type, f.package)
                resp = ("stream " if m.server_streaming else "") + _type_ref(m.output_type, f.package)
                lines += [f"#### {s.name}.{m.name}", "", f"`rpc {m.name}` ({req}) → {resp}", ""]
                doc = c.get((SERVICE, i, METHOD, j))
                if doc:
                    lines += [doc, ""]
        for i, e in enumerate(f.enum_type):
            _enum(lines, e, (ENUM, i), f.package, f.package, c)
        for i, msg in enumerate(f.message_type):
            _message(lines, msg, (MESSAGE, i), f.package, f.package, c, set())
    return "\n".join(lines).rstrip() + "\n"


def _type_ref(type_name: str, package: str) -> str:
    name = type_name.lstrip(".")
    if name.startswith("factpatch."):
        short = name[len(package) + 1:] if name.startswith(package + ".") else name
        return f"[{short}](#{_anchor(name)})"
    return f"`{name}`"


def main() -> int:
    p = argparse.ArgumentParser(description="Write docs/api.md from the proto comments.")
    p.add_argument("--check", action="store_true", help="only check that docs/api.md is up to date")
    a = p.parse_args()
    text = render()
    if a.check:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/api.md is out of date: run python scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
