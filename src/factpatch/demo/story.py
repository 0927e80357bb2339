"""The whole story on the fixture model, stage by stage.

fixture → two shards + control plane + gateway → baseline traffic (stale answers) → MEMIT patch for the
policy changes, evaluated against the gates → canary on one shard at 25 % of traffic with analysis →
promotion → revert of the whole fleet → the old answers are back. Each stage prints a compact table;
any stage that does not reach its outcome raises DemoFailed, and every process is stopped on the way out.
"""

from __future__ import annotations

import json
import secrets
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from factpatch.core import patchfile
from factpatch.fixture.build import REPORT_FILE, build, is_complete, load_world

from . import scenario
from .traffic import Traffic, error_summary, stale_rates

console = Console()


# Other facts of the world the patch is checked against besides its neighbours (the regression set).
REGRESSION_FACTS = 500
# After promotion the fleet may still answer this share of requests with the old value: the ship gate
# lets a patch miss up to 20 % of held-out phrasings (generalization >= 0.8), and 48 requests drawn from
# 18 questions scatter the share (README, "What `make demo` shows", has the numbers).
PROMOTED_MAX_STALE = 0.2

class DemoFailed(RuntimeError):
    """A stage did not reach its expected outcome."""


@dataclass
class Settings:
    out: Path
    fast: bool = False
    requests_per_phase: int = 120
    canary_percent: int = 25
    analysis_seconds: int = 20
    min_samples: int = 20
    concurrency: int = 4
    fixture: Path | None = None  # another build of the fixture (None: the recipe's own, built on first use)

    @classmethod
    def for_mode(cls, out: Path, fast: bool, fixture: Path | None = None) -> "Settings":
        if fast:  # the end-to-end test: same story, fewer requests, a shorter analysis window
            return cls(out=out, fast=True, requests_per_phase=48, analysis_seconds=8, min_samples=8, fixture=fixture)
        return cls(out=out, fixture=fixture)


@dataclass
class Outcome:
    stages: list[dict[str, Any]] = field(default_factory=list)
    edit_eval: dict[str, Any] = field(default_factory=dict)
    rollout: dict[str, Any] = field(default_factory=dict)
    patch_digest: str = ""

    def stage(self, name: str, seconds: float, **numbers: Any) -> None:
        self.stages.append({"stage": name, "seconds": round(seconds, 1), **numbers})


def _short(version: str) -> str:
    return "base" if version in ("base", "") else version.removeprefix("sha256:")[:12]


def _errors(samples) -> str:
    text = error_summary(samples)
    return f"; errors: {text}" if text else ""


def _rates_table(title: str, samples) -> Table:
    t = Table(title=title, title_justify="left")
    for c in ("version", "requests", "stale answers", "updated answers", "errors"):
        t.add_column(c, justify="right" if c != "version" else "left")
    for version, r in sorted(stale_rates(samples).items()):
        t.add_row(_short(version), str(r["requests"]), f"{r['stale']:.0%}", f"{r['updated']:.0%}", str(r["errors"]))
    return t


def monitor_rates(gateway_url: str) -> dict[str, float]:
    """Stale-value monitor view from the gateway's /metrics: share of responses a stale monitor
    matched, per version. Every monitor evaluates every response, so the response count is one
    monitor's evaluated count (pooling them would divide by responses × monitors)."""
    text = httpx.get(f"{gateway_url}/metrics", timeout=10).text
    matches: dict[str, float] = {}
    evaluated: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "factpatch_monitor_matches_total" and s.labels.get("monitor", "").startswith("stale"):
                matches[s.labels["version"]] = matches.get(s.labels["version"], 0) + s.value
            elif s.name == "factpatch_monitor_evaluated_total" and s.labels.get("monitor", "").startswith("stale"):
                evaluated[s.labels["version"]] = max(evaluated.get(s.labels["version"], 0), s.value)
    return {v: matches.get(v, 0) / n for v, n in evaluated.items() if n}


class Story:
    def __init__(self, settings: Settings):
        self.s = settings
        self.out = Outcome()
        self.stack = ExitStack()
        self.agent_token = secrets.token_urlsafe(24)
        self.operator_token = secrets.token_urlsafe(24)

    # --- stages ---------------------------------------------------------------------------------

    def fixture(self) -> None:
        t0 = time.time()
        if self.s.fixture is not None:
            if not is_complete(self.s.fixture):
                raise DemoFailed(f"--fixture {self.s.fixture}: not a complete fixture build "
                                 "(make one with `factpatch fixture build --seed N --out DIR`)")
            self.model_dir = self.s.fixture
            console.print(f"[dim]fixture: {self.model_dir} (given)[/dim]")
        else:
            self.model_dir = build(log=lambda m: console.print(f"[dim]{m}[/dim]"))
        self.world = load_world(self.model_dir)
        rep = json.loads((self.model_dir / REPORT_FILE).read_text())
        self.out.stage("fixture", time.time() - t0, trained=rep["trained_pairs"]["whole_object"],
                       paraphrases=rep["heldout_pairs"]["whole_object"])
        console.print(f"[bold]1 · fixture[/bold] {self.model_dir.name}: {rep['parameters']:,} parameters, "
                      f"{rep['facts']} facts; accuracy {rep['trained_pairs']['whole_object']:.1%} trained, "
                      f"{rep['heldout_pairs']['whole_object']:.1%} paraphrases")

    def fleet(self) -> None:
        from factpatch.harness.control_plane_process import ControlPlaneProcess
        from factpatch.harness.shard_process import ShardServer, start_all
        from factpatch.server.cli.client import Client

        t0 = time.time()
        console.print("[bold]2 · fleet[/bold] starting two vLLM shards with the factpatch plugin …")
        logs = self.s.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.shards = {name: ShardServer(self.model_dir, log_path=logs / f"{name}.log") for name in ("s0", "s1")}
        for sh in self.shards.values():
            sh.token = self.agent_token
            self.stack.callback(sh.stop)
        try:
            start_all(list(self.shards.values()))
        except Exception as e:
            raise DemoFailed(f"a shard did not start: {e}") from e

        tokens = self.s.out / "tokens.yaml"
        tokens.write_text(f"- {{principal: demo-release, role: operator, token: {self.operator_token}}}\n")
        tokens.chmod(0o600)
        self.cp = ControlPlaneProcess(self.s.out / "state", tokens, self.agent_token,
                                      {n: sh.endpoints for n, sh in self.shards.items()}, base_dirs=[str(self.model_dir)])
        self.cp.log_path = logs / "control-plane.log"
        self.cp.start()
        self.stack.callback(self.cp.stop)
        self.client = Client(self.cp.target, self.operator_token)
        self.stack.callback(self.client.close)
        self._wait_routable()
        self.traffic = Traffic(self.cp.gateway_url, scenario.questions(self.world), concurrency=self.s.concurrency)
        self.stack.callback(self.traffic.close)

        t = Table(title="fleet", title_justify="left")
        for c in ("component", "address", "started in"):
            t.add_column(c)
        for n, sh in self.shards.items():
            t.add_row(f"shard {n} (vLLM + plugin)", sh.url, f"{sh.startup_s:.0f} s")
        t.add_row("control plane (gRPC)", self.cp.target, "")
        t.add_row("gateway (OpenAI API, /metrics)", self.cp.gateway_url, "")
        console.print(t)
        self.out.stage("fleet", time.time() - t0, shards=len(self.shards))

    def _wait_routable(self, timeout: float = 60) -> None:
        from factpatch.v1 import fleet_pb2

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shards = self.client(self.client.fleet.ListShards, fleet_pb2.ListShardsRequest()).shards
            if shards and all(s.base_fingerprint for s in shards):
                try:
                    if httpx.get(f"{self.cp.gateway_url}/v1/models", timeout=5).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.3)
        raise DemoFailed("the gateway did not see the shards in time")

    def baseline(self) -> None:
        t0 = time.time()
        samples = self.traffic.send("baseline", self.s.requests_per_phase)
        rates = stale_rates(samples)
        console.print(_rates_table("3 · traffic before the change: the model answers the old policy", samples))
        self.baseline_answers = {s.prompt: s.answer for s in samples if s.status == 200}
        if rates.get("base", {}).get("stale", 0) < 0.8:
            raise DemoFailed(f"expected the base model to give the old values, stale rate {rates}")
        self.out.stage("baseline", time.time() - t0, stale_base=rates["base"]["stale"], requests=len(samples))

    def edit(self) -> None:
        from factpatch.editor.layers import default_layers
        from factpatch.editor.pipeline import EditOptions, evaluate_patch, heldout_texts, load, run_edit

        t0 = time.time()
        spec = scenario.edit_spec(self.world)
        t = Table(title="4 · the policy change (edit spec)", title_justify="left")
        for c in ("subject", "relation", "old", "new", "ticket"):
            t.add_column(c)
        for e in spec.edits:
            t.add_row(e.subject, e.relation, e.target_old, e.target_new, e.provenance.get("ticket", ""))
        console.print(t)

        loaded = load(self.model_dir)
        layers = default_layers(loaded.adapter.n_layers, "memit", loaded.defaults)  # the editor's defaults
        console.print(f"computing a MEMIT patch (layers {', '.join(map(str, layers))}) …")
        result = run_edit(loaded, spec.edits, EditOptions(method="memit", layers="default", progress=False))
        report = evaluate_patch(loaded, result.patch, spec.edits, heldout_texts(loaded, None), n_regression=REGRESSION_FACTS)
        result.patch.manifest["eval"] = report["metrics"]
        self.patch_path = self.s.out / "policy-update.fpatch"
        self.digest = patchfile.write(result.patch, self.patch_path)
        self.out.patch_digest = self.digest
        self.out.edit_eval = {"layers": result.layers, **report}

        g = Table(title=f"edit quality · MEMIT on layers {result.layers} · {_short(self.digest)}", title_justify="left")
        for c in ("gate", "value", "threshold", ""):
            g.add_column(c)
        for row in report["gates"]:
            ok = row["passed"]
            g.add_row(row["gate"], "-" if row["value"] is None else f"{row['value']:.4g}", f"{row['op']} {row['threshold']}",
                      "[green]pass[/green]" if ok else ("[red]FAIL[/red]" if ok is False else "n/a"))
        console.print(g)
        if not report["passed"]:
            raise DemoFailed("the patch failed its quality gates; it may not ship")
        self.out.stage("edit", time.time() - t0, efficacy=report["metrics"].get("efficacy"),
                       generalization=report["metrics"].get("generalization"))

    def canary(self) -> None:
        from factpatch.server.cli.client import new_request_id
        from factpatch.v1 import rollout_pb2

        t0 = time.time()
        pushed = self.client.push(self.patch_path.read_bytes())
        gates = [
            rollout_pb2.AnalysisGate(metric="stale_value_rate", max_ratio=0.5, min_samples=self.s.min_samples),
            rollout_pb2.AnalysisGate(metric="error_rate", max_ratio=2.0, max_value=0.02, min_samples=self.s.min_samples),
        ]
        r = self.client(self.client.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
            request_id=new_request_id(), patch=pushed.digest, canary_shards=["s0"],
            canary_traffic_percent=self.s.canary_percent, gates=gates, analysis_seconds=self.s.analysis_seconds))
        self.rollout_id = r.id
        console.print(f"[bold]5 · canary[/bold] rollout {r.id}: shard s0 at {self.s.canary_percent} % of traffic, "
                      f"analysis for {self.s.analysis_seconds} s …")
        S = rollout_pb2.RolloutState
        watching = {S.Value("ROLLOUT_STATE_PROGRESSING"), S.Value("ROLLOUT_STATE_ANALYZING")}
        state = {"r": r}

        def settled() -> bool:
            state["r"] = self.client(self.client.rollouts.GetRollout, rollout_pb2.GetRolloutRequest(id=r.id))
            return state["r"].state not in watching or state["r"].current_step > 0

        samples = self.traffic.send_until("canary", settled, max_requests=4000)
        r = state["r"]
        console.print(_rates_table("traffic during the canary window", samples))
        rates = stale_rates(samples)
        monitors = monitor_rates(self.cp.gateway_url)
        canary = rates.get(pushed.digest)
        if canary is None or "base" not in rates:
            raise DemoFailed(f"traffic did not reach both versions: {sorted(rates)}")
        # The split starts once s0 holds the patch; requests before that all went to base by design.
        first = min(x.t for x in samples if x.version == pushed.digest)
        in_split = [x for x in samples if x.t >= first]
        share = canary["requests"] / len(in_split)
        console.print(f"canary share of requests {share:.0%} · stale-value monitors (gateway /metrics): "
                      + ", ".join(f"{_short(v)} {x:.0%}" for v, x in sorted(monitors.items())))
        if not canary["stale"] < rates["base"]["stale"]:
            raise DemoFailed(f"the canary's stale rate {canary['stale']:.0%} is not below base's {rates['base']['stale']:.0%}")
        self.out.rollout["canary"] = {"share": share, "stale_canary": canary["stale"], "stale_base": rates["base"]["stale"],
                                      "monitor_rates": monitors, "requests": len(samples)}
        self._analysis_table(r)
        self.out.stage("canary", time.time() - t0, stale_canary=canary["stale"], stale_base=rates["base"]["stale"],
                       canary_share=round(share, 3))

    def _analysis_table(self, r) -> None:
        from factpatch.v1 import rollout_pb2

        runs = list(r.analysis)
        t = Table(title="canary analysis", title_justify="left")
        for c in ("gate", "canary", "base", "samples (canary/base)", "outcome"):
            t.add_column(c)
        rows = []
        for run in runs:
            for g in run.gates:
                outcome = rollout_pb2.AnalysisDecision.Name(g.outcome).removeprefix("ANALYSIS_DECISION_")
                t.add_row(g.gate.metric, f"{g.canary_value:.3f}", f"{g.base_value:.3f}",
                          f"{g.canary_samples}/{g.base_samples}", outcome)
                rows.append({"gate": g.gate.metric, "canary": g.canary_value, "base": g.base_value, "outcome": outcome})
        if rows:
            console.print(t)
        self.out.rollout["analysis"] = rows

    def promote(self) -> None:
        from factpatch.server.cli.client import new_request_id
        from factpatch.v1 import rollout_pb2

        t0 = time.time()
        S = rollout_pb2.RolloutState
        r = self.client(self.client.rollouts.GetRollout, rollout_pb2.GetRolloutRequest(id=self.rollout_id))
        how = "promoted by the analysis (every gate passed)"
        if r.state == S.Value("ROLLOUT_STATE_PAUSED"):
            how = "promoted by the operator"
            r = self.client(self.client.rollouts.Promote, rollout_pb2.PromoteRequest(
                request_id=new_request_id(), id=r.id, etag=r.etag))
        deadline = time.monotonic() + 120
        while r.state != S.Value("ROLLOUT_STATE_SUCCEEDED"):
            if r.state in (S.Value("ROLLOUT_STATE_FAILED"), S.Value("ROLLOUT_STATE_ABORTED")) or time.monotonic() > deadline:
                raise DemoFailed(f"rollout ended {S.Name(r.state)}: {r.reason} {r.message}")
            time.sleep(0.5)
            r = self.client(self.client.rollouts.GetRollout, rollout_pb2.GetRolloutRequest(id=self.rollout_id))
        samples = self.traffic.send("promoted", self.s.requests_per_phase)
        console.print(_rates_table(f"6 · promoted ({how}): every shard serves the patch", samples))
        rates = stale_rates(samples)
        patched = rates.get(self.out.patch_digest, {})
        if set(rates) != {self.out.patch_digest} or patched.get("stale", 1) > PROMOTED_MAX_STALE:
            raise DemoFailed(f"after promotion expected only the patch with few stale answers, got {rates}"
                             + _errors(samples))
        self.out.rollout["promoted"] = {"how": how, "stale": patched["stale"], "updated": patched["updated"]}
        self.out.stage("promote", time.time() - t0, stale=patched["stale"], updated=patched["updated"])

    def revert(self) -> None:
        from factpatch.server.cli.client import new_request_id
        from factpatch.v1 import rollout_pb2

        t0 = time.time()
        console.print("[bold]7 · revert[/bold] the whole fleet to the base checkpoint: `factpatch ctl revert`")
        resp = self.client(self.client.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=new_request_id()))
        revert_s = time.time() - t0
        if not all(x.ok for x in resp.results):
            raise DemoFailed(f"revert failed on some shard: {resp}")
        samples = self.traffic.send("reverted", self.s.requests_per_phase)
        console.print(_rates_table(f"traffic after the revert ({revert_s:.2f} s for the whole fleet)", samples))
        rates = stale_rates(samples)
        same = [s.answer == self.baseline_answers[s.prompt] for s in samples if s.prompt in self.baseline_answers]
        console.print(f"answers identical to the baseline's for the same question: {sum(same)}/{len(same)}")
        if set(rates) != {"base"} or not all(same):
            raise DemoFailed(f"after revert expected the exact base answers, got {rates}" + _errors(samples))
        self.out.stage("revert", time.time() - t0, revert_seconds=round(revert_s, 3), stale=rates["base"]["stale"],
                       identical=f"{sum(same)}/{len(same)}")

    # --- driver ---------------------------------------------------------------------------------

    def run(self) -> Outcome:
        from .report import write_report

        t0 = time.time()
        with self.stack:
            try:
                for step in (self.fixture, self.fleet, self.baseline, self.edit, self.canary, self.promote, self.revert):
                    step()
            finally:
                if hasattr(self, "traffic"):
                    write_report(self.s.out, self.out, self.traffic.samples)
        summary = Table(title=f"factpatch demo · {time.time() - t0:.0f} s · report in {self.s.out}", title_justify="left")
        for c in ("stage", "seconds", "numbers"):
            summary.add_column(c)
        for st in self.out.stages:
            nums = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in st.items() if k not in ("stage", "seconds"))
            summary.add_row(st["stage"], f"{st['seconds']}", nums)
        console.print(summary)
        return self.out
