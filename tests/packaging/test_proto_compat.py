"""The gRPC API stays compatible within factpatch.v1 (docs/compatibility.md: additive only).

`buf breaking` (installed by scripts/install-tools.sh, configured by buf.yaml) compares the API as it is
now with the descriptor set of the last release, proto/released/factpatch-v1-<version>.binpb (written by
`make proto-baseline` at each release). Both sides are descriptor sets built by protoc, so nothing here
needs the network. The check is also shown to work: on a copy of the protos, a field removed (even with
its number reserved), retyped or renumbered fails it, naming the field; a new field or message passes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
RELEASED = PROTO / "released"
CONFIG = ROOT / "buf.yaml"
BASELINE_NAME = re.compile(r"factpatch-v1-(\d+)\.(\d+)\.(\d+)\.binpb")

F = descriptor_pb2.FieldDescriptorProto
SCALARS = {F.TYPE_STRING: "string", F.TYPE_INT64: "int64", F.TYPE_INT32: "int32", F.TYPE_BOOL: "bool",
           F.TYPE_DOUBLE: "double", F.TYPE_UINT32: "uint32", F.TYPE_UINT64: "uint64", F.TYPE_BYTES: "bytes"}


def buf() -> str:
    path = Path(sys.prefix) / "bin" / "buf"
    found = str(path) if path.exists() else shutil.which("buf")
    # Not a skip: `make test` installs it (scripts/install-tools.sh), so a missing buf is a broken set-up.
    assert found, "buf not found: run scripts/install-tools.sh"
    return found


def last_release() -> Path:
    released = {tuple(map(int, m.groups())): p
                for p in RELEASED.glob("*.binpb") if (m := BASELINE_NAME.fullmatch(p.name))}
    assert released, f"no released descriptor set in {RELEASED.relative_to(ROOT)}: run `make proto-baseline`"
    return released[max(released)]


def read_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(path.read_bytes())
    return fds


def image(proto_root: Path, out: Path) -> Path:
    """The descriptor set of proto_root/factpatch/v1, built as `make proto-baseline` builds a release's."""
    import google.rpc  # googleapis-common-protos ships google/rpc/status.proto
    import grpc_tools
    from grpc_tools import protoc

    googleapis = Path(next(iter(google.rpc.__path__))).parent.parent
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "factpatch" / "v1").glob("*.proto"))
    rc = protoc.main(["protoc", f"-I{proto_root}", f"-I{googleapis}", f"-I{well_known}", f"--descriptor_set_out={out}",
                      "--include_imports", "--include_source_info", *files])
    assert rc == 0, f"protoc failed on {proto_root}"
    return out


def breaking(current: Path, tmp_path: Path) -> tuple[int, list[dict], str]:
    """buf's verdict on `current` against the last release: exit code, violations, raw output."""
    r = subprocess.run([buf(), "breaking", str(current), "--against", str(last_release()), "--config", str(CONFIG),
                        # The google/* imports are protobuf's and googleapis' files, not this API.
                        "--exclude-path", "google", "--error-format", "json"],
                       check=False, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BUF_CACHE_DIR": str(tmp_path / "cache")})
    violations = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return r.returncode, violations, r.stdout + r.stderr


@pytest.fixture()
def proto_copy(tmp_path) -> Path:
    copy = tmp_path / "proto"
    shutil.copytree(PROTO / "factpatch", copy / "factpatch")
    return copy


def plain_fields(count: int) -> list[tuple[str, str, descriptor_pb2.FieldDescriptorProto, re.Match]]:
    """`count` released scalar fields in distinct messages, each declared on one line of its .proto now:
    (file, message, field, the declaration's match)."""
    found = []
    for fd in read_set(last_release()).file:
        source = PROTO / fd.name
        if not fd.name.startswith("factpatch/") or not source.exists():
            continue
        text = source.read_text()
        for message in fd.message_type:
            for field in message.field:
                if field.type not in SCALARS or field.label != F.LABEL_OPTIONAL or field.HasField("oneof_index"):
                    continue
                decl = list(re.finditer(rf"^(\s*){SCALARS[field.type]}\s+{field.name}\s*=\s*{field.number}\s*;.*$",
                                        text, re.MULTILINE))
                if len(decl) == 1:
                    found.append((fd.name, message.name, field, decl[0]))
                    break
            if len(found) == count:
                return found
    pytest.fail(f"fewer than {count} plain scalar fields in the released API to change")


def edit(proto_root: Path, name: str, match: re.Match, replacement: str) -> None:
    path = proto_root / name
    text = path.read_text()
    path.write_text(text[: match.start()] + replacement + text[match.end():])


def test_the_release_baseline_is_a_full_descriptor_set():
    """What buf needs to read it alone: the API's files, their imports, and source info for line numbers."""
    fds = read_set(last_release())
    names = {f.name for f in fds.file}
    assert {n for n in names if n.startswith("factpatch/v1/")}, "no factpatch/v1 files"
    assert {"google/rpc/status.proto", "google/protobuf/timestamp.proto"} <= names, "imports missing"
    assert all(f.source_code_info.location for f in fds.file if f.name.startswith("factpatch/")), "no source info"


def test_no_breaking_change_since_the_last_release(tmp_path):
    rc, violations, out = breaking(image(PROTO, tmp_path / "now.binpb"), tmp_path)
    found = "\n".join(f"  proto/{v['path']}:{v.get('start_line', 0)}: {v['message']} ({v['type']})" for v in violations)
    assert rc == 0 and not violations, (
        f"proto/factpatch/v1 breaks factpatch.v1 as released in {last_release().name} (docs/compatibility.md: additive "
        f"only within v1; a breaking change is a new package, factpatch.v2):\n{found or out}")


@pytest.mark.parametrize("change", ["removed", "retyped", "renumbered"])
def test_the_check_catches_a_breaking_field_change(change, proto_copy, tmp_path):
    (name, message, field, decl), = plain_fields(1)
    indent, new_type = decl.group(1), "int64" if SCALARS[field.type] == "string" else "string"
    edit(proto_copy, name, decl, {
        # The polite way to remove a field, still a break within v1: generated code loses the attribute.
        "removed": f"{indent}reserved {field.number};",
        "retyped": f"{indent}{new_type} {field.name} = {field.number};",
        "renumbered": f"{indent}{SCALARS[field.type]} {field.name} = 1999;",
    }[change])
    rc, violations, out = breaking(image(proto_copy, tmp_path / "broken.binpb"), tmp_path)
    assert rc != 0, f"buf passed a {change} field {message}.{field.name}:\n{out}"
    expected = {"removed": "FIELD_NO_DELETE", "retyped": "FIELD_SAME_TYPE", "renumbered": "FIELD_NO_DELETE"}[change]
    named = [v for v in violations if v["type"] == expected and f'"{field.name}"' in v["message"]
             and f'"{message}"' in v["message"] and v["path"] == name]
    assert named, f"no {expected} violation naming {message}.{field.name} in {name}:\n{out}"


def test_the_check_names_every_broken_field(proto_copy, tmp_path):
    """Two breaks in one change: both reported, each by its field's name."""
    (name_a, message_a, removed, decl_a), (name_b, message_b, retyped, decl_b) = plain_fields(2)
    new_type = "int64" if SCALARS[retyped.type] == "string" else "string"
    # Edit the later declaration first when both are in one file, so the earlier match stays valid.
    edits = [(name_a, decl_a, ""), (name_b, decl_b, f"{decl_b.group(1)}{new_type} {retyped.name} = {retyped.number};")]
    for name, decl, replacement in sorted(edits, key=lambda e: (e[0], -e[1].start())):
        edit(proto_copy, name, decl, replacement)
    rc, violations, out = breaking(image(proto_copy, tmp_path / "broken.binpb"), tmp_path)
    assert rc != 0
    messages = "\n".join(v["message"] for v in violations)
    assert f'with name "{removed.name}" on message "{message_a}" was deleted' in messages, out
    assert f'"{retyped.name}" on message "{message_b}" changed type' in messages, out


def test_an_additive_change_passes(proto_copy, tmp_path):
    """What a minor release may add: a field, a message, a method."""
    fds = read_set(image(PROTO, tmp_path / "now.binpb"))
    fd = next(f for f in fds.file if f.name.startswith("factpatch/v1/") and f.service and f.message_type)
    message, service = fd.message_type[0], fd.service[0]
    used = [f.number for f in message.field] + [r.end - 1 for r in message.reserved_range]
    path = proto_copy / fd.name
    text = path.read_text()
    additions = [
        (f"message {message.name} {{", f"  string added_in_a_minor_release = {max(used, default=0) + 1};"),
        (f"service {service.name} {{", "  rpc AddInMinor(AddedInAMinorRelease) returns (AddedInAMinorRelease);"),
    ]
    for line, added in additions:
        text, n = re.subn(rf"^{re.escape(line)}$", f"{line}\n{added}", text, count=1, flags=re.MULTILINE)
        assert n == 1, f"no `{line}` line in {fd.name}"
    path.write_text(text + "\nmessage AddedInAMinorRelease {\n  int64 id = 1;\n}\n")
    rc, violations, out = breaking(image(proto_copy, tmp_path / "added.binpb"), tmp_path)
    assert rc == 0 and not violations, out
    (after,) = (f for f in read_set(tmp_path / "added.binpb").file if f.name == fd.name)
    assert "added_in_a_minor_release" in {f.name for m in after.message_type if m.name == message.name for f in m.field}
    assert "AddInMinor" in {m.name for s in after.service for m in s.method}
