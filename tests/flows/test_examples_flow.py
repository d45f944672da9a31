"""The shipped example specs, run through ``hpo_flow`` for real with small budgets.

The examples folder is copied into the test's working folder, so the specs' relative paths
(``sh examples/shell/train.sh``, ``cwd: examples/callable``) and their default checkpoint store
(``file://.prefect-hpo``) resolve there; MLflow is the workspace's SQLite file. Only the budget and
the poll interval are changed, on the spec as loaded by :func:`prefect_hpo.spec.load_spec`.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import textwrap
from pathlib import Path

import pytest

from prefect_hpo.flows.hpo import hpo_flow
from prefect_hpo.spec import BudgetSpec, ExperimentSpec, load_spec
from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _state(storage: str, name: str) -> ExperimentState:
    store = open_store(storage)
    text = store.read(name)
    assert text is not None, f"no checkpoint for {name}"
    return ExperimentState.from_json(text, store.location(name))


def _example(workspace: Path, spec_file: str, folder: str, trials: int) -> ExperimentSpec:
    """The example's spec from a copy of its files in the workspace, with a small budget."""
    (workspace / "examples").mkdir(exist_ok=True)
    shutil.copy(EXAMPLES / spec_file, workspace / "examples" / spec_file)
    shutil.copytree(EXAMPLES / folder, workspace / "examples" / folder)
    spec = load_spec(Path("examples") / spec_file)
    return spec.model_copy(
        update={
            "budget": BudgetSpec(trials=trials, max_parallel=spec.budget.max_parallel),
            "trial": spec.trial.model_copy(update={"poll_interval_s": 0.2}),
        }
    )


def _check_all_completed(spec: ExperimentSpec, best: dict | None, trials: int) -> ExperimentState:
    state = _state(spec.storage, spec.name)
    exp = state.experiment
    assert len(exp.trials) == trials
    assert [t.status.value for t in exp.trials] == ["completed"] * trials, [t.failure_reason for t in exp.trials]
    losses = [t.values["loss"] for t in exp.trials]
    assert all(math.isfinite(v) for v in losses)
    assert best is not None and best["values"]["loss"] == min(losses)
    assert best["index"] == min(exp.trials, key=lambda t: t.values["loss"]).index
    assert best["params"] == exp.trial(best["index"]).params
    return state


def test_the_shell_example_runs_through_the_flow(workspace: Path) -> None:
    spec = _example(workspace, "shell.yaml", "shell", trials=4)
    assert spec.trial.command == "sh examples/shell/train.sh {x} {y}"  # the example as shipped
    best = hpo_flow(spec=spec.to_dict())
    exp = _check_all_completed(spec, best, 4).experiment
    assert {t.suggester for t in exp.trials} == {"sobol"}
    for t in exp.trials:  # train.sh's toy loss at its last step (5), from the templated {x} {y}
        x, y = t.params["x"], t.params["y"]
        expected = (x - 0.3) ** 2 + 2 * (y + 0.2) ** 2 + 0.1 * math.sin(5 * x) + 1 / 5
        assert t.values["loss"] == pytest.approx(expected, rel=1e-6)
        assert len(t.metadata["history"]) == 5  # one report per step
    assert (workspace / ".prefect-hpo" / "shell-example" / "experiment.json").is_file()


def test_the_callable_example_runs_through_the_flow(workspace: Path) -> None:
    spec = _example(workspace, "callable.yaml", "callable", trials=4)
    assert spec.trial.callable == "objective:branin" and spec.trial.cwd == "examples/callable"
    best = hpo_flow(spec=spec.to_dict())
    exp = _check_all_completed(spec, best, 4).experiment
    loader = importlib.util.spec_from_file_location("example_objective", EXAMPLES / "callable" / "objective.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    branin_value = module.branin_value
    for t in exp.trials:  # the returned value is the final one, after two intermediate reports
        assert t.values["loss"] == pytest.approx(branin_value(t.params["x1"], t.params["x2"]), rel=1e-9)
        assert [r.get("step") for r in t.metadata["history"]] == [1, 2, None]
    assert best["values"]["loss"] >= 0.397887 - 1e-6  # never below Branin's global minimum


FAULTY = textwrap.dedent(
    """
    def objective(params):
        if params["mode"] == "raise":
            raise ValueError(f"objective refuses x={params['x']}")
        return {"loss": params["x"] ** 2}
    """
)


def test_a_raising_callable_fails_its_trial_with_the_exception_and_the_rest_complete(workspace: Path) -> None:
    (workspace / "faulty.py").write_text(FAULTY)
    spec = {
        "name": "faulty-callable",
        "parameters": [
            {"name": "mode", "type": "choice", "values": ["ok", "raise"]},
            {"name": "x", "type": "choice", "values": [0.25, 0.5]},
        ],
        "objectives": {"loss": "minimize"},
        "algorithm": "grid",
        "seed": 0,
        "budget": {"trials": 4, "max_parallel": 2},
        "trial": {"callable": "faulty:objective", "timeout_s": 60, "poll_interval_s": 0.2},
        "storage": "file://ckpt",
    }
    best = hpo_flow(spec=spec)
    exp = _state("file://ckpt", "faulty-callable").experiment
    assert sorted((t.params["mode"], t.params["x"]) for t in exp.trials) == [
        ("ok", 0.25), ("ok", 0.5), ("raise", 0.25), ("raise", 0.5)
    ]
    for t in exp.trials:
        if t.params["mode"] == "ok":
            assert t.status.value == "completed" and t.values == {"loss": t.params["x"] ** 2}
        else:
            assert t.status.value == "failed" and t.values is None
            log = workspace / "ckpt" / "faulty-callable" / "trials" / f"trial-{t.index:04d}" / "attempt-1" / "output.log"
            assert f"ValueError: objective refuses x={t.params['x']}" in log.read_text()  # the traceback
            assert "ValueError" in t.failure_reason and f"objective refuses x={t.params['x']}" in t.failure_reason, (
                t.failure_reason
            )
    assert best is not None and best["params"] == {"mode": "ok", "x": 0.25} and best["values"] == {"loss": 0.0625}


def test_the_early_stopping_example_stops_trials_at_asha_rungs(workspace: Path) -> None:
    spec = _example(workspace, "early_stopping.yaml", "quickstart", trials=8)
    assert (spec.stopping.policy, spec.stopping.resource, spec.stopping.max_steps) == ("asha", "epochs", 27)
    best = hpo_flow(spec=spec.to_dict())
    exp = _state(spec.storage, spec.name).experiment
    statuses = [t.status.value for t in exp.trials]
    assert set(statuses) <= {"completed", "early_stopped"}, [t.failure_reason for t in exp.trials]
    assert "early_stopped" in statuses and "completed" in statuses
    for t in exp.trials:
        steps = [r["step"] for r in t.metadata["history"] if r["step"] is not None]
        if t.status.value == "completed":
            assert max(steps) == 27  # the resource reached the trial: it trained 27 epochs, not 8
        else:
            assert max(steps) < 27 and "rung" in t.failure_reason
    assert best is not None and exp.trial(best["index"]).status.value == "completed"
