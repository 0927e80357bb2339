"""Every benchmark, one after another, each writing its own file under bench/results/.

    python -m bench.run_all [--only plugin,editor] [--quick]

Each runs in its own process so one benchmark's engines and memory never colour the next one's
figures; a failure is reported and the rest still run, and the exit code says whether all passed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

# (name, module and its arguments, accepts --quick)
BENCHES = [
    ("monitors", "bench.monitor_bench", False),
    ("editor", "bench.editor_bench", True),
    ("editor_scale", "bench.editor_scale", False),
    ("editor_growth", "bench.editor_growth", False),
    ("rome_directions", "bench.rome_directions", False),
    ("memit_delivery", "bench.memit_delivery", False),
    ("trace", "bench.trace_bench", False),
    ("plugin", "bench.plugin_bench", False),
    ("control_plane", "bench.control_plane_bench", False),
    ("gateway", "bench.gateway_bench", False),
    ("gateway_process", "bench.gateway_bench --standalone", False),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated names: " + ",".join(b[0] for b in BENCHES))
    ap.add_argument("--quick", action="store_true", help="smaller sizes where a benchmark offers them")
    args = ap.parse_args()
    chosen = BENCHES
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = sorted(set(wanted) - {b[0] for b in BENCHES})
        if unknown:
            ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(b[0] for b in BENCHES)}")
        chosen = [b for b in BENCHES if b[0] in wanted]
    failed = []
    for name, module, quick in chosen:
        cmd = [sys.executable, "-m", *module.split()] + (["--quick"] if quick and args.quick else [])
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc} after {time.perf_counter() - t:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
