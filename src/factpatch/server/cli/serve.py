"""`factpatch serve`: run the control plane."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from factpatch.core.renamed_flags import renamed

# the shard's own names for the agent token: one secret, one pair of names on both sides
from factpatch.plugin.auth import TOKEN_ENV as AGENT_TOKEN_ENV
from factpatch.plugin.auth import TOKEN_FILE_ENV as AGENT_TOKEN_FILE_ENV
from factpatch.plugin.swap import MAX_DRAIN_TIMEOUT_S


def client_tokens_option(client_tokens_file: Path | None, old_tokens_file: Path | None) -> Path:
    """--client-tokens-file, or its old name --tokens-file (warned about); one of them is required."""
    path = renamed(client_tokens_file, old_tokens_file, new="--client-tokens-file", old="--tokens-file")
    if path is None:
        typer.echo("error: missing option --client-tokens-file (a list of {principal, role, token})", err=True)
        raise typer.Exit(2)
    return path


def agent_token_options(agent_token_file: Path | None, env: dict[str, str]) -> tuple[str, Path | None]:
    """(token, file) the control plane sends to agents, in the shard's order: the flag, then
    $FACTPATCH_AGENT_TOKEN, then $FACTPATCH_AGENT_TOKEN_FILE."""
    if agent_token_file:
        return "", agent_token_file
    if env.get(AGENT_TOKEN_ENV):
        return env[AGENT_TOKEN_ENV], None
    if env.get(AGENT_TOKEN_FILE_ENV):
        path = Path(env[AGENT_TOKEN_FILE_ENV])
        if not path.is_file():
            raise typer.BadParameter(f"${AGENT_TOKEN_FILE_ENV} {path} does not exist", param_hint="--agent-token-file")
        return "", path
    return "", None


def serve(
    state_dir: Path = typer.Option(Path("./factpatch-state"), "--state-dir", help="Patch store and state database."),
    listen: str = typer.Option("127.0.0.1:50051", help="gRPC address (host:port; port 0 picks one)."),
    client_tokens_file: Path = typer.Option(None, "--client-tokens-file", exists=True, dir_okay=False, show_default=False,
                                            help="Client tokens (required): list of {principal, role, token|token_sha256}."),
    old_tokens_file: Path = typer.Option(None, "--tokens-file", exists=True, dir_okay=False, hidden=True,
                                         help="Deprecated name of --client-tokens-file."),
    agent_token_file: Path = typer.Option(None, "--agent-token-file", exists=True, dir_okay=False,
                                          help=f"Shard agent token, first line sent, read before every call "
                                               f"(else ${AGENT_TOKEN_ENV}, else ${AGENT_TOKEN_FILE_ENV})."),
    shard: list[str] = typer.Option([], "--shard", help="NAME=URL[,AGENT_URL] of a shard to register at start (repeatable): "
                                    "its OpenAI server and its agent (default: URL's host, port + 1)."),
    agent_token_dir: Path = typer.Option(None, "--agent-token-dir", exists=True, file_okay=False,
                                         help="Per-shard agent tokens: the file named after a shard holds its token "
                                              "(else the fleet-wide one)."),
    allow_shard_address: list[str] = typer.Option(
        [], "--allow-shard-address", envvar="FACTPATCH_ALLOWED_SHARD_ADDRESSES",
        help="Where RegisterShard may point (repeatable): a network (10.0.0.0/8), a host, host:port, or *.domain. "
             "None given: loopback only. --shard addresses are always allowed."),
    base_dir: list[Path] = typer.Option([], "--base-dir", help="Local copy of a base checkpoint, to refuse patches for "
                                        "another base before touching shards (repeatable)."),
    editor_model: Path = typer.Option(None, "--editor-model", help="Base checkpoint CreatePatch edits."),
    tls_cert: Path = typer.Option(None, "--tls-cert", exists=True),
    tls_key: Path = typer.Option(None, "--tls-key", exists=True),
    tls_client_ca: Path = typer.Option(None, "--tls-client-ca", exists=True, help="Require client certificates from this CA (mTLS)."),
    agent_ca: Path = typer.Option(None, "--agent-ca", exists=True,
                                  help="CA bundle the shard agents' HTTPS certificates chain to (agents at https:// URLs)."),
    agent_client_cert: Path = typer.Option(None, "--agent-client-cert", exists=True,
                                           help="Client certificate shown to agents that require one (mutual TLS)."),
    agent_client_key: Path = typer.Option(None, "--agent-client-key", exists=True, help="Private key of --agent-client-cert."),
    trusted_key: list[Path] = typer.Option([], "--trusted-key", exists=True,
                                           help="Public key (PEM, or a folder of them) whose patch signatures are accepted "
                                                "(repeatable); a signature by any other key is refused."),
    require_signatures: bool = typer.Option(False, "--require-signatures",
                                            help="Refuse unsigned patches at import (needs --trusted-key)."),
    reconcile_interval: float = typer.Option(1.0, help="Seconds between reconcile passes."),
    drain_timeout: float = typer.Option(None, "--drain-timeout", min=0.0, max=MAX_DRAIN_TIMEOUT_S,
                                        help="Seconds a weight change waits for running requests (at the gateway, then "
                                             "in each shard's engine) before they are cut off. Default: 30 s at the "
                                             "gateway and each shard's own setting."),
    max_patch_mb: int = typer.Option(256, help="Largest patch ImportPatch accepts, in MiB."),
    max_weight_change: float = typer.Option(None, "--max-weight-change", envvar="FACTPATCH_MAX_WEIGHT_CHANGE", min=0.0,
                                            help="Refuse at import a patch that changes a weight by more than this "
                                                 "share of its norm (‖ΔW‖/‖W‖), when --base-dir holds its base."),
    gateway_listen: str = typer.Option("127.0.0.1:8080", "--gateway-listen",
                                       help="OpenAI gateway and /metrics address (host:port; port 0 picks one; 'off' for none)."),
    metrics_listen: str = typer.Option(None, "--metrics-listen",
                                       help="Serve /metrics here (host:port) instead of on the gateway's port, "
                                            "whose users then cannot read which facts were patched; with "
                                            "--gateway-listen off, the only place it is served."),
    monitors: Path = typer.Option(None, "--monitors", exists=True, help="Output monitors file (YAML/JSON)."),
    probes: Path = typer.Option(None, "--probes", exists=True,
                                help="Live edit probes: schedule, thresholds and the frozen regression set (YAML/JSON)."),
    prometheus_url: str = typer.Option(None, "--prometheus-url", envvar="FACTPATCH_PROMETHEUS_URL",
                                       help="Prometheus that answers analysis gates of metric 'prometheus' "
                                            "(e.g. http://prometheus:9090); none: such gates are refused."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    log_format: str = typer.Option("text", "--log-format", envvar="FACTPATCH_LOG_FORMAT",
                                   help="text, or json: one object per line with time, level, logger, message and "
                                        "the rollout/shard fields of state changes."),
) -> None:
    """Start the gRPC control plane (patch store, fleet, rollouts, reconciler) and the OpenAI gateway."""
    from factpatch.core import tracing
    from factpatch.server.app import ControlPlaneServer, ServeConfig
    from factpatch.server.cli import logs
    from factpatch.server.gateway.app import GatewayConfig
    from factpatch.server.monitors.config import MonitorError
    from factpatch.server.probes.config import ProbeConfigError
    from factpatch.server.state.dir_lock import StateDirInUse

    tokens_file = client_tokens_option(client_tokens_file, old_tokens_file)
    if prometheus_url and not prometheus_url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{prometheus_url!r} is not an http(s) URL", param_hint="--prometheus-url")
    if log_format not in logs.FORMATS:
        raise typer.BadParameter(f"{log_format!r} is not one of {', '.join(logs.FORMATS)}", param_hint="--log-format")
    logs.configure(log_format, verbose)
    try:  # OTEL_* settings: spans are exported only when they ask for it
        tracing.setup(tracing.CONTROL_PLANE)
    except tracing.TracingConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    agent_token, agent_token_file = agent_token_options(agent_token_file, os.environ)
    shards = {}
    for s in shard:
        name, sep, url = s.partition("=")
        if not sep:
            raise typer.BadParameter(f"--shard wants NAME=URL[,AGENT_URL], got {s!r}")
        shards[name] = url
    if probes:  # refused before anything (state folder included) is created
        from factpatch.server.probes.config import load as load_probes

        try:
            load_probes(probes)
        except ProbeConfigError as e:
            typer.echo(f"error: --probes {probes}: {e}", err=True)
            raise typer.Exit(2)
    try:
        server = ControlPlaneServer(ServeConfig(
            state_dir=state_dir, listen=listen, tokens_file=tokens_file, agent_token=agent_token,
            agent_token_file=agent_token_file, agent_token_dir=agent_token_dir,
            tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca, base_dirs=list(base_dir),
            agent_ca=agent_ca, agent_client_cert=agent_client_cert, agent_client_key=agent_client_key,
            trusted_keys=list(trusted_key), require_signatures=require_signatures,
            editor_model=editor_model, reconcile_interval=reconcile_interval, drain_timeout_s=drain_timeout,
            max_patch_bytes=max_patch_mb << 20, max_weight_change=max_weight_change, prometheus_url=prometheus_url,
            shards=shards, allowed_shard_addresses=list(allow_shard_address), monitors_file=monitors, probes_file=probes,
            gateway=None if gateway_listen == "off" else GatewayConfig(listen=gateway_listen, metrics_listen=metrics_listen),
            metrics_listen=metrics_listen,
        ))
    except (ValueError, OSError, MonitorError, ProbeConfigError, StateDirInUse) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    server.serve_forever()
