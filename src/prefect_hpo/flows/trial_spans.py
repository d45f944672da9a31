"""One Prefect task run per trial, ``trial-0007``, spanning the trial's life from launch to result.

A person looking at an HPO flow run wants to see trials: when each ran, how it ended, with which
parameters. The loop's own steps (suggest, launch, report, checkpoint) are short task runs of
their own; a trial lives across many of them and across attempts, so it gets a task run that
starts when it is launched and ends in the state the trial ended in:

* completed: Completed, the objective values as the state's message;
* failed: Failed, the reason as the message;
* stopped early: Completed named ``Stopped early``, the stopping rule as the message;
* abandoned (the wall-clock budget ran out): Cancelled;
* still running when this flow run ends (the trial process outlives the flow, and a resume
  re-attaches it): Cancelled named ``Detached``.

The task's body waits in one of the flow's task-runner threads for the loop to say how the trial
ended, and logs the trial's events (launched with its parameters, retried, re-attached) through
its run logger, so they are on the task run's page (its Logs tab opens first) and in the flow
run's Logs tab; Prefect shows no task argument values. The span carries no tags: the task engine
acquires a concurrency slot per tag from the server (with a lease renewed for the task's whole
life), which delayed spans' starts by 2 to 6 s here. Outside a flow run (the loop used from plain
Python) there is no span and the events go to this module's logger.
"""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, Completed, Failed, State

from prefect_hpo.optim.trials import Trial, TrialStatus
from prefect_hpo.tasks.runtime import describe_values

__all__ = ["TrialSpans"]

logger = logging.getLogger(__name__)

#: How long closing the spans waits for their threads to report their final states.
CLOSE_WAIT_S = 10.0


@dataclass(frozen=True)
class _End:
    """How a trial ended, as its span shows it."""

    status: str  # a TrialStatus value, or "detached"
    message: str


def _final_state(end: _End) -> State[Any]:
    if end.status == TrialStatus.COMPLETED.value:
        return Completed(message=end.message)
    if end.status == TrialStatus.EARLY_STOPPED.value:
        return Completed(name="Stopped early", message=end.message)
    if end.status == TrialStatus.FAILED.value:
        return Failed(message=end.message)
    if end.status == "detached":
        return Cancelled(name="Detached", message=end.message)
    return Cancelled(message=end.message)  # abandoned


@task(name="trial", task_run_name="trial-{index:04d}", cache_policy=NO_CACHE, persist_result=False)
def trial_span(index: int, inbox: queue.Queue[str | _End]) -> State[Any]:
    """Log the trial's events as they arrive; end in the state the trial ended in."""
    from prefect import get_run_logger

    log = get_run_logger()
    while True:
        item = inbox.get()
        if isinstance(item, _End):
            return _final_state(item)
        log.info("%s", item)


class TrialSpans:
    """The open spans of one flow run's trials; the loop tells it what happened to each trial."""

    def __init__(self) -> None:
        self._inboxes: dict[int, queue.Queue[str | _End]] = {}
        self._futures: list[Any] = []
        self._enabled = _in_flow_run()

    def is_open(self, index: int) -> bool:
        return index in self._inboxes

    def begin(self, trial: Trial, event: str) -> None:
        """Open trial's span (once per flow run) with its first event, e.g. "launched ..."."""
        open_inbox = self._inboxes.get(trial.index)
        if open_inbox is not None:  # a retry: the same span goes on
            open_inbox.put(event)
            return
        if not self._enabled:
            logger.info("%s", event)
            return
        inbox: queue.Queue[str | _End] = queue.Queue()
        inbox.put(event)
        self._inboxes[trial.index] = inbox
        self._futures.append(trial_span.submit(trial.index, inbox))

    def log(self, index: int, event: str) -> None:
        """A trial event on the trial's span (or this module's logger when it has none)."""
        inbox = self._inboxes.get(index)
        if inbox is None:
            _flow_logger().info("%s", event)
        else:
            inbox.put(event)

    def settle(self, trials: tuple[Trial, ...]) -> None:
        """End the span of every trial that has reached a final status, with its event line."""
        for trial in trials:
            if trial.index in self._inboxes and trial.status.is_terminal:
                self._end(trial.index, _End(trial.status.value, _describe_end(trial)))

    def close(self, reason: str = "the flow run ended while the trial ran; a resume re-attaches it") -> None:
        """End every open span as detached, then wait (bounded) for their final states.

        Called in the flow's ``finally``: a span left waiting would hold the flow run open."""
        for index in list(self._inboxes):
            self._end(index, _End("detached", reason))
        for future in self._futures:
            try:
                future.wait(CLOSE_WAIT_S)
            except Exception as exc:  # noqa: BLE001 - a span is a view; closing must not fail the flow
                logger.debug("a trial span did not end cleanly: %s", exc)
        self._futures = []

    def _end(self, index: int, end: _End) -> None:
        inbox = self._inboxes.pop(index)
        if end.status != "detached":
            inbox.put(f"trial {index} {end.status.replace('_', ' ')}: {end.message}")
        inbox.put(end)


def _describe_end(trial: Trial) -> str:
    if trial.status is TrialStatus.COMPLETED or (trial.status is TrialStatus.EARLY_STOPPED and trial.values):
        detail = describe_values(trial.values)
        return f"{detail} ({trial.failure_reason})" if trial.failure_reason else detail
    return trial.failure_reason or trial.status.value


def _in_flow_run() -> bool:
    from prefect.context import FlowRunContext

    return FlowRunContext.get() is not None


def _flow_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logger
