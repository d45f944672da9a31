"""What every benchmark needs around its measurements: which code it measured, and a process
that cannot touch the user's Prefect or MLflow state or phone home.

Imported by the benchmark scripts (they run with ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["REPO_ROOT", "git_revision", "isolate_environment", "package_version"]


def git_revision() -> str:
    """Short commit, with ``+dirty`` when tracked files differ, so a table names its code."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no commit)"


def package_version(dist: str) -> str:
    """An installed distribution's version for a table header, or "not installed"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def isolate_environment(scratch: Path) -> None:
    """Offline, quiet, and no state outside ``scratch``; call before prefect or mlflow is imported."""
    for key, value in {
        "DO_NOT_TRACK": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
        "OMP_WAIT_POLICY": "PASSIVE",
        "PREFECT_HPO_TORCH_THREADS": "1",
    }.items():
        os.environ.setdefault(key, value)
    os.environ["PREFECT_HOME"] = str(scratch / "prefect-home")
    os.environ["PREFECT_HPO_WORKDIR"] = str(scratch / "workdir")  # trial folders of S3 experiments
    os.environ.pop("MLFLOW_TRACKING_URI", None)
