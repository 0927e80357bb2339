"""`factpatch ctl audit`: read the audit log and verify its hash chain (compliance, incident review).

`audit verify` exits 1 when the chain or a record is broken, naming the first broken record; keep the
head hash it prints somewhere else and compare it later.
"""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

from factpatch.server.cli.session import Ctx, err_console
from factpatch.v1 import audit_pb2

audit_app = typer.Typer(help="The audit log: who changed what, and proof it was not edited since.", no_args_is_help=True)
EXIT_BROKEN = 1


def _table(records) -> None:
    t = Table("id", "time (UTC)", "principal", "source", "method", "target", "result", "detail")
    for r in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.time.seconds))
        t.add_row(str(r.id), when, r.principal, r.source, r.method.rsplit("/", 1)[-1], r.target, r.result, r.detail[:60])
    Console().print(t)


@audit_app.command("list")
def audit_list(
    ctx: typer.Context,
    limit: int = typer.Option(50, min=1, max=1000, help="How many records, newest first."),
    before: int = typer.Option(0, min=0, help="Only records older than this id (the next page)."),
    principal: str = typer.Option("", help="Only this principal's records."),
) -> None:
    """The audit log, newest first: who did what, from where, and how it ended (operators only).

    Example: factpatch ctl audit list --principal release-bot --limit 20
    """
    c: Ctx = ctx.obj
    c.out(c.call(c.audit.ListAuditRecords, audit_pb2.ListAuditRecordsRequest(limit=limit, before_id=before,
                                                                              principal=principal)),
          lambda r: (_table(r.records), err_console.print(f"head {r.head_hash}")))


@audit_app.command("verify")
def audit_verify(ctx: typer.Context) -> None:
    """Check the audit log's hash chain end to end; exit 1 where a record was changed or removed.

    Example: factpatch ctl audit verify
    """
    c: Ctx = ctx.obj
    r = c.call(c.audit.VerifyAuditLog, audit_pb2.VerifyAuditLogRequest())
    c.out(r, lambda v: Console().print(
        f"[green]intact[/green]: {v.records} records, {v.events} events, head {v.head_hash}" if v.intact else
        f"[red]broken[/red] at record {v.first_broken_record}: {v.problem} ({v.records} records, {v.events} events)"))
    if not r.intact:
        raise typer.Exit(EXIT_BROKEN)
