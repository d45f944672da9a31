"""What the HPO flow itself costs: orchestration per trial, checkpoint writes, resume.

Everything is real: Prefect's temporary server (``prefect_test_harness``, started once), MLflow on a
SQLite file, checkpoints in a local folder and (unless ``--skip-s3``) in S3 served by moto's
``ThreadedMotoServer`` on 127.0.0.1, and trials as real processes. Trials return at once (a shell
``printf`` that reports ``loss = x``), so what is left of the wall time is orchestration.

1. Orchestration overhead per trial: ``hpo_flow(spec=...)`` with ``--trials`` trials, algorithm
   ``random`` (suggestion cost ~0), at each ``--parallel`` value, ``poll_interval_s`` at its
   default. ``overhead/trial = (flow wall - trials * t_proc / parallel) / trials`` where ``t_proc``
   is the trial command's own wall time (measured alone, through the launcher's wrapper shell).
   Also the fixed cost of one flow run (a 1-trial budget) and the marginal cost of one more trial.
   Breakdown: client-side timers around every task call, flow phase and MLflow/store/launcher
   call (inclusive, nested), next to the task run durations the Prefect API recorded. The server
   records task runs from events after the flow returns; every flow run here waits for it to catch
   up first (otherwise the next flow run's start is held up by seconds), and the table says how long
   that took.
2. Checkpoint writes: ``store.write`` of a 50-trial and a 500-trial experiment document (and one
   whose 500 trials reported 100 steps each), local folder vs S3; lease renewals.
3. Resume: ``hpo_flow(name=..., storage=..., resume=True)`` on a finished experiment, the parts of
   ``open_runtime``, and the rebuild from MLflow when ``experiment.json`` is gone.

Results are printed (Markdown tables), never asserted.

    .venv/bin/python benchmarks/bench_flow.py
    .venv/bin/python benchmarks/bench_flow.py --trials 20 --parallel 1 --skip-s3
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from provenance import git_revision, isolate_environment

REPO = Path(__file__).resolve().parents[1]
SCRATCH = Path(tempfile.mkdtemp(prefix="prefect-hpo-bench-flow-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)

isolate_environment(SCRATCH)  # before prefect / mlflow are imported
sys.path.insert(0, str(REPO / "src"))

SETTLE_S = 0.5  # pause after the server has caught up with a flow run, before the next one

# The trial: report loss = x at once. ``{x}`` is filled in (shell-quoted) by the flow.
TRIAL_COMMAND = "printf 'PREFECT_HPO_REPORT {\"step\": 0, \"metrics\": {\"loss\": %s}}\\n' {x}"

# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if not n:
        return math.nan
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def p90(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)] if s else math.nan


def ms(x: float) -> str:
    if x != x:  # nan
        return "-"
    return f"{x * 1e3:.0f}" if abs(x) >= 0.1 else f"{x * 1e3:.1f}" if abs(x) >= 0.001 else f"{x * 1e3:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    if title:
        print(f"\n{title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()


def command_line() -> str:
    exe = sys.executable
    rel = os.path.relpath(exe)
    if not rel.startswith(".."):
        exe = rel if rel.startswith(".") else f"./{rel}" if os.sep in rel else rel
    return shlex.join([exe, *sys.argv])


def git_rev() -> str:
    return git_revision()


def bench_spec(name: str, trials: int, parallel: int, storage: str, tracking_uri: str) -> dict[str, Any]:
    return {
        "name": name,
        "parameters": [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}],
        "objectives": {"loss": "minimize"},
        "algorithm": "random",
        "seed": 0,
        "budget": {"trials": trials, "max_parallel": parallel},
        "trial": {"command": TRIAL_COMMAND},  # poll_interval_s: default
        "storage": storage,
        "tracking_uri": tracking_uri,
    }


# --------------------------------------------------------------------------------------------
# Client-side timers: wrap module functions / methods, collect durations per label
# --------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.bucket: dict[str, list[float]] | None = None
        self.spans: dict[str, list[float]] = {}  # label -> [first start, last end]

    def record(self, label: str, t0: float, t1: float) -> None:
        if self.bucket is not None:
            self.bucket.setdefault(label, []).append(t1 - t0)
            span = self.spans.setdefault(label, [t0, t1])
            span[1] = t1

    def start(self) -> dict[str, list[float]]:
        self.bucket, self.spans = {}, {}
        return self.bucket

    def stop(self) -> dict[str, list[float]]:
        bucket, self.bucket = self.bucket or {}, None
        return bucket


REC = Recorder()


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            REC.record(label, t0, time.perf_counter())

    return wrapper


# (label, group) in the order they are printed
PHASES = ["open_runtime", "run_trials", "finish", "close_runtime", "publish_artifacts"]
FLOW_PARTS = ["engine:before", *(f"phase:{p}" for p in PHASES), "engine:after"]
#: the loop's steps (flows/loop.py TrialLoop methods) -> the task they run (None: plain code); a
#: step runs its task only when it has something to do, and trials' own task runs (``trial``)
#: span their lives beside the loop
TASKS = {"poll": None, "report": "report_trials", "decide_stop": "decide_stop", "suggest": "suggest_trials",
         "launch": "launch_trial", "save": "checkpoint"}
CALLS = [
    "ExperimentState.to_json",
    "LocalFolderStore.write",
    "S3Store.write",
    "LocalProcessLauncher.launch",
    "LocalProcessLauncher.poll",
    "LocalProcessLauncher.wait_any",
    "MlflowTracker.start_trial_run",
    "MlflowTracker.log_reports",
    "MlflowTracker.finish_trial_run",
    "MlflowTracker._upload_log",
    "MlflowTracker.__init__",
    "MlflowTracker.start_experiment_run",
    "DashboardWriter.update",
    "MlflowTracker.finish_experiment_run",
]


def instrument() -> None:
    """Timers around the flow's phases, every task call (Prefect engine included) and the calls
    inside them. The flow and the driver look these names up at call time, so rebinding the
    module attributes is enough; nothing outside this process changes."""
    from prefect_hpo.flows import hpo
    from prefect_hpo.flows.loop import TrialLoop
    from prefect_hpo.launchers.local import LocalProcessLauncher
    from prefect_hpo.storage.checkpoint import LocalFolderStore, S3Store
    from prefect_hpo.storage.state import ExperimentState
    from prefect_hpo.storage.tracking import MlflowTracker
    from prefect_hpo.storage.tracking_dashboard import DashboardWriter

    from prefect_hpo.flows.artifacts import LiveArtifacts

    for name in PHASES:
        if name == "publish_artifacts":
            # the flow's last step is LiveArtifacts.publish; the same method also re-publishes
            # during drive (throttled), and those calls count in both columns
            LiveArtifacts.publish = _timed("phase:publish_artifacts", LiveArtifacts.__dict__["publish"])  # type: ignore[method-assign]
            continue
        setattr(hpo, name, _timed(f"phase:{name}", getattr(hpo, name)))
    for name in TASKS:
        setattr(TrialLoop, name, _timed(f"task:{name}", TrialLoop.__dict__[name]))
    classes = {c.__name__: c for c in (ExperimentState, LocalFolderStore, S3Store, LocalProcessLauncher, MlflowTracker,
                                       DashboardWriter)}
    for label in CALLS:
        cls_name, meth = label.split(".")
        cls = classes[cls_name]
        setattr(cls, meth, _timed(f"call:{label}", cls.__dict__[meth]))


# --------------------------------------------------------------------------------------------
# Prefect
# --------------------------------------------------------------------------------------------


def run_flow(**kwargs: Any) -> tuple[float, Any, dict[str, list[float]]]:
    """(wall seconds, flow run id, client-side timings) of one hpo_flow call."""
    from prefect_hpo.flows.hpo import hpo_flow

    REC.start()
    t0 = time.perf_counter()
    state = hpo_flow(**kwargs, return_state=True)
    t1 = time.perf_counter()
    wall = t1 - t0
    timings = REC.stop()
    # the Prefect flow engine's own time, before the flow body's first phase and after its last
    if "phase:open_runtime" in REC.spans and "phase:publish_artifacts" in REC.spans:
        timings["engine:before"] = [REC.spans["phase:open_runtime"][0] - t0]
        timings["engine:after"] = [t1 - REC.spans["phase:publish_artifacts"][1]]
    if not state.is_completed():
        print(f"WARNING: flow run ended {state.type.value}: {state.message}", file=sys.stderr)
    flow_run_id = state.state_details.flow_run_id
    # Let the Prefect server catch up before anything else is timed: it records task runs from
    # events after the flow has returned (several seconds for a 50-trial run here), and a flow run
    # started meanwhile waits that long before its body starts.
    t2 = time.perf_counter()
    api_task_runs(flow_run_id, wait_s=120.0)
    timings["server:catch-up"] = [time.perf_counter() - t2]
    time.sleep(SETTLE_S)
    return wall, flow_run_id, timings


def api_task_runs(flow_run_id: Any, wait_s: float = 20.0) -> list[Any]:
    """The flow run's task runs as the Prefect server recorded them (events arrive asynchronously,
    so wait until all are final and no new one arrived for a second)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + wait_s
    runs: list[Any] = []
    previous = -1
    with get_client(sync_client=True) as client:
        while True:
            runs, offset = [], 0
            while True:
                page = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200, offset=offset
                )
                runs.extend(page)
                offset += len(page)
                if len(page) < 200:
                    break
            done = [r for r in runs if r.end_time is not None]
            if len(done) == len(runs) == previous or time.monotonic() > deadline:  # final and settled
                return done
            previous = len(runs)
            time.sleep(1.0)


def task_group(task_run: Any) -> str:
    return str(task_run.task_key).rsplit("-", 1)[0]


# --------------------------------------------------------------------------------------------
# S3 on moto
# --------------------------------------------------------------------------------------------

MOTO_CHILD = r"""
import logging, sys
logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
sys.stdin.read()  # until the parent closes our stdin
server.stop()
"""


class Moto:
    """A ThreadedMotoServer in a child process (default: its request handling then does not share
    this process's GIL with the flow, as a real S3 would not) or in this process (as the tests do)."""

    def __init__(self, in_process: bool) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.server: Any = None
        if in_process:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self.server.start()
            host, port = self.server.get_host_and_port()
            self.endpoint = f"http://{host}:{port}"
        else:
            self.proc = subprocess.Popen([sys.executable, "-c", MOTO_CHILD], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().strip()
            if not line.startswith("http://"):
                self.stop()
                raise RuntimeError(f"moto server did not start (got {line!r})")
            self.endpoint = line
        os.environ.update({
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        })
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            os.environ.pop(key, None)

    def bucket(self) -> str:
        import boto3

        name = f"hpo-bench-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint).create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.proc is not None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------------------------
# 1. orchestration overhead
# --------------------------------------------------------------------------------------------


def trial_process_time(reps: int) -> tuple[float, float]:
    """Median wall time of one trial process as the launcher starts it (wrapper shell + command),
    and of a bare ``sh -c 'echo'``, both spawned from this (large) Python process."""
    from prefect_hpo.launchers.local import _WRAPPER
    from prefect_hpo.spec import TrialSpec
    from prefect_hpo.tasks.launch import build_command

    command = build_command(TrialSpec(command=TRIAL_COMMAND), {"x": 0.123456789})
    folder = SCRATCH / "proc-time"
    folder.mkdir(exist_ok=True)
    wrapped, bare = [], []
    with open(folder / "output.log", "ab") as out:
        for _ in range(reps):
            (folder / "exit_code").unlink(missing_ok=True)
            t0 = time.perf_counter()
            subprocess.run(["/bin/sh", "-c", _WRAPPER, "prefect-hpo-trial", command, str(folder / "exit_code")],
                           stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, check=True)
            wrapped.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run(["/bin/sh", "-c", "echo"], stdout=subprocess.DEVNULL, check=True)
            bare.append(time.perf_counter() - t0)
    return median(wrapped), median(bare)


def trial_spans(store_uri: str, name: str) -> list[float]:
    """started_at -> finished_at of every trial in the checkpoint (launch .. result recorded)."""
    from prefect_hpo.storage.checkpoint import open_store
    from prefect_hpo.storage.state import ExperimentState

    store = open_store(store_uri)
    state = ExperimentState.from_json(store.read(name) or "", name)
    return [(t.finished_at - t.started_at).total_seconds() for t in state.experiment.trials
            if t.started_at and t.finished_at]


def step_orchestration(args: argparse.Namespace, stores: dict[str, str], tracking: str) -> dict[str, Any]:
    results: dict[str, Any] = {"runs": []}
    t_proc, t_sh = trial_process_time(20)
    results["t_proc"] = t_proc
    print(f"\ntrial process alone (launcher wrapper sh + sh -c printf), median of 20: {ms(t_proc)} ms; "
          f"bare `sh -c echo`: {ms(t_sh)} ms")

    # fixed cost of one flow run: a 1-trial budget, a fresh experiment each time
    cols = ["engine:before", *(f"phase:{p}" for p in PHASES), "engine:after"]
    fixed_rows = []
    fixed: dict[str, float] = {}
    for kind, uri in stores.items():
        walls = []
        parts: dict[str, list[float]] = {}
        for rep in range(args.fixed_reps):
            wall, _, timings = run_flow(spec=bench_spec(f"fixed-{kind}-{rep}-{uuid.uuid4().hex[:6]}", 1, 1, uri, tracking))
            walls.append(wall)
            for c in cols:
                parts.setdefault(c, []).append(sum(timings.get(c, [])))
        fixed[kind] = median(walls)
        fixed_rows.append([kind, len(walls), ms(median(walls)), ms(min(walls)), *(ms(median(parts[c])) for c in cols)])
    table(["store", "runs", "wall ms (median)", "min", "engine before ms", *(f"{p} ms" for p in PHASES), "engine after ms"],
          fixed_rows, "Fixed cost: one flow run with a 1-trial budget (medians; client-side timers; 'engine before/after' "
          "= Prefect's flow engine before the flow body's first phase and after its last)")

    rows = []
    for kind, uri in stores.items():
        for par in args.parallel:
            n = args.trials
            reps = []
            for _ in range(args.reps):
                name = f"bench-{kind}-p{par}-{uuid.uuid4().hex[:6]}"
                spec = bench_spec(name, n, par, uri, tracking)
                wall, frid, timings = run_flow(spec=spec)
                reps.append({"store": kind, "parallel": par, "name": name, "uri": uri, "spec": spec, "wall": wall,
                             "flow_run_id": frid, "timings": timings,
                             "gross": (wall - n * t_proc / par) / n,
                             "marginal": (wall - fixed[kind]) / (n - 1),
                             "drive": sum(timings.get("phase:run_trials", [])) / n,
                             "engine": sum(timings.get("engine:before", [])) + sum(timings.get("engine:after", [])),
                             "catch_up": sum(timings.get("server:catch-up", []))})
            reps.sort(key=lambda r: r["wall"])
            run = reps[(len(reps) - 1) // 2]  # the median run (the faster of the middle two)
            run["reps"] = reps
            results["runs"].append(run)
            spans = trial_spans(uri, run["name"])
            rows.append([kind, par, n, len(reps), f"{median([r['wall'] for r in reps]):.2f}", f"{reps[0]['wall']:.2f}",
                         ms(median([r["gross"] for r in reps])), ms(min(r["gross"] for r in reps)),
                         ms(median([r["marginal"] for r in reps])), ms(median([r["drive"] for r in reps])),
                         ms(median([r["engine"] for r in reps])), ms(median(spans)), ms(p90(spans)),
                         f"{median([r['catch_up'] for r in reps]):.1f}"])
    table(["store", "parallel", "trials", "runs", "flow wall s (median)", "min", "overhead ms/trial (median)", "min",
           "marginal ms/trial", "drive ms/trial", "engine before+after ms", "trial span ms (median)", "span p90",
           "server catch-up s"],
          rows, "Orchestration overhead per trial (MLflow on SQLite; trials return at once)")
    print("\noverhead/trial = (flow wall - trials x t_proc / parallel) / trials, fixed cost included;"
          "\nmarginal/trial = (flow wall - fixed cost) / (trials - 1); drive/trial = time in the flow's trial loop"
          " (hpo.run_trials) / trials;\ntrial span = started_at -> finished_at in the checkpoint (launch to result"
          " recorded), of the median run.\nThe sync flow engine joins its heartbeat thread, which sleeps in 1 s steps,"
          " at exit: flow walls are rounded up towards whole seconds,\nso 'marginal' carries up to +-1 s / trials of"
          " noise; 'drive' does not.\nserver catch-up = how long after the flow returned the Prefect server"
          " still needed to record all of its task runs\n(each timed flow run starts only after that, plus"
          f" {SETTLE_S:g} s).")
    return results


def print_breakdown(run: dict[str, Any]) -> None:
    n = int(run["spec"]["budget"]["trials"])
    timings: dict[str, list[float]] = run["timings"]
    title = f"{run['store']} store, parallel {run['parallel']}, {n} trials, flow wall {run['wall']:.2f} s"

    # phases
    rows = []
    total = 0.0
    for c in ["engine:before", *(f"phase:{p}" for p in PHASES), "engine:after"]:
        xs = timings.get(c, [])
        total += sum(xs)
        rows.append([c.replace("engine:", "flow engine ").replace("phase:", ""), ms(sum(xs)), ms(sum(xs) / n)])
    rows.append(["(unaccounted)", ms(run["wall"] - total), ms((run["wall"] - total) / n)])
    table(["phase", "total ms", "ms/trial"], rows, f"Phases ({title}, the median of {len(run['reps'])} runs)")

    # tasks: client-side (engine included) vs API (task body as Prefect recorded it)
    api = api_task_runs(run["flow_run_id"])
    expected = sum(len(timings.get(f"task:{t}", [])) for t in TASKS)
    by_group: dict[str, list[float]] = {}
    for tr in api:
        by_group.setdefault(task_group(tr), []).append(tr.total_run_time.total_seconds())
    rows = []
    tot_client = tot_api = 0.0
    for t, group in TASKS.items():
        xs = timings.get(f"task:{t}", [])
        ys = by_group.get(group, []) if group else []
        if not xs:
            continue
        tot_client += sum(xs)
        tot_api += sum(ys)
        rows.append([f"{t} ({group or 'no task'})", len(xs), len(ys), ms(sum(xs)), ms(sum(ys)), ms(median(xs)), ms(median(ys)),
                     ms((sum(xs) - sum(ys)) / max(1, len(xs))), ms(sum(xs) / n)])
    rows.append(["all tasks", expected, len(api), ms(tot_client), ms(tot_api), "", "",
                 ms((tot_client - tot_api) / max(1, expected)), ms(tot_client / n)])
    spans = by_group.get("trial_span", [])
    rows.append(["trial spans (one per trial)", "", len(spans), "", ms(sum(spans)), "", ms(median(spans)) if spans else "", "", ""])
    table(["loop step (its task)", "calls", "API runs", "client total ms", "API total ms", "client ms/call (median)", "API ms/call (median)",
           "engine ms/call (mean)", "client ms/trial"], rows,
          f"Tasks ({title}); client = timer around the task call in the flow (Prefect engine included), "
          "API = task run's total_run_time from the Prefect server; engine = (client - API) / calls")

    # calls inside
    rows = []
    for label in CALLS:
        xs = timings.get(f"call:{label}", [])
        if xs:
            rows.append([label, len(xs), ms(sum(xs)), ms(median(xs)), ms(p90(xs)), ms(sum(xs) / n)])
    table(["call (inclusive; nested ones overlap)", "calls", "total ms", "median ms", "p90 ms", "ms/trial"], rows,
          f"Calls inside the tasks ({title})")


# --------------------------------------------------------------------------------------------
# 2. checkpoint writes
# --------------------------------------------------------------------------------------------


def synthetic_state(n: int, steps: int, storage: str, tracking: str) -> Any:
    """An n-trial experiment made with the optim API, its trials' metadata shaped like the flow's."""
    from prefect_hpo.optim.experiment import Experiment
    from prefect_hpo.spec import ExperimentSpec
    from prefect_hpo.storage.state import ExperimentState

    name = f"synthetic-{n}x{steps}"
    spec = ExperimentSpec.parse(bench_spec(name, n, 4, storage, tracking))
    exp = Experiment(name, spec.parameters, dict(spec.objectives), algorithm="random", seed=0)
    for _ in range(n):
        trial = exp.ask()
        exp.mark_running(trial.index)
        x = float(trial.params["x"])
        trial.metadata.update({
            "attempt": 1, "run_id": uuid.uuid4().hex, "handle": None, "attempts": [],
            "history": [{"step": s, "metrics": {"loss": x + 1.0 / (s + 1)}} for s in range(steps - 1)]
            + [{"step": steps - 1, "metrics": {"loss": x}}],
        })
        exp.tell(trial.index, {"loss": x})
    return ExperimentState(spec, exp, parent_run_id=uuid.uuid4().hex, tracking_uri=tracking)


def step_writes(args: argparse.Namespace, stores: dict[str, str], tracking: str, doc50: tuple[str, str] | None) -> None:
    from prefect_hpo.storage.checkpoint import open_store
    from prefect_hpo.storage.state import ExperimentState

    docs: list[tuple[str, str]] = []
    if doc50 is not None:
        docs.append((f"{args.trials} trials (from step 1)", doc50[1]))
    for n, steps in ((500, 1), (500, 100)):
        label = "500 trials" if steps == 1 else "500 trials x 100 reports"
        state = synthetic_state(n, steps, "file://unused", tracking)
        docs.append((label, state.to_json()))

    rows = []
    for label, text in docs:
        # serialization is part of every checkpoint: time to_json and from_json too
        state = ExperimentState.from_json(text, label)
        ser = []
        par = []
        for _ in range(min(args.writes, 10)):
            t0 = time.perf_counter()
            state.to_json()
            ser.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ExperimentState.from_json(text, label)
            par.append(time.perf_counter() - t0)
        for kind, uri in stores.items():
            store = open_store(uri)
            name = f"writes-{uuid.uuid4().hex[:8]}"
            times = []
            for _ in range(args.writes):
                t0 = time.perf_counter()
                store.write(name, text)
                times.append(time.perf_counter() - t0)
            rows.append([label, f"{len(text) / 1024:.0f}", kind, len(times), ms(median(times)), ms(p90(times)),
                         ms(median(ser)), ms(median(par))])
    table(["document", "KiB", "store", "writes", "write ms (median)", "write p90", "to_json ms", "from_json ms"], rows,
          "Checkpoint write time (store.write of the experiment JSON; to_json/from_json: median of 10, no I/O)")

    rows = []
    for kind, uri in stores.items():
        store = open_store(uri)
        name = f"lease-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        lease = store.acquire_lease(name)
        acquire = time.perf_counter() - t0
        times = []
        try:
            for _ in range(args.writes):
                t0 = time.perf_counter()
                lease.renew()
                times.append(time.perf_counter() - t0)
        finally:
            t0 = time.perf_counter()
            lease.release()
            release = time.perf_counter() - t0
        rows.append([kind, len(times), ms(median(times)), ms(p90(times)), ms(acquire), ms(release)])
    table(["store", "renewals", "renew ms (median)", "renew p90", "acquire ms", "release ms"], rows,
          "Lease (default TTL 60 s, heartbeat renews every 20 s)")


# --------------------------------------------------------------------------------------------
# 3. resume
# --------------------------------------------------------------------------------------------


def time_parts(uri: str, name: str, reps: int) -> dict[str, list[float]]:
    """The parts of open_runtime on a finished experiment, each timed alone (no Prefect)."""
    from prefect_hpo.flows.driver import close_runtime, open_runtime
    from prefect_hpo.optim.experiment import Experiment
    from prefect_hpo.spec import ExperimentSpec
    from prefect_hpo.storage.checkpoint import open_store
    from prefect_hpo.storage.state import ExperimentState
    from prefect_hpo.storage.tracking import MlflowTracker

    parts: dict[str, list[float]] = {}

    def timed(label: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        parts.setdefault(label, []).append(time.perf_counter() - t0)
        return out

    for _ in range(reps):
        store = timed("open_store", lambda: open_store(uri))
        lease = timed("acquire_lease", lambda: store.acquire_lease(name))
        text = timed("store.read", lambda: store.read(name))
        doc = timed("json.loads", lambda: json.loads(text))
        timed("ExperimentSpec.parse", lambda: ExperimentSpec.parse(doc["spec"]))
        timed("Experiment.from_dict", lambda: Experiment.from_dict(doc["experiment"]))
        state = timed("ExperimentState.from_json (all of the 3 above)", lambda: ExperimentState.from_json(text, name))
        timed("MlflowTracker(...) (SQLite check + experiment lookup)", lambda: MlflowTracker(state.tracking_uri, name))
        timed("store.write (to_json + write)", lambda: store.write(name, state.to_json()))
        timed("lease.release", lease.release)
        runtime = timed("open_runtime (whole)", lambda: open_runtime(None, resume=True, name=name, storage=uri))
        timed("close_runtime (whole)", lambda: close_runtime(runtime))
    return parts


def delete_checkpoint(uri: str, name: str) -> None:
    from prefect_hpo.storage.checkpoint import LocalFolderStore, S3Store, open_store

    store = open_store(uri)
    if isinstance(store, LocalFolderStore):
        (Path(store.location(name))).unlink()
    elif isinstance(store, S3Store):
        key = store.location(name).removeprefix(f"s3://{store.bucket}/")
        store._client.delete_object(Bucket=store.bucket, Key=key)


def step_resume(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    from prefect_hpo.spec import ExperimentSpec
    from prefect_hpo.storage.recovery import rebuild_from_mlflow
    from prefect_hpo.storage.tracking import MlflowTracker

    # one finished experiment per store (the first parallelism's)
    chosen: dict[str, dict[str, Any]] = {}
    for run in runs:
        chosen.setdefault(run["store"], run)

    rows = []
    part_rows: dict[str, dict[str, float]] = {}
    for kind, run in chosen.items():
        walls, phases = [], {}
        for _ in range(args.resume_reps):
            wall, _, timings = run_flow(name=run["name"], storage=run["uri"], resume=True)
            walls.append(wall)
            for c in FLOW_PARTS:
                phases.setdefault(c, []).append(sum(timings.get(c, [])))
        rows.append([kind, f"resume (checkpoint), {args.trials} trials", len(walls), ms(median(walls)), ms(min(walls)),
                     *(ms(median(phases[c])) for c in FLOW_PARTS)])

        # rebuild from MLflow: delete experiment.json, resume with the spec
        walls, phases = [], {}
        for _ in range(args.resume_reps):
            delete_checkpoint(run["uri"], run["name"])
            wall, _, timings = run_flow(spec=run["spec"], resume=True)
            walls.append(wall)
            for c in FLOW_PARTS:
                phases.setdefault(c, []).append(sum(timings.get(c, [])))
        rows.append([kind, "rebuild from MLflow (no checkpoint)", len(walls), ms(median(walls)), ms(min(walls)),
                     *(ms(median(phases[c])) for c in FLOW_PARTS)])

        parts = time_parts(run["uri"], run["name"], args.resume_reps)
        spec = ExperimentSpec.parse(run["spec"])
        tracker = MlflowTracker(spec.tracking_uri, spec.name)
        rebuild = []
        for _ in range(args.resume_reps):
            t0 = time.perf_counter()
            rebuild_from_mlflow(tracker, spec)
            rebuild.append(time.perf_counter() - t0)
        parts["rebuild_from_mlflow (alone)"] = rebuild
        part_rows[kind] = {k: median(v) for k, v in parts.items()}

    table(["store", "what", "runs", "flow wall ms (median)", "min", "engine before ms", *(f"{p} ms" for p in PHASES),
           "engine after ms"], rows,
          "Resume a finished experiment: hpo_flow(...) call to return (nothing left to run)")
    kinds = list(part_rows)
    labels = list(next(iter(part_rows.values())))
    table(["part", *(f"{k} ms" for k in kinds)], [[lbl, *(ms(part_rows[k].get(lbl, math.nan)) for k in kinds)] for lbl in labels],
          f"Parts of open_runtime on a finished {args.trials}-trial experiment, timed alone without Prefect "
          f"(median of {args.resume_reps})")


# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=50, help="trials per flow run in step 1 (default 50)")
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 4], help="max_parallel values (default 1 4)")
    ap.add_argument("--skip-s3", action="store_true", help="local folder store only (no moto)")
    ap.add_argument("--moto-in-process", action="store_true",
                    help="run the moto server in this process, as the tests do (default: a child process)")
    ap.add_argument("--writes", type=int, default=30, help="writes and lease renewals per case in step 2 (default 30)")
    ap.add_argument("--reps", type=int, default=3, help="flow runs per store and parallelism in step 1 (default 3)")
    ap.add_argument("--fixed-reps", type=int, default=3, help="1-trial flow runs per store for the fixed cost (default 3)")
    ap.add_argument("--resume-reps", type=int, default=3, help="resumes per store in step 3 (default 3)")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the per-task breakdown tables")
    args = ap.parse_args(argv)
    if args.trials < 2:
        ap.error("--trials must be at least 2")

    import boto3
    import mlflow
    import prefect

    print(f"command: {command_line()}")
    print(f"prefect {prefect.__version__}, mlflow {mlflow.__version__}, boto3 {boto3.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
          f"at start, git {git_rev()}")
    print(f"scratch folder: {SCRATCH}")

    from prefect.testing.utilities import prefect_test_harness

    instrument()
    cwd = os.getcwd()
    os.chdir(SCRATCH)  # anything a component writes relative to the cwd lands in the scratch folder
    moto: Moto | None = None
    try:
        tracking = f"sqlite:///{SCRATCH / 'mlflow.db'}"
        stores = {"local": f"file://{SCRATCH / 'ckpt'}"}
        if not args.skip_s3:
            t0 = time.perf_counter()
            moto = Moto(args.moto_in_process)
            stores["s3"] = f"s3://{moto.bucket()}/hpo"
            print(f"moto S3 at {moto.endpoint} ({'in process' if args.moto_in_process else 'child process'}), "
                  f"up in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=90):
            boot = time.perf_counter() - t0
            warm = run_flow(spec=bench_spec("warmup", 1, 1, stores["local"], tracking))[0]
            print(f"Prefect temporary server up in {boot:.1f} s; first flow run (cold, 1 trial) {warm:.2f} s")

            print("\n## 1. Orchestration overhead")
            res = step_orchestration(args, stores, tracking)
            if not args.no_breakdown:
                for run in res["runs"]:
                    print_breakdown(run)

            print("\n## 2. Checkpoint writes")
            first_local = next(r for r in res["runs"] if r["store"] == "local")
            from prefect_hpo.storage.checkpoint import open_store

            doc50 = open_store(first_local["uri"]).read(first_local["name"])
            step_writes(args, stores, tracking, (first_local["name"], doc50) if doc50 else None)

            print("\n## 3. Resume")
            step_resume(args, res["runs"])
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    finally:
        os.chdir(cwd)
        if moto is not None:
            moto.stop()
        shutil.rmtree(SCRATCH, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
