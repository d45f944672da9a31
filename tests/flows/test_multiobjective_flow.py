"""Several objectives and outcome constraints through the real flow, the CLI and MLflow.

Real Prefect (the session's test-harness server), trial processes, MLflow on a SQLite file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flowkit import make_spec
from mlflow.tracking import MlflowClient

from prefect_hpo.flows.hpo import hpo_flow
from prefect_hpo.spec import BudgetSpec, load_spec
from prefect_hpo.storage.checkpoint import open_store
from prefect_hpo.storage.state import ExperimentState

pytestmark = pytest.mark.timeout(240)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# loss = x and latency = y, reported at once: which trials are feasible is known from the params
METRICS_COMMAND = "printf 'PREFECT_HPO_REPORT {\"step\": 0, \"metrics\": {\"loss\": %s, \"latency\": %s}}\\n' {x} {y}"


def _cli(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect_hpo.cli", *args], cwd=workspace, capture_output=True, text=True, check=True)


def test_the_nas_example_maps_a_pareto_front_into_mlflow(workspace: Path) -> None:
    (workspace / "examples").mkdir()
    shutil.copy(EXAMPLES / "nas.yaml", workspace / "examples" / "nas.yaml")
    shutil.copytree(EXAMPLES / "nas", workspace / "examples" / "nas")
    spec = load_spec(Path("examples") / "nas.yaml")
    assert list(spec.directions.items()) == [("val_accuracy", "maximize"), ("n_params", "minimize")]
    spec = spec.model_copy(update={"budget": BudgetSpec(trials=4, max_parallel=2),
                                   "trial": spec.trial.model_copy(update={"poll_interval_s": 0.2})})
    outcome = hpo_flow(spec=spec.to_dict())

    state = ExperimentState.from_json(open_store(spec.storage).read("nas"), "nas")
    exp = state.experiment
    assert [t.status.value for t in exp.trials] == ["completed"] * 4
    assert outcome is not None and set(outcome) == {"pareto_front", "hypervolume", "reference_point", "outside_thresholds"}
    assert outcome["outside_thresholds"] == [t.index for t in exp.outside_thresholds()]
    front = {t.index for t in exp.pareto_front()}
    assert {t["index"] for t in outcome["pareto_front"]} == front
    assert outcome["reference_point"] == {"val_accuracy": 0.8, "n_params": 50000.0}  # the spec's thresholds
    assert outcome["hypervolume"] == pytest.approx(exp.hypervolume())
    for t in exp.trials:  # front members meet the thresholds; others miss one or are dominated
        assert t.values["n_params"] == float(t.values["n_params"]) and 0.0 < t.values["val_accuracy"] <= 1.0
        if t.index in front:
            assert t.values["val_accuracy"] >= 0.8 and t.values["n_params"] <= 50000
        elif exp.meets_thresholds(t):
            assert any(exp.trial(f).values["val_accuracy"] >= t.values["val_accuracy"]
                       and exp.trial(f).values["n_params"] <= t.values["n_params"] for f in front)

    status = json.loads(_cli(workspace, "status", "nas", "--json").stdout)
    assert {row["index"] for row in status["trials"] if row["on_pareto_front"]} == front
    assert status["best"]["hypervolume"] == pytest.approx(outcome["hypervolume"])
    best = _cli(workspace, "best", "nas").stdout
    assert best.startswith(f"Pareto front: {len(front)} trial(s)")

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    parent = client.get_run(state.parent_run_id)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto_front.png", "pareto_front.json"} <= artifacts
    png = Path(client.download_artifacts(parent.info.run_id, "pareto_front.png", str(workspace)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert parent.data.metrics["hpo/hypervolume"] == pytest.approx(outcome["hypervolume"])
    assert parent.data.metrics["hpo/pareto_size"] == len(front)
    children = client.search_runs([parent.info.experiment_id], filter_string="tags.`prefect_hpo.role` = 'trial'")
    assert {int(r.data.tags["prefect_hpo.trial_index"]) for r in children if r.data.tags.get("prefect_hpo.pareto") == "true"} == front
    assert not [r for r in children if "prefect_hpo.best" in r.data.tags]


def test_an_infeasible_trial_is_recorded_but_never_best(workspace: Path) -> None:
    spec = make_spec(
        "constrained",
        algorithm="sobol",
        budget={"trials": 8, "max_parallel": 2},
        trial={"command": METRICS_COMMAND},
        outcome_constraints=["latency <= 0.5"],
    )
    best = hpo_flow(spec=spec)
    exp = ExperimentState.from_json(open_store("file://ckpt").read("constrained"), "constrained").experiment
    feasible = [t for t in exp.trials if t.params["y"] <= 0.5]
    infeasible = [t for t in exp.trials if t.params["y"] > 0.5]
    assert feasible and infeasible, "the Sobol points should fall on both sides of the constraint"
    assert all(t.feasible is True for t in feasible) and all(t.feasible is False for t in infeasible)
    assert all(t.values == {"loss": t.params["x"], "latency": t.params["y"]} for t in exp.trials)
    want = min(feasible, key=lambda t: t.values["loss"])
    assert best is not None and best["index"] == want.index

    rows = {row["index"]: row for row in json.loads(_cli(workspace, "status", "constrained", "--storage", "file://ckpt", "--json").stdout)["trials"]}
    assert all(rows[t.index]["feasible"] is False for t in infeasible)
    text = _cli(workspace, "status", "constrained", "--storage", "file://ckpt").stdout
    assert text.count("infeasible") == len(infeasible)

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("constrained").experiment_id])
    tags = {r.data.tags["prefect_hpo.trial_index"]: r.data.tags.get("prefect_hpo.feasible") for r in runs
            if r.data.tags.get("prefect_hpo.role") == "trial"}
    assert tags == {str(t.index): str(t.feasible).lower() for t in exp.trials}
