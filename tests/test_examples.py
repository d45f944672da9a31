"""The example trials, specs and deployments: each trial program runs standalone and speaks the
protocol, each spec loads, and deployments/prefect.yaml points at real files.

The quickstart trainings run as subprocesses, all started at once (about 1.5 s each, mostly
``import torch``), so the whole module takes a few seconds.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prefect_hpo.spec import load_spec
from prefect_hpo.trial import PARAMS_ENV, parse_report_line

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SPECS = {
    "quickstart": EXAMPLES / "quickstart.yaml",
    "shell-example": EXAMPLES / "shell.yaml",
    "callable-example": EXAMPLES / "callable.yaml",
    "early-stopping": EXAMPLES / "early_stopping.yaml",
    "bandit-example": EXAMPLES / "bandit.yaml",
}
GOOD = {"lr": 0.03, "hidden": 64, "optimizer": "adam"}
BAD = {"lr": 1e-4, "hidden": 8, "optimizer": "sgd"}


def _env(params: dict | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != PARAMS_ENV}
    if params is not None:
        env[PARAMS_ENV] = json.dumps(params)
    return env


def _reports(stdout: str) -> list:
    return [r for r in map(parse_report_line, stdout.splitlines()) if r is not None]


# ---- quickstart: examples/quickstart/train.py ------------------------------------------------


@pytest.fixture(scope="module")
def quickstart_runs() -> dict[str, subprocess.CompletedProcess]:
    """train.py with a good config, a bad config and no parameters at all, run concurrently."""
    command = shlex.split(load_spec(SPECS["quickstart"]).trial.command)
    script = ROOT / command[-1]
    assert command[0] == "python" and script.is_file(), command
    runs = {
        name: subprocess.Popen(
            [sys.executable, str(script)], cwd=ROOT, env=_env(params),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, params in {"good": GOOD, "bad": BAD, "defaults": None}.items()
    }
    done = {}
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=60)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


@pytest.mark.parametrize("name", ["good", "bad", "defaults"])
def test_quickstart_reports_finite_val_loss_every_epoch(quickstart_runs, name):
    run = quickstart_runs[name]
    assert run.returncode == 0, run.stderr
    reports = _reports(run.stdout)
    assert [r.step for r in reports] == list(range(1, 9))
    assert all(math.isfinite(r.metrics["val_loss"]) for r in reports)


def test_quickstart_good_config_beats_bad_config(quickstart_runs):
    good = _reports(quickstart_runs["good"].stdout)[-1].metrics["val_loss"]
    bad = _reports(quickstart_runs["bad"].stdout)[-1].metrics["val_loss"]
    assert good < 0.1 < 0.2 < bad, (good, bad)
    good_curve = [r.metrics["val_loss"] for r in _reports(quickstart_runs["good"].stdout)]
    assert good_curve[-1] < good_curve[0]  # it learns


def test_quickstart_standalone_prints_a_note(quickstart_runs):
    assert PARAMS_ENV in quickstart_runs["defaults"].stderr
    assert PARAMS_ENV not in quickstart_runs["good"].stderr


# ---- shell: examples/shell/train.sh ----------------------------------------------------------


@pytest.mark.skipif(shutil.which("sh") is None or shutil.which("awk") is None, reason="needs sh and awk")
def test_shell_trial_reports_a_decreasing_curve_and_ranks_points():
    spec = load_spec(SPECS["shell-example"])
    assert os.access(EXAMPLES / "shell" / "train.sh", os.X_OK)

    def final(params: dict) -> list:
        command = spec.trial.command.format(**params)  # the spec's {x} {y} template
        run = subprocess.run(command, shell=True, cwd=ROOT, env=_env(params),
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
        reports = _reports(run.stdout)
        assert [r.step for r in reports] == [1, 2, 3, 4, 5]
        losses = [r.metrics["loss"] for r in reports]
        assert losses == sorted(losses, reverse=True)
        return losses[-1]

    best = final({"x": 0.0619, "y": -0.2})
    assert best == pytest.approx(0.2871, abs=1e-3)
    assert final({"x": -1.0, "y": 1.0}) > best + 1
    assert final({"x": 1e-05, "y": -0.5}) > best  # scientific notation from the template works


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
def test_shell_trial_rejects_bad_arguments():
    run = subprocess.run(["sh", "examples/shell/train.sh", "abc", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode != 0 and "PREFECT_HPO_REPORT" not in run.stdout


# ---- callable: examples/callable/objective.py ------------------------------------------------


def test_callable_branin_reports_steps_and_returns_final_value(capsys):
    spec = load_spec(SPECS["callable-example"])
    module_name, func_name = spec.trial.callable.split(":")
    path = ROOT / spec.trial.cwd / (module_name.replace(".", "/") + ".py")
    module_spec = importlib.util.spec_from_file_location(f"_example_{module_name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    branin = getattr(module, func_name)

    value = branin({"x1": math.pi, "x2": 2.275})
    assert value == pytest.approx(0.397887, abs=1e-5)
    reports = _reports(capsys.readouterr().out)
    assert [r.step for r in reports] == [1, 2]
    assert all(r.metrics["loss"] > value for r in reports)
    assert branin({"x1": -5.0, "x2": 0.0}) > 100


# ---- specs and deployments -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPECS))
def test_example_specs_load(name):
    spec = load_spec(SPECS[name])
    assert spec.name == name
    spec.build_experiment()
    if spec.trial.cwd is not None:
        assert (ROOT / spec.trial.cwd).is_dir()


def test_example_spec_budgets():
    shell, callable_ = load_spec(SPECS["shell-example"]), load_spec(SPECS["callable-example"])
    assert (shell.budget.trials, shell.budget.max_parallel, shell.tracking_uri) == (8, 2, None)
    assert (callable_.budget.trials, callable_.budget.max_parallel) == (12, 2)


def test_deployments_yaml_points_at_real_files():
    config = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert set(deployments) == {"quickstart", "nightly-quickstart", "process"}
    (step,) = config["pull"]
    assert set(step) == {"prefect.deployments.steps.set_working_directory"}

    # the trial flow, whose runs are the trials of a spec with trial.work_pool
    trial = deployments.pop("process")
    assert trial["entrypoint"] == "src/prefect_hpo/flows/trial.py:trial_flow"
    assert (ROOT / "src" / "prefect_hpo" / "flows" / "trial.py").is_file()
    assert trial["work_pool"]["name"] == "hpo-process" and "parameters" not in trial

    for deployment in deployments.values():
        path, func = deployment["entrypoint"].split(":")
        source = ROOT / path
        assert source.is_file(), path
        tree = ast.parse(source.read_text())
        (flow_fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == func]
        arg_names = [a.arg for a in flow_fn.args.args + flow_fn.args.kwonlyargs]
        assert set(deployment["parameters"]) <= set(arg_names) and "spec" in arg_names
        assert load_spec(ROOT / deployment["parameters"]["spec"]).name == "quickstart"
        assert deployment["work_pool"]["name"] == "hpo-process"

    assert deployments["nightly-quickstart"]["parameters"]["name_suffix"] == "-{date}"  # a new experiment per night
    (schedule,) = deployments["nightly-quickstart"]["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["timezone"] == "UTC"


def test_deployments_yaml_passes_prefects_own_model():
    """`prefect deploy` validates prefect.yaml with this model; check it offline."""
    models = pytest.importorskip("prefect.cli.deploy._models")
    raw = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    parsed = models.PrefectYamlModel.model_validate(raw)
    assert [d.name for d in parsed.deployments] == ["quickstart", "nightly-quickstart", "process"]
    (schedule,) = parsed.deployments[1].schedules
    assert isinstance(schedule, models.RawScheduleConfig)
    assert parsed.deployments[0].work_pool.work_queue_name == "default"
