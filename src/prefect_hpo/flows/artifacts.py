"""The Prefect artifacts of an HPO flow run: progress, a table of trials (best first), a summary
and a link to the experiment in the MLflow UI.

They are published while the flow runs, not only when it returns: a run of hours, or one that was
killed, shows where it stands. After finished trials the progress artifact is updated in place and
the table and the summary are published again under the same keys (Prefect keeps each key's
versions and shows the latest), at most every ``PREFECT_HPO_ARTIFACT_INTERVAL_S`` seconds (default
1) so a thousand one-second trials do not spend their time on API calls; the end always publishes.

The API calls run on a thread of their own (:class:`LiveArtifacts`): the loop takes a snapshot of
what to show (cheap: rows and Markdown text) and goes on while it is sent, instead of waiting a
round trip to the Prefect server after every finished trial.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from prefect_hpo.flows.progress import Progress
from prefect_hpo.optim.experiment import Experiment
from prefect_hpo.optim.outcome import experiment_outcome
from prefect_hpo.optim.trials import Trial, TrialStatus
from prefect_hpo.storage.dashboard_view import describe_strategy
from prefect_hpo.storage.trial_run import run_of

__all__ = ["LiveArtifacts", "artifact_key", "mlflow_experiment_url", "publish_artifacts", "trial_rows"]

logger = logging.getLogger(__name__)


def trial_rows(exp: Experiment) -> list[dict[str, Any]]:
    """One row per trial, completed ones first ordered by the (first) objective, best on top."""
    name, direction = next(iter(exp.objectives.items()))
    sign = 1.0 if direction == "minimize" else -1.0

    def key(t: Trial) -> tuple[int, float, int]:
        if t.status is TrialStatus.COMPLETED and t.values:
            return (0, sign * t.values[name], t.index)
        return (1, 0.0, t.index)

    rows = []
    for t in sorted(exp.trials, key=key):
        row: dict[str, Any] = {"trial": t.index, "status": t.status.value}
        row.update({k: _fmt(v) for k, v in t.params.items()})
        row.update({k: _fmt((t.values or {}).get(k)) for k in exp.metric_names})
        if t.feasible is not None:
            row["feasible"] = t.feasible
        row["attempts"] = run_of(t).attempt
        row["reason"] = t.failure_reason or ""
        rows.append(row)
    return rows


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "experiment"


def mlflow_experiment_url(tracking_uri: str, experiment_id: str | None) -> str | None:
    """The experiment's page in the MLflow UI when the tracking URI is a server, else None."""
    if not tracking_uri.startswith(("http://", "https://")) or not experiment_id:
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}"


def prefect_flow_run_url(flow_run_id: str | None) -> str | None:
    """The flow run's page in the Prefect UI: from ``PREFECT_UI_URL``, else ``PREFECT_API_URL``
    without its trailing ``/api``; None when neither is known (an ephemeral server has no UI)."""
    if not flow_run_id:
        return None
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    base = settings.ui_url
    if not base and settings.api.url:
        base = re.sub(r"/api/?$", "", str(settings.api.url).rstrip("/"))
    if not base:
        return None
    return f"{str(base).rstrip('/')}/runs/flow-run/{flow_run_id}"


def publish_artifacts(
    exp: Experiment, best: dict[str, Any] | None, mlflow_uri: str, parent_run_id: str | None,
    experiment_id: str | None = None,
) -> None:
    """Publish the trials table and the summary of ``exp`` as it stands (``best``: its outcome)."""
    _send(_Snapshot(exp.name, trial_rows(exp), summary_markdown(exp, best, mlflow_uri, parent_run_id, experiment_id)))


@dataclass(frozen=True)
class _Snapshot:
    """What the table and summary artifacts show at one moment: taken on the loop's thread, sent
    from another."""

    name: str
    rows: list[dict[str, Any]]
    markdown: str


def _send(snapshot: _Snapshot) -> None:
    key = artifact_key(snapshot.name)
    create_table_artifact(table=snapshot.rows, key=f"{key}-trials", description=f"Trials of {snapshot.name}, best first")
    create_markdown_artifact(markdown=snapshot.markdown, key=f"{key}-summary", description=f"Summary of {snapshot.name}")


def summary_markdown(
    exp: Experiment, best: dict[str, Any] | None, mlflow_uri: str, parent_run_id: str | None,
    experiment_id: str | None = None,
) -> str:
    """The summary artifact's text: what ran, the counts, the best trial (or Pareto front), where
    the runs are in MLflow."""
    counts: dict[str, int] = {}
    for t in exp.trials:
        counts[t.status.value] = counts.get(t.status.value, 0) + 1
    ran = f" (what ran: {describe_strategy(exp.trials)})" if exp.trials else ""
    lines = [f"# HPO experiment `{exp.name}`", "", f"- algorithm: `{exp.algorithm}`{ran}, seed {exp.seed}"]
    lines.append("- trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    if best is not None and "pareto_front" in best:
        lines.append(f"- Pareto front ({len(best['pareto_front'])} trials), hypervolume {_text(best['hypervolume'])} "
                     f"from reference point {', '.join(f'{k} = {_text(v)}' for k, v in best['reference_point'].items())}:")
        for t in best["pareto_front"]:
            values = ", ".join(f"{k} = {_text(v)}" for k, v in t["values"].items())
            lines.append(f"  - trial {t['index']}: {values}")
    elif best is not None:
        values = ", ".join(f"{k} = {_text(v)}" for k, v in best["values"].items())
        params = ", ".join(f"`{k}` = {_text(v)}" for k, v in best["params"].items())
        lines += [f"- best: trial {best['index']}: {values}", f"- best parameters: {params}"]
    else:
        lines.append("- no trial completed")
    url = mlflow_experiment_url(mlflow_uri, experiment_id)
    if url is not None:
        lines.append(f"- MLflow: [experiment {exp.name}]({url}), parent run [{parent_run_id}]({url}/runs/{parent_run_id})")
    else:
        db = mlflow_uri.removeprefix("sqlite:///")
        lines.append(f"- MLflow: `{mlflow_uri}`, parent run `{parent_run_id}`; to browse it: "
                     f"`mlflow ui --backend-store-uri {mlflow_uri if db == mlflow_uri else 'sqlite:///' + db}`")
    return "\n".join(lines)


def _fmt(v: Any) -> Any:
    """Numbers stay numbers (the UI sorts and aligns them), rounded to 6 significant digits to
    be read at a glance; only what JSON cannot hold (NaN, inf) is text."""
    if isinstance(v, float):
        return float(f"{v:.6g}") if math.isfinite(v) else str(v)
    return "" if v is None else v


def _text(v: Any) -> str:
    """A value in the summary's prose."""
    return f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else str(_fmt(v))


class LiveArtifacts:
    """A progress listener (:mod:`prefect_hpo.flows.progress`) that keeps the flow run's
    artifacts current while it runs; see the module docstring.

    Each event leaves the newest progress (and, at most every ``interval_s``, a snapshot of the
    table and summary) for a sender thread, which runs in a copy of the flow's context so the
    artifacts belong to the flow run. Only the newest of each is sent, at most once per
    ``interval_s``: a burst of trials ending at once is one update, not a queue of stale ones.
    API errors are logged and skipped: artifacts are a view, never a reason to stop an experiment.
    """

    def __init__(self, exp: Experiment, mlflow_uri: str, parent_run_id: str | None, experiment_id: str | None) -> None:
        self.exp, self.mlflow_uri, self.parent_run_id, self.experiment_id = exp, mlflow_uri, parent_run_id, experiment_id
        self.key = artifact_key(exp.name)
        self.interval_s = float(os.environ.get("PREFECT_HPO_ARTIFACT_INTERVAL_S", "1") or 1)
        self._progress_id: UUID | None = None
        self._last = 0.0
        self._wake = threading.Condition()
        self._progress: Progress | None = None  # newest, not sent yet
        self._snapshot: _Snapshot | None = None  # newest, not sent yet
        self._busy = False  # the sender is sending
        self._closed = False
        self._sender: threading.Thread | None = None

    def start(self, budget: int) -> None:
        """The progress bar and the MLflow link, before the first trial ends; then the sender."""
        done = sum(t.status.is_terminal for t in self.exp.trials)
        try:
            self._progress_id = create_progress_artifact(
                progress=_percent(done, budget), key=f"{self.key}-progress",
                description=f"{self.exp.name}: {done}/{budget} trials done",
            )
            url = mlflow_experiment_url(self.mlflow_uri, self.experiment_id)
            if url is not None:
                create_link_artifact(link=url, link_text=f"{self.exp.name} in MLflow", key=f"{self.key}-mlflow",
                                     description="The experiment's runs in the MLflow UI")
        except Exception as exc:  # noqa: BLE001 - a view; the experiment goes on
            logger.warning("Prefect artifacts not published: %s", exc)
        context = contextvars.copy_context()
        self._sender = threading.Thread(target=context.run, args=(self._send_loop,),
                                        name=f"prefect-hpo-artifacts-{self.key}", daemon=True)
        self._sender.start()

    def __call__(self, progress: Progress) -> None:
        if progress.name != self.exp.name:  # listeners are per process; another flow's event
            return
        snapshot = None
        if time.monotonic() - self._last >= self.interval_s:
            snapshot = self._take_snapshot()
            self._last = time.monotonic()
        with self._wake:
            self._progress = progress
            if snapshot is not None:
                self._snapshot = snapshot
            self._wake.notify()

    def publish(self, outcome: dict[str, Any] | None = None) -> None:
        """The table and summary as they stand (``outcome`` when the caller has it already),
        sent now, after whatever the sender still had: the final word is this one."""
        self.close()
        try:
            _send(self._take_snapshot(outcome))
        except Exception as exc:  # noqa: BLE001 - a view; the experiment goes on
            logger.warning("Prefect artifacts not updated: %s", exc)
        self._last = time.monotonic()

    def close(self, timeout_s: float = 30.0) -> None:
        """Send what is pending and stop the sender (bounded: the API may be gone)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._sender is not None:
            self._sender.join(timeout_s)
            self._sender = None

    def _take_snapshot(self, outcome: dict[str, Any] | None = None) -> _Snapshot:
        best = outcome if outcome is not None else experiment_outcome(self.exp)
        return _Snapshot(self.exp.name, trial_rows(self.exp),
                         summary_markdown(self.exp, best, self.mlflow_uri, self.parent_run_id, self.experiment_id))

    def _send_loop(self) -> None:
        while True:
            with self._wake:
                while self._progress is None and self._snapshot is None and not self._closed:
                    self._wake.wait()
                progress, snapshot = self._progress, self._snapshot
                self._progress = self._snapshot = None
                if progress is None and snapshot is None:  # closed, nothing left
                    self._wake.notify_all()
                    return
                self._busy = True
            try:
                if progress is not None and self._progress_id is not None:
                    done = progress.completed + progress.failed + progress.stopped
                    update_progress_artifact(self._progress_id, progress=_percent(done, progress.budget),
                                             description=f"{progress.name}: {done}/{progress.budget} trials done")
                if snapshot is not None:
                    _send(snapshot)
            except Exception as exc:  # noqa: BLE001 - a view; the experiment goes on
                logger.warning("Prefect artifacts not updated: %s", exc)
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()
                    # a pause between sends: what arrives meanwhile is merged into the next one (at
                    # most one progress update and one table a second by default, each a request
                    # the Prefect server spends CPU on); closing ends the pause
                    deadline = time.monotonic() + self.interval_s
                    while not self._closed and time.monotonic() < deadline:
                        self._wake.wait(deadline - time.monotonic())


def _percent(done: int, budget: int) -> float:
    return round(100.0 * min(done, budget) / budget, 1) if budget > 0 else 100.0
