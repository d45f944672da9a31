"""What a person sees in the two UIs while an experiment runs and after, checked through their APIs.

Against a real `prefect server start` and a real `mlflow server` on 127.0.0.1, the experiment
started by the CLI as a user would (`prefect-hpo run SPEC`). While it runs, the progress and
trials-table artifacts are already there; after it, the flow run shows one task run per trial
(``trial-0000`` ...) in the state the trial ended in and at most 5 task runs per trial in all, its
logs have a launch and an end line per trial, and MLflow's parent run is the experiment's
dashboard: ``hpo/best_so_far/loss`` with one point per completed trial, the best child tagged, and
every run linked to the Prefect flow run. Then headless Chromium opens both UIs as a person would
and what they render is checked (screenshots kept).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from datetime import datetime
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from flowkit import TRIAL_PROGRAM, make_spec
from mlflowkit import MlflowServer
from serverkit import BIN, running_server

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(600)]

TRIALS = 6


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _api(env: dict[str, str], path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(env["PREFECT_API_URL"] + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _flow_run(env: dict[str, str], name: str) -> dict[str, Any] | None:
    runs = _api(env, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [f"hpo-{name}"]}}})
    return runs[0] if runs else None


def _artifacts(env: dict[str, str], flow_run_id: str) -> list[dict[str, Any]]:
    return _api(env, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})


def _task_runs(env: dict[str, str], flow_run_id: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    while True:
        page = _api(env, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200, "offset": len(runs)})
        runs += page
        if len(page) < 200:
            return runs


def _logs(env: dict[str, str], flow_run_id: str) -> list[str]:
    lines: list[str] = []
    while True:
        page = _api(env, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200, "offset": len(lines)})
        lines += [entry["message"] for entry in page]
        if len(page) < 200:
            return lines


@dataclass
class LiveRun:
    """One experiment run by the CLI against the two servers, which stay up for the checks."""

    env: dict[str, str]
    tracking_uri: str
    flow_run: dict[str, Any]
    trials: list[dict[str, Any]]
    seen_while_running: set[str]
    folder: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    tmp_path = tmp_path_factory.mktemp("live")
    mlflow = MlflowServer(tmp_path / "mlflow-server", kind="server")
    mlflow.start()
    try:
        with running_server(tmp_path) as env:
            yield _run(tmp_path, env, mlflow.uri)
    finally:
        mlflow.stop()


def _run(tmp_path: Path, env: dict[str, str], tracking_uri: str) -> LiveRun:
    (tmp_path / "trial.py").write_text(TRIAL_PROGRAM)
    spec = make_spec("live", budget={"trials": TRIALS, "max_parallel": 2}, tracking_uri=tracking_uri)
    spec["trial"]["poll_interval_s"] = 1.0  # the default: a user's poll rate, not a test's
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    run_env = {**env, "TRIAL_EVENTS_DIR": str(tmp_path), "TRIAL_STEPS": "3", "TRIAL_SLEEP": "0.7",
               "PREFECT_HPO_ARTIFACT_INTERVAL_S": "0"}
    # as a user runs it: the suite's PREFECT_LOGGING_LEVEL=WARNING (tests/conftest.py) would keep
    # the run logger's INFO lines from the API, which is what the Logs tab shows
    run_env.pop("PREFECT_LOGGING_LEVEL", None)
    cli = subprocess.Popen(
        [str(BIN / "prefect-hpo"), "run", "spec.json", "--quiet"], cwd=tmp_path, env=run_env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen_while_running: set[str] = set()
    try:
        deadline = time.monotonic() + 240
        while cli.poll() is None and time.monotonic() < deadline:
            run = _flow_run(env, "live")
            if run is not None and run["state_type"] == "RUNNING":
                keys = {a["key"] for a in _artifacts(env, run["id"]) if a.get("key")}
                kinds = {a["type"] for a in _artifacts(env, run["id"])}
                if "progress" in kinds:
                    seen_while_running.add("progress")
                seen_while_running |= {k for k in keys if k.endswith("-trials")}
            time.sleep(0.5)
        out, _ = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, out
    run = _flow_run(env, "live")
    assert run is not None
    state = json.loads((tmp_path / "ckpt" / "live" / "experiment.json").read_text())
    return LiveRun(env, tracking_uri, run, state["experiment"]["trials"], seen_while_running, tmp_path)


def test_an_experiment_is_live_and_linked_in_prefect_and_mlflow(live: LiveRun) -> None:
    env, run, trials = live.env, live.flow_run, live.trials
    assert "progress" in live.seen_while_running and any(k.endswith("-trials") for k in live.seen_while_running), (
        f"artifacts seen while the flow ran: {live.seen_while_running}")
    assert run["state_type"] == "COMPLETED"
    assert [t["status"] for t in trials] == ["completed"] * TRIALS

    # the server records task runs from events, a moment after the flow has returned
    deadline = time.monotonic() + 60
    while True:
        task_runs = _task_runs(env, run["id"])
        if all(t["state_type"] in ("COMPLETED", "FAILED", "CANCELLED") for t in task_runs) or time.monotonic() > deadline:
            break
        time.sleep(1)
    names = Counter(t["name"] for t in task_runs)
    spans = {t["name"]: t for t in task_runs if t["name"].startswith("trial-")}
    assert sorted(spans) == [f"trial-{i:04d}" for i in range(TRIALS)], names
    assert {t["state_name"] for t in spans.values()} == {"Completed"}
    assert len(task_runs) / TRIALS <= 5, f"{len(task_runs)} task runs for {TRIALS} trials: {names}"
    assert not [n for n in names if n.startswith(("decide_stop", "poll"))], names  # no policy; polls are no tasks
    for t in trials:  # the span opens with the launch (its thread may start a moment later) and ends after the result
        span = spans[f"trial-{t['index']:04d}"]
        assert _when(span["start_time"]) < _when(t["finished_at"]) <= _when(span["end_time"]), (span, t)

    logs = _logs(env, run["id"])
    for i in range(TRIALS):
        assert len([m for m in logs if m.startswith(f"trial {i} launched")]) == 1, logs
        assert len([m for m in logs if m.startswith(f"trial {i} completed")]) == 1, logs
    # the flow run's own last line stays ("Finished in state Completed()"); the tasks' do not
    assert len([m for m in logs if m.startswith("Finished in state")]) <= 1, "Prefect's per-task lines reached the Logs tab"

    _check_mlflow(live.tracking_uri, trials, run["id"])


def _check_mlflow(tracking_uri: str, trials: list[dict[str, Any]], flow_run_id: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("live")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("prefect_hpo.role") == "experiment")
    children = [r for r in runs if r.data.tags.get("prefect_hpo.role") == "trial"]
    assert len(children) == TRIALS
    curve = client.get_metric_history(parent.info.run_id, "hpo/best_so_far/loss")
    assert sorted(m.step for m in curve) == list(range(1, TRIALS + 1)), "one point per completed trial"
    values = [m.value for m in sorted(curve, key=lambda m: m.step)]
    assert values == sorted(values, reverse=True), "best so far never gets worse"
    best = min(trials, key=lambda t: t["values"]["loss"])
    assert values[-1] == pytest.approx(best["values"]["loss"])
    tagged = [r for r in children if r.data.tags.get("prefect_hpo.best") == "true"]
    assert [int(r.data.tags["prefect_hpo.trial_index"]) for r in tagged] == [best["index"]]
    for r in [parent, *children]:
        assert r.data.tags.get("prefect_hpo.flow_run_id") == flow_run_id, r.info.run_name
        assert not [k for k, v in r.data.tags.items() if v == ""], f"{r.info.run_name} has empty tags"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium on PATH (Debian's `chromium` package; .ci/run installs it)")
    return found


def _rendered(url: str, screenshot: Path, shows: Callable[[str], bool], tries: int = 3) -> str:
    """The page as a person's browser shows it: the DOM after its scripts ran (the UIs are
    single-page apps; their HTML alone holds nothing), and a screenshot to look at.

    A single-page app fills itself in from its API; on a busy machine a load can end before the
    last answer arrived, so the page is loaded again (up to ``tries`` times) until ``shows(dom)``.
    """
    browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1900,1100",
               "--virtual-time-budget=25000"]
    dom = ""
    for _ in range(tries):
        subprocess.run([*browser, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=False)
        dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False).stdout
        if shows(dom):
            break
    assert screenshot.stat().st_size > 20_000, f"{url}: the screenshot is (nearly) blank"
    return dom


def test_the_two_uis_show_the_experiment_in_a_browser(live: LiveRun) -> None:
    """Headless Chromium opens the flow run page and the MLflow parent run page; what they render
    names every trial and the experiment's best (screenshots kept next to the run's files, or in
    $PREFECT_HPO_SCREENSHOTS)."""
    from mlflow.tracking import MlflowClient

    shots = Path(os.environ.get("PREFECT_HPO_SCREENSHOTS") or live.folder / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    def names_every_trial(page: str) -> bool:  # the graph's bars are drawn on a canvas; the Logs tab (shown first) is text
        return "hpo-live" in page and all(
            f"trial-{i:04d}" in page and f"trial {i} launched" in page and f"trial {i} completed" in page for i in range(TRIALS))

    flow_page = _rendered(f"{live.env['PREFECT_UI_URL']}/runs/flow-run/{live.flow_run['id']}", shots / "prefect-flow-run.png",
                          names_every_trial)
    assert "hpo-live" in flow_page
    missing = [i for i in range(TRIALS) if not (f"trial-{i:04d}" in flow_page and f"trial {i} launched" in flow_page
                                                and f"trial {i} completed" in flow_page)]
    assert not missing, f"the flow run page does not show trials {missing}"

    client = MlflowClient(tracking_uri=live.tracking_uri)
    experiment = client.get_experiment_by_name("live")
    parent = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("prefect_hpo.role") == "experiment")
    parent_page = _rendered(f"{live.tracking_uri}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}",
                            shots / "mlflow-parent-run.png",
                            lambda page: "hpo/best_so_far/loss" in page and live.flow_run["id"] in page)
    best = min(live.trials, key=lambda t: t["values"]["loss"])
    assert "hpo/best_so_far/loss" in parent_page and "prefect_hpo.best_trial" in parent_page
    assert parent.data.tags["prefect_hpo.best_trial"] == str(best["index"])
    assert live.flow_run["id"] in parent_page  # the link back to the Prefect flow run
