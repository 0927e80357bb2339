"""A demo or bench stopped with SIGTERM (a job timeout, `kill`) stops the processes it started: they run
in sessions of their own, so nothing else would (harness/signals.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from tests.server.helpers import AGENT_TOKEN, write_tokens

SCRIPT = textwrap.dedent("""
    import sys, time
    from contextlib import ExitStack
    from pathlib import Path
    from factpatch.harness.signals import stop_children_on_sigterm
    from factpatch.harness.control_plane_process import ControlPlaneProcess

    stop_children_on_sigterm()
    tmp = Path(sys.argv[1])
    with ExitStack() as stack:
        cp = ControlPlaneProcess(tmp / "state", tmp / "tokens.yaml", sys.argv[2], {}, gateway=False).start(timeout=300)
        stack.callback(cp.stop)
        print(cp.proc.pid, flush=True)
        # short waits, like the demo's: the kernel may hand the signal to another thread, and Python
        # runs the handler only when the main thread is back in the interpreter
        for _ in range(3000):
            time.sleep(0.2)
""")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_sigterm_stops_the_processes_the_demo_started(tmp_path):
    write_tokens(tmp_path / "tokens.yaml")
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), AGENT_TOKEN], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"the control plane did not start (exit {proc.poll()})"
        child = int(line)
        assert alive(child)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert not alive(child), "the control plane outlived the demo"
    finally:
        if proc.poll() is None:
            proc.kill()
