"""The MLflow side of an experiment: one parent run per experiment, one nested child run per trial.

Layout (what a user finds in the MLflow UI):

* MLflow experiment = the HPO experiment's name.
* Parent run (``prefect_hpo.role = experiment``, run name = experiment name): the experiment's
  live dashboard. The spec's settings are ``prefect_hpo.*`` tags (algorithm, seed, budget,
  objective directions), not params: params of the parent would fill the runs table's column
  picker the trials use. ``spec.json`` and ``search_space.json`` artifacts; the ``hpo/...``
  metrics, the best-trial tags and the description are written as trials end
  (:mod:`prefect_hpo.storage.tracking_dashboard`).
* Child runs (``prefect_hpo.role = trial``, run name ``trial-0003``), nested through the explicit
  ``mlflow.parentRunId`` tag so nesting survives trials that run in other processes. Params and
  final metrics are MLflow's own; status and attempt live in ``prefect_hpo.*`` tags.
  :meth:`MlflowTracker.trial_records` reads them back (:mod:`~prefect_hpo.storage.tracking_records`)
  to rebuild an experiment whose checkpoint is lost: the params with the search space's types (:mod:`~prefect_hpo.storage.mlflow_params`),
  the values from the metrics. Only when those would not round-trip are the typed values kept in
  the ``prefect_hpo.params`` / ``prefect_hpo.values`` JSON tags as well.
* Every run carries ``prefect_hpo.flow_run_id`` (and ``prefect_hpo.flow_run_url`` when known):
  the Prefect flow run that ran it (:meth:`MlflowTracker.set_flow_run`).

Everything goes through one ``MlflowClient(tracking_uri=...)``: the fluent API keeps one global
active run, and a flow drives several trials at once. A flow opens the tracker with
``background=True``: its writes (views of the checkpoint) then go through a
:class:`~prefect_hpo.storage.tracking_queue.TrackingQueue` so an MLflow outage never holds up the
loop, and a trial's run is created with a bounded wait (``create_timeout_s``); past it the trial
starts with a *pending* run id (:func:`is_pending_run`) that the queue resolves once MLflow
answers. :mod:`prefect_hpo.storage.tracking_sync` makes MLflow match the checkpoint at the end.

The hot path (start, report, finish a trial) never searches and batches params, metrics and tags
into single ``log_batch`` calls, because the whole per-trial orchestration budget is 150 ms and
every MLflow call on SQLite costs milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from prefect_hpo.errors import StorageError
from prefect_hpo.optim.space import SearchSpace
from prefect_hpo.storage.mlflow_params import MAX_PARAM_VALUE, params_round_trip
from prefect_hpo.storage.mlflow_values import clean_name, compact_json, from_store, now_ms, same_value, truncate
from prefect_hpo.storage.tracking_http import bound_http_retries, is_http_uri, probe_tracking_server
from prefect_hpo.storage.tracking_records import (  # the child-run tags are read back there
    ARTIFACT_MARKER, ATTEMPT_TAG, INDEX_TAG, PARAMS_TAG, REASON_TAG, STATUS_TAG, STATUSES, SUGGESTER_TAG, VALUES_IN_METRICS,
    VALUES_TAG, TrialRecord, newest_per_index, trial_record,
)
from prefect_hpo.storage.tracking_queue import DEFAULT_RETRY_DELAYS_S, WRITER_THREAD_PREFIX, TrackingQueue, is_outage
from prefect_hpo.storage.tracking_uri import prepare_sqlite_file, resolve_tracking_uri, sqlite_path
from prefect_hpo.trial import Report

try:  # MLflow's SQL stores let SQLAlchemy errors escape unwrapped (e.g. "unable to open database file").
    from sqlalchemy.exc import SQLAlchemyError
except ImportError:  # pragma: no cover - mlflow-skinny without SQLAlchemy: no SQL store either
    SQLAlchemyError = MlflowException  # type: ignore[misc,assignment]

__all__ = ["MlflowTracker", "TrialRecord", "is_pending_run", "pending_run_id"]

logger = logging.getLogger(__name__)

# MLflow 3's limits (mlflow.utils.validation); values over them are rejected or truncated with a
# warning per value, so we truncate first, quietly and predictably.
_MAX_TAG_VALUE = 8000
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_ENTITIES_PER_BATCH = 1000
_SEARCH_PAGE = 1000

ROLE_TAG = "prefect_hpo.role"
PARENT_TAG = "mlflow.parentRunId"
STOPPED_BY_TAG = "prefect_hpo.stopped_by"
FEASIBLE_TAG = "prefect_hpo.feasible"
STOP_REQUEST_TAG = "prefect_hpo.stop_request"  # set by the flow, watched by a trial running as a Dask task
FLOW_RUN_ID_TAG = "prefect_hpo.flow_run_id"
FLOW_RUN_URL_TAG = "prefect_hpo.flow_run_url"
# A params JSON too long for a tag is stored as this artifact; the tag then holds the marker.
_PARAMS_ARTIFACT = "prefect_hpo/params.json"
# The id a trial's run has while MLflow is down and the run not created yet (never sent to MLflow).
_PENDING_PREFIX = "pending-run:trial-"


def pending_run_id(index: int) -> str:
    """The stand-in id of trial ``index``'s run until MLflow creates it (one per trial)."""
    return f"{_PENDING_PREFIX}{int(index)}"


def is_pending_run(run_id: str | None) -> bool:
    """Whether ``run_id`` is a stand-in: not to be given to a trial as MLFLOW_RUN_ID."""
    return bool(run_id) and str(run_id).startswith(_PENDING_PREFIX)


def metrics_hold_values(values: Mapping[str, float], top: Mapping[str, tuple[int, float, bool]]) -> bool:
    """Whether a run's metrics bring ``values`` back: each under its own name, as the latest point
    of its metric (``top``: key -> (step, value, ambiguous) of the largest step) with that value."""
    for name, value in values.items():
        have = top.get(name)
        if clean_name(name) != name or have is None or have[2] or not same_value(have[1], float(value)):
            return False
    return True

# An early-stopped trial's run is KILLED in MLflow's terms (the UI shows it as stopped, not failed);
# the prefect_hpo.status tag keeps the exact status and prefect_hpo.stopped_by the policy.
_TERMINAL = {
    "completed": RunStatus.FINISHED,
    "early_stopped": RunStatus.KILLED,
    "failed": RunStatus.FAILED,
    "abandoned": RunStatus.KILLED,
}


class MlflowTracker:
    """One HPO experiment's MLflow records, written through a client bound to one tracking URI.

    Thread-safe: a flow reports for several trials at once from several threads.

    An HTTP tracking server is probed first, so an unreachable one fails in seconds with one
    StorageError naming the URI; this process's MLflow HTTP retries are bounded
    (:mod:`~prefect_hpo.storage.tracking_http`). With ``background=True`` writes are queued
    (see the module docstring) and :meth:`close` bounds the time spent draining them.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment_name: str,
        *,
        artifact_location: str | None = None,
        sqlite_wal: bool = True,
        background: bool = False,
        create_timeout_s: float = 10.0,
        retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S,
    ) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment_name = experiment_name
        self.create_timeout_s = create_timeout_s
        self._lock = threading.Lock()
        self._max_step: dict[str, int] = {}
        self._last_value: dict[str, dict[str, float]] = {}
        self._resolved: dict[str, str] = {}  # pending run id -> the run MLflow created for it
        self._parent_status: dict[str, str] = {}  # parent run -> the status this flow gave it
        self._top: dict[str, dict[str, tuple[int, float, bool]]] = {}  # run -> key -> latest (step, value, ambiguous)
        self._reasoned: set[str] = set()  # runs given a failure reason by this tracker (deleted when it no longer holds)
        self._flow_run_tags: dict[str, str] = {}
        self._queue = TrackingQueue(self.tracking_uri, retry_delays_s=retry_delays_s) if background else None
        self._calls: ThreadPoolExecutor | None = None  # bounded waits for results the flow needs
        self._staging: tempfile.TemporaryDirectory[str] | None = None
        if is_http_uri(self.tracking_uri):
            bound_http_retries()
            probe_tracking_server(self.tracking_uri)
        db_path = sqlite_path(self.tracking_uri)
        if db_path is not None:
            prepare_sqlite_file(self.tracking_uri, db_path, wal=sqlite_wal)
            if artifact_location is None:
                # MLflow's default for SQLite is ./mlruns under whichever process first opened the
                # database; beside the database file, artifacts stay put whoever runs the flow.
                safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment_name).strip(".") or "experiment"
                artifact_location = str(db_path.parent / "mlartifacts" / safe)
        with self._errors("connect"):
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment_id = self._get_or_create_experiment(artifact_location)

    # ---- experiment (parent) run ------------------------------------------------------------
    def find_experiment_run(self) -> str | None:
        """The newest active parent run of this experiment, if any (resume finds its records here)."""
        with self._errors("find the experiment run"):
            runs = self._client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{ROLE_TAG}` = 'experiment'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
        return runs[0].info.run_id if runs else None

    def start_experiment_run(self, spec: Mapping[str, Any], space: list[dict[str, Any]]) -> str:
        """Create the parent run; the spec goes in as an artifact so ``load_spec`` can return it whole.

        Its settings become ``prefect_hpo.*`` tags (``prefect_hpo.budget.trials``,
        ``prefect_hpo.objective.loss``, ...), never params (see the module docstring).
        """
        algorithm = str(spec.get("algorithm", "auto"))
        settings: dict[str, Any] = {"experiment": self.experiment_name, "algorithm": algorithm, "seed": spec.get("seed")}
        budget = spec.get("budget") or {}
        if isinstance(budget, Mapping):
            for key in ("trials", "max_parallel", "wall_time_s"):
                if budget.get(key) is not None:
                    settings[f"budget.{key}"] = budget[key]
        objectives = spec.get("objectives") or {}
        if isinstance(objectives, Mapping):
            for name, objective in objectives.items():
                if isinstance(objective, Mapping):  # {direction, threshold}
                    settings[f"objective.{name}"] = objective.get("direction")
                    if objective.get("threshold") is not None:
                        settings[f"objective.{name}.threshold"] = objective["threshold"]
                else:
                    settings[f"objective.{name}"] = objective
        for i, constraint in enumerate(spec.get("outcome_constraints") or []):
            settings[f"outcome_constraint.{i}"] = constraint
        tags = {ROLE_TAG: "experiment", **self._flow_run_tags}
        for key, value in settings.items():
            if value is not None and str(value) != "":
                tags[f"prefect_hpo.{key}"] = truncate(str(value), _MAX_TAG_VALUE)
        with self._errors("start the experiment run"):
            run = self._client.create_run(self.experiment_id, tags=tags, run_name=self.experiment_name)
            run_id = run.info.run_id
            self._client.log_dict(run_id, json.loads(compact_json(dict(spec))), "spec.json")
            self._client.log_dict(run_id, json.loads(compact_json(list(space))), "search_space.json")
        return run_id

    def load_spec(self, parent_run_id: str) -> dict[str, Any] | None:
        """The spec exactly as ``start_experiment_run`` stored it; None when the run has none (a
        flow killed between creating the run and logging the spec leaves such a run behind)."""
        with self._errors("list the experiment run's artifacts"):
            stored = {a.path for a in self._client.list_artifacts(parent_run_id)}
        if "spec.json" not in stored:
            return None
        return self._load_json_artifact(parent_run_id, "spec.json", "load spec.json")

    def set_flow_run(self, flow_run_id: str | None, url: str | None = None) -> None:
        """The Prefect flow run driving the experiment now: every run this tracker creates or
        re-opens from here on carries ``prefect_hpo.flow_run_id`` (and ``..._url``)."""
        tags = {}
        if flow_run_id:
            tags[FLOW_RUN_ID_TAG] = str(flow_run_id)
            if url:
                tags[FLOW_RUN_URL_TAG] = truncate(str(url), _MAX_TAG_VALUE)
        self._flow_run_tags = tags

    @property
    def flow_run_tags(self) -> dict[str, str]:
        """``prefect_hpo.flow_run_id`` / ``prefect_hpo.flow_run_url`` of :meth:`set_flow_run` (a copy)."""
        return dict(self._flow_run_tags)

    def log_experiment_file(self, parent_run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Attach a file (a plot, a report) to the experiment's parent run.

        Queued, so the file is copied first: callers write it in a folder they delete at once.
        """
        source = Path(path)
        if self._queue is None:
            with self._errors(f"log {source.name}"):
                self._client.log_artifact(parent_run_id, str(source), artifact_path=artifact_path)
            return
        if self._staging is None:
            self._staging = tempfile.TemporaryDirectory(prefix="prefect-hpo-mlflow-queue-")
        folder = Path(tempfile.mkdtemp(dir=self._staging.name))
        staged = folder / source.name
        shutil.copyfile(source, staged)

        def write() -> None:
            self._client.log_artifact(parent_run_id, str(staged), artifact_path=artifact_path)
            shutil.rmtree(folder, ignore_errors=True)

        self._write(f"log {source.name}", write)

    def finish_experiment_run(self, parent_run_id: str, status: str = "FINISHED") -> None:
        """Terminate the parent run with an MLflow status (FINISHED, FAILED or KILLED)."""
        self._parent_status[parent_run_id] = status
        self._write("finish the experiment run", lambda: self._client.set_terminated(parent_run_id, status=status))

    # ---- trial (child) runs -----------------------------------------------------------------
    def start_trial_run(
        self,
        parent_run_id: str,
        index: int,
        params: dict[str, Any],
        suggester: str,
        *,
        attempt: int = 1,
        search_existing: bool = False,
    ) -> str:
        """Create the trial's child run (two calls: create_run with all tags, one log_batch of params).

        ``search_existing`` (resume only: it costs a search) re-opens the child run a previous
        flow created for this index instead of creating a duplicate.

        In the background mode, with a tracking server, this waits at most ``create_timeout_s``
        (not at all while MLflow is known to be down) and otherwise returns :func:`pending_run_id`:
        the run is then created from the queue, searching first, so a create that reached MLflow
        late is reused.
        """
        def create(search: bool) -> Callable[[], str]:
            return lambda: self._start_trial_run(parent_run_id, index, params, suggester, attempt=attempt, search_existing=search)

        if self._queue is None or not is_http_uri(self.tracking_uri):
            # a local store is not "down" the way a server is: a slow create is still the quickest
            # way to a run id, which trials on a work pool or Dask need to report at all
            return create(search_existing)()
        pending = pending_run_id(index)
        if self._queue.backlogged:
            self._defer_run(pending, None, create(True))
            return pending
        with self._lock:
            if self._calls is None:
                self._calls = ThreadPoolExecutor(2, thread_name_prefix=f"{WRITER_THREAD_PREFIX}-call")
        future = self._calls.submit(create(search_existing))
        try:
            return future.result(timeout=self.create_timeout_s)
        except FutureTimeout:
            self._queue.note_unreachable(f"start trial {index}'s run", TimeoutError(f"no answer in {self.create_timeout_s:g} s"))
        except StorageError as exc:
            if not is_outage(exc):
                raise
            self._queue.note_unreachable(f"start trial {index}'s run", exc)
            future = None
        logger.warning("trial %d starts without an MLflow run (MLflow at %s is down); its run is created when MLflow is back",
                       index, self.tracking_uri)
        self._defer_run(pending, future, create(True))
        return pending

    def _defer_run(self, pending: str, late: Future[str] | None, create: Callable[[], str]) -> None:
        """Queue the creation of a trial's run: the late answer of a timed-out create, else a new one."""
        def write() -> None:
            run_id = None
            if late is not None:
                try:
                    run_id = late.result()
                except StorageError:
                    run_id = None
            if run_id is None:
                run_id = create()
            with self._lock:
                self._resolved[pending] = run_id

        self._queue_write(f"create {pending.removeprefix('pending-run:')}'s run", write)

    def resolve(self, run_id: str | None) -> str | None:
        """The real id of a pending run once MLflow created it; any other id unchanged."""
        if not is_pending_run(run_id):
            return run_id
        with self._lock:
            return self._resolved.get(str(run_id), run_id)

    def _run(self, run_id: str) -> str:
        """For a queued write: the run to write to (a pending run is created by then, or never)."""
        real = self.resolve(run_id)
        if real is None or is_pending_run(real):
            raise MlflowException(f"run {run_id} was never created, so this write has nowhere to go")
        return real

    def _start_trial_run(
        self,
        parent_run_id: str,
        index: int,
        params: dict[str, Any],
        suggester: str,
        *,
        attempt: int = 1,
        search_existing: bool = False,
    ) -> str:
        if search_existing:
            existing = self._find_trial_run(parent_run_id, index)
            if existing is not None:
                with self._errors(f"re-open trial {index}'s run"):
                    self._client.update_run(existing, status=RunStatus.to_string(RunStatus.RUNNING))
                    tags = {STATUS_TAG: "running", ATTEMPT_TAG: str(attempt), **self._flow_run_tags}
                    self._log_batch(existing, tags=[RunTag(k, v) for k, v in tags.items()])
                    self.clear_tag(existing, REASON_TAG)  # the new attempt has no reason to fail yet
                return existing
        # MLflow's params bring the values back when they are plain scalars (read with the search
        # space's types); the JSON tag is only for those that would not round-trip.
        need_json = not params_round_trip(params)
        params_json = compact_json(params) if need_json else ""
        too_long = len(params_json) > _MAX_TAG_VALUE
        tags = {
            PARENT_TAG: parent_run_id,
            ROLE_TAG: "trial",
            INDEX_TAG: str(index),
            STATUS_TAG: "running",
            ATTEMPT_TAG: str(attempt),
            **self._flow_run_tags,
        }
        if suggester:
            tags[SUGGESTER_TAG] = truncate(str(suggester), _MAX_TAG_VALUE)
        if need_json:
            tags[PARAMS_TAG] = ARTIFACT_MARKER + _PARAMS_ARTIFACT if too_long else params_json
        with self._errors(f"start trial {index}'s run"):
            run = self._client.create_run(self.experiment_id, tags=tags, run_name=f"trial-{index:04d}")
            run_id = run.info.run_id
            self._log_batch(run_id, params=self._params(params))
            if too_long:
                self._client.log_dict(run_id, json.loads(params_json), _PARAMS_ARTIFACT)
        return run_id

    def log_reports(self, run_id: str, reports: Sequence[Report]) -> None:
        """All reports in one batch; a report without a step goes one step past the largest so far.

        NaN is stored as NaN (SQL stores keep an is_nan flag); +/-inf come back from SQL stores as
        +/-1.7976931348623157e308, the largest double, because SQL cannot hold infinities.
        """
        if not reports:
            return
        ts = now_ms()
        metrics: list[Metric] = []
        with self._lock:
            step_max = self._max_step.get(run_id, -1)
            last = self._last_value.setdefault(run_id, {})
            for report in reports:
                step = step_max + 1 if report.step is None else int(report.step)
                step_max = max(step_max, step)
                for name, value in report.metrics.items():
                    key = clean_name(name)
                    metrics.append(Metric(key, float(value), ts, step))
                    last[key] = float(value)
                    self._note_point(run_id, key, step, float(value))
            self._max_step[run_id] = step_max
        self._write("log reports", lambda: self._log_batch(self._run(run_id), metrics=metrics))

    def finish_trial_run(
        self,
        run_id: str,
        *,
        status: str,
        values: dict[str, float] | None = None,
        failure_reason: str | None = None,
        log_file: Path | None = None,
        attempt: int = 1,
        stopped_by: str | None = None,
        feasible: bool | None = None,
    ) -> None:
        """Close the trial's run: one log_batch, set_terminated, and the log upload (if any).

        ``stopped_by`` names the stopping policy (with its settings) that ended the trial; the
        reason it gave is ``failure_reason`` (no tag without one: a reason an earlier attempt left
        is deleted). ``feasible`` (with outcome constraints) becomes the ``prefect_hpo.feasible``
        tag, so the MLflow UI can filter on it.

        Final ``values`` are logged as metrics under the objective names only where they differ
        from the last value reported for that name through this tracker, one step past the last
        report. ``trial_records`` reads them back from the metrics; only when MLflow's latest
        value of a metric may not be the final value (a renamed metric, reports with
        out-of-order steps, a retry whose earlier attempt logged to the same run) are they also
        kept exactly in the ``prefect_hpo.values`` tag.
        """
        if status not in _TERMINAL:
            raise ValueError(f"finish_trial_run: status must be one of {sorted(_TERMINAL)}, got {status!r}")
        tags = [RunTag(STATUS_TAG, status), RunTag(ATTEMPT_TAG, str(attempt))]
        if failure_reason:
            tags.append(RunTag(REASON_TAG, truncate(failure_reason, _MAX_TAG_VALUE)))
        if stopped_by:
            tags.append(RunTag(STOPPED_BY_TAG, truncate(stopped_by, _MAX_TAG_VALUE)))
        if feasible is not None:  # outcome constraints: kept or broken
            tags.append(RunTag(FEASIBLE_TAG, str(feasible).lower()))
        metrics: list[Metric] = []
        with self._lock:
            step_max = self._max_step.pop(run_id, -1)
            last = self._last_value.pop(run_id, {})
            top = self._top.pop(run_id, {})
            had_reason = run_id in self._reasoned
            if failure_reason:  # a retry that then completes must lose it
                self._reasoned.add(run_id)
            else:
                self._reasoned.discard(run_id)
        if values is not None:
            ts = now_ms()
            for name, value in values.items():
                key = clean_name(name)
                if key not in last or not same_value(last[key], float(value)):
                    metrics.append(Metric(key, float(value), ts, step_max + 1))
                    top[key] = (step_max + 1, float(value), False)
            # an earlier attempt's points may outrank this one's in MLflow's eyes: a retry keeps the tag
            # (a failed trial's values are read from the tag only: its metrics may be a partial curve)
            if attempt > 1 or status not in VALUES_IN_METRICS or not metrics_hold_values(values, top):
                tags.append(RunTag(VALUES_TAG, truncate(compact_json(values), _MAX_TAG_VALUE)))
        clear_reason = had_reason and not failure_reason
        def write() -> None:
            real = self._run(run_id)
            self._log_batch(real, metrics=metrics, tags=tags)
            if clear_reason:
                self.clear_tag(real, REASON_TAG)
            self._client.set_terminated(real, status=RunStatus.to_string(_TERMINAL[status]))
            if log_file is not None:
                self._upload_log(real, Path(log_file), attempt)

        self._write("finish the trial run", write)

    def mark_trial_status(self, run_id: str, status: str, *, attempt: int | None = None, reason: str | None = None) -> None:
        """A non-terminal status change; "running" also re-opens the MLflow run (a retry after a failure)."""
        if status not in STATUSES:
            raise ValueError(f"mark_trial_status: unknown status {status!r}; expected one of {sorted(STATUSES)}")
        tags = [RunTag(STATUS_TAG, status)]
        if attempt is not None:
            tags.append(RunTag(ATTEMPT_TAG, str(attempt)))
        if reason:  # no empty tag: "no reason" is the tag's absence
            tags.append(RunTag(REASON_TAG, truncate(reason, _MAX_TAG_VALUE)))
            with self._lock:
                self._reasoned.add(run_id)
        def write() -> None:
            real = self._run(run_id)
            self._log_batch(real, tags=tags)
            if status == "running":
                self._client.update_run(real, status=RunStatus.to_string(RunStatus.RUNNING))

        self._write(f"mark a trial {status}", write)

    # ---- reading back -----------------------------------------------------------------------
    def trial_records(
        self, parent_run_id: str, *, space: SearchSpace | None = None, metric_names: Sequence[str] | None = None
    ) -> list[TrialRecord]:
        """Every trial run of the parent, by index; of duplicate indexes the newest run wins.

        ``space`` types the runs' string params (runs without a ``prefect_hpo.params`` tag cannot
        be read without it); ``metric_names`` (objectives and constrained metrics) are the final
        values read from the metrics of runs without a ``prefect_hpo.values`` tag (without them,
        every metric of the run).
        """
        records = []
        for run in self._trial_runs(parent_run_id):
            record = trial_record(run, space, metric_names, self._load_params_artifact, self.tracking_uri)
            if record is not None:
                records.append((record.index, run.info.start_time or 0, record.run_id, record))
        return list(newest_per_index(records, self.tracking_uri, parent_run_id).values())

    def trial_run_ids(self, parent_run_id: str) -> dict[int, str]:
        """Trial index -> child run id (newest run per index); reads no params, so needs no space."""
        runs = []
        for run in self._trial_runs(parent_run_id):
            try:
                runs.append((int(run.data.tags[INDEX_TAG]), run.info.start_time or 0, run.info.run_id, run.info.run_id))
            except (KeyError, ValueError):
                continue
        return newest_per_index(runs, self.tracking_uri, parent_run_id)

    # ---- the queue ----------------------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Writes queued and not made yet (0 without the background mode)."""
        return self._queue.pending if self._queue is not None else 0

    @property
    def backlogged(self) -> bool:
        """MLflow was found down and the writes queued since are not all made."""
        return self._queue is not None and self._queue.backlogged

    def expected_parent_status(self, parent_run_id: str) -> str:
        """FINISHED (or what :meth:`finish_experiment_run` gave) once ended here, else RUNNING."""
        return self._parent_status.get(parent_run_id, "RUNNING")

    def submit(self, operation: str, write: Callable[[], Any]) -> None:
        """Make ``write`` (MLflow calls through this tracker) after every write queued before it."""
        self._write(operation, write)

    def drain(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` for the queued writes; True when none is left."""
        return self._queue is None or self._queue.drain(timeout_s)

    def close(self, timeout_s: float) -> bool:
        """Drain for at most ``timeout_s`` and stop the writer; False when writes were left over."""
        drained = True
        if self._queue is not None:
            drained = self._queue.close(timeout_s)
        if self._calls is not None:
            self._calls.shutdown(wait=False, cancel_futures=True)
        if self._staging is not None and drained:
            self._staging.cleanup()
        return drained

    # ---- for tracking_sync (the reconciliation, which runs on the writer thread) -------------
    @property
    def client(self) -> MlflowClient:
        return self._client

    def trial_runs(self, parent_run_id: str) -> Iterator[Any]:
        """Every active child run of the parent (all pages)."""
        return self._trial_runs(parent_run_id)

    def create_trial_run(self, parent_run_id: str, index: int, params: dict[str, Any], suggester: str, *, attempt: int) -> str:
        """Create a trial's run now, whatever the mode (the caller knows there is none)."""
        return self._start_trial_run(parent_run_id, index, params, suggester, attempt=attempt)

    def adopt_run(self, index: int, run_id: str) -> None:
        """Trial ``index``'s run is ``run_id``: its pending id resolves to it from now on."""
        with self._lock:
            self._resolved[pending_run_id(index)] = run_id

    def log_batch_now(self, run_id: str, *, metrics: Sequence[Metric] = (), tags: Sequence[RunTag] = ()) -> None:
        self._log_batch(run_id, metrics=metrics, tags=tags)

    def _write(self, operation: str, write: Callable[[], Any]) -> None:
        if self._queue is None:
            with self._errors(operation):
                write()
        else:
            self._queue_write(operation, write)

    def _queue_write(self, operation: str, write: Callable[[], Any]) -> None:
        assert self._queue is not None

        def run() -> None:
            with self._errors(operation):
                write()

        self._queue.submit(operation, run)

    # ---- internals --------------------------------------------------------------------------
    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        """Turn MLflow/SQLAlchemy/OS failures into StorageError naming the URI and the operation."""
        try:
            yield
        except StorageError:
            raise
        except (MlflowException, SQLAlchemyError, OSError) as exc:
            raise StorageError(f"MLflow at {self.tracking_uri}: could not {operation}: {exc}") from exc

    def _get_or_create_experiment(self, artifact_location: str | None) -> str:
        name = self.experiment_name
        with self._errors(f"get or create the MLflow experiment {name!r}"):
            experiment = self._client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    return str(self._client.create_experiment(name, artifact_location=artifact_location))
                except MlflowException as exc:
                    if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                        raise
                    # Another flow created it between our lookup and our create.
                    experiment = self._client.get_experiment_by_name(name)
                    if experiment is None:
                        raise
        if experiment.lifecycle_stage != "active":
            raise StorageError(
                f"MLflow at {self.tracking_uri}: experiment {name!r} (id {experiment.experiment_id}) is deleted; "
                "restore it (`mlflow experiments restore`) or remove it for good (`mlflow gc`) first"
            )
        return str(experiment.experiment_id)

    def _params(self, params: Mapping[str, Any]) -> list[Param]:
        return [Param(clean_name(k), truncate(str(v), MAX_PARAM_VALUE)) for k, v in params.items()]

    def _log_batch(
        self, run_id: str, *, metrics: Sequence[Metric] = (), params: Sequence[Param] = (), tags: Sequence[RunTag] = ()
    ) -> None:
        """log_batch in as few calls as MLflow's limits allow (almost always one)."""
        metrics, params, tags = list(metrics), list(params), list(tags)
        while metrics or params or tags:
            p, params = params[:_MAX_PARAMS_TAGS_PER_BATCH], params[_MAX_PARAMS_TAGS_PER_BATCH:]
            t, tags = tags[:_MAX_PARAMS_TAGS_PER_BATCH], tags[_MAX_PARAMS_TAGS_PER_BATCH:]
            room = _MAX_ENTITIES_PER_BATCH - len(p) - len(t)
            m, metrics = metrics[:room], metrics[room:]
            self._client.log_batch(run_id, metrics=m, params=p, tags=t, synchronous=True)

    def _note_point(self, run_id: str, key: str, step: int, value: float) -> None:
        """Follow the point MLflow will call a metric's latest (the largest step; a second value
        at that step makes it ambiguous). Called with the lock held."""
        top = self._top.setdefault(run_id, {})
        have = top.get(key)
        if have is None or step > have[0]:
            top[key] = (step, value, False)
        elif step == have[0] and not same_value(have[1], value):
            top[key] = (step, value, True)

    def clear_tag(self, run_id: str, key: str) -> None:
        """Delete a run's tag if it has it (MLflow refuses to delete a missing tag)."""
        if key in self._client.get_run(run_id).data.tags:
            self._client.delete_tag(run_id, key)

    def tag_run(self, run_id: str, tags: Mapping[str, str], operation: str = "tag a run") -> None:
        """Set tags on a run through the queue (empty values are left out: no empty tags)."""
        batch = [RunTag(k, truncate(str(v), _MAX_TAG_VALUE)) for k, v in tags.items() if v not in (None, "")]
        if batch:
            self._write(operation, lambda: self._log_batch(self._run(run_id), tags=batch))

    def request_stop(self, run_id: str, reason: str) -> None:
        """Ask a trial that runs elsewhere (a Dask task) to stop: it watches this tag."""
        with self._errors("request a trial stop"):
            self._client.set_tag(run_id, STOP_REQUEST_TAG, truncate(reason, _MAX_TAG_VALUE))

    def stop_requested(self, run_id: str) -> str | None:
        """The reason of a pending stop request for this run, if any (None when unreachable)."""
        try:
            return self._client.get_run(run_id).data.tags.get(STOP_REQUEST_TAG) or None
        except MlflowException:
            return None

    def upload_log(self, run_id: str, log_file: Path, attempt: int) -> None:
        """Attach an attempt's output to its trial run as ``logs/attempt-N.log``."""
        with self._errors("upload a trial log"):
            self._upload_log(run_id, log_file, attempt)

    def read_reports(self, run_id: str, seen: dict[str, int], names: Sequence[str] = ()) -> list[Report]:
        """The metrics logged to a trial run since the last call, as reports grouped by step.

        This is how the flow follows a trial that runs elsewhere (on a work pool) and logs its
        reports straight to its run. ``seen`` counts the entries already returned per metric and
        is updated; an empty dict replays everything. ``names`` are the metric names the caller
        knows (objectives, constrained metrics): their MLflow-safe spelling is mapped back.
        """
        original = {clean_name(n): n for n in names}
        points: dict[int, dict[str, float]] = {}
        with self._errors("read a trial's metrics"):
            keys = sorted(self._client.get_run(run_id).data.metrics)
            for key in keys:
                history = self._client.get_metric_history(run_id, key)
                history = sorted(history, key=lambda m: (m.step, m.timestamp))
                for metric in history[seen.get(key, 0):]:
                    points.setdefault(int(metric.step), {})[original.get(key, key)] = from_store(metric.value)
                seen[key] = len(history)
                if history:  # as if logged here: finish_trial_run then adds no duplicate final value
                    with self._lock:
                        self._max_step[run_id] = max(self._max_step.get(run_id, -1), int(history[-1].step))
                        self._last_value.setdefault(run_id, {})[key] = float(history[-1].value)
                        for metric in history:
                            self._note_point(run_id, key, int(metric.step), from_store(metric.value))
        return [Report(step, metrics) for step, metrics in sorted(points.items())]

    def _upload_log(self, run_id: str, log_file: Path, attempt: int) -> None:
        if not log_file.is_file():
            logger.warning("trial log %s does not exist; nothing uploaded to MLflow run %s", log_file, run_id)
            return
        with tempfile.TemporaryDirectory(prefix="prefect-hpo-log-") as tmp:
            staged = Path(tmp) / f"attempt-{attempt}.log"
            try:
                os.link(log_file, staged)  # no copy when on the same file system
            except OSError:
                shutil.copyfile(log_file, staged)
            self._client.log_artifact(run_id, str(staged), artifact_path="logs")

    def _load_json_artifact(self, run_id: str, path: str, operation: str) -> Any:
        with self._errors(operation), tempfile.TemporaryDirectory(prefix="prefect-hpo-mlflow-") as tmp:
            local = self._client.download_artifacts(run_id, path, dst_path=tmp)
            try:
                return json.loads(Path(local).read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise StorageError(
                    f"MLflow at {self.tracking_uri}: {path} of run {run_id} is not valid JSON: {exc}"
                ) from exc

    def _find_trial_run(self, parent_run_id: str, index: int) -> str | None:
        with self._errors(f"look for trial {index}'s run"):
            runs = self._client.search_runs(
                [self.experiment_id],
                filter_string=(
                    f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{ROLE_TAG}` = 'trial' "
                    f"and tags.`{INDEX_TAG}` = '{int(index)}'"
                ),
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
        return runs[0].info.run_id if runs else None

    def _trial_runs(self, parent_run_id: str) -> Iterator[Any]:
        token: str | None = None
        while True:
            with self._errors("list trial runs"):
                page = self._client.search_runs(
                    [self.experiment_id],
                    filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{ROLE_TAG}` = 'trial'",
                    run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=_SEARCH_PAGE,
                    order_by=["attributes.start_time ASC"],
                    page_token=token,
                )
            yield from page
            token = page.token
            if not token:
                return

    def _load_params_artifact(self, run_id: str, path: str) -> Any:
        return self._load_json_artifact(run_id, path, "load trial params")
