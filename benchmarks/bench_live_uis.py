"""What a person sees of a running experiment in the Prefect UI and the MLflow UI, measured.

Starts a real ``prefect server start`` and ``mlflow server`` on 127.0.0.1, runs an experiment
with the CLI as a user would (``prefect-hpo run SPEC``: a quickstart-shaped search over a trial
that reports a few epochs), and while it runs watches both UIs' APIs to time how long a finished
trial takes to show up:

* in the Prefect trials-table artifact (its row with a result), and
* in MLflow's ``best_so_far/<objective>`` history on the parent run (its point),

both from the moment the trial process wrote its last line (the trial stamps it). After the
run it counts task runs per trial (by kind) and log lines per trial in the flow run's Logs tab.
With ``--screenshots DIR`` (and Debian's ``chromium`` on PATH) it saves what a person would open:
the flow run's graph, its Logs and Artifacts tabs, the MLflow experiment's runs and chart views
and the parent run's page. Numbers are printed (Markdown), never asserted.

    .venv/bin/python benchmarks/bench_live_uis.py --trials 8 --screenshots /tmp/ui-shots
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from provenance import git_revision

BIN = Path(sys.executable).parent

TRIAL = textwrap.dedent(
    """
    import json, os, sys, time
    from prefect_hpo.trial import get_params, report
    p = get_params()
    loss = (p["lr"] - 0.01) ** 2 * 1e4 + (p["hidden"] - 64) ** 2 / 4096 + (0.1 if p["optimizer"] == "sgd" else 0.0)
    epochs = int(os.environ.get("EPOCHS", "4"))
    for epoch in range(epochs):
        time.sleep(float(os.environ.get("EPOCH_S", "0.5")))
        report(step=epoch, val_loss=loss + 1.0 / (epoch + 1))
    report(step=epochs, val_loss=loss)
    with open(os.environ["END_STAMPS"], "a") as f:
        f.write(json.dumps({"index": int(os.environ["PREFECT_HPO_TRIAL_INDEX"]), "t": time.time()}) + "\\n")
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer in {timeout_s:g} s")


def start_servers(work: Path) -> tuple[dict[str, str], str, list[subprocess.Popen[bytes]]]:
    """(environment for Prefect clients, MLflow URI, server processes)."""
    port, mport = free_port(), free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",  # the UI on another port than 4200
        "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    procs = []
    with (work / "prefect-server.log").open("wb") as log:
        procs.append(subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                      env=env, stdout=log, stderr=subprocess.STDOUT))
    with (work / "mlflow-server.log").open("wb") as log:
        procs.append(subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mport), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{work}/mlflow.db", "--artifacts-destination", str(work / "mlartifacts")],
            env=env, stdout=log, stderr=subprocess.STDOUT))
    wait_http(f"http://127.0.0.1:{port}/api/health")
    wait_http(f"http://127.0.0.1:{mport}/health")
    return env, f"http://127.0.0.1:{mport}", procs


def api(env: dict[str, str], path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(env["PREFECT_API_URL"] + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def paged(env: dict[str, str], path: str, body: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    while True:
        page = api(env, path, {**body, "limit": 200, "offset": len(out)})
        out += page
        if len(page) < 200:
            return out


class Watcher:
    """First moments each trial's result is visible in the table artifact and in best_so_far."""

    def __init__(self, env: dict[str, str], tracking_uri: str, name: str) -> None:
        from mlflow.tracking import MlflowClient

        self.env, self.name = env, name
        self.mlflow = MlflowClient(tracking_uri=tracking_uri)
        self.in_table: dict[int, float] = {}
        self.best_points: dict[int, float] = {}  # step (trials completed) -> first seen
        self.flow_run_id: str | None = None
        self._parent: str | None = None

    def look(self) -> None:
        now = time.time()
        if self.flow_run_id is None:
            runs = api(self.env, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [f"hpo-{self.name}"]}}})
            self.flow_run_id = runs[0]["id"] if runs else None
        if self.flow_run_id is not None:
            latest = api(self.env, "/artifacts/latest/filter", {"artifacts": {"key": {"any_": [f"{self.name}-trials"]}}})
            for artifact in latest:
                data = artifact["data"]
                rows = json.loads(data) if isinstance(data, str) else data
                for row in rows:
                    if row.get("status") == "completed":
                        self.in_table.setdefault(int(row["trial"]), now)
        if self._parent is None:
            exp = self.mlflow.get_experiment_by_name(self.name)
            if exp is not None:
                parents = self.mlflow.search_runs([exp.experiment_id], "tags.`prefect_hpo.role` = 'experiment'")
                self._parent = parents[0].info.run_id if parents else None
        if self._parent is not None:
            for point in self.mlflow.get_metric_history(self._parent, "hpo/best_so_far/val_loss"):
                self.best_points.setdefault(int(point.step), now)


def screenshot(url: str, path: Path, budget_ms: int = 20000) -> bool:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return False
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1900,1100",
                    f"--screenshot={path}", f"--virtual-time-budget={budget_ms}", url],
                   capture_output=True, timeout=120, check=False)
    return path.exists()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--epoch-s", type=float, default=0.5)
    parser.add_argument("--screenshots", type=Path, default=None, help="folder for headless-Chromium screenshots")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="prefect-hpo-live-uis-"))
    env, tracking_uri, procs = start_servers(work)
    name = "live-uis"
    try:
        (work / "trial.py").write_text(TRIAL)
        spec = {
            "name": name,
            "parameters": [
                {"name": "lr", "type": "range", "bounds": [1e-4, 1e-1], "log_scale": True},
                {"name": "hidden", "type": "range", "bounds": [8, 128], "value_type": "int"},
                {"name": "optimizer", "type": "choice", "values": ["adam", "sgd"]},
            ],
            "objectives": {"val_loss": "minimize"},
            "algorithm": "auto",
            "seed": 0,
            "budget": {"trials": args.trials, "max_parallel": args.parallel},
            "trial": {"command": "python trial.py", "timeout_s": 120},
            "storage": f"file://{work}/ckpt",
            "tracking_uri": tracking_uri,
        }
        (work / "spec.json").write_text(json.dumps(spec))
        stamps = work / "ends.jsonl"
        run_env = {**env, "END_STAMPS": str(stamps), "EPOCHS": str(args.epochs), "EPOCH_S": str(args.epoch_s)}
        watcher = Watcher(env, tracking_uri, name)
        t0 = time.monotonic()
        cli = subprocess.Popen([str(BIN / "prefect-hpo"), "run", "spec.json"], cwd=work, env=run_env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while cli.poll() is None:
            watcher.look()
            time.sleep(0.1)
        wall = time.monotonic() - t0
        out = cli.stdout.read() if cli.stdout else ""
        if cli.returncode != 0:
            raise SystemExit(f"prefect-hpo run exited {cli.returncode}:\n{out}")
        time.sleep(2.0)  # the server records the last task runs and logs from events
        watcher.look()
        report(args, work, env, watcher, stamps, wall, tracking_uri)
        if args.screenshots is not None:
            shoot(args.screenshots, env, watcher, tracking_uri, name)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def report(args: argparse.Namespace, work: Path, env: dict[str, str], watcher: Watcher, stamps: Path, wall: float,
           tracking_uri: str) -> None:
    assert watcher.flow_run_id is not None
    ends = {e["index"]: e["t"] for e in map(json.loads, stamps.read_text().splitlines())}
    state = json.loads((work / "ckpt" / "live-uis" / "experiment.json").read_text())
    trials = state["experiment"]["trials"]
    completed = sorted((t for t in trials if t["status"] == "completed"), key=lambda t: ends.get(t["index"], 0.0))
    task_runs = paged(env, "/task_runs/filter", {"flow_runs": {"id": {"any_": [watcher.flow_run_id]}}})
    kinds = Counter(t["name"].split("-")[0] if not t["name"].startswith("trial-") else "trial (span)" for t in task_runs)
    logs = [entry["message"] for entry in paged(env, "/logs/filter", {"logs": {"flow_run_id": {"any_": [watcher.flow_run_id]}}})]
    per_trial = [sum(m.startswith((f"trial {t['index']} ", f"trial {t['index']}:")) for m in logs) for t in trials]
    table_lag = [watcher.in_table[t["index"]] - ends[t["index"]] for t in completed if t["index"] in watcher.in_table]
    best_lag = [watcher.best_points[k + 1] - ends[t["index"]] for k, t in enumerate(completed) if k + 1 in watcher.best_points]

    print(f"# Live UIs: {len(trials)} trials, {args.parallel} in parallel, {args.epochs} epochs of {args.epoch_s:g} s")
    print(f"\n`{' '.join([Path(sys.executable).name, *sys.argv])}` at {git_revision()}, flow wall {wall:.1f} s\n")
    print("| measure | value |\n|---|---|")
    print(f"| task runs per trial | {len(task_runs) / len(trials):.2f} ({len(task_runs)} for {len(trials)} trials) |")
    print(f"| task runs by kind | {', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))} |")
    print(f"| log lines in the Logs tab | {len(logs)} |")
    print(f"| log lines per trial (min/median/max) | {min(per_trial)} / {statistics.median(per_trial):g} / {max(per_trial)} |")
    for label, lag in (("trial end -> row in the Prefect table artifact", table_lag),
                       ("trial end -> point in MLflow best_so_far", best_lag)):
        text = f"median {statistics.median(lag):.2f} s, max {max(lag):.2f} s (n={len(lag)})" if lag else "never seen"
        print(f"| {label} | {text} |")
    print("\n| trial | status | span state | span start - trial start (s) | span end - trial end (s) |\n|---|---|---|---|---|")
    spans = {t["name"]: t for t in task_runs if t["name"].startswith("trial-")}
    for t in trials:
        span = spans.get(f"trial-{t['index']:04d}")
        if span is None or not t.get("started_at") or not t.get("finished_at"):
            print(f"| {t['index']} | {t['status']} | (no span) | | |")
            continue
        start = _when(span["start_time"]) - _when(t["started_at"]) if span.get("start_time") else None
        end = _when(span["end_time"]) - _when(t["finished_at"]) if span.get("end_time") else None
        print(f"| {t['index']} | {t['status']} | {span['state_name']} | {_secs(start)} | {_secs(end)} |")
    print("\nLog lines of trial 0:")
    for line in (m for m in logs if m.startswith(("trial 0 ", "trial 0:"))):
        print(f"    {line}")


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _secs(delta: timedelta | None) -> str:
    return "-" if delta is None else f"{delta.total_seconds():+.2f}"


def shoot(folder: Path, env: dict[str, str], watcher: Watcher, tracking_uri: str, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ui = env["PREFECT_UI_URL"]
    exp = watcher.mlflow.get_experiment_by_name(name)
    parent = watcher._parent
    def latest(key: str) -> str:  # an artifact's key page draws its version timeline blank in headless Chromium
        versions = api(env, "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1})
        return f"{ui}/artifacts/artifact/{versions[0]['id']}" if versions else f"{ui}/artifacts/key/{key}"

    pages = {
        "prefect-flow-run.png": f"{ui}/runs/flow-run/{watcher.flow_run_id}",
        "prefect-trials-table.png": latest(f"{name}-trials"),
        "prefect-summary.png": latest(f"{name}-summary"),
        "mlflow-runs.png": f"{tracking_uri}/#/experiments/{exp.experiment_id}/runs",
        "mlflow-trial-runs.png": f"{tracking_uri}/#/experiments/{exp.experiment_id}/runs?searchFilter="
                                 "tags.%60prefect_hpo.role%60%20%3D%20%27trial%27",
        "mlflow-charts.png": f"{tracking_uri}/#/experiments/{exp.experiment_id}/runs?compareRunsMode=CHART",
        "mlflow-parent.png": f"{tracking_uri}/#/experiments/{exp.experiment_id}/runs/{parent}",
    }
    print(f"\nScreenshots in {folder}:")
    for file, url in pages.items():
        ok = screenshot(url, folder / file)
        print(f"- {file}: {url}{'' if ok else ' (not taken: no chromium on PATH)'}")


if __name__ == "__main__":
    main()
