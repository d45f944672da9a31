"""What one trial attempt runs where a remote launcher puts it: a work pool's flow run, a Dask task.

The HPO flow's launchers (:mod:`~prefect_hpo.launchers.work_pool`, :mod:`~prefect_hpo.launchers.dask`)
build the attempt's parameters here and the attempt itself runs :func:`run_attempt` on the far
side: the trial's command exactly as the local launcher runs it (its own process group, the report
protocol, a timeout), every report logged to the trial's MLflow run (created by the HPO flow and
named in ``MLFLOW_RUN_ID``), where the HPO flow reads the learning curve back; a trial needs no
path back to the flow's machine other than the tracking server.

With ``concurrency_limit`` the attempt holds ``gpus`` slots of that Prefect global concurrency
limit while its command runs (see :mod:`prefect_hpo.launchers.gpu_quota`). Start-up time is the
price of a remote attempt, so nothing slow stands before the command: MLflow is imported and
connected in a thread beside it.

``python`` in a command means the interpreter that runs this attempt (the worker's, which has
prefect-hpo, as it must to run the attempt at all): its folder comes first on the trial's
``PATH``, the same rule as for local trials, whose ``python`` is the flow's interpreter. A
worker's own ``PATH`` may hold a system Python without prefect-hpo or the trial's packages.
"""

from __future__ import annotations

import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect_hpo.errors import StorageError, TrialError
from prefect_hpo.launchers.base import LaunchRequest, PollResult, TrialState
from prefect_hpo.launchers.gpu_quota import hold_gpu_slots
from prefect_hpo.launchers.interpreter import path_with_interpreter
from prefect_hpo.launchers.local import LocalProcessLauncher

if TYPE_CHECKING:
    from prefect_hpo.storage.tracking import MlflowTracker

__all__ = ["REPORT_INTERVAL_S", "attempt_parameters", "run_attempt"]

logger = logging.getLogger(__name__)

#: How often the flow looks at the command's output; a report reaches MLflow within this.
REPORT_INTERVAL_S = 0.5
#: Environment variables that describe the HPO flow's own machine and must not travel to a trial
#: that runs elsewhere: PATH points at the flow's virtualenv.
_LOCAL_ONLY_ENV = ("PATH",)


def attempt_parameters(
    request: LaunchRequest, *, mlflow_experiment: str, concurrency_limit: str | None, slot_retry_s: float
) -> dict[str, Any]:
    """The arguments of :func:`run_attempt` (as the trial flow's or the Dask task's parameters)
    for one attempt that a remote launcher starts."""
    return {
        "experiment": request.experiment,
        "index": request.index,
        "attempt": request.attempt,
        "command": request.command,
        "params": request.params,
        "env": {k: v for k, v in request.env.items() if k not in _LOCAL_ONLY_ENV},
        "cwd": str(request.cwd) if request.cwd else None,
        "timeout_s": request.timeout_s,
        "gpus": request.gpus_per_trial,
        "concurrency_limit": concurrency_limit,
        "slot_retry_s": slot_retry_s,
        "mlflow_experiment": mlflow_experiment,
    }


def run_attempt(
    experiment: str,
    index: int,
    attempt: int,
    command: str,
    params: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout_s: float | None = None,
    gpus: int = 0,
    concurrency_limit: str | None = None,
    mlflow_experiment: str | None = None,
    watch_stop: bool = False,
    slot_retry_s: float = 2.0,
) -> dict[str, Any]:
    """The body of a remote trial attempt, wherever it runs (a work-pool flow run, a Dask task).

    Raises :class:`~prefect_hpo.errors.TrialError` with the reason when the command fails. With
    ``watch_stop`` it also ends the command when the HPO flow asks for it through the trial's
    MLflow run (a task on a Dask worker cannot be cancelled from outside).
    """
    env = dict(env or {})
    env["PATH"] = path_with_interpreter(env.get("PATH", os.environ.get("PATH", "")))
    # MLflow takes seconds to import and connect: that runs beside the quota wait and the
    # command's start, and is only waited for when the first report is to be logged
    connecting = ThreadPoolExecutor(1, thread_name_prefix="prefect-hpo-mlflow")
    tracker_ready = connecting.submit(_tracker, env, mlflow_experiment or experiment)
    connecting.shutdown(wait=False)
    quota = hold_gpu_slots(concurrency_limit, gpus, retry_s=slot_retry_s) if concurrency_limit and gpus > 0 else nullcontext()
    with quota, tempfile.TemporaryDirectory(prefix=f"prefect-hpo-{index}-{attempt}-") as scratch:
        # The infrastructure gives a GPU trial its devices (a pod sees exactly the GPUs it
        # requested), so nothing is partitioned here and ``gpus`` only sizes the quota above;
        # a CPU trial (gpus=0) gets none, as on the local launcher.
        launcher = LocalProcessLauncher(inherit_gpus=gpus > 0)
        request = LaunchRequest(
            experiment=experiment, index=index, attempt=attempt, command=command, params=params,
            env=env, workdir=Path(scratch), cwd=Path(cwd) if cwd else None, timeout_s=timeout_s, gpus_per_trial=0,
        )
        handle = launcher.launch(request)
        reported = 0
        tracker: MlflowTracker | None = None
        run_id = ""

        def poll_and_log() -> PollResult:
            nonlocal reported
            result = launcher.poll(handle)
            if result.reports and tracker is not None:
                tracker.log_reports(run_id, result.reports)
            reported += len(result.reports)
            return result

        try:
            tracker, run_id = tracker_ready.result()
            while (result := poll_and_log()).state is TrialState.RUNNING:
                stop = tracker.stop_requested(run_id) if watch_stop and tracker is not None else None
                if stop:
                    launcher.kill(handle, reason=stop)
                    result = poll_and_log()
                    break
                launcher.wait_any([handle], REPORT_INTERVAL_S)
        finally:
            # a cancelled flow run (Prefect raises in this thread on SIGTERM) or any error here
            # must not leave the trial's processes behind
            launcher.kill(handle, reason="the trial flow run ended")
            log = Path(scratch) / "output.log"
            if tracker is not None and log.is_file():
                try:
                    tracker.upload_log(run_id, log, attempt)
                except StorageError as exc:
                    logger.warning("trial %d: log not uploaded to MLflow: %s", index, exc)
    if result.state is TrialState.FAILED:
        raise TrialError(result.reason or "failed")
    return {"exit_code": result.exit_code, "reports": reported}


def _tracker(env: dict[str, str], experiment_name: str) -> tuple[MlflowTracker | None, str]:
    """The trial's MLflow run to log to, or ``(None, "")`` when there is none to reach."""
    uri = env.get("MLFLOW_TRACKING_URI") or os.environ.get("MLFLOW_TRACKING_URI")
    run_id = env.get("MLFLOW_RUN_ID")
    if not uri or not run_id:
        logger.warning("no MLflow run for this trial: its reports reach nobody but its log")
        return None, ""
    from prefect_hpo.storage.tracking import MlflowTracker  # imported here: run_attempt calls this in a thread

    try:
        return MlflowTracker(uri, experiment_name), run_id
    except StorageError as exc:
        logger.warning("MLflow unreachable (%s); the trial runs, its reports are only in its log", exc)
        return None, ""
