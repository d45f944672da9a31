"""How fast a stopping decision becomes a dead process and a free slot, through the real flow.

Everything is real: Prefect's temporary server (``prefect_test_harness``), MLflow on a SQLite
file, checkpoints in a local folder, trials as processes. Every other trial (odd index) is
"hopeless": from step ``--condemn-step`` on it reports ``loss = 5``, and the spec's ``threshold``
policy (``threshold: 1``) stops it. Each trial records, with ``time.time()`` inside its own
process:

* ``condemned``: right after it flushed the report that makes the policy stop it;
* ``sigterm``: when the kill's SIGTERM arrived (its handler then exits at once).

``report -> SIGTERM`` is the stop latency the issue asks about. The flow's wait wakes as soon as
a trial's log grows (checked every 50 ms), so it is usually the poll, ``decide_stop`` and the
kill, not the poll interval; the interval only bounds it when that wake-up is missed.
``SIGTERM -> next launch`` is how long the freed slot stays empty: the next trial's
``started_at`` (recorded by the flow when it launched the process) minus the SIGTERM.

Results are printed (Markdown tables), never asserted.

    .venv/bin/python benchmarks/bench_stop_latency.py
    .venv/bin/python benchmarks/bench_stop_latency.py --trials 40 --poll 1.0 0.5 0.2
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from provenance import git_revision, isolate_environment

REPO = Path(__file__).resolve().parents[1]
SCRATCH = Path(tempfile.mkdtemp(prefix="prefect-hpo-bench-stop-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)

isolate_environment(SCRATCH)  # before prefect / mlflow are imported
sys.path.insert(0, str(REPO / "src"))

TRIAL = textwrap.dedent(
    """
    import json, os, signal, sys, time
    index = int(os.environ["PREFECT_HPO_TRIAL_INDEX"])
    out = os.path.join(os.environ["LATENCY_DIR"], f"{index}.json")
    record = {"start": time.time()}
    def save():
        with open(out, "w") as f:
            json.dump(record, f)
    def on_term(signum, frame):
        record["sigterm"] = time.time()
        save()
        os._exit(143)
    signal.signal(signal.SIGTERM, on_term)
    hopeless = index % 2 == 1
    condemn = int(os.environ["CONDEMN_STEP"])
    for step in range(1, int(os.environ["STEPS"]) + 1):
        time.sleep(float(os.environ["STEP_S"]))
        loss = 5.0 if hopeless and step >= condemn else 0.5
        print("PREFECT_HPO_REPORT " + json.dumps({"step": step, "metrics": {"loss": loss}}), flush=True)
        if hopeless and step == condemn:
            record["condemned"] = time.time()
            save()
    save()
    """
)


def percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)

def run_case(poll_s: float, args: argparse.Namespace) -> dict[str, Any]:
    """One flow run at one poll interval; the per-trial latencies it measured."""
    from prefect_hpo.flows.hpo import hpo_flow
    from prefect_hpo.storage.checkpoint import open_store
    from prefect_hpo.storage.state import ExperimentState

    work = SCRATCH / f"poll-{poll_s:g}"
    (work / "lat").mkdir(parents=True)
    (work / "trial.py").write_text(TRIAL)
    os.environ.update({"LATENCY_DIR": str(work / "lat"), "CONDEMN_STEP": str(args.condemn_step),
                       "STEPS": str(args.steps), "STEP_S": str(args.step_s)})
    name = f"stop-latency-{str(poll_s).replace('.', '-')}"
    spec = {
        "name": name,
        "parameters": [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}],
        "objectives": {"loss": "minimize"},
        "algorithm": "random",
        "seed": 0,
        "budget": {"trials": args.trials, "max_parallel": args.parallel},
        "trial": {"command": f"{shlex.quote(sys.executable)} {shlex.quote(str(work / 'trial.py'))}", "poll_interval_s": poll_s},
        "stopping": {"policy": "threshold", "threshold": 1.0, "min_steps": 1},
        "storage": f"file://{work / 'ckpt'}",
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
    }
    t0 = time.perf_counter()
    hpo_flow(spec=spec)
    wall = time.perf_counter() - t0
    store = open_store(spec["storage"])
    exp = ExperimentState.from_json(store.read(name), name).experiment
    starts = sorted(t.started_at.timestamp() for t in exp.trials if t.started_at)
    stop_latency, slot_idle, statuses = [], [], {}
    for t in exp.trials:
        statuses[t.status.value] = statuses.get(t.status.value, 0) + 1
        path = work / "lat" / f"{t.index}.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        if "condemned" in rec and "sigterm" in rec:
            stop_latency.append(rec["sigterm"] - rec["condemned"])
            later = [s for s in starts if s >= rec["sigterm"]]
            if later:
                slot_idle.append(later[0] - rec["sigterm"])
    return {"poll_s": poll_s, "wall_s": wall, "statuses": statuses, "stop_latency": stop_latency, "slot_idle": slot_idle}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20, help="trials per flow run (half of them hopeless)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--poll", type=float, nargs="+", default=[1.0, 0.2], help="poll intervals to compare (s)")
    ap.add_argument("--steps", type=int, default=12, help="steps of a trial that runs to the end")
    ap.add_argument("--step-s", type=float, default=0.13, help="seconds per step (an odd value, so reports fall at every phase of the poll)")
    ap.add_argument("--condemn-step", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the raw results here")
    args = ap.parse_args(argv)

    from prefect.testing.utilities import prefect_test_harness

    print(f"command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"git {git_revision()}, {datetime.now().astimezone().isoformat(timespec='seconds')}, "
          f"{platform.machine()} with {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    results = []
    with prefect_test_harness(server_startup_timeout=60):
        for poll_s in args.poll:
            results.append(run_case(poll_s, args))
    print("| poll interval | trials (status) | stops measured | report -> SIGTERM median | p90 | max | SIGTERM -> next launch median | max | flow wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        lat, idle = r["stop_latency"], r["slot_idle"]
        statuses = ", ".join(f"{v} {k}" for k, v in sorted(r["statuses"].items()))
        print(f"| {r['poll_s']:g} s | {statuses} | {len(lat)} | {percentile(lat, 50) * 1000:.0f} ms | "
              f"{percentile(lat, 90) * 1000:.0f} ms | {max(lat, default=float('nan')) * 1000:.0f} ms | "
              f"{percentile(idle, 50) * 1000:.0f} ms | {max(idle, default=float('nan')) * 1000:.0f} ms | {r['wall_s']:.1f} s |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
