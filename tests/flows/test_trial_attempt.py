"""run_attempt, the body of a trial on a work pool or a Dask worker, run here as a plain function.

No GPU exists here: the device ids are CUDA_VISIBLE_DEVICES values, the outermost boundary, as a
Kubernetes pod or a pinned worker would set them. What is checked is which ids the trial's
process sees.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from prefect_hpo.errors import TrialError
from prefect_hpo.launchers.remote_attempt import run_attempt

SEEN = "import os, sys; open(sys.argv[1], 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>'))"


def _seen_devices(tmp_path: Path, gpus: int) -> str:
    out = tmp_path / f"seen-{gpus}"
    command = f"{sys.executable} -c \"{SEEN}\" {out}"
    result = run_attempt("exp", 0, 1, command, {}, gpus=gpus)
    assert result["exit_code"] == 0
    return out.read_text()


def test_a_gpu_trial_keeps_the_devices_its_infrastructure_gave(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-7f3a,3")  # what a pod or a pinned worker would have
    assert _seen_devices(tmp_path, gpus=2) == "GPU-7f3a,3"


def test_a_cpu_trial_sees_no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert _seen_devices(tmp_path, gpus=0) == ""


def test_a_failing_command_raises_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(TrialError, match="exit code 3"):
        run_attempt("exp", 0, 1, f"{sys.executable} -c 'raise SystemExit(3)'", {})


def test_python_in_a_remote_command_is_the_interpreter_that_runs_the_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's PATH may start with a Python that lacks prefect-hpo (here: a fake `python`
    first on PATH that fails); the trial's `python` must be the worker's own interpreter, as
    the flow's is for local trials."""
    impostor = tmp_path / "bin"
    impostor.mkdir()
    (impostor / "python").write_text("#!/bin/sh\necho 'No module named prefect_hpo' >&2\nexit 1\n")
    (impostor / "python").chmod(0o755)
    monkeypatch.setenv("PATH", f"{impostor}:/usr/bin:/bin")
    out = tmp_path / "exe"
    command = f"python -c \"import sys, prefect_hpo; open(sys.argv[1], 'w').write(sys.executable)\" {out}"
    assert run_attempt("exp", 0, 1, command, {}, env={})["exit_code"] == 0
    assert Path(out.read_text()).resolve() == Path(sys.executable).resolve()
