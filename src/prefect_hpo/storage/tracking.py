"""The MLflow side of an experiment: one parent run per experiment, one nested child run per trial.

Layout (what a user finds in the MLflow UI):

* MLflow experiment = the HPO experiment's name.
* Parent run (``prefect_hpo.role = experiment``, run name = experiment name): flat params
  (algorithm, seed, budget, objective directions), ``spec.json`` and ``search_space.json``
  artifacts, and the running summary (``best/<objective>``, ``trials/<status>`` metrics, the
  ``prefect_hpo.best_params`` tag).
* Child runs (``prefect_hpo.role = trial``, run name ``trial-0003``), nested through the explicit
  ``mlflow.parentRunId`` tag so nesting survives trials that run in other processes. Typed
  parameters, status, attempt and final values live in ``prefect_hpo.*`` tags, which is what
  :meth:`MlflowTracker.trial_records` reads back to rebuild an experiment whose checkpoint is lost
  (MLflow's own params are strings, so they cannot be trusted to round-trip).

Everything goes through one ``MlflowClient(tracking_uri=...)``: the fluent API keeps one global
active run, and a flow drives several trials at once. The hot path (start, report, finish a trial)
never searches and batches params, metrics and tags into single ``log_batch`` calls, because the
whole per-trial orchestration budget is 150 ms and every MLflow call on SQLite costs milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient

from prefect_hpo.errors import StorageError
from prefect_hpo.storage.mlflow_values import clean_name, compact_json, from_store, now_ms, same_value, truncate
from prefect_hpo.storage.tracking_uri import prepare_sqlite_file, resolve_tracking_uri, sqlite_path
from prefect_hpo.trial import Report

try:  # MLflow's SQL stores let SQLAlchemy errors escape unwrapped (e.g. "unable to open database file").
    from sqlalchemy.exc import SQLAlchemyError
except ImportError:  # pragma: no cover - mlflow-skinny without SQLAlchemy: no SQL store either
    SQLAlchemyError = MlflowException  # type: ignore[misc,assignment]

__all__ = ["MlflowTracker", "TrialRecord"]

logger = logging.getLogger(__name__)

# MLflow 3's limits (mlflow.utils.validation); values over them are rejected or truncated with a
# warning per value, so we truncate first, quietly and predictably.
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_ENTITIES_PER_BATCH = 1000
_SEARCH_PAGE = 1000

ROLE_TAG = "prefect_hpo.role"
PARENT_TAG = "mlflow.parentRunId"
INDEX_TAG = "prefect_hpo.trial_index"
PARAMS_TAG = "prefect_hpo.params"
SUGGESTER_TAG = "prefect_hpo.suggester"
STATUS_TAG = "prefect_hpo.status"
ATTEMPT_TAG = "prefect_hpo.attempt"
REASON_TAG = "prefect_hpo.failure_reason"
STOPPED_BY_TAG = "prefect_hpo.stopped_by"
FEASIBLE_TAG = "prefect_hpo.feasible"
STOP_REQUEST_TAG = "prefect_hpo.stop_request"  # set by the flow, watched by a trial running as a Dask task
VALUES_TAG = "prefect_hpo.values"
BEST_PARAMS_TAG = "prefect_hpo.best_params"
# A params JSON too long for a tag is stored as this artifact; the tag then holds the marker.
_PARAMS_ARTIFACT = "prefect_hpo/params.json"
_ARTIFACT_MARKER = "@artifact:"

# An early-stopped trial's run is KILLED in MLflow's terms (the UI shows it as stopped, not failed);
# the prefect_hpo.status tag keeps the exact status and prefect_hpo.stopped_by the policy.
_TERMINAL = {
    "completed": RunStatus.FINISHED,
    "early_stopped": RunStatus.KILLED,
    "failed": RunStatus.FAILED,
    "abandoned": RunStatus.KILLED,
}
_STATUSES = {"pending", "running", "completed", "early_stopped", "failed", "abandoned"}
# Used only when a child run has no (valid) status tag, e.g. one created by hand.
_FROM_MLFLOW_STATUS = {
    "RUNNING": "running",
    "SCHEDULED": "pending",
    "FINISHED": "completed",
    "FAILED": "failed",
    "KILLED": "abandoned",
}


@dataclass(frozen=True)
class TrialRecord:
    """What MLflow knows about one trial, enough to rebuild an experiment whose checkpoint is lost."""

    index: int
    run_id: str
    params: dict[str, Any]
    suggester: str
    status: str
    values: dict[str, float] | None
    failure_reason: str | None
    attempt: int


class MlflowTracker:
    """One HPO experiment's MLflow records, written through a client bound to one tracking URI.

    Thread-safe: a flow reports for several trials at once from several threads.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment_name: str,
        *,
        artifact_location: str | None = None,
        sqlite_wal: bool = True,
    ) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment_name = experiment_name
        self._lock = threading.Lock()
        self._max_step: dict[str, int] = {}
        self._last_value: dict[str, dict[str, float]] = {}
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
        """Create the parent run; the spec goes in as an artifact so ``load_spec`` can return it whole."""
        algorithm = str(spec.get("algorithm", "auto"))
        tags = {
            ROLE_TAG: "experiment",
            "prefect_hpo.experiment": self.experiment_name,
            "prefect_hpo.algorithm": algorithm,
        }
        budget = spec.get("budget") or {}
        params: dict[str, Any] = {"algorithm": algorithm, "seed": spec.get("seed")}
        if isinstance(budget, Mapping):
            for key in ("trials", "max_parallel", "wall_time_s"):
                if budget.get(key) is not None:
                    params[f"budget.{key}"] = budget[key]
        objectives = spec.get("objectives") or {}
        if isinstance(objectives, Mapping):
            for name, objective in objectives.items():
                if isinstance(objective, Mapping):  # {direction, threshold}
                    params[f"objective.{name}"] = objective.get("direction")
                    if objective.get("threshold") is not None:
                        params[f"objective.{name}.threshold"] = objective["threshold"]
                else:
                    params[f"objective.{name}"] = objective
        for i, constraint in enumerate(spec.get("outcome_constraints") or []):
            params[f"outcome_constraint.{i}"] = constraint
        with self._errors("start the experiment run"):
            run = self._client.create_run(self.experiment_id, tags=tags, run_name=self.experiment_name)
            run_id = run.info.run_id
            self._log_batch(run_id, params=self._params(params))
            self._client.log_dict(run_id, json.loads(compact_json(dict(spec))), "spec.json")
            self._client.log_dict(run_id, json.loads(compact_json(list(space))), "search_space.json")
        return run_id

    def load_spec(self, parent_run_id: str) -> dict[str, Any]:
        """The spec exactly as ``start_experiment_run`` stored it."""
        return self._load_json_artifact(parent_run_id, "spec.json", "load spec.json")

    def log_experiment_summary(
        self,
        parent_run_id: str,
        *,
        best_params: dict[str, Any] | None,
        best_values: dict[str, float] | None,
        counts: dict[str, int],
        hypervolume: float | None = None,
    ) -> None:
        """One batch: ``best/<objective>`` and ``trials/<status>`` metrics plus the best params tag.

        The step is the number of trials counted, so the metric history of ``best/...`` is the
        optimization curve (best value against trials so far).
        """
        step = int(sum(counts.values()))
        ts = now_ms()
        metrics = [Metric(clean_name(f"trials/{k}"), float(v), ts, step) for k, v in counts.items()]
        metrics += [Metric(clean_name(f"best/{k}"), float(v), ts, step) for k, v in (best_values or {}).items()]
        if hypervolume is not None:  # several objectives: the progress measure of the front
            metrics.append(Metric("hypervolume", float(hypervolume), ts, step))
        tags = [RunTag(BEST_PARAMS_TAG, truncate(compact_json(best_params), _MAX_TAG_VALUE))] if best_params is not None else []
        with self._errors("log the experiment summary"):
            self._log_batch(parent_run_id, metrics=metrics, tags=tags)

    def log_experiment_file(self, parent_run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Attach a file (a plot, a report) to the experiment's parent run."""
        with self._errors(f"log {Path(path).name}"):
            self._client.log_artifact(parent_run_id, str(path), artifact_path=artifact_path)

    def finish_experiment_run(self, parent_run_id: str, status: str = "FINISHED") -> None:
        """Terminate the parent run with an MLflow status (FINISHED, FAILED or KILLED)."""
        with self._errors("finish the experiment run"):
            self._client.set_terminated(parent_run_id, status=status)

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
        """
        if search_existing:
            existing = self._find_trial_run(parent_run_id, index)
            if existing is not None:
                with self._errors(f"re-open trial {index}'s run"):
                    self._client.update_run(existing, status=RunStatus.to_string(RunStatus.RUNNING))
                    self._log_batch(
                        existing,
                        tags=[RunTag(STATUS_TAG, "running"), RunTag(ATTEMPT_TAG, str(attempt)), RunTag(REASON_TAG, "")],
                    )
                return existing
        params_json = compact_json(params)
        too_long = len(params_json) > _MAX_TAG_VALUE
        tags = {
            PARENT_TAG: parent_run_id,
            ROLE_TAG: "trial",
            INDEX_TAG: str(index),
            PARAMS_TAG: _ARTIFACT_MARKER + _PARAMS_ARTIFACT if too_long else params_json,
            SUGGESTER_TAG: truncate(str(suggester), _MAX_TAG_VALUE),
            STATUS_TAG: "running",
            ATTEMPT_TAG: str(attempt),
        }
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
            self._max_step[run_id] = step_max
        with self._errors("log reports"):
            self._log_batch(run_id, metrics=metrics)

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
        reason it gave is ``failure_reason``. ``feasible`` (with outcome constraints) becomes the
        ``prefect_hpo.feasible`` tag, so the MLflow UI can filter on it.

        Final ``values`` are kept exactly in the ``prefect_hpo.values`` tag (what ``trial_records``
        reads) and are logged as metrics under the objective names only where they differ from the
        last value reported for that name through this tracker, one step past the last report.
        """
        if status not in _TERMINAL:
            raise ValueError(f"finish_trial_run: status must be one of {sorted(_TERMINAL)}, got {status!r}")
        tags = [
            RunTag(STATUS_TAG, status),
            RunTag(ATTEMPT_TAG, str(attempt)),
            RunTag(REASON_TAG, truncate(failure_reason or "", _MAX_TAG_VALUE)),
        ]
        if stopped_by:
            tags.append(RunTag(STOPPED_BY_TAG, truncate(stopped_by, _MAX_TAG_VALUE)))
        if feasible is not None:  # outcome constraints: kept or broken
            tags.append(RunTag(FEASIBLE_TAG, str(feasible).lower()))
        metrics: list[Metric] = []
        with self._lock:
            step_max = self._max_step.pop(run_id, -1)
            last = self._last_value.pop(run_id, {})
        if values is not None:
            tags.append(RunTag(VALUES_TAG, truncate(compact_json(values), _MAX_TAG_VALUE)))
            ts = now_ms()
            for name, value in values.items():
                key = clean_name(name)
                if key not in last or not same_value(last[key], float(value)):
                    metrics.append(Metric(key, float(value), ts, step_max + 1))
        with self._errors("finish the trial run"):
            self._log_batch(run_id, metrics=metrics, tags=tags)
            self._client.set_terminated(run_id, status=RunStatus.to_string(_TERMINAL[status]))
            if log_file is not None:
                self._upload_log(run_id, Path(log_file), attempt)

    def mark_trial_status(self, run_id: str, status: str, *, attempt: int | None = None, reason: str | None = None) -> None:
        """A non-terminal status change; "running" also re-opens the MLflow run (a retry after a failure)."""
        if status not in _STATUSES:
            raise ValueError(f"mark_trial_status: unknown status {status!r}; expected one of {sorted(_STATUSES)}")
        tags = [RunTag(STATUS_TAG, status)]
        if attempt is not None:
            tags.append(RunTag(ATTEMPT_TAG, str(attempt)))
        if reason is not None:
            tags.append(RunTag(REASON_TAG, truncate(reason, _MAX_TAG_VALUE)))
        with self._errors(f"mark a trial {status}"):
            self._log_batch(run_id, tags=tags)
            if status == "running":
                self._client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    # ---- reading back -----------------------------------------------------------------------
    def trial_records(self, parent_run_id: str) -> list[TrialRecord]:
        """Every trial run of the parent, by index; of duplicate indexes the newest run wins."""
        by_index: dict[int, tuple[int, TrialRecord]] = {}
        for run in self._trial_runs(parent_run_id):
            record = self._record(run)
            if record is None:
                continue
            start = run.info.start_time or 0
            previous = by_index.get(record.index)
            if previous is not None:
                logger.warning(
                    "MLflow at %s: trial %d has two runs (%s, %s) under parent %s; keeping the newer",
                    self.tracking_uri, record.index, previous[1].run_id, record.run_id, parent_run_id,
                )
                if previous[0] > start:
                    continue
            by_index[record.index] = (start, record)
        return [by_index[i][1] for i in sorted(by_index)]

    def trial_run_ids(self, parent_run_id: str) -> dict[int, str]:
        """Trial index -> child run id (newest run per index)."""
        return {r.index: r.run_id for r in self.trial_records(parent_run_id)}

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
        return [Param(clean_name(k), truncate(str(v), _MAX_PARAM_VALUE)) for k, v in params.items()]

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

    def _record(self, run: Any) -> TrialRecord | None:
        """A TrialRecord from a child run's tags; None (with a warning) for a run we cannot read."""
        tags: dict[str, str] = run.data.tags
        run_id = run.info.run_id
        try:
            index = int(tags[INDEX_TAG])
            raw_params = tags.get(PARAMS_TAG, "{}")
            if raw_params.startswith(_ARTIFACT_MARKER):
                params = self._load_json_artifact(run_id, raw_params[len(_ARTIFACT_MARKER):], "load trial params")
            else:
                params = json.loads(raw_params)
            raw_values = tags.get(VALUES_TAG)
            values = json.loads(raw_values) if raw_values else None
            attempt = int(tags.get(ATTEMPT_TAG, "1"))
        except (KeyError, ValueError) as exc:  # JSONDecodeError is a ValueError
            logger.warning("MLflow at %s: skipping trial run %s, its prefect_hpo tags are unreadable (%s)", self.tracking_uri, run_id, exc)
            return None
        status = tags.get(STATUS_TAG)
        if status not in _STATUSES:
            status = _FROM_MLFLOW_STATUS.get(run.info.status, "running")
        return TrialRecord(
            index=index,
            run_id=run_id,
            params=params,
            suggester=tags.get(SUGGESTER_TAG, ""),
            status=status,
            values={k: float(v) for k, v in values.items()} if isinstance(values, dict) else None,
            failure_reason=tags.get(REASON_TAG) or None,
            attempt=attempt,
        )
