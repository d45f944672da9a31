"""The MLflow parent run kept up to date as the experiment's dashboard (a step, not a task run).

Called by the flow's loop once per batch of ended trials and once more, final, at the end; it
takes a :class:`~prefect_hpo.storage.dashboard_view.DashboardView` on the flow's thread and
queues its write (:mod:`prefect_hpo.storage.tracking_dashboard`), so a slow or unreachable MLflow
never holds up the loop. Not a Prefect task: it runs after most polls that end a trial, and a
task run each would bury the trials in the flow run's graph.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from prefect_hpo.errors import StorageError
from prefect_hpo.storage.dashboard_view import dashboard_view
from prefect_hpo.storage.tracking_dashboard import DashboardWriter
from prefect_hpo.storage.trial_run import run_of
from prefect_hpo.tasks.runtime import HPORuntime

__all__ = ["update_dashboard"]

logger = logging.getLogger(__name__)


def update_dashboard(runtime: HPORuntime, *, late_ids: Mapping[int, str] | None = None, final: bool = False) -> None:
    """Queue the parent run's dashboard update for the experiment as it is now.

    ``late_ids`` (the final reconciliation's trial -> run id, filled by the time this write runs)
    lets the best-trial tag reach a run that reconciliation created late; ``final`` (the flow's
    last update) is queued at once rather than spaced after the one before. A tracking error is
    logged, never raised: the dashboard is a view, and the checkpoint the truth.
    """
    parent = runtime.state.parent_run_id
    if parent is None:
        return
    if runtime.dashboard is None or runtime.dashboard.parent_run_id != parent:
        runtime.dashboard = DashboardWriter(runtime.tracker, parent)
    exp = runtime.experiment
    view = dashboard_view(exp, runtime.spec.budget.trials)
    run_ids = {i: run_of(exp.trial(i)).run_id for i in view.marked}
    if view.best_index is not None:
        run_ids[view.best_index] = run_of(exp.trial(view.best_index)).run_id
    try:
        runtime.dashboard.update(view, run_ids, late_ids=late_ids, final=final)
    except StorageError as exc:
        logger.warning("%s: MLflow dashboard not updated: %s", exp.name, exc)
