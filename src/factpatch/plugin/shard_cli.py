"""`factpatch shard`: start stock vLLM's OpenAI server with the factpatch plugin wired in.

Equivalent to, by hand:

    VLLM_PLUGINS=factpatch,factpatch_agent FACTPATCH_AGENT_TOKEN_FILE=/path/token FACTPATCH_AGENT_PORT=8001 \\
    python -m vllm.entrypoints.openai.api_server --model DIR --port 8000 \\
        --worker-extension-cls factpatch.plugin.worker_ext.FactpatchWorkerExtension [--enforce-eager]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from factpatch.core import signing, tracing
from factpatch.core.renamed_flags import renamed
from factpatch.core.tokens import WeakTokenError

from . import agent_server
from .auth import TOKEN_ENV, TOKEN_FILE_ENV, configured_tokens
from .endpoint import NAME as ENDPOINT_PLUGIN
from .general import NAME as GENERAL_PLUGIN
from .general import WORKER_EXTENSION


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def shard_command(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    agent_token_file: str | None = None,
    agent_port: int | str | None = None,
    agent_host: str | None = None,
    agent_tls_cert: str | None = None,
    agent_tls_key: str | None = None,
    agent_client_ca: str | None = None,
    trusted_keys: list[str] = (),
    require_signatures: bool = False,
    extra: list[str] = (),
    env: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start a patchable vLLM shard. The agent listens on `agent_port`
    (else $FACTPATCH_AGENT_PORT, else `port` + 1) on `agent_host` (else $FACTPATCH_AGENT_HOST, else
    `host`), never on the OpenAI port."""
    env = dict(os.environ if env is None else env)
    if agent_port is None:
        agent_port = env.get(agent_server.PORT_ENV) or port + 1
    if str(agent_port) == str(port):
        raise ValueError(f"--agent-port {agent_port} is the OpenAI port: the agent routes need a port of their own")
    env[agent_server.PORT_ENV] = str(agent_port)
    env[agent_server.HOST_ENV] = agent_host or env.get(agent_server.HOST_ENV) or host
    for name, value in ((agent_server.TLS_CERT_ENV, agent_tls_cert), (agent_server.TLS_KEY_ENV, agent_tls_key),
                        (agent_server.TLS_CLIENT_CA_ENV, agent_client_ca)):
        if value:
            env[name] = str(Path(value).resolve())
    if trusted_keys:
        env[signing.TRUSTED_KEYS_ENV] = ":".join(str(Path(k).resolve()) for k in trusted_keys)
    if require_signatures:
        env[signing.REQUIRE_SIGNATURES_ENV] = "1"
    try:  # half a TLS setup, a missing file, an unreadable key: said now, not by the engine after its imports
        agent_server.AgentServerConfig.from_env(env)
        signing.shard_policy(env)
        tracing.exporters(env)  # the shard sets tracing up itself (endpoint.py); a bad OTEL_* setting is said here
    except (agent_server.AgentServerConfigError, ValueError) as e:
        raise ValueError(str(e)) from None
    if agent_token_file:
        if not Path(agent_token_file).is_file():
            raise ValueError(f"--agent-token-file {agent_token_file} does not exist")
        env[TOKEN_FILE_ENV] = str(Path(agent_token_file).resolve())
        env.pop(TOKEN_ENV, None)  # the file named on the command line wins
    elif not env.get(TOKEN_ENV) and not env.get(TOKEN_FILE_ENV):
        raise ValueError(f"no agent token: pass --agent-token-file or set {TOKEN_ENV} / {TOKEN_FILE_ENV}")
    if env.get("VLLM_SERVER_DEV_MODE", "").lower() in ("1", "true", "yes"):
        # dev mode adds unauthenticated routes (sleep, reset, collective RPC) beside the agent's
        raise ValueError("VLLM_SERVER_DEV_MODE is on: its routes would change the engine without the agent token; unset it")
    try:  # a weak token would leave every agent route answering 401: refuse to start instead
        configured_tokens(env)
    except WeakTokenError as e:
        raise ValueError(f"agent token: {e}") from None
    # VLLM_PLUGINS is an allow-list for every plugin group: keep what the operator listed.
    plugins = [p for p in env.get("VLLM_PLUGINS", "").split(",") if p]
    for p in (GENERAL_PLUGIN, ENDPOINT_PLUGIN):
        if p not in plugins:
            plugins.append(p)
    env["VLLM_PLUGINS"] = ",".join(plugins)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--host", host, "--port", str(port), "--worker-extension-cls", WORKER_EXTENSION]
    extra = list(extra)
    # The CPU backend traces its model unless eager, and a traced graph keeps the packed weights it saw.
    if _on_cpu() and "--enforce-eager" not in extra:
        argv.append("--enforce-eager")
    return argv + extra, env


def not_a_model(model: str) -> str | None:
    """What makes MODEL plainly not servable: a folder without config.json, or a path (absolute, ./ or ~)
    that does not exist. Anything else may be a cached hub id, which vLLM resolves itself."""
    path = Path(model).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else "the folder has no config.json (not a model folder)"
    if model.startswith(("/", ".", "~")):
        return "no such folder"
    return None


def shard(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Model folder (or cached hub id) to serve."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port of the OpenAI server (model traffic)."),
    agent_token_file: str = typer.Option(None, "--agent-token-file", show_default=False,
                                         help=f"File holding the agent bearer token, one per line, all accepted "
                                              f"(else ${TOKEN_ENV}, else ${TOKEN_FILE_ENV})."),
    old_token_file: str = typer.Option(None, "--token-file", hidden=True,
                                       help="Deprecated name of --agent-token-file."),
    agent_port: int = typer.Option(None, "--agent-port", help="Port of the agent routes (weight changes); default --port + 1."),
    agent_host: str = typer.Option(None, "--agent-host", help="Address the agent listens on; default --host."),
    agent_tls_cert: str = typer.Option(None, "--agent-tls-cert", help="PEM certificate: the agent speaks HTTPS."),
    agent_tls_key: str = typer.Option(None, "--agent-tls-key", help="PEM private key of --agent-tls-cert."),
    agent_client_ca: str = typer.Option(None, "--agent-client-ca",
                                        help="PEM CA bundle: callers must show a client certificate it signed (mutual TLS)."),
    trusted_key: list[str] = typer.Option([], "--trusted-key",
                                          help="Public key (PEM, or a folder of them) whose patch signatures this shard "
                                               "accepts (repeatable)."),
    require_signatures: bool = typer.Option(False, "--require-signatures",
                                            help="Refuse unsigned patches, and those signed by any other key."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command and environment, start nothing."),
) -> None:
    """Serve MODEL with vLLM and the factpatch agent; arguments after `--` go to vLLM.

    Example: factpatch shard --model ./model --port 8000 --agent-port 8001 --agent-token-file /etc/factpatch/token
    """
    agent_token_file = renamed(agent_token_file, old_token_file, new="--agent-token-file", old="--token-file")
    try:
        argv, env = shard_command(model, host=host, port=port, agent_token_file=agent_token_file,
                                  agent_port=agent_port, agent_host=agent_host,
                                  agent_tls_cert=agent_tls_cert, agent_tls_key=agent_tls_key,
                                  agent_client_ca=agent_client_ca, trusted_keys=trusted_key,
                                  require_signatures=require_signatures, extra=ctx.args)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    if dry_run:
        for k in ("VLLM_PLUGINS", TOKEN_FILE_ENV, agent_server.HOST_ENV, agent_server.PORT_ENV, agent_server.TLS_CERT_ENV,
                  agent_server.TLS_KEY_ENV, agent_server.TLS_CLIENT_CA_ENV, signing.TRUSTED_KEYS_ENV,
                  signing.REQUIRE_SIGNATURES_ENV):
            if k in env:
                typer.echo(f"{k}={env[k]}")
        typer.echo(" ".join(argv))
        return
    problem = not_a_model(model)
    if problem:  # said here in a second, not by vLLM after half a minute of imports
        typer.echo(f"error: --model {model}: {problem}", err=True)
        raise typer.Exit(2)
    try:  # bound now and handed down: taken in a second if in use, held while the engine loads
        sock = agent_server.listen(env[agent_server.HOST_ENV], int(env[agent_server.PORT_ENV]))
    except agent_server.AgentServerConfigError as e:
        typer.echo(f"error: --agent-port: {e}", err=True)
        raise typer.Exit(2)
    sock.set_inheritable(True)
    env[agent_server.LISTEN_FD_ENV] = str(sock.fileno())
    # Replace this process so signals and the exit status belong to vLLM itself.
    os.execve(argv[0], argv, env)


def register(app: typer.Typer) -> None:
    app.command("shard", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(shard)
