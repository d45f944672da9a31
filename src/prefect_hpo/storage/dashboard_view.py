"""What the MLflow parent run shows as the experiment's live dashboard, computed from the experiment.

Pure (no MLflow, no Prefect): the flow takes a :class:`DashboardView` of its experiment on its
own thread after each batch of ended trials, and
:mod:`prefect_hpo.storage.tracking_dashboard` writes it from the tracker's queue. Keeping the
numbers here makes them testable without a tracking server, and the writer a dumb copier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from prefect_hpo.errors import NoCompletedTrialsError
from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.optim.trials import Trial, TrialStatus

__all__ = ["DashboardView", "best_so_far", "dashboard_view", "describe_strategy", "note_markdown"]

_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class DashboardView:
    """One moment of the experiment, as the parent run shows it."""

    objectives: dict[str, str]
    #: single objective: (step = completed trials so far, best value so far), one per completed trial
    best_so_far: tuple[tuple[int, float], ...]
    completed: int
    failed: int  # failed, and abandoned (never ran: the wall-clock budget was spent)
    early_stopped: int
    running: int  # running or waiting to run
    ended: int  # trials in a terminal state: the step of the count metrics
    best_index: int | None
    best_values: dict[str, float] | None
    best_params: dict[str, Any] | None
    #: the trials whose child runs carry ``marker``: the best trial, or the Pareto front
    marked: tuple[int, ...]
    marker: str  # "best" or "pareto"
    hypervolume: float | None
    pareto_size: int | None
    strategy: str
    budget: int | None


def _finish_order(trials: Sequence[Trial]) -> list[Trial]:
    """Completed trials in the order they completed (index breaks ties and missing times)."""
    done = [t for t in trials if t.status is TrialStatus.COMPLETED]
    return sorted(done, key=lambda t: (t.finished_at or _EPOCH, t.index))


def best_so_far(exp: Experiment) -> list[tuple[int, float]]:
    """The optimization curve: after the k-th completed trial (step k), the best feasible value
    among the first k. One point per completed trial, none before the first feasible one; never
    worse than the point before it. Single objective only (empty otherwise)."""
    if exp.is_multi_objective:
        return []
    (objective, direction), = exp.objectives.items()
    better = min if direction == "minimize" else max
    curve: list[tuple[int, float]] = []
    best: float | None = None
    for k, trial in enumerate(_finish_order(exp.trials), start=1):
        value = (trial.values or {}).get(objective)
        if trial.feasible is not False and value is not None and not math.isnan(value):
            best = value if best is None else better(best, value)
        if best is not None:
            curve.append((k, float(best)))
    return curve


def describe_strategy(trials: Sequence[Trial]) -> str:
    """What actually suggested the trials, in index order: ``"sobol (trials 0-7), then gp"``.

    Consecutive trials of one suggester form a run; every run but the last names its trials
    (the last one is still going). A trial with no suggester recorded counts as ``"manual"``.
    """
    runs: list[tuple[str, int, int]] = []
    for t in sorted(trials, key=lambda t: t.index):
        name = t.suggester or "manual"
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1], t.index)
        else:
            runs.append((name, t.index, t.index))
    parts = []
    for i, (name, first, last) in enumerate(runs):
        if i == len(runs) - 1 and len(runs) > 1:
            parts.append(name)
        else:
            parts.append(f"{name} (trial {first})" if first == last else f"{name} (trials {first}-{last})")
    return ", then ".join(parts)


def dashboard_view(exp: Experiment, budget: int | None = None) -> DashboardView:
    """The view of ``exp`` now (taken on the flow's thread: the writer thread reads only this)."""
    counts = {s: 0 for s in TrialStatus}
    for t in exp.trials:
        counts[t.status] += 1
    best: Trial | None = None
    hypervolume: float | None = None
    pareto_size: int | None = None
    if exp.is_multi_objective:
        front = exp.pareto_front()
        marked = tuple(t.index for t in front)
        marker = "pareto"
        pareto_size = len(front)
        try:
            hypervolume = float(exp.hypervolume()) if front else None
        except NoCompletedTrialsError:
            hypervolume = None
    else:
        try:
            best = exp.best_trial
        except NoCompletedTrialsError:
            best = None
        marked = (best.index,) if best is not None else ()
        marker = "best"
    return DashboardView(
        objectives=dict(exp.objectives),
        best_so_far=tuple(best_so_far(exp)),
        completed=counts[TrialStatus.COMPLETED],
        failed=counts[TrialStatus.FAILED] + counts[TrialStatus.ABANDONED],
        early_stopped=counts[TrialStatus.EARLY_STOPPED],
        running=counts[TrialStatus.RUNNING] + counts[TrialStatus.PENDING],
        ended=sum(n for s, n in counts.items() if s.is_terminal),
        best_index=best.index if best is not None else None,
        best_values=dict(best.values) if best is not None and best.values else None,
        best_params=dict(best.params) if best is not None else None,
        marked=marked,
        marker=marker,
        hypervolume=hypervolume,
        pareto_size=pareto_size,
        strategy=describe_strategy(exp.trials),
        budget=budget,
    )


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _pairs(values: Mapping[str, Any]) -> str:
    return ", ".join(f"`{k}` = {_number(v)}" for k, v in values.items())


def note_markdown(view: DashboardView, flow_run_url: str | None = None) -> str:
    """The experiment's description (MLflow's ``mlflow.note.content``): a short markdown summary."""
    objectives = ", ".join(f"{direction} `{name}`" for name, direction in view.objectives.items())
    budget = f" of a budget of {view.budget}" if view.budget is not None else ""
    lines = [
        f"**Objective{'s' if len(view.objectives) > 1 else ''}:** {objectives}",
        "",
        f"**Trials:** {view.ended} ended{budget}: {view.completed} completed, {view.failed} failed, "
        f"{view.early_stopped} stopped early; {view.running} running",
    ]
    if view.best_index is not None:
        lines += ["", f"**Best trial:** {view.best_index}: {_pairs(view.best_values or {})}"]
        if view.best_params:
            lines += ["", f"**Its params:** {_pairs(view.best_params)}"]
    elif view.pareto_size:
        hv = f", hypervolume {view.hypervolume:.6g}" if view.hypervolume is not None else ""
        lines += ["", f"**Pareto front:** {view.pareto_size} trial(s) ({', '.join(map(str, view.marked))}){hv}"]
    if view.strategy:
        lines += ["", f"**Strategy:** {view.strategy}"]
    if flow_run_url:
        lines += ["", f"**Prefect flow run:** [{flow_run_url}]({flow_run_url})"]
    return "\n".join(lines)
