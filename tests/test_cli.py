"""The ``prefect-hpo`` command line, run as a real subprocess through its console script."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect_hpo.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("name", ["quickstart_space.yaml", "nni_space.json"])
def test_validate_accepts_the_examples(name: str) -> None:
    result = run_cli("validate", str(EXAMPLES / name))
    assert result.returncode == 0, result.stderr
    assert "ok: " in result.stdout


def test_validate_json_prints_the_normalized_space(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: demo\nparameters:\n  - {name: x, type: range, bounds: [0.0, 1.0]}\n"
        "  - {name: y, type: range, bounds: [0.0, 1.0]}\nparameter_constraints: ['x + y <= 1']\n"
    )
    result = run_cli("validate", str(spec), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [p["name"] for p in doc["parameters"]] == ["x", "y"]
    assert doc["parameter_constraints"] == ["x + y <= 1"]


def test_validate_reports_a_bad_space_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "lr", "type": "range", "bounds": [0.1, 0.0001], "log_scale": true}]')
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "'lr'" in result.stderr and "reversed" in result.stderr


def test_validate_reports_a_missing_file(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "cannot be read" in result.stderr


def test_algorithms_lists_the_registered_suggesters() -> None:
    result = run_cli("algorithms")
    assert result.returncode == 0
    assert {"auto", "gp", "grid", "random", "sobol"} <= set(result.stdout.split())
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    # each with the options it takes: `gp` has no n_initial (the README's example once gave it one)
    assert "min_observations" in lines["gp"] and "n_initial" not in lines["gp"]
    assert "n_initial" in lines["auto"] and lines["random"].endswith("options: none")


def test_validate_reads_yaml_exponents_as_numbers(tmp_path: Path) -> None:
    """PyYAML's default loader reads ``1e-4`` as a string; the CLI shares the space's loader."""
    space = tmp_path / "nni.yaml"
    space.write_text("lr: {_type: loguniform, _value: [1e-4, 1e-1]}\n")
    result = run_cli("validate", str(space), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["parameters"][0]["bounds"] == [1e-4, 1e-1]


# ---- runs as a user sees them: one line per refusal, hints that work when pasted (issue 11) -------
#
# These start real flows (a temporary Prefect server for the module, trials as processes, MLflow
# on SQLite), so they are `slow`. chmod does not stop root, so under root a store is made
# read-only by a read-only bind mount of itself (skipped where mounting is not allowed).

GATED_TRIAL = """
import json, os, time
gate = os.environ.get("GATE")
while gate and not os.path.exists(gate):  # hold the lease until the test says go
    time.sleep(0.05)
p = json.loads(os.environ["PREFECT_HPO_PARAMS"])
print("PREFECT_HPO_REPORT " + json.dumps({"step": 1, "metrics": {"loss": p["x"]}}), flush=True)
"""

@pytest.fixture(scope="module")
def cli_server() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield str(PREFECT_API_URL.value())


@dataclass
class Place:
    folder: Path
    env: dict[str, str]

    def spec(self, name: str, gate: Path | None = None, **extra: Any) -> Path:
        trial: dict[str, Any] = {"command": f"{shlex.quote(sys.executable)} trial.py", "timeout_s": 120, "poll_interval_s": 0.2}
        if gate is not None:
            trial["env"] = {"GATE": str(gate)}
        doc = {"name": name, "parameters": [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}],
               "objectives": {"loss": "minimize"}, "algorithm": "sobol", "seed": 0, "budget": {"trials": 1},
               "trial": trial, **extra}
        path = self.folder / f"{name}.yaml"
        path.write_text(json.dumps(doc))
        return path

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "prefect_hpo.cli", *args], cwd=self.folder, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.start(*args)
        out, err = proc.communicate(timeout=150)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def place(cli_server: str, tmp_path: Path) -> Place:
    (tmp_path / "trial.py").write_text(GATED_TRIAL)
    env = {**os.environ, "PREFECT_API_URL": cli_server, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("PREFECT_HPO_TENANT", None)
    return Place(tmp_path, env)


@contextmanager
def read_only(path: Path, keep_writable: Path | None = None) -> Iterator[None]:
    """``path`` refuses new files (from this process's children too) inside the block; the
    folder ``keep_writable`` below it does not."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True, check=False).returncode != 0:
        pytest.skip("running as root, where chmod does not stop writes, and bind mounts are not allowed")
    mounts = [path]
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path), str(path)], capture_output=True, check=True)
        if keep_writable is not None:
            subprocess.run(["mount", "--bind", str(keep_writable), str(keep_writable)], capture_output=True, check=True)
            mounts.append(keep_writable)
            subprocess.run(["mount", "-o", "remount,bind,rw", str(keep_writable), str(keep_writable)],
                           capture_output=True, check=True)
        yield
    finally:
        for mount in reversed(mounts):
            subprocess.run(["umount", str(mount)], capture_output=True, check=True)


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    for _ in range(1500):
        if path.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert path.exists(), f"{path} never appeared; run exited with {proc.poll()}: {proc.communicate()}"


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("prefect-hpo: error: "), result.stderr
    return result.stderr


@pytest.mark.slow
def test_the_status_hint_of_a_tenants_run_works_when_pasted_and_a_closed_pipe_is_quiet(place: Place) -> None:
    place.spec("hinted")
    run = place.cli("run", "hinted.yaml", "--tenant", "team-a", "--storage", "file://ckpt", "--quiet")
    assert run.returncode == 0, run.stderr
    hint = next(line for line in run.stdout.splitlines() if line.strip().startswith("status:"))
    command = shlex.split(hint.split("status:", 1)[1])
    assert command == ["prefect-hpo", "status", "hinted", "--storage", "file://ckpt", "--tenant", "team-a"]
    pasted = place.cli(*command[1:])  # in a shell without $PREFECT_HPO_TENANT
    assert pasted.returncode == 0, pasted.stderr
    assert pasted.stdout.startswith("hinted: 1/1 trials done"), pasted.stdout

    # `prefect-hpo status NAME | head`: the reader is gone before the first line is written
    proc = place.start(*command[1:], "--json")
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert err == "" and proc.returncode == 141  # as a shell reports a program ended by SIGPIPE


@pytest.mark.slow
def test_a_second_driver_is_refused_in_one_line(place: Place) -> None:
    gate = place.folder / "go"
    place.spec("held", gate=gate)
    first = place.start("run", "held.yaml", "--quiet")
    try:
        _wait_for(place.folder / ".prefect-hpo" / "held" / "experiment.json", first)
        line = _one_error_line(place.cli("run", "held.yaml", "--quiet"))
        assert "'held' is already being driven by another flow" in line, line
    finally:
        gate.touch()
        out, err = first.communicate(timeout=150)
    assert first.returncode == 0, err
    assert "held: best trial 0" in out


@pytest.mark.slow
def test_a_read_only_store_is_refused_in_one_line(place: Place) -> None:
    place.spec("locked")
    store = place.folder / "ro-store"
    store.mkdir()
    with read_only(store):
        line = _one_error_line(place.cli("run", "locked.yaml", "--storage", f"file://{store}", "--quiet"))
    assert str(store / "locked") in line, line
    assert list(store.iterdir()) == []


@pytest.mark.slow
def test_a_failed_checkpoint_write_is_the_cause_printed(place: Place) -> None:
    """The store turns read-only mid-run: the checkpoint write fails, then so does the lease
    release. The line printed is the write's (it used to be the release's, after 48 lines)."""
    gate = place.folder / "go"
    place.spec("mid", gate=gate)
    first = place.start("run", "mid.yaml", "--quiet")
    folder = place.folder / ".prefect-hpo" / "mid"
    with ExitStack() as stack:
        try:
            _wait_for(folder / "trials" / "trial-0000" / "attempt-1" / "output.log", first)  # the trial runs
            stack.enter_context(read_only(folder, keep_writable=folder / "trials"))
        finally:
            gate.touch()
            out, err = first.communicate(timeout=150)
    line = _one_error_line(subprocess.CompletedProcess(first.args, first.returncode, out, err))
    assert "cannot write the checkpoint" in line and str(folder) in line, line


@pytest.mark.slow
def test_on_the_temporary_server_a_refusal_is_one_line_too(place: Place) -> None:
    """Without PREFECT_API_URL the run boots Prefect's temporary server and stops it at the end;
    what Prefect's workers still held used to be printed after the line ('Error logging to API')."""
    place.spec("alone")
    store = place.folder / "ro-store"
    store.mkdir()
    place.env.pop("PREFECT_API_URL")
    with read_only(store):
        line = _one_error_line(place.cli("run", "alone.yaml", "--storage", f"file://{store}", "--quiet"))
    assert str(store / "alone") in line, line
