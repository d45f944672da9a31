"""What every task of a running HPO flow works on: the state and the components around it.

It is built once by the flow and never checkpointed itself (the :class:`ExperimentState` inside
it is). The tasks find it in the context (:func:`current_runtime`, set by :func:`running` around
the flow's loop) rather than as an argument: Prefect walks every task argument for futures,
through dataclasses and models all the way down, so an argument holding the whole experiment was
walked on every task call; the tasks' arguments are what the UI could show, trial indexes, a
count, the news of a poll.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
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
from prefect_hpo.storage.tracking_dashboard import DashboardWriter
from prefect_hpo.storage.trial_run import run_of

__all__ = [
    "HPORuntime", "best_or_none", "current_runtime", "final_values", "running", "trial_history", "trial_names",
]


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
    #: ``state.wall_time_s`` when this run opened the experiment: earlier runs' time.
    earlier_wall_time_s: float = 0.0
    #: the MLflow parent run's dashboard writer (:mod:`prefect_hpo.tasks.dashboard`), made on first use
    dashboard: DashboardWriter | None = None

    def __post_init__(self) -> None:
        self.earlier_wall_time_s = self.state.wall_time_s

    @property
    def spec(self) -> ExperimentSpec:
        return self.state.spec

    @property
    def experiment(self) -> Experiment:
        return self.state.experiment

    def attempt_dir(self, index: int, attempt: int) -> Path:
        """Deterministic, so a restarted flow finds a trial's files without a checkpointed handle."""
        return self.trials_dir / f"trial-{index:04d}" / f"attempt-{attempt}"

    def elapsed_s(self) -> float:
        """The experiment's driving time so far: earlier flow runs' (from the checkpoint) plus this one's."""
        return self.earlier_wall_time_s + (time.monotonic() - self.started_at)

    def wall_time_spent(self) -> bool:
        limit = self.spec.budget.wall_time_s
        return limit is not None and self.elapsed_s() >= limit

    def update_clock(self) -> None:
        """Carry the time spent so far into the state, so the next checkpoint holds it."""
        self.state.wall_time_s = self.elapsed_s()


def trial_history(trial: Trial) -> list[tuple[int | None, dict[str, float]]]:
    """The current attempt's reports, with NaN/inf restored from their JSON spelling."""
    return [(r.get("step"), metrics_from_json(r["metrics"])) for r in run_of(trial).history]


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


def trial_names(indices: Iterable[int]) -> str:
    """``0003`` for one trial, ``0003-0005`` for a run of them, ``0003+0007`` otherwise."""
    ordered = sorted(indices)
    if len(ordered) == 1:
        return f"{ordered[0]:04d}"
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]:04d}-{ordered[-1]:04d}"
    return "+".join(f"{i:04d}" for i in ordered)


_CURRENT: ContextVar[HPORuntime | None] = ContextVar("prefect_hpo_runtime", default=None)


@contextmanager
def running(runtime: HPORuntime) -> Iterator[HPORuntime]:
    """Make ``runtime`` the one the tasks work on, in this context (threads the flow's task
    runner starts copy it)."""
    token = _CURRENT.set(runtime)
    try:
        yield runtime
    finally:
        _CURRENT.reset(token)


def current_runtime() -> HPORuntime:
    runtime = _CURRENT.get()
    if runtime is None:
        raise RuntimeError("no HPO runtime here: the tasks run inside `with running(runtime):` (the flow's loop)")
    return runtime
