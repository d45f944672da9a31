"""Trials on a Prefect process work pool: launch latency, throughput, and the GPU-limit hand-off.

It starts `prefect server start` on loopback, deploys deployments/prefect.yaml (the trial flow as
`prefect-hpo-trial/process`) to a `process` pool, starts one `prefect worker` with
`PREFECT_WORKER_QUERY_SECONDS=1`, and runs three experiments with `prefect-hpo run`, their trials
as flow runs of that worker. Every trial writes the wall-clock time its command started and
ended; the flow records when it launched each trial (the flow run's creation) and when it
collected the result.

* latency: 6 trials that return at once, one at a time. launch -> command start is the
  worker's pick-up plus the flow-run process start; command end -> result in the flow is the flow
  run's completion plus the HPO flow's poll (poll interval 0.5 s).
* throughput: 8 trials of 5 s, 4 at a time; ideal wall time 10 s.
* GPU hand-off: 6 trials of 8 s, 1 "GPU" each, 4 at a time, sharing a concurrency limit of 2:
  ideal 24 s; reported is how long a freed slot stays idle before the next trial's command starts,
  split by whether that trial's flow run was already running (waiting for the slot, so the gap is
  the limit's hand-off, bounded by ``slot_retry_s`` = 2 s) or still starting up.

Example (about 3 minutes on 2 cores):
    .venv/bin/python benchmarks/bench_work_pool.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "flows"))
from provenance import REPO_ROOT, git_revision, isolate_environment  # noqa: E402
from serverkit import BIN, prefect_cli, running_server, start_worker, stop_worker  # noqa: E402  (the tests' server kit)
TRIAL = """
import os, time
from prefect_hpo.trial import get_params, report
p = get_params()
mark = lambda kind: open(os.environ["MARKS"], "a").write(
    f"{kind} {os.environ['PREFECT_HPO_EXPERIMENT']} {os.environ['PREFECT_HPO_TRIAL_INDEX']} {time.time()}\\n")
mark("start")
time.sleep(float(os.environ["TRIAL_SECONDS"]))
mark("end")
report(loss=p["x"])
"""


def run_experiment(env: dict[str, str], scratch: Path, name: str, trials: int, parallel: int, seconds: float,
                   gpus: int = 0, limit: str | None = None) -> dict[str, Any]:
    marks = scratch / f"{name}.marks"
    spec = {
        "name": name,
        "parameters": [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}],
        "objectives": {"loss": "minimize"},
        "algorithm": "sobol",
        "seed": 0,
        "budget": {"trials": trials, "max_parallel": parallel},
        "trial": {
            "command": f"{shlex.quote(sys.executable)} {scratch / 'trial.py'}",
            "timeout_s": 300,
            "poll_interval_s": 0.5,
            "gpus_per_trial": gpus,
            "env": {"MARKS": str(marks), "TRIAL_SECONDS": str(seconds)},
            "work_pool": {"deployment": "prefect-hpo-trial/process", "gpu_variable": None, "concurrency_limit": limit},
        },
        "storage": f"file://{scratch / 'ckpt'}",
        "tracking_uri": f"sqlite:///{scratch / 'mlflow.db'}",
    }
    path = scratch / f"{name}.json"
    path.write_text(json.dumps(spec))
    start = time.time()
    subprocess.run([str(BIN / "prefect-hpo"), "run", str(path), "--quiet"], cwd=scratch, env=env, check=True,
                   capture_output=True, text=True, timeout=900)
    wall = time.time() - start
    doc = json.loads((scratch / "ckpt" / name / "experiment.json").read_text())
    starts, ends = {}, {}
    for line in marks.read_text().splitlines():
        kind, _, index, at = line.split()
        (starts if kind == "start" else ends)[int(index)] = float(at)
    rows = []
    for t in doc["experiment"]["trials"]:
        i = t["index"]
        launched = dt.datetime.fromisoformat(t["started_at"]).timestamp()
        collected = dt.datetime.fromisoformat(t["finished_at"]).timestamp()
        rows.append({"index": i, "launch_to_start": starts[i] - launched, "end_to_collected": collected - ends[i],
                     "start": starts[i], "end": ends[i], "status": t["status"]})
    return {"wall": wall, "rows": rows}


def flow_run_phases(name: str) -> dict[int, dict[str, float]]:
    """For each trial's flow run: when the worker took it (PENDING) and when its process had
    started Prefect and loaded the trial flow (RUNNING), from the API's state history."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    phases: dict[int, dict[str, float]] = {}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"prefect-hpo:{name}"])))
        for run in runs:
            index = int(run.name.split("-trial-")[1].split("-")[0])
            at = {"created": run.created.timestamp()}
            for state in client.read_flow_run_states(run.id):
                at.setdefault(state.type.value.lower(), state.timestamp.timestamp())
            phases[index] = at
    return phases


def handoff_gaps(rows: list[dict[str, Any]], slots: int) -> list[tuple[float, int, float]]:
    """For each trial that took a freed slot: (its command start minus the moment the slot
    freed, its index, that moment)."""
    events = sorted([(r["start"], 1, r["index"]) for r in rows] + [(r["end"], -1, r["index"]) for r in rows])
    busy, freed, gaps = 0, [], []
    for at, delta, index in events:
        if delta < 0:
            busy -= 1
            freed.append(at)
        else:
            if busy >= slots:
                raise AssertionError(f"more than {slots} trials ran at once")
            if freed:
                freed_at = freed.pop(0)
                gaps.append((at - freed_at, index, freed_at))
            busy += 1
    return gaps


def _ms(values: list[float]) -> str:
    if not values:
        return "none"
    values = sorted(values)
    return f"median {1000 * statistics.median(values):.0f} ms, max {1000 * values[-1]:.0f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every experiment's trials and trial seconds (e.g. 0.3 for a smoke run; default 1)")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-work-pool-"))
    isolate_environment(scratch)
    (scratch / "trial.py").write_text(TRIAL)
    (scratch / "tmp").mkdir()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} | git {git_revision()} | cpus {os.cpu_count()}")
    with running_server(scratch) as server_env:
        os.environ["PREFECT_API_URL"] = server_env["PREFECT_API_URL"]  # for flow_run_phases, in this process
        env = {**server_env, "PWD": str(REPO_ROOT), "TMPDIR": str(scratch / "tmp")}
        prefect_cli(env, REPO_ROOT, "work-pool", "create", "hpo-process", "--type", "process")
        prefect_cli(env, REPO_ROOT, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
        prefect_cli(env, REPO_ROOT, "gcl", "create", "gpu-bench", "--limit", "2")
        worker = start_worker(env, REPO_ROOT, "hpo-process", scratch / "worker.log")
        try:
            measure(env, scratch, args.scale)
        finally:
            stop_worker(worker)
    return 0


def measure(env: dict[str, str], scratch: Path, scale: float = 1.0) -> None:
    """The three experiments against a running server and worker; prints the table. ``scale``
    shrinks them (trials and seconds) for a quick check that the script still runs."""

    def n(trials: int) -> int:
        return max(2, round(trials * scale))

    latency = run_experiment(env, scratch, "latency", trials=n(6), parallel=1, seconds=0.0)
    rows = latency["rows"]
    print("\n| measure | result |\n|---|---|")
    print(f"| launch -> trial command starts ({len(rows)} trials, 1 at a time) | {_ms([r['launch_to_start'] for r in rows])} |")
    print(f"| trial command ends -> result in the HPO flow | {_ms([r['end_to_collected'] for r in rows])} |")
    print(f"| per trial, end to end (wall / trials) | {latency['wall'] / len(rows):.1f} s (flow start included) |")
    phases = flow_run_phases("latency")
    starts = {r["index"]: r["start"] for r in rows}
    launched = {r["index"]: r["start"] - r["launch_to_start"] for r in rows}
    create = [p["created"] - launched[i] for i, p in phases.items()]
    pickup = [p["pending"] - p["created"] for p in phases.values()]
    boot = [p["running"] - p["pending"] for p in phases.values()]
    body = [starts[i] - p["running"] for i, p in phases.items()]
    print(f"| of which: launch -> flow run created (MLflow run, run_deployment) | {_ms(create)} |")
    print(f"| of which: flow run created -> taken by the worker (PENDING) | {_ms(pickup)} |")
    print(f"| of which: PENDING -> RUNNING (new process: imports, flow loaded) | {_ms(boot)} |")
    print(f"| of which: RUNNING -> trial command starts | {_ms(body)} |")
    throughput = run_experiment(env, scratch, "throughput", trials=n(8), parallel=4, seconds=5.0 * scale)
    span = max(r["end"] for r in throughput["rows"]) - min(r["start"] for r in throughput["rows"])
    tn, ts = n(8), 5.0 * scale
    print(f"| {tn} trials of {ts:g} s, 4 at a time: first start -> last end (ideal {-(-tn // 4) * ts:g} s) | {span:.1f} s |")
    print(f"| same, whole `prefect-hpo run` wall time | {throughput['wall']:.1f} s ({60 * tn / throughput['wall']:.1f} trials/min) |")
    gpu = run_experiment(env, scratch, "handoff", trials=n(6), parallel=4, seconds=8.0 * scale, gpus=1, limit="gpu-bench")
    gaps = handoff_gaps(gpu["rows"], slots=2)
    running_since = {i: p["running"] for i, p in flow_run_phases("handoff").items()}
    waiting = [gap for gap, index, freed_at in gaps if running_since[index] < freed_at]
    starting = [gap for gap, index, freed_at in gaps if running_since[index] >= freed_at]
    span = max(r["end"] for r in gpu["rows"]) - min(r["start"] for r in gpu["rows"])
    gn, gs = n(6), 8.0 * scale
    print(f"| {gn} trials of {gs:g} s, 4 at a time, sharing a limit of 2 GPUs: first start -> last end "
          f"(ideal {-(-gn // 2) * gs:g} s) | {span:.1f} s |")
    print(f"| GPU slot idle until a trial already waiting for it starts ({len(waiting)} hand-offs) | {_ms(waiting)} |")
    print(f"| GPU slot idle until a trial whose flow run was still starting starts ({len(starting)}) | {_ms(starting)} |")


if __name__ == "__main__":
    raise SystemExit(main())
