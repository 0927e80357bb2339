"""Start and stop a real factpatch shard (vLLM + plugin) for tests and benchmarks.

    with ShardServer(model_dir) as shard:
        shard.apply(patch_bytes); shard.complete("The refund period of Harbor Support is")

The server runs `factpatch shard` on a free loopback port in its own process group, sized for small
CPU machines (1 GiB KV cache, eager, short context); leaving the block kills the whole group.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx

from factpatch.plugin.agent import PREFIX


def free_port(avoid: int | None = None) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != avoid:
            return port


class ShardError(RuntimeError):
    pass


class ShardServer:
    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        vllm_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        start_timeout_s: float = 300.0,
        log_path: str | os.PathLike | None = None,
        agent_args: list[str] | None = None,
        agent_http: dict[str, Any] | None = None,
    ):
        """`agent_args`: more `factpatch shard` options for the agent (TLS files); `agent_http`: what the
        harness's own agent calls pass to httpx (`verify`, `cert`) when the agent speaks TLS."""
        self.model_dir = str(model_dir)
        self.vllm_args = vllm_args if vllm_args is not None else ["--max-model-len", "128", "--dtype", "float32", "--seed", "0"]
        self.extra_env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self.token = secrets.token_urlsafe(24)
        self.agent_args = list(agent_args or [])
        self.agent_http = dict(agent_http or {})
        self._choose_ports()
        self._tmp = tempfile.TemporaryDirectory(prefix="factpatch-shard-")
        self.agent_token_file = Path(self._tmp.name) / "token"
        self.log_path = Path(log_path) if log_path else Path(self._tmp.name) / "shard.log"
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self._cancel = threading.Event()

    @property
    def endpoints(self) -> str:
        """How the control plane registers this shard: `URL,AGENT_URL` (`serve --shard NAME=...`)."""
        return f"{self.url},{self.agent_url}"

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "ShardServer":
        """Start and wait until healthy. A port another process took between choosing it and binding it
        (free_port cannot reserve one) is chosen again, up to three times."""
        self._cancel.clear()
        for attempt in range(3):
            try:
                return self._start_once()
            except ShardError as e:
                if "address already in use" not in str(e).lower() or attempt == 2 or self._cancel.is_set():
                    raise
                self._choose_ports()
        raise AssertionError("unreachable")

    def _choose_ports(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.agent_port = free_port(avoid=self.port)
        scheme = "https" if "--agent-tls-cert" in self.agent_args else "http"
        # The agent's routes live on their own port (the OpenAI port answers 404 for them).
        self.agent_url = f"{scheme}://{'localhost' if scheme == 'https' else '127.0.0.1'}:{self.agent_port}"

    def _start_once(self) -> "ShardServer":
        self.agent_token_file.write_text(self.token)
        self.agent_token_file.chmod(0o600)
        # vLLM's automatic CPU binding pins every engine's worker to the same first core of the node
        # (keeping one core in reserve), so shards started side by side on one host share that core and
        # one can starve the other for tens of seconds. The harness runs several shards per host, so the
        # OS places their threads instead, unless the caller's environment binds them itself.
        env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", **os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **self.extra_env}
        env.pop("FACTPATCH_AGENT_TOKEN", None)
        argv = [sys.executable, "-c", "from factpatch.cli import main; main()", "shard", "--model", self.model_dir, "--port", str(self.port),
                "--agent-port", str(self.agent_port), "--agent-token-file", str(self.agent_token_file),
                *self.agent_args,
                "--", *self.vllm_args]
        self._log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ShardError(f"shard exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._cancel.is_set():
                raise ShardError("shard start cancelled")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ShardError(f"shard not healthy after {self.start_timeout_s} s:\n{self.log_tail()}")

    def cancel_start(self) -> None:
        """Make a start under way in another thread give up (it stops its process and raises)."""
        self._cancel.set()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "ShardServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self._tmp.cleanup()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # --- agent API -------------------------------------------------------------------------------

    def headers(self, token: str | None = "") -> dict[str, str]:
        tok = self.token if token == "" else token
        return {"Authorization": f"Bearer {tok}"} if tok is not None else {}

    def apply(self, data: bytes, *, token: str | None = "", headers: dict[str, str] | None = None,
              timeout: float = 120, drain_timeout_s: float | None = None) -> httpx.Response:
        h = {**self.headers(token), "Content-Type": "application/octet-stream", **(headers or {})}
        return httpx.post(f"{self.agent_url}{PREFIX}/apply", content=data, headers=h, timeout=timeout,
                          params=_drain_param(drain_timeout_s), **self.agent_http)

    def apply_from_store(self, digest: str, store_url: str, *, timeout: float = 120, **fields: Any) -> httpx.Response:
        return httpx.post(f"{self.agent_url}{PREFIX}/apply", json={"digest": digest, "store_url": store_url, **fields},
                          headers=self.headers(), timeout=timeout, **self.agent_http)

    def revert(self, *, token: str | None = "", timeout: float = 120,
               drain_timeout_s: float | None = None) -> httpx.Response:
        return httpx.post(f"{self.agent_url}{PREFIX}/revert", headers=self.headers(token), timeout=timeout,
                          params=_drain_param(drain_timeout_s), **self.agent_http)

    def status(self, *, token: str | None = "") -> httpx.Response:
        return httpx.get(f"{self.agent_url}{PREFIX}/status", headers=self.headers(token), timeout=30, **self.agent_http)

    # --- OpenAI API ------------------------------------------------------------------------------

    def complete(self, prompt: str | list[str], *, max_tokens: int = 4, logprobs: int | None = 1,
                 **kw: Any) -> dict[str, Any]:
        body = {"model": self.model_dir, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                "logprobs": logprobs, **kw}
        r = httpx.post(f"{self.url}/v1/completions", json=body, timeout=120)
        r.raise_for_status()
        return r.json()

    def stream(self, prompt: str, *, max_tokens: int = 32, **kw: Any) -> Iterator[dict[str, Any]]:
        body = {"model": self.model_dir, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                "stream": True, **kw}
        with httpx.stream("POST", f"{self.url}/v1/completions", json=body, timeout=300) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    yield json.loads(line[6:])


def start_all(shards: list[ShardServer]) -> None:
    """Start several shards side by side (on two cores two starts take ~80 s together, ~45 s each
    alone). Either all are up when this returns, or none is left running: the first start that fails
    (or an interrupt, such as the demo's SIGTERM) cancels the starts still under way instead of waiting
    them out, and is raised."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    pool = ThreadPoolExecutor(len(shards))
    try:
        for started in as_completed([pool.submit(s.start) for s in shards]):
            started.result()
    except BaseException:
        for s in shards:
            s.cancel_start()
        pool.shutdown(wait=True)
        for s in shards:  # a start that finished before its cancel is stopped here
            s.stop()
        raise
    finally:
        pool.shutdown(wait=True)


def _drain_param(drain_timeout_s: float | str | None) -> dict[str, str]:
    return {} if drain_timeout_s is None else {"drain_timeout_s": str(drain_timeout_s)}
