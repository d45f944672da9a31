"""The flow's per-trial bookkeeping as a typed record: attempts, the live handle, the MLflow run.

The optimizer's :class:`~prefect_hpo.optim.trials.Trial` knows nothing of processes or MLflow;
the flow keeps what it needs about a trial in ``trial.metadata``, which is checkpointed with the
trial. Every access goes through :class:`TrialRun`, so the keys, their types and their defaults
are written down once, here, and checkpoints written before this class existed read the same
(it is a view over the same dict, not a second copy that could drift from it).
"""

from __future__ import annotations

from typing import Any

from prefect_hpo.optim.trials import Trial

__all__ = ["TrialRun", "run_of"]


class TrialRun:
    """The flow's record of one trial, stored in (and read from) ``trial.metadata``."""

    __slots__ = ("_meta",)

    def __init__(self, trial: Trial) -> None:
        self._meta = trial.metadata

    def reset(self, *, run_id: str | None = None, attempt: int = 0) -> None:
        """A trial the flow has not started yet (suggested, or rebuilt from MLflow)."""
        self._meta.update({"attempt": attempt, "handle": None, "history": [], "attempts": []})
        if run_id is not None:
            self._meta["run_id"] = run_id

    # ---- the attempt in progress ---------------------------------------------------------
    @property
    def attempt(self) -> int:
        """The current (or last) attempt, 1-based; 0 before the first launch."""
        return int(self._meta.get("attempt", 0))

    @property
    def next_attempt(self) -> int:
        return self.attempt + 1

    @property
    def handle(self) -> dict[str, Any] | None:
        """The launcher's handle of the running attempt; None when no process is watched."""
        return self._meta.get("handle")

    @handle.setter
    def handle(self, handle: dict[str, Any] | None) -> None:
        self._meta["handle"] = handle

    def start_attempt(self, attempt: int, run_id: str | None, handle: dict[str, Any] | None = None) -> None:
        """A new attempt begins: its curve starts empty (a re-run's reports replace the last one's)."""
        self._meta.update({"attempt": attempt, "run_id": run_id, "history": [], "handle": handle})

    # ---- MLflow --------------------------------------------------------------------------
    def remember_mlflow_index(self, index: int) -> None:
        """The index MLflow had for a trial rebuilt under another one (a gap in the record)."""
        self._meta["mlflow_index"] = int(index)

    @property
    def run_id(self) -> str | None:
        """The trial's MLflow child run (or a pending stand-in while MLflow is down)."""
        return self._meta.get("run_id")

    @run_id.setter
    def run_id(self, run_id: str | None) -> None:
        self._meta["run_id"] = run_id

    # ---- reports -------------------------------------------------------------------------
    @property
    def history(self) -> list[dict[str, Any]]:
        """The current attempt's reports, ``{"step", "metrics"}`` each (kept for the stopping policies)."""
        return self._meta.setdefault("history", [])

    def take_replayed(self) -> int:
        """How many reports a re-attached attempt's first poll repeats (then forgotten)."""
        return int(self._meta.pop("replayed", 0))

    def expect_replay(self) -> None:
        """After a re-attach the launcher returns the whole log again; skip what is known."""
        self._meta["replayed"] = len(self._meta.get("history", []))

    # ---- failures and stops --------------------------------------------------------------
    @property
    def failed_attempts(self) -> list[dict[str, Any]]:
        """``{"attempt", "reason"}`` of every attempt that failed, oldest first."""
        return list(self._meta.get("attempts", []))

    def record_failure(self, attempt: int, reason: str) -> None:
        self._meta["attempts"] = [*self._meta.get("attempts", []), {"attempt": attempt, "reason": reason}]

    @property
    def reruns(self) -> int:
        """Attempts re-run because their process vanished (not counted against ``retries``)."""
        return int(self._meta.get("reruns", 0))

    @reruns.setter
    def reruns(self, count: int) -> None:
        self._meta["reruns"] = int(count)

    @property
    def stopped_by(self) -> str | None:
        """The stopping policy (with its settings) that ended the trial early."""
        return self._meta.get("stopped_by")

    @stopped_by.setter
    def stopped_by(self, policy: str | None) -> None:
        self._meta["stopped_by"] = policy


def run_of(trial: Trial) -> TrialRun:
    return TrialRun(trial)
