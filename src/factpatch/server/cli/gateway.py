"""`factpatch gateway`: the OpenAI gateway as a process of its own, fed by the control plane."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

import typer

from factpatch.server.cli.logs import FORMATS


def gateway(
    control_plane: str = typer.Option("127.0.0.1:50051", "--control-plane", envvar="FACTPATCH_ADDRESS",
                                      help="Control plane host:port (its routing watch)."),
    token_file: Path = typer.Option(None, "--token-file", envvar="FACTPATCH_TOKEN_FILE", exists=True, dir_okay=False,
                                    help="File whose first line is this gateway's token (role gateway; "
                                         "else $FACTPATCH_TOKEN), read again at every reconnect and report, "
                                         "so a rotated token needs no restart."),
    listen: str = typer.Option("127.0.0.1:8080", "--listen", help="OpenAI API address (host:port; port 0 picks one)."),
    metrics_listen: str = typer.Option(None, "--metrics-listen",
                                       help="Serve /metrics here (host:port) instead of on --listen."),
    gateway_id: str = typer.Option(None, "--gateway-id", envvar="FACTPATCH_GATEWAY_ID",
                                   help="This gateway's name in the fleet (default: host name and process id)."),
    client_tokens_file: Path = typer.Option(None, "--client-tokens-file", exists=True, dir_okay=False,
                                            help="Operator tokens that may force a route (X-Factpatch-Route); "
                                                 "none: forced routes are refused."),
    tls_ca: Path = typer.Option(None, "--tls-ca", exists=True, help="CA that signed the control plane's certificate."),
    tls_cert: Path = typer.Option(None, "--tls-cert", exists=True, help="Client certificate (mTLS)."),
    tls_key: Path = typer.Option(None, "--tls-key", exists=True, help="Client key (mTLS)."),
    swap_wait: float = typer.Option(30.0, "--swap-wait", min=0.0,
                                     help="Seconds a request waits for a shard when every one it could go to is "
                                          "being swapped."),
    verbose: bool = typer.Option(False, "-v", "--verbose"),
    log_format: str = typer.Option("text", "--log-format", envvar="FACTPATCH_LOG_FORMAT", help="text or json."),
) -> None:
    """Run the OpenAI gateway apart from the control plane: it keeps serving with the last routing
    state it received while the control plane is down, and picks the control plane up again when
    it returns."""
    from factpatch.core.tokens import TokenFile, WeakTokenError
    from factpatch.server.api.auth import ClientTokensFile, operator_token_check
    from factpatch.server.cli import logs
    from factpatch.server.cli.session import bearer_token, control_plane_channel
    from factpatch.server.gateway.app import Gateway, GatewayConfig
    from factpatch.server.gateway.control_link import ControlLink, FollowedMonitors
    from factpatch.server.gateway.routing import Router, SwapTracker
    from factpatch.server.metrics import Metrics

    if log_format not in FORMATS:
        raise typer.BadParameter(f"{log_format!r} is not one of {', '.join(FORMATS)}", param_hint="--log-format")
    logs.configure(log_format, verbose)
    if token_file:
        try:  # read again at every reconnect and report: a rotated token needs no restart
            token: str | TokenFile = TokenFile(token_file, "--token-file")
        except WeakTokenError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2)
    else:
        token = bearer_token(None, os.environ.get("FACTPATCH_TOKEN", ""))
    if not token:
        typer.echo("error: no token for the control plane: pass --token-file or set $FACTPATCH_TOKEN "
                   "(a token of role gateway)", err=True)
        raise typer.Exit(2)
    channel = control_plane_channel(control_plane, tls_ca, tls_cert, tls_key)
    may_force = (lambda t: False)
    client_tokens = None
    if client_tokens_file:
        try:
            client_tokens = ClientTokensFile(client_tokens_file)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--client-tokens-file")
        may_force = operator_token_check(client_tokens)

    metrics = Metrics()
    if client_tokens:  # a broken edit of the file shows here too, not only in the log
        metrics.sources(client_tokens=client_tokens.state)
    router = Router(None, SwapTracker())
    monitors = FollowedMonitors(metrics)
    link = ControlLink(channel, token, gateway_id or f"{socket.gethostname()}-{os.getpid()}", router, monitors)
    link.export(metrics.registry)  # the shard and rollout gauges are the control plane's to export
    gw = Gateway(GatewayConfig(listen=listen, metrics_listen=metrics_listen, swap_wait_s=swap_wait), router,
                 monitors, metrics, link, may_force_route=may_force,
                 ready=lambda: link.snapshots > 0)  # stays ready while the control plane is away
    try:
        gw.start()
    except OSError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    link.start()
    port_file = os.environ.get("FACTPATCH_GATEWAY_PORT_FILE")
    if port_file:  # lets a supervisor (or a test) find a port chosen with :0
        Path(port_file).write_text(str(gw.port))
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    link.stop()
    gw.stop()
