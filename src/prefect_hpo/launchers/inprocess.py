"""In-process trials: a Python callable object (a lambda, a closure, a notebook function) run on
a thread of the flow's own process.

This is for objectives that cannot be imported by name from a fresh process. The price of
sharing the process: a thread cannot be killed, so a timed-out or stopped trial is recorded
at once but its code runs on until its next ``report()`` (which raises ``TrialStopped``) or
until it returns; ``CUDA_VISIBLE_DEVICES``
and ``MLFLOW_RUN_ID`` cannot differ per thread, so GPU slots are refused and the trial's MLflow
run is filled by the flow only; and a killed flow loses its in-process trials (resume re-runs
them). Anything importable (``package.module:function``) runs as a process instead.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_hpo.errors import SpecError, TrialError
from prefect_hpo.launchers.base import LaunchRequest, Launcher, PollResult, TrialState
from prefect_hpo.trial import _IN_PROCESS_PARAMS, _IN_PROCESS_SINK, Report, TrialStopped

__all__ = ["InProcessLauncher"]

logger = logging.getLogger(__name__)


@dataclass
class _Attempt:
    thread: threading.Thread
    log: Path
    started: float
    timeout_s: float | None
    reports: list[Report] = field(default_factory=list)
    delivered: int = 0
    outcome: TrialState | None = None
    reason: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class InProcessLauncher(Launcher):
    """Runs ``objective(params)`` on a daemon thread per attempt."""

    kind = "inprocess"

    def __init__(self, objective: Callable[[dict[str, Any]], Any], objectives: Sequence[str]) -> None:
        self.objective = objective
        self.objectives = list(objectives)
        self._attempts: dict[str, _Attempt] = {}
        self._changed = threading.Event()

    def launch(self, request: LaunchRequest) -> dict[str, Any]:
        if request.gpus_per_trial:
            raise SpecError(
                "trial.gpus_per_trial: an in-process callable shares the flow's process, so it cannot get "
                "GPUs of its own; make it importable (package.module:function) or use a command"
            )
        request.workdir.mkdir(parents=True, exist_ok=True)
        key = uuid.uuid4().hex
        log = request.workdir / "output.log"
        attempt = _Attempt(
            thread=threading.Thread(target=self._run, args=(key, dict(request.params)), name=f"trial-{request.index}", daemon=True),
            log=log, started=time.time(), timeout_s=request.timeout_s,
        )
        self._attempts[key] = attempt
        attempt.thread.start()
        return {"launcher": "inprocess", "key": key, "log": str(log), "started_at": attempt.started, "timeout_s": request.timeout_s}

    def _run(self, key: str, params: dict[str, Any]) -> None:
        attempt = self._attempts[key]

        def sink(report: Report) -> None:
            with attempt.lock:
                if attempt.outcome is not None:  # stopped or timed out: unwind the thread
                    raise TrialStopped(attempt.reason or "stopped")
                attempt.reports.append(report)
            self._changed.set()

        _IN_PROCESS_SINK.set(sink)
        _IN_PROCESS_PARAMS.set(params)
        try:
            result = self.objective(params)
            final = self._as_metrics(result)
            if final:
                sink(Report(step=None, metrics=final))
            outcome, reason = TrialState.SUCCEEDED, None
        except TrialStopped:  # the outcome was set by whoever stopped it
            outcome, reason = TrialState.FAILED, "stopped"
        except Exception as exc:  # the trial's own failure, recorded as its result
            attempt.log.write_text(traceback.format_exc())
            outcome, reason = TrialState.FAILED, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        with attempt.lock:
            if attempt.outcome is None:  # not already timed out or killed
                attempt.outcome, attempt.reason = outcome, reason
        self._changed.set()

    def _as_metrics(self, result: Any) -> dict[str, float]:
        if result is None:
            return {}
        if isinstance(result, dict):
            return {str(k): float(v) for k, v in result.items()}
        if isinstance(result, (int, float)) and not isinstance(result, bool):
            return {self.objectives[0]: float(result)}
        raise TrialError(f"the objective returned {type(result).__name__}; return a number, a dict of metrics, or None")

    def poll(self, handle: dict[str, Any]) -> PollResult:
        attempt = self._attempts.get(handle["key"])
        if attempt is None:  # a previous flow's thread: it died with that flow
            return PollResult(TrialState.FAILED, reason="process vanished without an exit status (in-process trial of a previous flow)")
        with attempt.lock:
            if attempt.outcome is None and attempt.timeout_s is not None and time.time() - attempt.started > attempt.timeout_s:
                attempt.outcome = TrialState.FAILED
                attempt.reason = f"timed out after {attempt.timeout_s:g} s (its thread stops at its next report)"
            new = attempt.reports[attempt.delivered:]
            attempt.delivered = len(attempt.reports)
            state = attempt.outcome or TrialState.RUNNING
            return PollResult(state, list(new), attempt.reason)

    def kill(self, handle: dict[str, Any], reason: str = "killed") -> None:
        attempt = self._attempts.get(handle["key"])
        if attempt is None:
            return
        with attempt.lock:
            if attempt.outcome is None:
                attempt.outcome, attempt.reason = TrialState.FAILED, f"{reason} (its thread stops at its next report)"

    def reattach(self, handle: dict[str, Any]) -> bool:
        return handle["key"] in self._attempts and self._attempts[handle["key"]].outcome is None

    def wait_any(self, handles: Sequence[dict[str, Any]], timeout_s: float) -> None:
        self._changed.wait(timeout_s)
        self._changed.clear()

    def free_slots(self, gpus_per_trial: int) -> int | None:
        return None

    def log_path(self, handle: dict[str, Any]) -> Path | None:
        return Path(handle["log"])
