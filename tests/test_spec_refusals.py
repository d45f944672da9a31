"""Specs that cannot run are refused by ``validate`` and ``run`` alike, in one line naming the
field, before anything is written (issue 11: ``run`` used to start the flow, write ``lease.lock``
or ``mlflow.db``, and fail inside it with a traceback).

``run`` and ``validate`` are the real command line (``prefect_hpo.cli.main``) called in a fresh
working folder; ``PREFECT_API_URL`` points at a closed port, so a spec that got as far as the flow
would fail on the connection instead of being refused, and the test would see it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prefect_hpo.cli import MAX_ERROR_CHARS, main
from prefect_hpo.errors import SpecError
from prefect_hpo.flows.driver import open_runtime
from prefect_hpo.spec import check_runnable, load_spec

GOOD: dict[str, Any] = {
    "name": "refused",
    "parameters": [{"name": "x", "type": "range", "bounds": [0.0, 1.0]}],
    "objectives": {"loss": "minimize"},
    "budget": {"trials": 2},
    "trial": {"command": "python trial.py {x}"},
}


def _with(**changes: Any) -> str:
    return json.dumps({**GOOD, **changes})  # JSON is YAML


def _alias_bomb() -> str:
    """About 300 bytes that expand to 9**8 strings (the issue's 226 MB error line)."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefgh":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "\n".join(lines) + "\n"


# case: (spec.yaml content as text or bytes, fragments the one error line must contain)
CASES: dict[str, tuple[str | bytes, list[str]]] = {
    "unknown-algorithm": (_with(algorithm="nope"), ["algorithm 'nope'", "unknown", "available: auto"]),
    "bad-algorithm-options": (
        _with(algorithm="auto", algorithm_options={"n_initial": -5, "bogus": 1}),
        ["algorithm_options.bogus", "unknown option", "n_initial", "algorithm_options.n_initial", "greater than or equal to 0"],
    ),
    "gp-n-initial": (_with(algorithm="gp", algorithm_options={"n_initial": 8}), ["algorithm_options.n_initial", "min_observations"]),
    "nan-threshold": (
        _with(objectives={"loss": {"direction": "minimize", "threshold": math.nan}}),  # JSON's NaN: a string in YAML
        ["objectives.loss.threshold", "finite", "'NaN'"],
    ),
    "yaml-nan-threshold": (
        _with(objectives={"loss": "minimize"}).replace('"minimize"', "{direction: minimize, threshold: .nan}"),
        ["objectives.loss.threshold", "finite", "nan"],
    ),
    "gpus-beyond-visible": (
        _with(trial={"command": "python trial.py {x}", "gpus_per_trial": 3}), ["trial.gpus_per_trial", "3 GPU(s)", "0 visible"]
    ),
    "tracking-uri": (_with(tracking_uri="notascheme:::://"), ["tracking_uri", "'notascheme:::://'"]),
    "overflowing-bounds": (
        _with(parameters=[{"name": "x", "type": "range", "bounds": [-1e308, 1e308]}]), ["parameters", "'x'", "overflows"]
    ),
    "bool-bounds": (
        _with(parameters=[{"name": "x", "type": "range", "bounds": [True, 5.0]}]), ["parameters", "'x'", "not booleans"]
    ),
    "bool-trials": (_with(budget={"trials": True}), ["budget.trials", "expected a number, got True"]),
    "bool-seed": (_with(seed=False), ["seed", "expected a number, got False"]),
    "bool-option": (_with(algorithm="gp", algorithm_options={"num_restarts": True}), ["algorithm_options.num_restarts", "integer"]),
    "duplicate-key": (
        "name: refused\nbudget: {trials: 2}\nbudget: {trials: 200}\nobjectives: {loss: minimize}\n"
        "parameters: [{name: x, type: range, bounds: [0.0, 1.0]}]\ntrial: {command: 'python trial.py {x}'}\n",
        ["spec.yaml", "key 'budget' is given twice", "line 3"],
    ),
    "not-utf8": ("name: caf\u00e9\n".encode("latin-1"), ["spec.yaml", "not UTF-8", "0xe9"]),
    "alias-bomb": (_alias_bomb(), ["spec.yaml", "alias *a is not allowed"]),
    "newline-in-name": (_with(name="evilnl\n"), ["name", "'evilnl\\n' is not a valid experiment name"]),
}


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder, no GPUs, and a Prefect API nobody answers on."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PREFECT_HPO_TENANT", raising=False)
    for key in ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL", "MLFLOW_LOGGING_LEVEL",
                "PREFECT_SERVER_LOGGING_LEVEL", "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # restored afterwards, whatever `run` sets
    return tmp_path


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", list(CASES))
def test_validate_and_run_refuse_in_one_line_naming_the_field_and_write_nothing(
    folder: Path, capsys: pytest.CaptureFixture[str], case: str, command: str
) -> None:
    content, fragments = CASES[case]
    spec = folder / "spec.yaml"
    spec.write_bytes(content if isinstance(content, bytes) else content.encode())

    code = main([command, "spec.yaml"])

    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert out == "" and err.count("\n") == 1 and err.startswith("prefect-hpo: error: "), err[:2000]
    assert len(err) < MAX_ERROR_CHARS + 100
    for fragment in fragments:
        assert fragment in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["spec.yaml"]  # no .prefect-hpo, lease.lock, mlflow.db


def test_the_console_script_prints_the_same_single_line(folder: Path) -> None:
    """The same refusal through a real process, for stderr as a user sees it (no traceback)."""
    (folder / "spec.yaml").write_text(CASES["unknown-algorithm"][0])  # type: ignore[arg-type]
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    calls = [subprocess.Popen([sys.executable, "-m", "prefect_hpo.cli", command, "spec.yaml"], cwd=folder, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for command in ("validate", "run")]
    for proc in calls:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and out == "", err
        assert err.count("\n") == 1 and "algorithm 'nope': unknown" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["spec.yaml"]


def test_the_flow_refuses_before_taking_the_lease(folder: Path) -> None:
    """hpo_flow from Python (and deployments) goes through open_runtime: the same check, first."""
    spec = {**GOOD, "algorithm": "auto", "algorithm_options": {"bogus": 1}, "storage": "file://ckpt"}
    with pytest.raises(SpecError, match=r"algorithm_options\.bogus"):
        open_runtime(spec)
    assert not (folder / "ckpt").exists() and not (folder / "mlflow.db").exists()


def test_local_gpus_are_counted_only_for_local_process_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    check_runnable(load_spec({**GOOD, "trial": {"command": "python trial.py {x}", "gpus_per_trial": 2}}))
    with pytest.raises(SpecError, match=r"trial\.gpus_per_trial: 3 GPU\(s\) per trial but only 2 visible \(\['0', '1'\]\)"):
        check_runnable(load_spec({**GOOD, "trial": {"command": "python trial.py {x}", "gpus_per_trial": 3}}))
    listed = {"command": "python trial.py {x}", "gpus_per_trial": 3, "gpus": ["a", "b", "c"]}
    check_runnable(load_spec({**GOOD, "trial": listed}))  # the spec's own list counts, not the machine's
    # a work pool's GPUs are the pool's: this machine's count means nothing there
    pool = {"command": "python trial.py {x}", "gpus_per_trial": 8, "work_pool": {"deployment": "prefect-hpo-trial/k8s"}}
    check_runnable(load_spec({**GOOD, "trial": pool}))


@pytest.mark.parametrize(
    "uri", ["sqlite:///mlflow.db", "http://127.0.0.1:5000", "https://mlflow.example.com", "postgresql+psycopg2://u@h/db",
            "file:///tmp/mlruns", "mlruns", "./mlruns", "databricks", "databricks://profile"]
)
def test_tracking_uris_mlflow_opens_are_accepted(uri: str) -> None:
    assert load_spec({**GOOD, "tracking_uri": uri}).tracking_uri == uri


@pytest.mark.parametrize("uri", ["notascheme:::://", "ftp://host/x", "sqlite:mlflow.db", "c:d"])
def test_tracking_uris_mlflow_cannot_open_are_refused(uri: str) -> None:
    with pytest.raises(SpecError, match=r"tracking_uri: "):
        load_spec({**GOOD, "tracking_uri": uri})


def test_numbers_still_accept_numbers() -> None:
    spec = load_spec({**GOOD, "budget": {"trials": 3, "max_parallel": 2, "wall_time_s": 60}, "seed": 0,
                      "objectives": {"loss": {"direction": "minimize", "threshold": 1}}})
    assert (spec.budget.trials, spec.budget.wall_time_s, spec.seed) == (3, 60.0, 0)
    with pytest.raises(SpecError, match=r"budget\.wall_time_s: expected a number, got True"):
        load_spec({**GOOD, "budget": {"trials": 3, "wall_time_s": True}})
    with pytest.raises(SpecError, match=r"trial\.retries: expected a number"):
        load_spec({**GOOD, "trial": {"command": "python trial.py {x}", "retries": True}})


def test_a_huge_refused_value_is_shown_cut() -> None:
    with pytest.raises(SpecError) as info:
        load_spec({**GOOD, "name": "x" * 100_000})
    assert len(str(info.value)) < 400 and "100002 characters" in str(info.value)
