"""Generates the Python gRPC code for proto/factpatch/v1 into the `factpatch.v1` package.

Run by `make install` (`python -m factpatch.server.protos`). Importing `factpatch.server.pb`
also regenerates when the output is missing or older than a .proto, so an editable checkout whose
protos changed never runs stale stubs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "factpatch" / "v1"
OUT_DIR = ROOT / "factpatch" / "v1"


def _protos() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def is_stale() -> bool:
    protos = _protos()
    if not protos:
        return False  # installed without the proto sources: use what was generated
    newest = max(p.stat().st_mtime for p in protos)
    for p in protos:
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            out = OUT_DIR / (p.stem + suffix)
            if not out.exists() or out.stat().st_mtime < newest:
                return True
    return False


def generate() -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    protos = _protos()
    if not protos:
        raise FileNotFoundError(f"no .proto files under {PROTO_DIR}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    import google.rpc  # googleapis-common-protos ships the google/rpc/*.proto sources

    googleapis = Path(list(google.rpc.__path__)[0]).parent.parent
    OUT_DIR.parent.mkdir(parents=True, exist_ok=True)
    # Several processes may import at once (tests start servers): one generates, the rest wait.
    with open(OUT_DIR.parent / ".v1-codegen.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if OUT_DIR.exists() and not is_stale():
            return sorted(OUT_DIR.glob("*.py"))
        with tempfile.TemporaryDirectory(dir=OUT_DIR.parent) as tmp:
            args = [
                "protoc",
                f"-I{PROTO_ROOT}",
                f"-I{googleapis}",
                f"-I{well_known}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                *(str(p.relative_to(PROTO_ROOT)) for p in protos),
            ]
            if protoc.main(args) != 0:
                raise RuntimeError("protoc failed on " + ", ".join(p.name for p in protos))
            gen = Path(tmp) / "factpatch" / "v1"
            (gen / "__init__.py").write_text('"""Generated from proto/factpatch/v1 — do not edit."""\n')
            OUT_DIR.mkdir(exist_ok=True)
            for f in gen.iterdir():
                os.replace(f, OUT_DIR / f.name)
        shutil.rmtree(OUT_DIR / "__pycache__", ignore_errors=True)
        return sorted(OUT_DIR.glob("*.py"))


def ensure_generated() -> None:
    if not OUT_DIR.exists() or is_stale():
        generate()


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT), file=sys.stderr)
