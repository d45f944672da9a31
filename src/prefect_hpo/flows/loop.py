"""The steps of an HPO flow's loop; :func:`prefect_hpo.flows.hpo.run_trials` is the loop itself.

Each step either does nothing (and then no task run appears in the Prefect UI) or runs one of
the tasks of :mod:`prefect_hpo.tasks` named after the trials it is about: ``suggest-0008``,
``launch-trial-0008``, ``report-0003``, ``decide_stop``, ``checkpoint``. Every trial also has its
own task run spanning its life (:mod:`prefect_hpo.flows.trial_spans`), so the flow run's graph
reads as one bar per trial with the loop's few short steps beside them.

The state that is not in the checkpoint lives here: the trials suggested (or to be re-run) but
not launched yet, whether the space is exhausted, and whether something changed that no
checkpoint holds yet.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from prefect_hpo.errors import SearchSpaceExhaustedError
from prefect_hpo.flows.progress import Progress, notify
from prefect_hpo.flows.trial_spans import TrialSpans
from prefect_hpo.optim.stopping import NoStopping
from prefect_hpo.optim.trials import TrialStatus
from prefect_hpo.tasks import HPORuntime, TrialUpdate, checkpoint, decide_stop, launch_trial, poll_trials, report_trials
from prefect_hpo.tasks.checkpoint import write_checkpoint
from prefect_hpo.tasks.dashboard import update_dashboard
from prefect_hpo.tasks.report import close_trial_run
from prefect_hpo.tasks.runtime import best_or_none, describe_values, trial_names
from prefect_hpo.tasks.suggest import run_suggest_step
from prefect_hpo.storage.trial_run import run_of

__all__ = ["TrialLoop"]

logger = logging.getLogger(__name__)


class TrialLoop:
    """One flow run's pass over an experiment: keep up to ``max_parallel`` trials running."""

    def __init__(self, runtime: HPORuntime, spans: TrialSpans) -> None:
        self.runtime = runtime
        self.spans = spans
        exp = runtime.experiment
        # in flight without a process: suggested before a kill, or to be re-run after one
        self.waiting = [t.index for t in exp.trials if t.status.in_flight and run_of(t).handle is None]
        self.exhausted = False
        self.unsaved = False  # a trial's lifecycle changed and no checkpoint holds it yet
        self.reports_unsaved = False  # only new reports (histories) wait to be written
        self._stops = type(runtime.policy) is not NoStopping  # the no-op policy: nothing to decide
        launched = self.launched()
        for trial in exp.trials:  # left running by an earlier flow run: their spans start now, in this one
            if trial.index in launched:
                spans.begin(trial, f"trial {trial.index}: watched by this flow run after a resume "
                                   f"(attempt {run_of(trial).attempt}, {trial.suggester}): {trial.params}")

    # ---- what the loop asks --------------------------------------------------------------
    def launched(self) -> list[int]:
        return [
            t.index for t in self.runtime.experiment.trials
            if t.status is TrialStatus.RUNNING and run_of(t).handle is not None
        ]

    def done(self) -> bool:
        """No trial in flight and nothing more to start: the budget, the space or the time is spent."""
        exp, budget = self.runtime.experiment, self.runtime.spec.budget
        return not any(t.status.in_flight for t in exp.trials) and (
            self.exhausted or len(exp.trials) >= budget.trials or self.runtime.wall_time_spent()
        )

    def out_of_time(self) -> bool:
        return self.runtime.wall_time_spent()

    # ---- the steps -----------------------------------------------------------------------
    def poll(self) -> list[TrialUpdate]:
        """What running trials reported and which ended (plain code: most polls find nothing)."""
        launched = self.launched()
        updates = poll_trials(self.runtime, launched) if launched else []
        if updates:
            self.reports_unsaved = True
        return updates

    def report(self, updates: Sequence[TrialUpdate]) -> None:
        """Settle the trials whose attempt ended: the ``report-<trials>`` task, when any did; it
        writes the checkpoint."""
        ended = [u for u in updates if u.ended]
        if not ended:
            return
        step = report_trials.with_options(task_run_name=f"report-{trial_names([u.index for u in ended])}")
        outcomes = step(ended)
        exp = self.runtime.experiment
        for o in outcomes:
            if o.status == "retry":
                self.waiting.append(o.index)
                self.spans.log(o.index, f"trial {o.index}: attempt {run_of(exp.trial(o.index)).attempt} "
                                        f"failed ({o.reason}); it runs again")
        self._announce_ends([o.index for o in outcomes if o.status != "retry"])
        if outcomes:  # the task wrote the checkpoint (the reports polled before it too)
            self.unsaved = self.reports_unsaved = False

    def decide_stop(self, updates: Sequence[TrialUpdate]) -> None:
        """The stopping policy on the new reports: ``decide_stop``, only with a policy and news."""
        if not self._stops or not any(u.reports for u in updates):
            return
        decisions = decide_stop()  # kills them; their slots are free for the launch below
        for decision in decisions:
            close_trial_run(self.runtime, decision.index)
        self._announce_ends([d.index for d in decisions])

    def abandon_waiting(self) -> None:
        """The wall-clock budget is spent: trials not started yet never will be."""
        for index in self.waiting:
            self.runtime.experiment.abandon(index, "the wall-clock budget was spent before it could start")
            close_trial_run(self.runtime, index)
            self.unsaved = True
        self.waiting = []

    def suggest(self) -> None:
        """Fill the free slots with new trials: ``suggest-<trials>``, written to the checkpoint
        before any process exists (a flow killed in between launches the very same ones)."""
        if self.exhausted:
            return
        exp, spec = self.runtime.experiment, self.runtime.spec
        in_flight = len(self.launched()) + len(self.waiting)
        n = min(spec.budget.max_parallel - in_flight, spec.budget.trials - len(exp.trials))
        slots = self.runtime.launcher.free_slots(spec.trial.gpus_per_trial)
        if slots is not None:
            n = min(n, slots - len(self.waiting))
        if n <= 0:
            return
        try:
            self.waiting.extend(run_suggest_step(self.runtime, n))  # the task writes the checkpoint
        except SearchSpaceExhaustedError as exc:
            logger.warning("%s: no new trials: %s", spec.name, exc)
            self.exhausted = True
            return
        self.unsaved = self.reports_unsaved = False

    def launch(self) -> None:
        """Start waiting trials while slots are free: one ``launch-trial-<index>`` task each."""
        if not self.waiting:
            return
        self.save()  # a re-run's new attempt is on record before its process exists
        exp = self.runtime.experiment
        slots = self.runtime.launcher.free_slots(self.runtime.spec.trial.gpus_per_trial)
        count = len(self.waiting) if slots is None else min(len(self.waiting), slots)
        for index in self.waiting[:count]:
            trial = exp.trial(index)
            attempt = run_of(trial).next_attempt
            self.spans.begin(trial, f"trial {index} launched (attempt {attempt}, {trial.suggester}): {trial.params}")
            if launch_trial(index) is None:  # the task writes the checkpoint
                close_trial_run(self.runtime, index)
                self._announce_ends([index])
        self.waiting = self.waiting[count:]
        self.unsaved = self.reports_unsaved = False

    def save(self) -> None:
        """Write what no checkpoint holds yet: a trial that ended, stopped or will re-run as the
        ``checkpoint`` task; reports alone (a learning curve growing) without a task run, since
        they arrive on most polls and a task run each would bury the trials in the graph."""
        if self.unsaved:
            checkpoint()
        elif self.reports_unsaved:
            write_checkpoint(self.runtime)
        self.unsaved = self.reports_unsaved = False

    def wait_for_news(self) -> None:
        """Until a trial's log grows or one exits, at most ``poll_interval_s``."""
        exp = self.runtime.experiment
        handles = [run_of(exp.trial(i)).handle for i in self.launched()]
        self.runtime.launcher.wait_any(handles, self.runtime.spec.trial.poll_interval_s)

    # ---- telling people ------------------------------------------------------------------
    def _announce_ends(self, indices: Sequence[int]) -> None:
        """End the trials' spans (their last log line) and tell the progress listeners (live
        artifacts, the CLI's status line), one at a time: later ones are not counted yet. Then
        the MLflow parent run's dashboard, once for the batch (queued: it never waits on MLflow)."""
        if not indices:
            return
        self.unsaved = True
        self.spans.settle(self.runtime.experiment.trials)
        for k, index in enumerate(indices):
            trial = self.runtime.experiment.trial(index)
            detail = f": {trial.failure_reason}" if trial.failure_reason else f" ({describe_values(trial.values)})"
            self._notify(f"trial {index} {trial.status.value.replace('_', ' ')}{detail}", later=indices[k + 1:])
        update_dashboard(self.runtime)

    def _notify(self, event: str, later: Sequence[int] = ()) -> None:
        exp = self.runtime.experiment
        counts = {s: 0 for s in TrialStatus}
        for t in exp.trials:
            counts[TrialStatus.RUNNING if t.index in later else t.status] += 1
        best = best_or_none(exp)
        notify(
            Progress(
                name=exp.name,
                budget=self.runtime.spec.budget.trials,
                completed=counts[TrialStatus.COMPLETED],
                failed=counts[TrialStatus.FAILED] + counts[TrialStatus.ABANDONED],
                running=counts[TrialStatus.RUNNING] + counts[TrialStatus.PENDING],
                best_index=best.index if best is not None else None,
                best_values=best.values if best is not None else None,
                event=event,
                stopped=counts[TrialStatus.EARLY_STOPPED],
            )
        )
