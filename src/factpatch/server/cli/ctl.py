"""`factpatch ctl`: the control plane's command line for release tooling and operators.

Exit codes: 0 ok · 2 bad input · 3 not found · 4 conflict / precondition · 5 not authenticated or
not allowed · 6 control plane unreachable or deadline passed · 7 the rollout ended FAILED or
ABORTED · 8 `probe run` found a condition · 9 `revert` / `rollback` left a shard behind · 1 anything
else (`audit verify` exits 1 on a broken chain). `--json` prints the API message as JSON; errors go to
stderr as `CODE/REASON: message` (or a JSON object with --json).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import typer
import yaml
from rich.console import Console
from rich.table import Table

from factpatch.server.cli.ctl_audit import audit_app
from factpatch.server.cli.ctl_monitors import monitors_app
from factpatch.server.cli.ctl_probe import probe_app
from factpatch.server.cli.session import OUTPUTS, Ctx, bearer_token, control_plane_channel, err_console, fail
from factpatch.server.state.rollout_state import FINAL, RolloutState, from_proto
from factpatch.v1 import fleet_pb2, patch_pb2, rollout_pb2

EXIT_SHARD_BEHIND = 9  # revert / rollback answered, and a shard did not reach its version
EPILOG = ("Exit codes: 0 ok · 2 bad input · 3 not found · 4 conflict or precondition · 5 not authenticated or not "
          "allowed · 6 control plane unreachable or deadline passed · 7 the rollout ended FAILED or ABORTED · 8 a "
          "probe found a condition · 9 revert or rollback left a shard behind · 1 anything else. A re-run with the "
          "same --request-id returns the first answer and changes nothing.")
app = typer.Typer(help="Operate the factpatch control plane.", no_args_is_help=True, epilog=EPILOG)
patch_app = typer.Typer(help="Patches in the store.", no_args_is_help=True)
rollout_app = typer.Typer(help="Staged rollouts.", no_args_is_help=True)
shards_app = typer.Typer(help="The fleet: with no sub-command, list the shards.\n\nExample: factpatch ctl shards",
                         invoke_without_command=True)
app.add_typer(patch_app, name="patch")
app.add_typer(rollout_app, name="rollout")
app.add_typer(shards_app, name="shards")

EXIT_ROLLOUT_FAILED = 7
CHUNK = 1 << 20


@app.callback()
def main(
    ctx: typer.Context,
    address: str = typer.Option("127.0.0.1:50051", envvar="FACTPATCH_ADDRESS", help="Control plane host:port."),
    token: str = typer.Option("", envvar="FACTPATCH_TOKEN", show_default=False,
                              help="Bearer token (viewer or operator). Prefer $FACTPATCH_TOKEN or --token-file: "
                                   "a token on the command line shows in the process list."),
    token_file: Path = typer.Option(None, "--token-file", envvar="FACTPATCH_TOKEN_FILE", exists=True, dir_okay=False,
                                    help="File whose first line is the bearer token."),
    timeout: float = typer.Option(30.0, help="Deadline of each call, in seconds."),
    output: str = typer.Option("table", "--output", "-o", help=f"Output format: {', '.join(OUTPUTS)}."),
    as_json: bool = typer.Option(False, "--json", help="The same as -o json."),
    tls_ca: Path = typer.Option(None, "--tls-ca", exists=True, help="CA that signed the server's certificate (TLS)."),
    tls_cert: Path = typer.Option(None, "--tls-cert", exists=True, help="Client certificate (mTLS)."),
    tls_key: Path = typer.Option(None, "--tls-key", exists=True, help="Client key (mTLS)."),
    request_id: str = typer.Option("", "--request-id", envvar="FACTPATCH_REQUEST_ID", show_default=False,
                                   help="Id of this command's change (e.g. the CI job's id): run again with the same "
                                        "id, it returns the first answer and changes nothing."),
) -> None:
    if output not in OUTPUTS:
        raise typer.BadParameter(f"{output!r} is not one of {', '.join(OUTPUTS)}", param_hint="-o/--output")
    channel = control_plane_channel(address, tls_ca, tls_cert, tls_key)
    token = bearer_token(token_file, token)
    md = (("authorization", f"Bearer {token}"),) if token else ()
    ctx.obj = Ctx(channel, md, timeout, "json" if as_json else output, request_id)


# patches

def _patch_table(patches) -> None:
    t = Table("digest", "method", "layers", "edits", "base model", "deployed on")
    for p in patches:
        t.add_row(p.digest[:19], p.method, ",".join(map(str, p.layers)), str(len(p.edits)), p.base_model,
                  ",".join(p.deployed_on))
    Console().print(t)


def _patch_detail(p) -> None:
    c = Console()
    c.print(f"[bold]{p.digest}[/bold]  {p.size_bytes} bytes  method={p.method} layers={list(p.layers)}")
    c.print(f"base {p.base_model} {p.base_fingerprint}")
    for e in p.edits:
        c.print(f"  {e.subject} · {e.relation}: {e.target_old or '?'} → {e.target_new}  {e.provenance_json}")
    if p.deployed_on:
        c.print("deployed on " + ", ".join(p.deployed_on))
    c.print(f"signed by key {p.signed_by}" if p.signed_by else
            "signature stored, not verified here (no trusted key)" if p.has_signature else "unsigned")


@patch_app.command("push")
def patch_push(ctx: typer.Context, file: Path = typer.Argument(..., exists=True, dir_okay=False),
               signature: Path = typer.Option(None, "--signature", exists=True, dir_okay=False,
                                              help="Detached signature to send with it; default FILE.sig when it exists.")) -> None:
    """Upload a .fpatch file (streamed, digest checked by the server) and its signature; prints its digest.

    Example: factpatch ctl patch push refund-policy.fpatch
    """
    from factpatch.core.signing import signature_path

    c: Ctx = ctx.obj
    data = file.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    sig = signature or (signature_path(file) if signature_path(file).is_file() else None)
    header = patch_pb2.ImportPatchHeader(request_id=c.rid(), expected_digest=digest, size_bytes=len(data),
                                         signature=sig.read_bytes() if sig else b"")

    def parts():
        yield patch_pb2.ImportPatchRequest(header=header)
        for i in range(0, len(data), CHUNK):
            yield patch_pb2.ImportPatchRequest(chunk=data[i:i + CHUNK])

    try:
        p = c.patches.ImportPatch(parts(), metadata=c.metadata, timeout=c.timeout)
    except grpc.RpcError as e:
        fail(e, c.machine_readable)
    c.out(p, lambda p: print(p.digest))


@patch_app.command("list")
def patch_list(ctx: typer.Context) -> None:
    """The patches in the store, newest first.

    Example: factpatch ctl patch list -o json
    """
    c: Ctx = ctx.obj
    resp, token = patch_pb2.ListPatchesResponse(), ""
    while True:  # every page: a page stops at 1,000 patches or about 3 MiB of manifests
        page = c.call(c.patches.ListPatches, patch_pb2.ListPatchesRequest(page_size=1000, page_token=token))
        resp.patches.extend(page.patches)
        token = page.next_page_token
        if not token:
            break
    c.out(resp, lambda r: _patch_table(r.patches))


@patch_app.command("show")
def patch_show(ctx: typer.Context, digest: str) -> None:
    """One stored patch: its edits, provenance, evaluation and the shards that run it.

    Example: factpatch ctl patch show sha256:…
    """
    c: Ctx = ctx.obj
    c.out(c.call(c.patches.GetPatch, patch_pb2.GetPatchRequest(digest=digest)), _patch_detail)


@patch_app.command("delete")
def patch_delete(ctx: typer.Context, digest: str) -> None:
    """Delete a stored patch (refused while a shard or an unfinished rollout uses it).

    Example: factpatch ctl --request-id "$CI_JOB_ID" patch delete sha256:…
    """
    c: Ctx = ctx.obj
    c.out(c.call(c.patches.DeletePatch, patch_pb2.DeletePatchRequest(request_id=c.rid(), digest=digest)),
          lambda r: print(f"deleted {r.digest}"))


# rollouts



def _rollout_detail(r) -> None:
    c = Console()
    c.print(f"[bold]{r.id}[/bold] {from_proto(r.state)} step {r.current_step + 1}/{len(r.steps)} patch {r.patch[:19]} etag {r.etag}"
            + (f"  reason={r.reason}" if r.reason else "") + (f"  {r.message}" if r.message else ""))
    t = Table("shard", "previous", "desired", "active", "error")
    for s in r.shards:
        t.add_row(s.shard, s.previous_version[:19] or "base", s.desired_version[:19] or "base",
                  s.active_version[:19] or "base", f"{s.error_reason} {s.error}".strip())
    c.print(t)
    decisions = {v: k.replace("ANALYSIS_DECISION_", "") for k, v in rollout_pb2.AnalysisDecision.items()}
    for run in r.analysis:
        when = " (after promotion)" if run.post_promotion else ""
        tally = ""
        if len(run.measurements) > 1:
            tally = " [" + " ".join(decisions[m.decision] for m in run.measurements) + "]"
        c.print(f"analysis step {run.step + 1}{when}: {decisions[run.decision]}{tally}  {run.message}")
        g = Table("gate", "canary", "base", "samples (canary/base)", "outcome")
        for x in run.gates:
            g.add_row(f"{x.gate.metric} <= {x.gate.max_ratio:g}x", f"{x.canary_value:.4g}", f"{x.base_value:.4g}",
                      f"{x.canary_samples}/{x.base_samples}", decisions[x.outcome])
        c.print(g)


def _parse_gate(text: str) -> rollout_pb2.AnalysisGate:
    parts = text.split(":")
    try:
        if not 2 <= len(parts) <= 4:
            raise ValueError
        return rollout_pb2.AnalysisGate(metric=parts[0], max_ratio=float(parts[1]),
                                        min_samples=int(parts[2]) if len(parts) > 2 else 0,
                                        max_value=float(parts[3]) if len(parts) > 3 else 0.0)
    except ValueError:
        raise typer.BadParameter(f"--gate wants METRIC:MAX_RATIO[:MIN_SAMPLES[:MAX_VALUE]], got {text!r}") from None


GATE_FIELDS = {"metric", "query", "max_ratio", "min_samples", "max_value"}


def _gates_file(path: Path) -> list[rollout_pb2.AnalysisGate]:
    """Gates as data: a YAML list of {metric, query, max_ratio, min_samples, max_value} (Prometheus
    gates carry their PromQL here, which a --gate flag cannot)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise typer.BadParameter(f"{path}: {e}", param_hint="--gates-file") from None
    items = doc.get("gates") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not items:
        raise typer.BadParameter(f"{path}: expected a list of gates (or a mapping with 'gates')", param_hint="--gates-file")
    gates = []
    for i, item in enumerate(items):
        unknown = set(item) - GATE_FIELDS if isinstance(item, dict) else None
        if unknown is None or unknown:
            raise typer.BadParameter(f"{path}: gates[{i}]: " + (f"unknown fields {sorted(unknown)}" if unknown else
                                     "not a mapping") + f"; fields: {', '.join(sorted(GATE_FIELDS))}",
                                     param_hint="--gates-file")
        try:
            gates.append(rollout_pb2.AnalysisGate(**item))
        except (TypeError, ValueError) as e:
            raise typer.BadParameter(f"{path}: gates[{i}]: {e}", param_hint="--gates-file") from None
    return gates


def _wait(c: Ctx, rollout_id: str, until: set[str], timeout: float) -> rollout_pb2.Rollout:
    last = None
    try:
        for r in c.rollouts.WatchRollout(rollout_pb2.WatchRolloutRequest(id=rollout_id), metadata=c.metadata, timeout=timeout):
            last = r
            if not c.machine_readable:
                err_console.print(f"{from_proto(r.state):<12} step {r.current_step + 1}/{len(r.steps)} "
                                  + " ".join(f"{s.shard}={s.active_version[:15] or 'base'}" for s in r.shards))
            if from_proto(r.state) in until:
                return r
    except grpc.RpcError as e:
        fail(e, c.machine_readable)
    return last


def _finish(c: Ctx, r) -> None:
    c.out(r, _rollout_detail)
    if from_proto(r.state) in (RolloutState.FAILED, RolloutState.ABORTED):
        raise typer.Exit(EXIT_ROLLOUT_FAILED)


@rollout_app.command("start")
def rollout_start(
    ctx: typer.Context,
    patch: str,
    canary: list[str] = typer.Option([], "--canary", help="Canary shard (repeatable); default: the first shard."),
    shard: list[str] = typer.Option([], "--shard", help="Shards the rollout ends on (repeatable); default: all."),
    traffic: int = typer.Option(0, help="Canary traffic share in percent (for the gateway); 0: by shard count "
                                        "(the canary shards' share of the fleet, 50 with two shards)."),
    deadline: int = typer.Option(300, help="Seconds a step may take before the rollout rolls back."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the canary is live (PAUSED) or the rollout ends."),
    gate: list[str] = typer.Option([], "--gate", help="Canary analysis gate METRIC:MAX_RATIO[:MIN_SAMPLES[:MAX_VALUE]], "
                                   "e.g. stale_value_rate:0.5:50 (repeatable)."),
    gates_file: Path = typer.Option(None, "--gates-file", exists=True, dir_okay=False,
                                    help="YAML list of gates {metric, query, max_ratio, min_samples, max_value}, "
                                         "added to --gate; metric prometheus takes a PromQL query."),
    analysis_seconds: int = typer.Option(0, "--analysis-seconds", help="Analysis window per step in seconds; "
                                         "0: the control plane's default (60)."),
    measurement_seconds: int = typer.Option(0, "--measurement-seconds", min=0,
                                            help="Cut each window into measurements this long; 0: one measurement."),
    failure_limit: int = typer.Option(0, "--failure-limit", min=0, help="Failed measurements tolerated per window."),
    inconclusive_limit: int = typer.Option(0, "--inconclusive-limit", min=0,
                                           help="Inconclusive measurements tolerated per window."),
    watch_after_promotion: int = typer.Option(0, "--watch-after-promotion", min=0,
                                              help="Seconds to analyse the last step once it converged (rolls every "
                                                   "shard back on failure); 0: not watched."),
) -> None:
    """Start a rollout of a stored patch: a canary step, then the rest of the fleet.

    Example: factpatch ctl rollout start sha256:… --canary s0 --traffic 10 --gate stale_value_rate:0.5:50
    --gate error_rate:1.5:200 --measurement-seconds 30 --failure-limit 1 --watch-after-promotion 300 --wait

    Example: factpatch ctl rollout start sha256:… --gates-file gates.yaml (Prometheus gates: see docs/operator-guide.md)
    """
    c: Ctx = ctx.obj
    gates = [_parse_gate(g) for g in gate] + (_gates_file(gates_file) if gates_file else [])
    policy = rollout_pb2.AnalysisPolicy(failure_limit=failure_limit, inconclusive_limit=inconclusive_limit,
                                        measurement_seconds=measurement_seconds, post_promotion_seconds=watch_after_promotion)
    r = c.call(c.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
        request_id=c.rid(), patch=patch, canary_shards=canary, shards=shard, canary_traffic_percent=traffic,
        progress_deadline_seconds=deadline, gates=gates, analysis_seconds=analysis_seconds,
        analysis_policy=policy if policy.ByteSize() else None))
    if wait:
        r = _wait(c, r.id, {RolloutState.PAUSED, *FINAL}, deadline + 30 + (analysis_seconds or 60) * bool(gates))
    _finish(c, r)


@rollout_app.command("status")
def rollout_status(ctx: typer.Context, rollout_id: str) -> None:
    """A rollout: state, step, each shard's versions, and the analysis numbers.

    Example: factpatch ctl rollout status ro-…
    """
    c: Ctx = ctx.obj
    c.out(c.call(c.rollouts.GetRollout, rollout_pb2.GetRolloutRequest(id=rollout_id)), _rollout_detail)


@rollout_app.command("list")
def rollout_list(ctx: typer.Context, active: bool = typer.Option(False, "--active"),
                 limit: int = typer.Option(100, "--limit", min=0, help="At most this many, newest first; 0: all.")) -> None:
    """Rollouts, newest first (--active: only unfinished ones).

    Example: factpatch ctl rollout list --active
    """
    c: Ctx = ctx.obj
    resp, token = rollout_pb2.ListRolloutsResponse(), ""
    while True:  # page on until --limit: a page stops at 1,000 rollouts or about 3 MiB
        want = 1000 if limit == 0 else min(1000, limit - len(resp.rollouts))
        page = c.call(c.rollouts.ListRollouts, rollout_pb2.ListRolloutsRequest(active_only=active, page_size=want,
                                                                               page_token=token))
        resp.rollouts.extend(page.rollouts)
        token = page.next_page_token
        if not token or (limit and len(resp.rollouts) >= limit):
            break

    def render(resp):
        t = Table("id", "state", "step", "patch", "reason")
        for r in resp.rollouts:
            t.add_row(r.id, from_proto(r.state), f"{r.current_step + 1}/{len(r.steps)}", r.patch[:19], r.reason)
        Console().print(t)

    c.out(resp, render)


@rollout_app.command("watch")
def rollout_watch(ctx: typer.Context, rollout_id: str, timeout: float = typer.Option(600.0),
                  until_paused: bool = typer.Option(False, "--until-paused",
                                                    help="Return when the rollout pauses (canary live) too.")) -> None:
    """Follow a rollout until it ends (or pauses, with --until-paused).

    Example: factpatch ctl rollout watch ro-… --until-paused
    """
    c: Ctx = ctx.obj
    r = _wait(c, rollout_id, {*FINAL, *([RolloutState.PAUSED] if until_paused else [])}, timeout)
    if r is not None:
        _finish(c, r)


@rollout_app.command("promote")
def rollout_promote(ctx: typer.Context, rollout_id: str, etag: str = typer.Option(""),
                    wait: bool = typer.Option(False, "--wait")) -> None:
    """Move a PAUSED rollout to its next step; after the last step it is SUCCEEDED.

    Example: factpatch ctl rollout promote ro-… --wait
    """
    c: Ctx = ctx.obj
    r = c.call(c.rollouts.Promote, rollout_pb2.PromoteRequest(request_id=c.rid(), id=rollout_id, etag=etag))
    if wait:
        r = _wait(c, r.id, {RolloutState.PAUSED, *FINAL}, 600)
    _finish(c, r)


@rollout_app.command("abort")
def rollout_abort(ctx: typer.Context, rollout_id: str, etag: str = typer.Option(""), message: str = typer.Option(""),
                  wait: bool = typer.Option(False, "--wait")) -> None:
    """Drive every shard the rollout touched back to its previous version.

    Example: factpatch ctl rollout abort ro-… --message "stale answers on billing" --wait
    """
    c: Ctx = ctx.obj
    r = c.call(c.rollouts.Abort, rollout_pb2.AbortRequest(request_id=c.rid(), id=rollout_id, etag=etag, message=message))
    if wait:
        r = _wait(c, r.id, set(FINAL), 600)
    c.out(r, _rollout_detail)


@app.command("revert")
def revert(ctx: typer.Context, shard: list[str] = typer.Option([], "--shard", help="Shard to revert (repeatable); default: all.")) -> None:
    """Every chosen shard back to the base weights now; aborts rollouts on them.

    Example: factpatch ctl revert --shard s0
    """
    c: Ctx = ctx.obj
    resp = c.call(c.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=c.rid(), shards=shard))

    def render(resp):
        for r in resp.results:
            print(f"{r.shard}: {'base' if r.ok else 'FAILED ' + r.error_reason + ' ' + r.error} ({r.seconds * 1000:.0f} ms)")
        print(f"fleet reverted in {resp.seconds * 1000:.0f} ms" + (f"; aborted {', '.join(resp.aborted_rollouts)}" if resp.aborted_rollouts else ""))

    c.out(resp, render)
    if not all(r.ok for r in resp.results):
        raise typer.Exit(EXIT_SHARD_BEHIND)


@app.command("rollback")
def rollback(ctx: typer.Context,
             shard: list[str] = typer.Option([], "--shard", help="Shard to roll back (repeatable); default: all."),
             to: str = typer.Option("", "--to", show_default=False,
                                    help="Go back to this patch digest (one in each shard's `ctl releases`) instead "
                                         "of each shard's previous version.")) -> None:
    """Every chosen shard back to the version it ran before its current one, now; aborts rollouts on them.

    Where a rollout is still running on a shard, back means the version that rollout found there.

    Example: factpatch ctl rollback (after a patch that succeeded turns out wrong)
    """
    c: Ctx = ctx.obj
    resp = c.call(c.rollouts.Rollback, rollout_pb2.RollbackRequest(request_id=c.rid(), shards=shard, to_version=to))

    def render(resp):
        for r in resp.results:
            moved = f"{r.previous_version[:19] or 'base'} -> {r.version[:19] or 'base'}"
            print(f"{r.shard}: {moved}" + ("" if r.ok else f" FAILED {r.error_reason} {r.error}") + f" ({r.seconds * 1000:.0f} ms)")
        print(f"fleet rolled back in {resp.seconds * 1000:.0f} ms" + (f"; aborted {', '.join(resp.aborted_rollouts)}" if resp.aborted_rollouts else ""))

    c.out(resp, render)
    if not all(r.ok for r in resp.results):
        raise typer.Exit(EXIT_SHARD_BEHIND)


@app.command("releases")
def list_releases(ctx: typer.Context, shard: str = typer.Option("", "--shard", help="One shard; default: all."),
                  limit: int = typer.Option(20, "--limit", min=1, max=20, help="Releases per shard, newest first.")) -> None:
    """The versions each shard was released on, newest first: what `ctl rollback` goes back along.

    Example: factpatch ctl releases --shard s0
    """
    c: Ctx = ctx.obj
    resp = c.call(c.rollouts.ListReleases, rollout_pb2.ListReleasesRequest(shard=shard, page_size=limit))

    def render(resp):
        t = Table("shard", "version", "source", "by", "time")
        for r in resp.releases:
            t.add_row(r.shard, r.version[:19] or "base", r.source, r.principal, r.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))
        Console().print(t)

    c.out(resp, render)


# fleet

HEALTH = {v: k.replace("SHARD_HEALTH_", "") for k, v in fleet_pb2.ShardHealth.items()}


def _shard_table(shards) -> None:
    t = Table("name", "address", "agent", "health", "active", "desired", "error")
    for s in shards:
        t.add_row(s.name, s.address, s.agent_address, HEALTH[s.health], s.active_version[:19] or "base", s.desired_version[:19] or "base",
                  f"{s.last_error_reason} {s.last_error}".strip())
    Console().print(t)


@shards_app.callback()
def shards_list(ctx: typer.Context) -> None:
    """List the shards (no sub-command), or register (`add`) and remove (`remove`) one.

    Example: factpatch ctl shards
    """
    if ctx.invoked_subcommand is None:
        c: Ctx = ctx.obj
        c.out(c.call(c.fleet.ListShards, fleet_pb2.ListShardsRequest()), lambda r: _shard_table(r.shards))


@shards_app.command("add")
def shards_add(ctx: typer.Context, name: str, address: str,
               agent_address: str = typer.Option("", "--agent-address",
                                                 help="The shard agent's base URL (its own port); default ADDRESS's host, port + 1.")) -> None:
    """Register a shard: its name and its OpenAI server's base URL (both addresses must be allowed).

    Example: factpatch ctl shards add s2 http://10.0.0.12:8000 --agent-address https://10.0.0.12:8001
    """
    c: Ctx = ctx.obj
    c.out(c.call(c.fleet.RegisterShard, fleet_pb2.RegisterShardRequest(request_id=c.rid(), name=name, address=address,
                                                                       agent_address=agent_address)),
          lambda s: _shard_table([s]))


@shards_app.command("remove")
def shards_remove(ctx: typer.Context, name: str) -> None:
    """Deregister a shard (refused while an unfinished rollout includes it).

    Example: factpatch ctl shards remove s2
    """
    c: Ctx = ctx.obj
    c.out(c.call(c.fleet.DeregisterShard, fleet_pb2.DeregisterShardRequest(request_id=c.rid(), name=name)),
          lambda r: print(f"removed {r.name}"))


app.add_typer(probe_app, name="probe")
app.add_typer(audit_app, name="audit")
app.add_typer(monitors_app, name="monitors")


# Output options belong to `ctl` itself; people type them after the subcommand too.
_OUTPUT_FLAGS = {"-o": 1, "--output": 1, "--json": 0}


def hoisted_argv(argv: list[str]) -> list[str]:
    """`factpatch ctl rollout list -o json` as if it were `factpatch ctl -o json rollout list`: the output
    options, wherever they stand after `ctl`, move to just after it (no subcommand has options of
    these names). Stops at `--`."""
    if "ctl" not in argv:
        return argv
    at = argv.index("ctl") + 1
    head, rest, moved = argv[:at], [], []
    args = argv[at:]
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest += args[i:]
            break
        name = a.split("=", 1)[0]
        if name in _OUTPUT_FLAGS and "=" not in a and _OUTPUT_FLAGS[name]:
            moved += args[i:i + 2]
            i += 2
            continue
        if name in _OUTPUT_FLAGS:
            moved.append(a)
        else:
            rest.append(a)
        i += 1
    return head + moved + rest


def register(root: typer.Typer) -> None:
    from factpatch.server.cli.gateway import gateway
    from factpatch.server.cli.serve import serve

    root.command("serve")(serve)
    root.command("gateway")(gateway)
    root.add_typer(app, name="ctl")


