"""`factpatch ctl probe`: run the live edit probes once and read the conditions (release checklists).

`probe run` exits 8 when a policy condition holds after the run, or when a shard could not be
probed, so a checklist step fails on it.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from factpatch.server.cli.session import Ctx
from factpatch.v1 import probe_pb2, probe_pb2_grpc

EXIT_CONDITION = 8
probe_app = typer.Typer(help="Live edit probes: does every deployed edit still hold?", no_args_is_help=True)

OUTCOME = {v: k.removeprefix("PROBE_OUTCOME_").lower() for k, v in probe_pb2.ProbeOutcome.items()}
CONDITION = {v: k.removeprefix("CONDITION_TYPE_").lower() for k, v in probe_pb2.ConditionType.items()}


def _stub(c: Ctx):
    return probe_pb2_grpc.ProbeServiceStub(c.channel)


def _pct(hits: int, n: int) -> str:
    return f"{hits / n:.0%} ({hits}/{n})" if n else "-"


def render_report(report) -> None:
    con = Console()
    t = Table("shard", "version", "outcome", "edits", "paraphrases", "regression agreement", "seconds", title="probe results",
              title_justify="left")
    for r in report.results:
        t.add_row(r.shard, r.version[:19] or "base", OUTCOME[r.outcome] + (f": {r.detail}" if r.detail else ""),
                  _pct(r.edit_hits, r.edit_prompts), _pct(r.paraphrase_hits, r.paraphrase_prompts),
                  _pct(r.regression_agree, r.regression_prompts), f"{r.duration_seconds:.2f}")
    con.print(t)
    misses = [(r.shard, m) for r in report.results for m in r.misses]
    if misses:
        m = Table("shard", "kind", "prompt", "expected", "got", title="misses (first of each run)", title_justify="left")
        for shard, x in misses[:20]:
            m.add_row(shard, x.kind, x.prompt, x.expected, x.got)
        con.print(m)
    if report.conditions:
        c = Table("condition", "shard", "version", "value", "threshold", "message", title="conditions", title_justify="left")
        for x in report.conditions:
            c.add_row(CONDITION[x.type], x.shard, x.version[:19] or "base", f"{x.value:.4g}", f"{x.threshold:.4g}", x.message)
        con.print(c)
    else:
        con.print("no conditions in force")


def _exit_code(report) -> int:
    bad = [r for r in report.results if r.outcome != probe_pb2.PROBE_OUTCOME_OK]
    return EXIT_CONDITION if report.conditions or bad else 0


@probe_app.command("run")
def probe_run(ctx: typer.Context, shard: list[str] = typer.Option([], "--shard", help="Only this shard (repeatable).")) -> None:
    """Probe every shard (or the named ones) once now and print the results; exit 8 on a condition.

    Example: factpatch ctl probe run --shard s0
    """
    c: Ctx = ctx.obj
    report = c.call(_stub(c).RunProbes, probe_pb2.RunProbesRequest(shards=shard), timeout=max(c.timeout, 120.0))
    c.out(report, render_report)
    raise typer.Exit(_exit_code(report))


@probe_app.command("report")
def probe_report(ctx: typer.Context) -> None:
    """The latest result per shard and the conditions in force (no new run).

    Example: factpatch ctl -o json probe report
    """
    c: Ctx = ctx.obj
    report = c.call(_stub(c).GetProbeReport, probe_pb2.GetProbeReportRequest())
    c.out(report, render_report)
    raise typer.Exit(_exit_code(report))


@probe_app.command("schedule")
def probe_schedule(
    ctx: typer.Context,
    interval: float = typer.Option(..., help="Seconds between runs per shard (0: scheduled probing off)."),
    sample_size: int = typer.Option(64, help="Prompts per run at most."),
    concurrency: int = typer.Option(2, help="Requests in flight per shard at most."),
    max_busy_share: float = typer.Option(0.05, help="Largest share of a shard's time probes may take."),
) -> None:
    """Change the probe schedule (refused below the configured floor).

    Example: factpatch ctl probe schedule --interval 300 --max-busy-share 0.05
    """
    c: Ctx = ctx.obj
    s = probe_pb2.ProbeSchedule(interval_seconds=interval, sample_size=sample_size, concurrency=concurrency,
                                max_busy_share=max_busy_share)
    c.out(c.call(_stub(c).SetProbeSchedule, probe_pb2.SetProbeScheduleRequest(request_id=c.rid(), schedule=s)))
