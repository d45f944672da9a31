"""Following a trial that runs elsewhere through its MLflow run.

Trials on a work pool or a Dask worker log their reports straight to their MLflow run; the HPO
flow reads the new entries back at each poll. One reader per launcher remembers how much of each
run it has returned, so a fresh launcher (after a resume) replays a run from its start, as the
local launcher replays a log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from prefect_hpo.errors import StorageError
from prefect_hpo.storage.tracking import MlflowTracker
from prefect_hpo.trial import Report

__all__ = ["MlflowCurveReader"]

logger = logging.getLogger(__name__)


class MlflowCurveReader:
    def __init__(self, tracker: MlflowTracker, metric_names: Sequence[str] = ()) -> None:
        self.tracker = tracker
        self.metric_names = tuple(metric_names)
        self._seen: dict[str, dict[str, int]] = {}  # attempt key -> entries returned per metric

    def new_reports(self, key: str, handle: dict[str, Any]) -> list[Report]:
        """Reports logged to the handle's run since the last call for ``key`` (one attempt)."""
        run_id = handle.get("run_id")
        if not run_id:
            return []
        try:
            return self.tracker.read_reports(run_id, self._seen.setdefault(key, {}), self.metric_names)
        except StorageError as exc:
            logger.warning("trial %s: metrics not read from MLflow this time: %s", handle.get("index"), exc)
            return []
