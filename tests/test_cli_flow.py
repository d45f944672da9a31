"""The ``prefect-hpo`` commands end to end, each as a real subprocess of ``python -m prefect_hpo.cli``.

Nothing is mocked: ``run`` and ``resume`` drive the real flow against a real temporary Prefect
server (started once for this module, its URL passed as ``PREFECT_API_URL`` so no call boots its
own), trials are real processes, MLflow writes a SQLite file and checkpoints are local folders.
Each subprocess costs about two seconds of imports, so independent calls run concurrently.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState

pytestmark = pytest.mark.timeout(180)

NAME = "cli-demo"
BUDGET = 3

# A trial program without heavy imports: reads its parameters, records its start, reports a loss.
TRIAL_PROGRAM = textwrap.dedent(
    """
    import json, os
    p = json.loads(os.environ["PREFECT_HPO_PARAMS"])
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "starts.log"), "a") as f:
        f.write(os.environ["PREFECT_HPO_TRIAL_INDEX"] + "\\n")
    loss = (p["x"] - 0.3) ** 2 + (0.5 if p["opt"] == "sgd" else 0.0)
    print("PREFECT_HPO_REPORT " + json.dumps({"step": 1, "metrics": {"loss": loss + 1.0}}), flush=True)
    print("PREFECT_HPO_REPORT " + json.dumps({"step": 2, "metrics": {"loss": loss}}), flush=True)
    """
)

SPEC = textwrap.dedent(
    f"""
    name: {NAME}
    parameters:
      - {{name: x, type: range, bounds: [0.0, 1.0]}}
      - {{name: opt, type: choice, values: [adam, sgd]}}
    objectives: {{loss: minimize}}
    algorithm: sobol
    seed: 0
    budget: {{trials: {BUDGET}, max_parallel: 2}}
    trial:
      command: {shlex.quote(sys.executable)} trial.py --x {{x}} --opt {{opt}}
      timeout_s: 60
      poll_interval_s: 0.2
    """
)


@dataclass
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"prefect-hpo {' '.join(self.args)} -> {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


@pytest.fixture(scope="module")
def cli_api() -> Iterator[str]:
    """A real temporary Prefect server for this module (a copy of tests/flows' ``prefect_api``)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield str(PREFECT_API_URL.value())


def _env(api: str, folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PREFECT_API_URL"] = api
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    env.pop("PREFECT_HPO_WORKDIR", None)
    return env


def cli_many(calls: Sequence[Sequence[str]], cwd: Path, env: dict[str, str], timeout: float = 150) -> list[Result]:
    """Run several CLI invocations at once (pipes, so stdout/stderr are not terminals)."""
    procs = [
        (tuple(args), subprocess.Popen(
            [sys.executable, "-m", "prefect_hpo.cli", *args], cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
        for args in calls
    ]
    results = []
    for args, proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"prefect-hpo {' '.join(args)} timed out\n{out}\n{err}") from None
        results.append(Result(args, proc.returncode, out, err))
    return results


def cli(*args: str, cwd: Path, env: dict[str, str]) -> Result:
    return cli_many([args], cwd, env)[0]


def _state(storage: str, name: str, cwd: Path) -> ExperimentState:
    old = Path.cwd()
    os.chdir(cwd)  # the store resolves file://relative against the working directory
    try:
        store = open_store(storage)
        text = store.read(name)
        assert text is not None, f"no checkpoint for {name} in {storage}"
        return ExperimentState.from_json(text, store.location(name))
    finally:
        os.chdir(old)


def _starts(folder: Path) -> list[int]:
    path = folder / "starts.log"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@dataclass
class Finished:
    folder: Path
    env: dict[str, str]
    run: Result
    state: ExperimentState
    queries: dict[str, Result]


@pytest.fixture(scope="module")
def finished(cli_api: str, tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """``run spec.yaml`` to the end (progress display on), then the other commands on its result."""
    folder = tmp_path_factory.mktemp("cli-flow")
    (folder / "trial.py").write_text(TRIAL_PROGRAM)
    (folder / "spec.yaml").write_text(SPEC)
    env = _env(cli_api, folder)
    run = cli("run", "spec.yaml", cwd=folder, env=env)
    assert run.returncode == 0, str(run)
    state = _state("file://.prefect-hpo", NAME, folder)
    readers = {
        "status_json": ("status", NAME, "--json"),
        "status": ("status", NAME),
        "best": ("best", NAME),
        "best_json": ("best", NAME, "--json"),
    }
    queries = dict(zip(readers, cli_many(list(readers.values()), folder, env)))
    # after the readers: a resume holds the lease while it runs, which status would show
    queries["resume"], queries["validate"] = cli_many([("resume", NAME), ("validate", "spec.yaml")], folder, env)
    return Finished(folder, env, run, state, queries)


# ---- run -----------------------------------------------------------------------------------------


def test_run_completes_the_budget_and_prints_the_best_and_where_to_look(finished: Finished) -> None:
    exp = finished.state.experiment
    assert [t.status.value for t in exp.trials] == ["completed"] * BUDGET
    assert sorted(_starts(finished.folder)) == list(range(BUDGET))
    best = exp.best_trial
    lines = finished.run.stdout.splitlines()
    assert lines[0] == f"{NAME}: best trial {best.index}: loss={best.values['loss']:.6g}", finished.run.stdout
    assert lines[1].strip() == f"params: x={best.params['x']}, opt={best.params['opt']}"
    where = dict(re.match(r"\s+(\w[\w ]*):\s+(.*)", line).groups() for line in lines[2:])
    assert set(where) == {"checkpoint", "trial logs", "MLflow", "status"}, finished.run.stdout
    checkpoint = Path(where["checkpoint"])
    assert checkpoint.is_file() and checkpoint == finished.folder / ".prefect-hpo" / NAME / "experiment.json"
    logs = Path(where["trial logs"])
    assert logs.is_dir() and logs == finished.folder / ".prefect-hpo" / NAME / "trials"
    assert any(logs.rglob("output.log"))
    assert f"sqlite:///{finished.folder / 'mlflow.db'}" in where["MLflow"]
    assert finished.state.parent_run_id and finished.state.parent_run_id in where["MLflow"]
    assert where["status"] == f"prefect-hpo status {NAME}"  # default storage: no --storage needed


def test_progress_on_a_non_tty_is_one_line_per_finished_trial(finished: Finished) -> None:
    progress = [line for line in finished.run.stderr.splitlines() if line.startswith(f"[{NAME}]")]
    assert len(progress) == BUDGET, finished.run.stderr
    assert "\r" not in finished.run.stderr and "\033[" not in finished.run.stderr  # no live line
    # counts are taken after each poll, so trials that end in the same poll share one count
    done = [int(re.search(r"\] (\d+)/(\d+) done", line).group(1)) for line in progress]
    assert done == sorted(done) and done[-1] == BUDGET, progress
    assert all(count >= i + 1 for i, count in enumerate(done)), progress
    assert all(f"/{BUDGET} done (0 failed)" in line for line in progress)
    finished_trials = sorted(int(re.search(r"\| trial (\d+) completed", line).group(1)) for line in progress)
    assert finished_trials == list(range(BUDGET))
    best = finished.state.experiment.best_trial
    assert f"best loss={best.values['loss']:.6g} (trial {best.index})" in progress[-1]


# ---- status / best -------------------------------------------------------------------------------


def test_status_json_matches_the_checkpoint(finished: Finished) -> None:
    result = finished.queries["status_json"]
    assert result.returncode == 0, str(result)
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict) and doc["name"] == NAME
    assert doc["counts"] == {"completed": BUDGET}
    trials = doc["trials"]
    assert isinstance(trials, list) and len(trials) == BUDGET
    exp = finished.state.experiment
    for row in trials:
        assert {"index", "status", "params", "values"} <= set(row)
        trial = exp.trial(row["index"])
        assert row["status"] == trial.status.value == "completed"
        assert row["params"] == trial.params
        assert row["values"] == trial.values
    assert [row["index"] for row in trials] == [t.index for t in exp.trials]
    assert doc["best"] == {"index": exp.best_trial.index, "params": exp.best_trial.params, "values": exp.best_trial.values}
    assert doc["lease"] is None  # the driver gave its lease back


def test_status_prints_a_table(finished: Finished) -> None:
    result = finished.queries["status"]
    assert result.returncode == 0, str(result)
    lines = result.stdout.splitlines()
    assert lines[0] == f"{NAME}: {BUDGET}/{BUDGET} trials done {BUDGET} completed"
    assert lines[1].startswith("  wall time: ") and "over 1 flow run " in lines[1]  # the experiment's clock
    assert lines[2].split() == ["#", "status", "step", "x", "opt", "loss", "reason"]
    exp = finished.state.experiment
    rows = [line.split() for line in lines[3 : 3 + BUDGET]]
    for row, trial in zip(rows, exp.trials):
        assert row[0] == str(trial.index) and row[1] == "completed"
        steps = [r["step"] for r in trial.metadata["history"] if r["step"] is not None]
        assert row[2] == (str(max(steps)) if steps else "-")  # how far it trained
        assert float(row[3]) == pytest.approx(trial.params["x"], rel=1e-4)
        assert row[4] == trial.params["opt"]
        assert float(row[5]) == pytest.approx(trial.values["loss"], rel=1e-4, abs=1e-9)
    assert lines[3 + BUDGET] == f"  best: trial {exp.best_trial.index}"


def test_best_prints_the_best_trial(finished: Finished) -> None:
    best = finished.state.experiment.best_trial
    text = finished.queries["best"]
    assert text.returncode == 0, str(text)
    assert text.stdout.splitlines() == [
        f"trial {best.index}: loss={best.values['loss']:.6g}",
        f"  x = {best.params['x']}",
        f"  opt = {best.params['opt']}",
    ]
    as_json = finished.queries["best_json"]
    assert as_json.returncode == 0, str(as_json)
    assert json.loads(as_json.stdout) == {"index": best.index, "params": best.params, "values": best.values}


def test_resume_of_a_finished_experiment_runs_nothing(finished: Finished) -> None:
    result = finished.queries["resume"]
    assert result.returncode == 0, str(result)
    best = finished.state.experiment.best_trial
    assert result.stdout.splitlines()[0] == f"{NAME}: best trial {best.index}: loss={best.values['loss']:.6g}"
    assert sorted(_starts(finished.folder)) == list(range(BUDGET))  # no trial started again
    again = _state("file://.prefect-hpo", NAME, finished.folder).experiment
    assert [(t.index, t.status.value, t.params, t.values) for t in again.trials] == [
        (t.index, t.status.value, t.params, t.values) for t in finished.state.experiment.trials
    ]


def test_validate_accepts_the_full_spec(finished: Finished) -> None:
    result = finished.queries["validate"]
    assert result.returncode == 0, str(result)
    assert result.stdout.strip() == "spec.yaml: ok: spec, 2 parameters (2 searched), 0 constraints, continuous"


# ---- --storage -----------------------------------------------------------------------------------


def test_storage_elsewhere_is_used_by_run_and_status(cli_api: str, tmp_path: Path) -> None:
    (tmp_path / "trial.py").write_text(TRIAL_PROGRAM)
    (tmp_path / "spec.yaml").write_text(SPEC.replace(f"trials: {BUDGET}", "trials: 1").replace(NAME, "cli-elsewhere"))
    elsewhere = tmp_path / "somewhere" / "else"
    storage = f"file://{elsewhere}"
    env = _env(cli_api, tmp_path)
    run = cli("run", "spec.yaml", "--storage", storage, "--quiet", cwd=tmp_path, env=env)
    assert run.returncode == 0, str(run)
    assert "[cli-elsewhere]" not in run.stderr, run.stderr  # --quiet: no progress lines
    assert _starts(tmp_path) == [0]
    assert (elsewhere / "cli-elsewhere" / "experiment.json").is_file()
    assert not (tmp_path / ".prefect-hpo").exists()
    assert f"checkpoint: {elsewhere / 'cli-elsewhere' / 'experiment.json'}" in run.stdout
    assert f"trial logs: {elsewhere / 'cli-elsewhere' / 'trials'}" in run.stdout
    assert f"prefect-hpo status cli-elsewhere --storage {storage}" in run.stdout

    state = _state(storage, "cli-elsewhere", tmp_path)
    status, missing = cli_many(
        [("status", "cli-elsewhere", "--storage", storage, "--json"), ("status", "cli-elsewhere")], tmp_path, env
    )
    assert status.returncode == 0, str(status)
    trials = json.loads(status.stdout)["trials"]
    assert [(r["index"], r["status"], r["params"], r["values"]) for r in trials] == [
        (t.index, t.status.value, t.params, t.values) for t in state.experiment.trials
    ]
    # the default store does not have it: an unknown experiment there, in one line, exit 2
    assert missing.returncode == 2 and missing.stdout == "", str(missing)
    assert missing.stderr.count("\n") == 1 and missing.stderr.startswith("prefect-hpo: error: "), str(missing)
    assert "'cli-elsewhere'" in missing.stderr and "--storage" in missing.stderr


# ---- refusals: exit 2, one line naming the field -------------------------------------------------

GOOD = {
    "name": "bad-specs",
    "parameters": [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}],
    "objectives": {"loss": "minimize"},
    "budget": {"trials": 2},
    "trial": {"command": "python trial.py {x}"},
}


def _yaml(doc: dict) -> str:
    return json.dumps(doc)  # JSON is YAML


BAD_SPECS: dict[str, tuple[str, list[str]]] = {
    # case: (file content, fragments the single error line must contain)
    "zero-trials": (_yaml({**GOOD, "budget": {"trials": 0}}), ["budget.trials", "greater than 0"]),
    "unknown-field": (_yaml({**GOOD, "colour": "red"}), ["colour", "unknown field"]),
    "bad-parameter": (
        _yaml({**GOOD, "parameters": [{"name": "x", "type": "range", "bounds": [1.0, 0.0]}]}),
        ["parameters", "'x'", "reversed"],
    ),
    "placeholder": (_yaml({**GOOD, "trial": {"command": "python trial.py {nope}"}}), ["trial.command", "{nope}"]),
    "unreadable-yaml": ("name: broken\nparameters: [\n  - {name: x\n", ["spec.yaml", "not valid YAML"]),
}


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    """``run`` of each bad spec, and of a missing file, all at once (``validate`` shares the checks)."""
    folder = tmp_path_factory.mktemp("cli-refusals")
    calls: dict[str, tuple[str, ...]] = {}
    for case, (text, _) in BAD_SPECS.items():
        (folder / case).mkdir()
        (folder / case / "spec.yaml").write_text(text)
        calls[f"run:{case}"] = ("run", f"{case}/spec.yaml")
    calls["run:missing-file"] = ("run", "missing/spec.yaml")
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # never reached: refused before
    return dict(zip(calls, cli_many(list(calls.values()), folder, env)))


@pytest.mark.parametrize("call", [*(f"run:{case}" for case in BAD_SPECS), "run:missing-file"])
def test_a_bad_spec_is_refused_in_one_line_naming_the_field(refusals: dict[str, Result], call: str) -> None:
    result = refusals[call]
    case = call.split(":")[1]
    fragments = ["missing/spec.yaml", "cannot be read"] if case == "missing-file" else BAD_SPECS[case][1]
    assert result.returncode == 2, str(result)
    assert result.stdout == "", str(result)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("prefect-hpo: error: "), str(result)
    for fragment in fragments:
        assert fragment in result.stderr, str(result)
