"""`factpatch ctl monitors`: the output monitors the gateway counts (stale values and patterns).

A monitor's name is the `monitor` label on the metrics and alerts; `ctl monitors list` maps a name
such as `stale:REL-142:9f3a0c21be` to the pattern it matches and the patches it watches. Only the
authenticated API shows patterns (an old value may be confidential)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from factpatch.core.version_label import version_label
from factpatch.server.cli.session import Ctx
from factpatch.v1 import monitor_pb2, monitor_pb2_grpc

monitors_app = typer.Typer(help="Output monitors: what the gateway looks for in every answer.", no_args_is_help=True)
KINDS = {"literal": monitor_pb2.MONITOR_KIND_LITERAL, "regex": monitor_pb2.MONITOR_KIND_REGEX,
         "stale": monitor_pb2.MONITOR_KIND_STALE_VALUE}


def _stub(c: Ctx):
    return monitor_pb2_grpc.MonitorServiceStub(c.channel)


def _kind_name(kind: int) -> str:
    return next((k for k, v in KINDS.items() if v == kind), "?")


def _table(r: monitor_pb2.ListMonitorsResponse) -> None:
    t = Table("name", "kind", "pattern", "subject", "source", "patches (version labels)")
    for m in r.monitors:
        t.add_row(m.name, _kind_name(m.kind), m.pattern, m.scope_subject or "-",
                  monitor_pb2.MonitorSource.Name(m.source).removeprefix("MONITOR_SOURCE_").lower(),
                  " ".join(version_label(p) for p in m.patches) or "-")
    Console().print(t)
    configured = sum(1 for m in r.monitors if m.source != monitor_pb2.MONITOR_SOURCE_PATCH)
    Console(stderr=True).print(f"{len(r.monitors)} monitors; {configured} from the file and the API (limit {r.limit})")


@monitors_app.command("list")
def monitors_list(ctx: typer.Context,
                  kind: str = typer.Option("", help="Only this kind: literal, regex or stale.")) -> None:
    """Every monitor with its pattern, scope and, for stale values, the patches that replace them.

    Example: factpatch ctl monitors list --kind stale
    """
    c: Ctx = ctx.obj
    if kind and kind not in KINDS:
        raise typer.BadParameter(f"{kind!r} is not one of {', '.join(KINDS)}", param_hint="--kind")
    c.out(c.call(_stub(c).ListMonitors, monitor_pb2.ListMonitorsRequest(kind=KINDS.get(kind, 0))), _table)


@monitors_app.command("create")
def monitors_create(ctx: typer.Context,
                    name: str = typer.Argument(..., help="The monitor label: letters, digits and _.:/-"),
                    pattern: str = typer.Argument(..., help="Text (literal) or regular expression (regex)."),
                    kind: str = typer.Option("literal", help="literal or regex."),
                    subject: str = typer.Option("", help="Only answers to prompts that mention this text."),
                    case_sensitive: bool = typer.Option(False, "--case-sensitive", help="Match case exactly.")) -> None:
    """Count answers that contain a pattern, per version and shard (operators only).

    Example: factpatch ctl monitors create old-price '\\$ ?49(\\.00)?\\b' --kind regex --subject "Harbor Support"
    """
    c: Ctx = ctx.obj
    if kind not in ("literal", "regex"):
        raise typer.BadParameter(f"{kind!r}: only literal or regex monitors are created here", param_hint="--kind")
    m = monitor_pb2.Monitor(name=name, kind=KINDS[kind], pattern=pattern, ignore_case=not case_sensitive,
                            scope_subject=subject)
    c.out(c.call(_stub(c).CreateMonitor, monitor_pb2.CreateMonitorRequest(request_id=c.rid(), monitor=m)),
          lambda r: Console().print(f"created [bold]{r.name}[/bold]"))


@monitors_app.command("delete")
def monitors_delete(ctx: typer.Context, name: str = typer.Argument(..., help="A monitor created through the API.")) -> None:
    """Delete a monitor created through the API (file and patch monitors change at their source).

    Example: factpatch ctl monitors delete old-price
    """
    c: Ctx = ctx.obj
    c.out(c.call(_stub(c).DeleteMonitor, monitor_pb2.DeleteMonitorRequest(request_id=c.rid(), name=name)),
          lambda r: Console().print(f"deleted [bold]{name}[/bold]"))
