"""Control-plane benchmark on two real vLLM shards (fixture model).

    .venv/bin/python -m bench.control_plane_bench [--rounds 5] [--read-seconds 3]

Writes bench/results/control_plane.json:
- RevertToBase for the whole fleet: from the call until every shard serves base weights (the call
  answers after every shard confirmed, then one completion per shard is timed on top), against the
  alternative of restarting the shards on their checkpoints (stop, start, first completion), both
  shards in parallel in both cases.
- Rollback to the previous patch (two patches released one after the other; each round goes back one,
  so rounds alternate between them): the same two timings, beside the revert's in the same run.
- Promotion of a canary paused on s0: from the Promote call until s1 reports the patch and the pair
  of completions is answered (the rest of the fleet is switched by the reconciler's next pass, so
  its interval, 0.5 s here, is part of it).
- The yardstick for both: the same pair of completions (one per shard, in parallel) with nothing
  changed, timed in the same run. Two vLLM engines on a 2-core machine answer one of two parallel
  requests late whatever happens (0.6-1.1 s against 0.06-0.1 s), so the time a change adds is
  "until serving" minus this pair's time, not "until serving" itself.
- Read-call rate: GetRollout, ListShards and GetPatch from 4 client threads for a fixed time.
Measured in one run on one machine; the shards share the machine's cores with the control plane.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from factpatch.core.checkpoint import Checkpoint
from factpatch.fixture.build import ensure_fixture
from factpatch.harness.shard_process import ShardServer, start_all
from factpatch.harness.signals import stop_children_on_sigterm
from factpatch.server.app import ControlPlaneServer, ServeConfig
from factpatch.v1 import fleet_pb2, patch_pb2, rollout_pb2
from tests.server.helpers import AGENT_TOKEN, OPERATOR_TOKEN, Client, random_patch, rid, write_tokens

RESULTS = Path(__file__).parent / "results" / "control_plane.json"
W = "model.layers.3.mlp.down_proj.weight"
PROMPT = "The refund period of Harbor Support is"


def roll_out(cl: Client, digest: str) -> None:
    r = cl(cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
        request_id=rid(), patch=digest, steps=[rollout_pb2.RolloutStep(shards=["s0", "s1"])]))
    for r in cl.rollouts.WatchRollout(rollout_pb2.WatchRolloutRequest(id=r.id), metadata=cl.md, timeout=120):
        if r.state == rollout_pb2.ROLLOUT_STATE_SUCCEEDED:
            return
    raise RuntimeError(f"rollout ended {r}")


def wait_state(cl: Client, rollout_id: str, state: int) -> rollout_pb2.Rollout:
    for r in cl.rollouts.WatchRollout(rollout_pb2.WatchRolloutRequest(id=rollout_id), metadata=cl.md, timeout=120):
        if r.state == state:
            return r
    raise RuntimeError(f"rollout ended {r}")


def read_rate(target: str, digest: str, rollout_id: str, seconds: float, threads: int = 4) -> dict:
    stop = time.monotonic() + seconds
    counts = [0] * threads
    lat: list[float] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        cl = Client(target, OPERATOR_TOKEN)
        calls = [
            (cl.rollouts.GetRollout, rollout_pb2.GetRolloutRequest(id=rollout_id)),
            (cl.fleet.ListShards, fleet_pb2.ListShardsRequest()),
            (cl.patches.GetPatch, patch_pb2.GetPatchRequest(digest=digest)),
        ]
        mine = []
        while time.monotonic() < stop:
            fn, req = calls[counts[i] % 3]
            t0 = time.perf_counter()
            cl(fn, req)
            mine.append(time.perf_counter() - t0)
            counts[i] += 1
        cl.close()
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(worker, range(threads)))
    wall = time.perf_counter() - t0
    lat.sort()
    return {"threads": threads, "seconds": round(wall, 2), "calls": sum(counts),
            "calls_per_s": round(sum(counts) / wall, 1), "p50_ms": round(lat[len(lat) // 2] * 1e3, 2),
            "p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3, 2)}


def main() -> None:
    stop_children_on_sigterm()  # a SIGTERM stops the shards and servers this run started
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--read-seconds", type=float, default=3.0)
    args = ap.parse_args()
    fixture = ensure_fixture()
    fp = Checkpoint(fixture).fingerprint([W])
    patch = random_patch({W: (256, 1024)}, fp, rank=2, seed=1, scale=0.15)
    other = random_patch({W: (256, 1024)}, fp, rank=2, seed=2, scale=0.15)
    shards = [ShardServer(fixture), ShardServer(fixture)]
    for s in shards:
        s.token = AGENT_TOKEN
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        start_all(shards)
        base_answer = [s.complete(PROMPT)["choices"][0]["text"] for s in shards]
        steady_s = []
        for _ in range(2 * args.rounds):  # the yardstick: the same pair of completions, nothing changed
            t0 = time.perf_counter()
            list(pool.map(lambda s: s.complete(PROMPT), shards))
            steady_s.append(time.perf_counter() - t0)
        srv = ControlPlaneServer(ServeConfig(
            state_dir=Path(tmp) / "state", listen="127.0.0.1:0", tokens_file=write_tokens(Path(tmp) / "t.yaml"),
            agent_token=AGENT_TOKEN, reconcile_interval=0.5, shards={"s0": shards[0].endpoints, "s1": shards[1].endpoints}))
        srv.start()
        try:
            cl = Client(f"127.0.0.1:{srv.port}", OPERATOR_TOKEN)
            digest = cl.push(patch).digest
            digest_other = cl.push(other).digest
            back_s, back_serving_s, back_parts = [], [], []
            answer_on = {}
            for d in (digest, digest_other):
                roll_out(cl, d)
                answer_on[d] = [s.complete(PROMPT)["choices"][0]["text"] for s in shards]
            now = digest_other
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                resp = cl(cl.rollouts.Rollback, rollout_pb2.RollbackRequest(request_id=rid()))
                back_s.append(time.perf_counter() - t0)
                now = digest if now == digest_other else digest_other
                assert all(x.ok and x.version == now for x in resp.results), resp
                answers = list(pool.map(lambda s: s.complete(PROMPT)["choices"][0]["text"], shards))
                back_serving_s.append(time.perf_counter() - t0)
                # where the call's time went: each shard's switch as the control plane timed it, and
                # the shard's own phases
                back_parts.append({"control_plane_per_shard_s": [round(x.seconds, 4) for x in resp.results],
                                   "shard_phases_s": [{k: round(v, 4) for k, v in sh.status().json()["last_swap"].items()
                                                       if k in ("stage_s", "drain_s", "write_s", "total_s")}
                                                      for sh in shards]})
                assert answers == answer_on[now]
            revert_s, serving_s = [], []
            for _ in range(args.rounds):
                roll_out(cl, digest)
                t0 = time.perf_counter()
                resp = cl(cl.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(request_id=rid()))
                assert all(x.ok for x in resp.results), resp
                revert_s.append(time.perf_counter() - t0)
                answers = list(pool.map(lambda s: s.complete(PROMPT)["choices"][0]["text"], shards))
                serving_s.append(time.perf_counter() - t0)
                assert answers == base_answer
            promote_s, promote_serving_s = [], []
            for _ in range(args.rounds):
                assert all(x.ok for x in cl(cl.rollouts.RevertToBase, rollout_pb2.RevertToBaseRequest(
                    request_id=rid())).results)
                r = cl(cl.rollouts.StartRollout, rollout_pb2.StartRolloutRequest(
                    request_id=rid(), patch=digest, canary_shards=["s0"]))
                r = wait_state(cl, r.id, rollout_pb2.ROLLOUT_STATE_PAUSED)
                t0 = time.perf_counter()
                cl(cl.rollouts.Promote, rollout_pb2.PromoteRequest(request_id=rid(), id=r.id, etag=r.etag))
                promote_s.append(time.perf_counter() - t0)
                while shards[1].status().json()["active_version"] != digest:  # the reconciler's next pass
                    time.sleep(0.005)
                answers = list(pool.map(lambda s: s.complete(PROMPT)["choices"][0]["text"], shards))
                promote_serving_s.append(time.perf_counter() - t0)
                assert answers == answer_on[digest]
                wait_state(cl, r.id, rollout_pb2.ROLLOUT_STATE_SUCCEEDED)
            rollout_id = cl(cl.rollouts.ListRollouts, rollout_pb2.ListRolloutsRequest(page_size=1)).rollouts[0].id
            reads = read_rate(f"127.0.0.1:{srv.port}", digest, rollout_id, args.read_seconds)
            cl.close()
        finally:
            srv.stop(0)

        # the alternative: restart both shards on their checkpoints
        t0 = time.perf_counter()

        def restart(s: ShardServer) -> str:
            s.stop()
            s.start()
            return s.complete(PROMPT)["choices"][0]["text"]

        answers = list(pool.map(restart, shards))
        restart_s = time.perf_counter() - t0
        assert answers == base_answer
        for s in shards:
            s.__exit__(None, None, None)

    med = statistics.median(serving_s)
    out = {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "fleet": {"shards": 2, "model": "fixture (Llama, 6 layers x 256)", "patch": f"rank 2 on {W}"},
        "revert_to_base": {
            "rounds": args.rounds,
            "call_s_median": round(statistics.median(revert_s), 4),
            "until_serving_base_s_median": round(med, 4),
            "until_serving_base_s_all": [round(x, 4) for x in serving_s],
        },
        "rollback_to_previous_patch": {
            "rounds": args.rounds,
            "call_s_median": round(statistics.median(back_s), 4),
            "until_serving_it_s_median": round(statistics.median(back_serving_s), 4),
            "until_serving_it_s_all": [round(x, 4) for x in back_serving_s],
            "parts": back_parts,
        },
        "promotion_of_the_canary": {
            "rounds": args.rounds,
            "reconcile_interval_s": 0.5,
            "call_s_median": round(statistics.median(promote_s), 4),
            "until_every_shard_serves_it_s_median": round(statistics.median(promote_serving_s), 4),
            "until_every_shard_serves_it_s_all": [round(x, 4) for x in promote_serving_s],
        },
        "steady_pair_of_completions_s": {"median": round(statistics.median(steady_s), 4),
                                         "all": [round(x, 4) for x in steady_s]},
        "added_by_revert_s_median": round(med - statistics.median(steady_s), 4),
        "added_by_rollback_s_median": round(statistics.median(back_serving_s) - statistics.median(steady_s), 4),
        "added_by_promotion_s_median": round(statistics.median(promote_serving_s) - statistics.median(steady_s), 4),
        "rollback_vs_revert_until_serving": round(statistics.median(back_serving_s) / med, 2),
        "restart_shards": {"until_serving_base_s": round(restart_s, 2)},
        "speedup_revert_vs_restart": round(restart_s / med, 1),
        "read_calls": reads,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
