#!/usr/bin/env python3
"""Generates the Python gRPC code for proto/factpatch/v1 into src/factpatch/v1 (committed, shipped in the wheel).

    python scripts/gen_protos.py            # regenerate after changing a .proto (`make proto`)
    python scripts/gen_protos.py --check    # exit 1 naming the file when the committed code is stale

The check compares descriptors, not text: each committed `*_pb2` module's serialized FileDescriptorProto
against what protoc makes of the .proto source now, so a different grpcio-tools patch release (which
changes only the version comments) does not count as stale, while any change to a message, field or
service does. scripts/gen_api_docs.py reads the same descriptor set.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "factpatch" / "v1"
OUT_DIR = ROOT / "src" / "factpatch" / "v1"

INIT = '''"""The factpatch gRPC API (package factpatch.v1), generated from proto/factpatch/v1 by scripts/gen_protos.py.

Do not edit: change the .proto and run `make proto`. The .proto sources ship beside this code in the wheel.
"""

from factpatch.v1 import {modules}  # noqa: F401

__all__ = [{names}]
'''


def protos() -> list[Path]:
    found = sorted(PROTO_DIR.glob("*.proto"))
    if not found:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    return found


def _includes() -> list[str]:
    import google.rpc  # googleapis-common-protos ships the google/rpc/*.proto sources
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(list(google.rpc.__path__)[0]).parent.parent
    return [f"-I{PROTO_ROOT}", f"-I{googleapis}", f"-I{well_known}"]


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc

    if protoc.main(["protoc", *_includes(), *args, *(str(p.relative_to(PROTO_ROOT)) for p in protos())]) != 0:
        raise SystemExit("protoc failed on " + ", ".join(p.name for p in protos()))


def descriptor_set(source_info: bool = False):
    """The FileDescriptorSet protoc builds from the .proto sources now."""
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.pb"
        _protoc([f"--descriptor_set_out={out}", *(["--include_source_info"] if source_info else [])])
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read_bytes())
    return fds


def generate() -> list[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        _protoc([f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}"])
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        for old in OUT_DIR.glob("*_pb2*.py*"):
            old.unlink()
        for f in sorted((Path(tmp) / "factpatch" / "v1").iterdir()):
            os.replace(f, OUT_DIR / f.name)
    modules = sorted(p.stem for p in OUT_DIR.glob("*_pb2*.py"))
    (OUT_DIR / "__init__.py").write_text(INIT.format(
        modules=", ".join(modules), names=", ".join(f'"{m}"' for m in modules)))
    return sorted(OUT_DIR.glob("*"))


def _without_json_names(fd):
    """A descriptor set carries each field's json_name; the copy embedded in generated code does not."""
    def strip(messages):
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            strip(message.nested_type)
    strip(fd.message_type)
    return fd


def stale() -> list[str]:
    """What differs between the committed code and the .proto sources, one line each; empty when current."""
    sys.path.insert(0, str(OUT_DIR.parent.parent))
    problems = []
    for fd in descriptor_set().file:
        if not fd.name.startswith("factpatch/"):
            continue
        stem = Path(fd.name).stem
        for suffix in ("_pb2", "_pb2_grpc"):
            if not (OUT_DIR / f"{stem}{suffix}.py").exists():
                problems.append(f"src/factpatch/v1/{stem}{suffix}.py is missing")
        if problems:
            continue
        module = importlib.import_module(f"factpatch.v1.{stem}_pb2")
        if module.DESCRIPTOR.serialized_pb != _without_json_names(fd).SerializeToString():
            problems.append(f"src/factpatch/v1/{stem}_pb2.py does not match {fd.name}")
        stubs = importlib.import_module(f"factpatch.v1.{stem}_pb2_grpc")
        for service in fd.service:
            if not hasattr(stubs, f"{service.name}Stub"):
                problems.append(f"src/factpatch/v1/{stem}_pb2_grpc.py has no {service.name}Stub")
    committed = {p.stem.removesuffix("_pb2") for p in OUT_DIR.glob("*_pb2.py")}
    for extra in sorted(committed - {p.stem for p in protos()}):
        problems.append(f"src/factpatch/v1/{extra}_pb2.py has no proto/factpatch/v1/{extra}.proto")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed code is stale")
    args = parser.parse_args()
    if args.check:
        problems = stale()
        for line in problems:
            print(f"stale: {line} (run `make proto`)", file=sys.stderr)
        return 1 if problems else 0
    for path in generate():
        print(path.relative_to(ROOT), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
