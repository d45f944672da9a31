"""deployments/prefect.yaml against a real Prefect server, process work pool and worker.

`prefect server start` on 127.0.0.1, `prefect deploy` of the shipped prefect.yaml, a process
worker, and `prefect deployment run` with a parameter: the HPO flow runs as the worker's flow
run and its experiment lands in the checkpoint store. The worker ignores SIGTERM and the first
SIGINT (see ../shared/ENVIRONMENT.md), so it is stopped with two SIGINTs by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen, signals: list[int]) -> None:
    for sig in signals:
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ok = subprocess.run([str(BIN / "prefect"), "work-pool", "ls"], env=env, capture_output=True, check=False)
            if ok.returncode == 0:
                break
            time.sleep(1)
        else:
            pytest.fail("prefect server did not come up")
        yield env
    finally:
        _stop(server, [signal.SIGINT, signal.SIGTERM])


def test_the_shipped_deployments_run_on_a_process_worker(prefect_server: dict[str, str], tmp_path: Path) -> None:
    env = prefect_server
    checkout = tmp_path / "checkout"  # a copy, so the run's .prefect-hpo and mlflow.db stay out of the repo
    shutil.copytree(REPO / "examples", checkout / "examples")
    shutil.copytree(REPO / "deployments", checkout / "deployments")
    shutil.copytree(REPO / "src", checkout / "src", ignore=shutil.ignore_patterns("__pycache__"))

    env = {**env, "PWD": str(checkout)}  # prefect.yaml's pull step is "{{ $PWD }}" at deploy time

    def prefect(*args: str) -> str:
        out = subprocess.run([str(BIN / "prefect"), *args], cwd=checkout, env=env, capture_output=True, text=True, check=False)
        assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
        return out.stdout

    prefect("work-pool", "create", "hpo-process", "--type", "process")
    prefect("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
    listing = prefect("deployment", "inspect", "prefect-hpo/nightly-quickstart")
    assert "0 2 * * *" in listing

    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "hpo-process"],
        cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        prefect("deployment", "run", "prefect-hpo/quickstart", "--param", "spec=examples/shell.yaml")
        store = open_store(f"file://{checkout / '.prefect-hpo'}")
        deadline = time.monotonic() + 180
        state = None
        while time.monotonic() < deadline:
            text = store.read("shell-example")
            if text is not None:
                state = ExperimentState.from_json(text, "shell-example")
                if sum(t.status.is_terminal for t in state.experiment.trials) == state.spec.budget.trials:
                    break
            time.sleep(1)
        assert state is not None, "the deployment's flow run never wrote a checkpoint"
        assert [t.status.value for t in state.experiment.trials] == ["completed"] * state.spec.budget.trials
    finally:
        _stop(worker, [signal.SIGINT, signal.SIGINT, signal.SIGKILL])
