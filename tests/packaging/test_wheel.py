"""The wheel is what operators install: build it from a clean copy of the tree, install it into a fresh
virtual environment that cannot see the source tree, and run it — the CLI, every subpackage, the
shipped .proto files, and a control plane answering gRPC health from a temp state directory.

The heavy dependencies (torch, vLLM, grpcio …) come from the test's own environment through a `.pth`
line, so the run takes seconds; the factpatch code comes only from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.server.helpers import AGENT_TOKEN, write_tokens

ROOT = Path(__file__).resolve().parents[2]


def _clean_copy(dest: Path) -> Path:
    """The files a fresh clone has (tracked, plus new ones git does not ignore): no build leftovers."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    tree = _clean_copy(work / "tree")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "-w", str(work / "dist"), str(tree)], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("factpatch-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies, not factpatch: an editable install's own .pth in there is not processed this way.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--quiet",
                           str(wheel)], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    return venv


def _run(venv: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(list(args), cwd=venv.parent, env={**env, "PATH": f"{venv / 'bin'}:{env['PATH']}"},
                          capture_output=True, text=True, **kw)


def test_the_wheel_holds_every_subpackage_and_the_protos(installed):
    (wheel,) = (installed.parent / "dist").glob("factpatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for proto in sorted((ROOT / "proto" / "factpatch" / "v1").glob("*.proto")):
        assert f"factpatch/v1/{proto.name}" in names
    source_packages = {p.parent.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src").rglob("__init__.py")}
    shipped = {Path(n).parent.as_posix() for n in names if n.endswith("/__init__.py")}
    assert source_packages - shipped == set(), "packages missing from the wheel"
    assert "factpatch/editor/hparams/gpt2-xl.json" in names


def test_the_installed_cli_starts(installed):
    r = _run(installed, str(installed / "bin" / "factpatch"), "--help")
    assert r.returncode == 0, r.stderr
    for command in ("edit", "serve", "ctl", "shard", "fixture", "demo"):
        assert command in r.stdout


def test_every_subpackage_imports_from_the_wheel_not_the_tree(installed):
    code = (
        "import importlib, pkgutil, factpatch\n"
        "names = [m.name for m in pkgutil.walk_packages(factpatch.__path__, 'factpatch.')]\n"
        "for n in names: importlib.import_module(n)\n"
        "print(factpatch.__file__); print(len(names))\n"
    )
    r = _run(installed, str(installed / "bin" / "python"), "-c", code)
    assert r.returncode == 0, r.stderr
    where, count = r.stdout.split()
    assert Path(where).is_relative_to(installed), f"factpatch came from {where}, not the wheel"
    assert int(count) > 100


def test_the_installed_control_plane_answers_health(installed, tmp_path):
    port_file = tmp_path / "serve.port"
    env_extra = {"FACTPATCH_AGENT_TOKEN": AGENT_TOKEN, "FACTPATCH_PORT_FILE": str(port_file)}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.Popen(
        [str(installed / "bin" / "factpatch"), "serve", "--state-dir", str(tmp_path / "state"),
         "--listen", "127.0.0.1:0", "--client-tokens-file", str(write_tokens(tmp_path / "tokens.yaml")),
         "--gateway-listen", "off"],
        cwd=tmp_path, env={**env, **env_extra}, stdout=(tmp_path / "serve.log").open("w"), stderr=subprocess.STDOUT)
    try:
        deadline, status = time.monotonic() + 90, None
        while status != health_pb2.HealthCheckResponse.SERVING:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, f"the control plane did not report SERVING (last: {status})"
            time.sleep(0.2)
            if not (port_file.exists() and port_file.read_text()):
                continue
            with grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}") as channel:
                try:
                    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
                except grpc.RpcError as e:  # bound but not yet serving
                    status = e.code()
        assert (tmp_path / "state").is_dir()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
