"""A real `prefect server start` on loopback for the tests that need workers and deployments.

The process worker ignores SIGTERM and the first SIGINT (see ../shared/ENVIRONMENT.md), so
workers are stopped with two SIGINTs by their PID; nothing is left running.
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
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


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


@contextmanager
def running_server(home: Path, extra_env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """`prefect server start` on a free loopback port; yields the environment that talks to it.

    ``extra_env`` reaches the server and every client given the yielded environment (e.g. a
    shorter scheduler loop for a test of scheduled deployments)."""
    port = _free_port()
    env = {
        **os.environ,
        **(extra_env or {}),
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        # its UI, on another port than 4200, calls this API (and links to flow runs name it)
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
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


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    with running_server(tmp_path) as env:
        yield env


def copy_checkout(dest: Path) -> Path:
    """The parts of the repository a deployment needs, copied so runs write nothing into the repo."""
    for part in ("examples", "deployments", "src"):
        shutil.copytree(REPO / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def prefect_cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    out = subprocess.run([str(BIN / "prefect"), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def start_worker(env: dict[str, str], cwd: Path, pool: str, log: Path, limit: int | None = None) -> subprocess.Popen:
    """A ``prefect worker start`` on ``pool``; ``limit``: at most that many flow runs at once."""
    command = [str(BIN / "prefect"), "worker", "start", "--pool", pool]
    if limit is not None:
        command += ["--limit", str(limit)]
    with log.open("wb") as sink:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)


def stop_worker(worker: subprocess.Popen) -> None:
    _stop(worker, [signal.SIGINT, signal.SIGINT, signal.SIGKILL])
