"""`kill -9` of `prefect-hpo run` on Prefect's temporary server, for real.

Before: the temporary server (uvicorn, ~230 MB) outlived the killed CLI for good, re-parented to
init, and the killed flow run stayed RUNNING in Prefect forever. Now the server is stopped by a
watchdog when the CLI dies, and the resume marks the dead flow run CRASHED, naming the run that
took over. The temporary server keeps its database in PREFECT_HOME, so the resumed run (and the
check at the end) see the killed run's record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from processes import children

from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(400)]

SPEC = textwrap.dedent(
    f"""
    name: killed
    parameters: [{{name: x, type: range, bounds: [0.0, 1.0]}}]
    objectives: {{loss: minimize}}
    algorithm: sobol
    budget: {{trials: 3, max_parallel: 1}}
    trial:
      command: {sys.executable} trial.py
      poll_interval_s: 0.2
    storage: file://ckpt
    tracking_uri: sqlite:///mlflow.db
    """
)

TRIAL = """
import json, time
time.sleep(3)
print("PREFECT_HPO_REPORT " + json.dumps({"metrics": {"loss": 1.0}}))
"""

FLOW_RUNS = """
import json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
with get_client(sync_client=True) as client:
    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["prefect-hpo"])))
    print(json.dumps([{"id": str(r.id), "state": r.state_type.value, "message": r.state.message if r.state else None}
                      for r in runs]))
"""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_run_leaves_no_server_and_its_flow_run_is_marked_crashed_on_resume(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "trial.py").write_text(TRIAL)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), TMPDIR=str(tmp_path))
    cli = [sys.executable, "-m", "prefect_hpo.cli"]
    run = subprocess.Popen([*cli, "run", "spec.yaml"], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        store = open_store(f"file://{tmp_path / 'ckpt'}")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            text = store.read("killed")
            if text and any(t.status.value == "running" for t in ExperimentState.from_json(text, "x").experiment.trials):
                break
            time.sleep(0.3)
        else:
            pytest.fail("the run never started a trial")
        servers = [p for p in children(run.pid) if "prefect.server.api.server:create_app" in _cmdline(p)]
        assert len(servers) == 1, [(_cmdline(p)) for p in children(run.pid)]
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(servers[0]):
            time.sleep(0.2)
        assert not _alive(servers[0]), "the temporary server outlived the killed CLI"
    finally:
        if run.poll() is None:
            run.kill()
    killed_run = ExperimentState.from_json(store.read("killed") or "", "x").flow_run_id
    assert killed_run

    resumed = subprocess.run([*cli, "resume", "killed", "--storage", "file://ckpt"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    state = ExperimentState.from_json(store.read("killed") or "", "x")
    assert [t.status.value for t in state.experiment.trials] == ["completed"] * 3
    out = subprocess.run([sys.executable, "-c", FLOW_RUNS], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    runs = {r["id"]: r for r in json.loads(out.stdout)}
    assert runs[killed_run]["state"] == "CRASHED", runs
    assert state.flow_run_id in runs[killed_run]["message"] and runs[state.flow_run_id]["state"] == "COMPLETED"


def _server_of(cli: subprocess.Popen[bytes], store: Any, before: str | None, deadline_s: float = 180) -> int:
    """Wait until the CLI's own flow run (not ``before``, the run it resumes) has a trial running;
    the pid of the temporary server it started."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert cli.poll() is None, "the CLI ended before a trial ran"
        text = store.read("killed")
        state = ExperimentState.from_json(text, "x") if text else None
        servers = [p for p in children(cli.pid) if "prefect.server.api.server:create_app" in _cmdline(p)]
        if state is not None and state.flow_run_id != before and servers and any(
                t.status.value == "running" for t in state.experiment.trials):
            assert len(servers) == 1, [(_cmdline(p)) for p in children(cli.pid)]
            return servers[0]
        time.sleep(0.3)
    pytest.fail("the CLI never started a trial")


def test_a_terminated_run_or_resume_leaves_no_server(tmp_path: Path) -> None:
    """SIGTERM (what `kill`, systemd and Kubernetes send first), of `run` and then of `resume`:
    the issue found the server surviving a SIGTERM too."""
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "trial.py").write_text(TRIAL)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), TMPDIR=str(tmp_path))
    store = open_store(f"file://{tmp_path / 'ckpt'}")
    cli = [sys.executable, "-m", "prefect_hpo.cli"]
    for command in (["run", "spec.yaml"], ["resume", "killed", "--storage", "file://ckpt"]):
        text = store.read("killed")
        before = ExperimentState.from_json(text, "x").flow_run_id if text else None
        proc = subprocess.Popen([*cli, *command], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            server = _server_of(proc, store, before)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _alive(server):
                time.sleep(0.2)
            assert not _alive(server), f"the temporary server outlived `{command[0]}` after a SIGTERM"
        finally:
            if proc.poll() is None:
                proc.kill()
