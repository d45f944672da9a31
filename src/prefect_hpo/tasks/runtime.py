"""What every task of a running HPO flow works on: the state and the components around it.

The tasks receive this object instead of a dozen arguments; it is built once by the flow and
never checkpointed itself (the :class:`ExperimentState` inside it is).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_hpo.errors import NoCompletedTrialsError
from prefect_hpo.launchers.base import Launcher
from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.optim.stopping import NoStopping, StoppingPolicy
from prefect_hpo.optim.trials import Trial
from prefect_hpo.spec import ExperimentSpec
from prefect_hpo.storage.checkpoint import CheckpointStore, Lease
from prefect_hpo.storage.state import ExperimentState, metrics_from_json
from prefect_hpo.storage.tracking import MlflowTracker

__all__ = ["HPORuntime", "best_or_none", "final_values", "trial_history"]


@dataclass
class HPORuntime:
    state: ExperimentState
    store: CheckpointStore
    lease: Lease
    tracker: MlflowTracker
    launcher: Launcher
    trials_dir: Path
    policy: StoppingPolicy = field(default_factory=NoStopping)
    resuming: bool = False
    started_at: float = field(default_factory=time.monotonic)

    @property
    def spec(self) -> ExperimentSpec:
        return self.state.spec

    @property
    def experiment(self) -> Experiment:
        return self.state.experiment

    def attempt_dir(self, index: int, attempt: int) -> Path:
        """Deterministic, so a restarted flow finds a trial's files without a checkpointed handle."""
        return self.trials_dir / f"trial-{index:04d}" / f"attempt-{attempt}"

    def wall_time_spent(self) -> bool:
        limit = self.spec.budget.wall_time_s
        return limit is not None and time.monotonic() - self.started_at >= limit


def trial_history(trial: Trial) -> list[tuple[int | None, dict[str, float]]]:
    """The current attempt's reports, with NaN/inf restored from their JSON spelling."""
    return [(r.get("step"), metrics_from_json(r["metrics"])) for r in trial.metadata.get("history", [])]


def final_values(trial: Trial, objectives: Sequence[str]) -> tuple[dict[str, float], list[str]]:
    """The last reported value of each named metric (objectives and constrained metrics), and
    the ones never reported."""
    values: dict[str, float] = {}
    for _, metrics in trial_history(trial):
        for name in objectives:
            if name in metrics:
                values[name] = metrics[name]
    return values, [o for o in objectives if o not in values]


def best_or_none(exp: Experiment) -> Trial | None:
    """The best trial, or None: several objectives (see ``pareto_front``), or no completed
    trial that is feasible yet."""
    if exp.is_multi_objective:
        return None
    try:
        return exp.best_trial
    except NoCompletedTrialsError:
        return None


def describe_values(values: dict[str, Any] | None) -> str:
    if not values:
        return "-"
    return ", ".join(f"{k}={v:.6g}" if isinstance(v, float) and math.isfinite(v) else f"{k}={v}" for k, v in values.items())
