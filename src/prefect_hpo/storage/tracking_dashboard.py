"""The MLflow parent run as the experiment's live dashboard, and the best trial's child marked.

After each batch of ended trials the flow hands a :class:`~prefect_hpo.storage.dashboard_view.DashboardView`
to :meth:`DashboardWriter.update`, which queues one write on the tracker (never blocking the
loop; an outage delays it like any other write). The write logs, on the parent run:

* ``hpo/best_so_far/<objective>``: one point per completed trial (step = completed trials so far),
  only the steps not logged yet, never worse than the last point; several objectives log
  ``hpo/hypervolume`` and ``hpo/pareto_size`` instead (step = completed trials);
* ``hpo/trials/completed``, ``hpo/trials/failed``, ``hpo/trials/early_stopped``,
  ``hpo/trials/running`` (step = trials ended so far);
* tags ``prefect_hpo.best_trial``, ``prefect_hpo.best_run_id``, ``prefect_hpo.strategy``, the flow
  run's id and URL, and ``mlflow.note.content`` (also on the MLflow experiment): the description.

Every parent metric is under ``hpo/``, apart from the trials' metrics. MLflow's chart view makes
a section of each name's part before its last ``/``, ordered by name: ``hpo/best_so_far`` (the
optimization curve) comes first, then ``hpo/trials`` (the counts). On the children exactly the best trial carries ``prefect_hpo.best = true`` (or
the Pareto front ``prefect_hpo.pareto = true``): the tag moves as a better trial arrives.

What was already written (steps, tagged runs) is learned from MLflow on the first write of a
flow run, so a resumed experiment continues its curve rather than repeating it.

Writes are coalesced and spaced: a write waiting to run takes the newest view when it runs (every
view holds the whole curve, so no point is lost), and a new write starts at most every
``PREFECT_HPO_DASHBOARD_INTERVAL_S`` seconds (default 1), except the final one. Each write is
several transactions on the tracking store; measured here on SQLite, one per trial of one-second
trials took as much CPU as the flow's own loop and slowed every other step on two cores.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping

from mlflow.entities import Metric, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode

from prefect_hpo.storage.dashboard_view import DashboardView, note_markdown
from prefect_hpo.storage.mlflow_values import clean_name, now_ms, same_value, truncate
from prefect_hpo.storage.tracking import _MAX_TAG_VALUE, FLOW_RUN_URL_TAG, PARENT_TAG, ROLE_TAG, MlflowTracker, is_pending_run

__all__ = [
    "BEST_RUN_ID_TAG", "BEST_TAG", "BEST_TRIAL_TAG", "DashboardWriter", "NOTE_TAG", "PARETO_TAG", "STRATEGY_TAG",
    "best_so_far_key",
]

logger = logging.getLogger(__name__)

PREFIX = "hpo/"
BEST_TAG = "prefect_hpo.best"
PARETO_TAG = "prefect_hpo.pareto"
BEST_TRIAL_TAG = "prefect_hpo.best_trial"
BEST_RUN_ID_TAG = "prefect_hpo.best_run_id"
STRATEGY_TAG = "prefect_hpo.strategy"
NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as a run's / an experiment's description
_MARKERS = {"best": BEST_TAG, "pareto": PARETO_TAG}
_GONE = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)}


def best_so_far_key(objective: str) -> str:
    return clean_name(f"{PREFIX}best_so_far/{objective}")


class DashboardWriter:
    """The parent run's dashboard for one flow run; its state is touched on the writer thread only."""

    def __init__(self, tracker: MlflowTracker, parent_run_id: str, *, interval_s: float | None = None) -> None:
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.interval_s = (interval_s if interval_s is not None
                           else float(os.environ.get("PREFECT_HPO_DASHBOARD_INTERVAL_S", "1") or 0))
        self._lock = threading.Lock()  # guards the three below (the flow's thread, timers, the writer)
        self._newest: tuple[DashboardView, Callable[[int], str | None]] | None = None  # scheduled, not taken
        self._timer: threading.Timer | None = None
        self._last_submit = -math.inf
        self._started = False
        self._best_step = 0  # hpo/best_so_far steps already in MLflow
        self._best_value: float | None = None
        self._logged: dict[str, tuple[int, float]] = {}  # other hpo/ metrics: last (step, value) logged
        self._tagged: dict[str, set[str]] = {}  # marker tag -> child runs carrying it

    def update(
        self,
        view: DashboardView,
        run_ids: Mapping[int, str | None],
        *,
        late_ids: Mapping[int, str] | None = None,
        final: bool = False,
    ) -> None:
        """Schedule the write of ``view`` (see the module docstring: coalesced, spaced; ``final``:
        queued now). ``run_ids`` are the trials' run ids as the flow knows them (pending ones are
        resolved when the write runs); ``late_ids``, filled by a write queued before this one (the
        final reconciliation), win over them."""
        def run_id_of(index: int) -> str | None:
            late = late_ids.get(index) if late_ids is not None else None
            run_id = late or self.tracker.resolve(run_ids.get(index))
            return None if run_id is None or is_pending_run(run_id) else run_id

        if final:  # its own write, queued now, in order after what the caller queued before it
            with self._lock:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self._newest = None  # a write still waiting has nothing newer to take
                self._last_submit = time.monotonic()
            self.tracker.submit("update the experiment's dashboard", lambda: self._write(view, run_id_of))
            return
        with self._lock:
            scheduled = self._newest is not None
            self._newest = (view, run_id_of)
            if scheduled:
                return  # the write already scheduled takes this view
            delay = self._last_submit + self.interval_s - time.monotonic()
            if delay > 0:
                self._timer = threading.Timer(delay, self._submit)
                self._timer.daemon = True
                self._timer.start()
                return
        self._submit()

    def _submit(self) -> None:
        with self._lock:
            self._timer = None
            self._last_submit = time.monotonic()
        self.tracker.submit("update the experiment's dashboard", self._write_newest)

    def _write_newest(self) -> None:
        with self._lock:
            newest, self._newest = self._newest, None
        if newest is not None:  # None: an earlier write took this one's view
            self._write(*newest)

    # ---- on the writer thread ----------------------------------------------------------------
    def _write(self, view: DashboardView, run_id_of: Callable[[int], str | None]) -> None:
        client = self.tracker.client
        flow_run_url = self.tracker.flow_run_tags.get(FLOW_RUN_URL_TAG)
        if not self._started:
            self._learn(view)
        metrics = self._metrics(view)
        best_run = run_id_of(view.best_index) if view.best_index is not None else None
        tags = {
            STRATEGY_TAG: view.strategy,
            NOTE_TAG: truncate(note_markdown(view, flow_run_url), _MAX_TAG_VALUE),
            **self.tracker.flow_run_tags,
        }
        if view.best_index is not None:
            tags[BEST_TRIAL_TAG] = str(view.best_index)
        if best_run is not None:
            tags[BEST_RUN_ID_TAG] = best_run
        self.tracker.log_batch_now(
            self.parent_run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items() if v]
        )
        self._commit(view)
        client.set_experiment_tag(self.tracker.experiment_id, NOTE_TAG, tags[NOTE_TAG])
        self._mark(view, run_id_of)

    def _learn(self, view: DashboardView) -> None:
        """What an earlier flow run of this experiment already wrote: the curve's last step and
        the children carrying a marker (one history read and one search per marker)."""
        client = self.tracker.client
        if len(view.objectives) == 1:
            history = client.get_metric_history(self.parent_run_id, best_so_far_key(next(iter(view.objectives))))
            if history:
                last = max(history, key=lambda m: (m.step, m.timestamp))
                self._best_step, self._best_value = int(last.step), float(last.value)
        for tag in _MARKERS.values():
            runs = client.search_runs(
                [self.tracker.experiment_id],
                filter_string=(
                    f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{ROLE_TAG}` = 'trial' "
                    f"and tags.`{tag}` = 'true'"
                ),
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
            )
            self._tagged[tag] = {r.info.run_id for r in runs}
        self._started = True

    def _metrics(self, view: DashboardView) -> list[Metric]:
        ts = now_ms()
        metrics: list[Metric] = []
        if len(view.objectives) == 1:
            key = best_so_far_key(next(iter(view.objectives)))
            better = min if next(iter(view.objectives.values())) == "minimize" else max
            value = self._best_value
            for step, point in view.best_so_far:
                if step <= self._best_step:
                    continue
                value = point if value is None else better(value, point)  # never worse than what is shown
                metrics.append(Metric(key, float(value), ts, step))
        else:
            if view.hypervolume is not None:
                metrics += self._changed("hypervolume", view.hypervolume, view.completed, ts)
            if view.pareto_size is not None:
                metrics += self._changed("pareto_size", float(view.pareto_size), view.completed, ts)
        for name, count in (("trials/completed", view.completed), ("trials/failed", view.failed),
                            ("trials/early_stopped", view.early_stopped), ("trials/running", view.running)):
            metrics += self._changed(name, float(count), view.ended, ts)
        return metrics

    def _changed(self, name: str, value: float, step: int, ts: int) -> list[Metric]:
        """A point for ``hpo/<name>`` unless the last one logged is the same (a repeated final update)."""
        have = self._logged.get(name)
        if have is not None and have[0] == step and same_value(have[1], value):
            return []
        return [Metric(PREFIX + name, value, ts, step)]

    def _commit(self, view: DashboardView) -> None:
        """The batch reached MLflow: remember what it holds now."""
        if view.best_so_far and view.best_so_far[-1][0] > self._best_step:
            better = min if next(iter(view.objectives.values()), "minimize") == "minimize" else max
            last = view.best_so_far[-1][1]
            self._best_value = last if self._best_value is None else better(self._best_value, last)
            self._best_step = view.best_so_far[-1][0]
        if view.hypervolume is not None:
            self._logged["hypervolume"] = (view.completed, view.hypervolume)
        if view.pareto_size is not None:
            self._logged["pareto_size"] = (view.completed, float(view.pareto_size))
        for name, count in (("trials/completed", view.completed), ("trials/failed", view.failed),
                            ("trials/early_stopped", view.early_stopped), ("trials/running", view.running)):
            self._logged[name] = (view.ended, float(count))

    def _mark(self, view: DashboardView, run_id_of: Callable[[int], str | None]) -> None:
        """Move the marker tag to exactly the marked trials' runs (a run not created yet waits
        for the next update)."""
        client = self.tracker.client
        tag = _MARKERS[view.marker]
        tagged = self._tagged.setdefault(tag, set())
        want = {r for r in (run_id_of(i) for i in view.marked) if r is not None}
        for run_id in sorted(tagged - want):
            try:
                client.delete_tag(run_id, tag)
            except MlflowException as exc:
                if exc.error_code not in _GONE:
                    raise
                # the tag or the run is gone (a duplicate run deleted): nothing to take off
                logger.debug("MLflow: %s not removed from run %s: %s", tag, run_id, exc)
            tagged.discard(run_id)
        for run_id in sorted(want - tagged):
            client.set_tag(run_id, tag, "true")
            tagged.add(run_id)

