"""The launcher interface: where and how one trial attempt runs, seen from the HPO flow.

The flow keeps up to ``max_parallel`` trials running and polls them; it must survive being
killed, so everything it needs to find a running trial again lives in the JSON-serializable
*handle* that :meth:`Launcher.launch` returns (the flow stores it in its checkpoint), never only
in the launcher object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from prefect_hpo.trial import Report

__all__ = ["LaunchRequest", "Launcher", "PollResult", "TrialState", "handle_kind"]


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a launcher needs to start one attempt of one trial."""

    experiment: str
    index: int  # trial index
    attempt: int  # 1, then 2.. for retries / re-runs
    command: str  # a shell command line, already templated by the flow
    params: dict[str, Any]  # put as JSON into PREFECT_HPO_PARAMS
    env: dict[str, str]  # extra variables, laid over os.environ
    workdir: Path  # this attempt's folder (created): output.log and bookkeeping files go here
    cwd: Path | None = None  # the trial's working directory (None: the flow's cwd)
    timeout_s: float | None = None
    gpus_per_trial: int = 0


class TrialState(str, Enum):
    """Where an attempt stands; SUCCEEDED and FAILED are final."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class PollResult:
    """What changed since the previous poll of a handle.

    ``reports`` holds the complete report lines that appeared since this launcher object last
    polled the handle (a fresh launcher, e.g. after a flow restart, returns all of them from
    the start). ``reason`` says why a FAILED attempt failed, e.g. ``"exit code 3"``,
    ``"timed out after 2.5 s"``, ``"killed by signal 9 (SIGKILL)"``,
    ``"process vanished without an exit status"``, ``"malformed report line: ..."``.
    ``tracked`` is true when the reports came from MLflow, where the trial logged them itself.
    """

    state: TrialState
    reports: list[Report] = field(default_factory=list)
    reason: str | None = None
    exit_code: int | None = None
    #: The reports are already in the trial's MLflow run (the launcher read them from there).
    tracked: bool = False


def handle_kind(handle: dict[str, Any]) -> str:
    """Which launcher made ``handle`` (a launcher can only watch its own kind of handle)."""
    return str(handle.get("kind") or handle.get("launcher") or "local")


class Launcher(ABC):
    """Starts trial attempts and watches them through JSON handles that outlive the flow."""

    #: What :func:`handle_kind` says of this launcher's handles.
    kind: ClassVar[str]

    @abstractmethod
    def launch(self, request: LaunchRequest) -> dict[str, Any]:
        """Start an attempt; return its JSON-serializable handle."""

    @abstractmethod
    def poll(self, handle: dict[str, Any]) -> PollResult:
        """Non-blocking look at an attempt (it also enforces the attempt's timeout)."""

    @abstractmethod
    def kill(self, handle: dict[str, Any], reason: str = "killed") -> None:
        """Stop an attempt (SIGTERM, then SIGKILL after a grace period) and free its resources.

        Idempotent. A later :meth:`poll` returns FAILED with ``reason`` - unless the attempt had
        already finished on its own, in which case poll reports its real outcome.
        """

    @abstractmethod
    def reattach(self, handle: dict[str, Any]) -> bool:
        """After a flow restart: True if the attempt still runs (its resources are re-claimed).

        False if it is gone; :meth:`poll` then tells whether it finished or vanished.
        """

    @abstractmethod
    def wait_any(self, handles: Sequence[dict[str, Any]], timeout_s: float) -> None:
        """Block until one of the attempts may have changed, or ``timeout_s`` passed."""

    @abstractmethod
    def free_slots(self, gpus_per_trial: int) -> int | None:
        """How many more attempts can start now; None means no limit from this launcher."""

    def close(self) -> None:
        """Release what the launcher holds (a Dask cluster); running trials are left alone."""

    @abstractmethod
    def log_path(self, handle: dict[str, Any]) -> Path | None:
        """The attempt's combined stdout/stderr log, if it has one."""
