"""Fixtures for flow tests: a real temporary Prefect server, MLflow on SQLite, a trial program.

Nothing here is mocked: the flow runs against Prefect's test harness (a real server process on
loopback), MLflow writes a SQLite file, and trials are real subprocesses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flowkit import TRIAL_PROGRAM


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real temporary Prefect server for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str) -> Path:
    """A fresh working folder holding the trial program, with MLflow on a SQLite file in it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "trial.py").write_text(TRIAL_PROGRAM)
    monkeypatch.setenv("TRIAL_EVENTS_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path
