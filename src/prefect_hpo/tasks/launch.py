"""The ``launch_trial`` task: open the trial's MLflow run and start its process."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_hpo.errors import StorageError
from prefect_hpo.launchers.base import LaunchRequest
from prefect_hpo.optim.trials import TrialStatus
from prefect_hpo.spec import IN_PROCESS, TrialSpec
from prefect_hpo.tasks.runtime import HPORuntime

__all__ = ["build_command", "launch_trial", "trial_params"]

logger = logging.getLogger(__name__)
HANDLE_FILE = "handle.json"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def build_command(trial_spec: TrialSpec, params: dict[str, Any]) -> str:
    """The shell line for one trial.

    Only ``{name}`` of a parameter is replaced (shell-quoted), so ``${HOME}`` or an awk program's
    braces pass through untouched; a callable runs through ``prefect_hpo.launchers.run_callable``
    in its own process, so it can be timed out and killed like any command.
    """
    if trial_spec.in_process:
        return f"{IN_PROCESS}{getattr(trial_spec.callable, '__qualname__', 'callable')}"
    if trial_spec.callable is not None:
        assert isinstance(trial_spec.callable, str)
        return shlex.join([sys.executable, "-m", "prefect_hpo.launchers.run_callable", trial_spec.callable])
    assert trial_spec.command is not None
    return _PLACEHOLDER.sub(
        lambda m: shlex.quote(str(params[m.group(1)])) if m.group(1) in params else m.group(0), trial_spec.command
    )


def _path_with_this_python() -> str:
    """PATH with this interpreter's folder first, so ``python`` in a command is the flow's own
    (the virtualenv that has torch and prefect_hpo), as if the environment were activated."""
    here = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    return path if path.split(os.pathsep)[0] == here else os.pathsep.join([here, path])


def trial_params(runtime: HPORuntime, index: int) -> dict[str, Any]:
    """The trial's parameters plus, when the spec names one, its resource (``stopping.resource``):
    the step budget the stopping policy gives it, e.g. ``epochs=27`` for ASHA with max_steps 27."""
    params = dict(runtime.experiment.trial(index).params)
    resource = runtime.spec.stopping.resource
    if resource is not None:
        params[resource] = runtime.policy.resource_for(index)
    return params


@task(name="launch_trial", task_run_name="launch-trial-{index}", cache_policy=NO_CACHE, persist_result=False)
def launch_trial(runtime: HPORuntime, index: int) -> dict[str, Any] | None:
    """Start the next attempt of trial ``index``; returns its handle, or None if it could not start.

    The MLflow child run is created first because its id travels into the trial's environment
    (``MLFLOW_RUN_ID``); on resume an existing run for this trial is reused, never duplicated.
    A trial that cannot even start (missing cwd, exec failure) is recorded failed with the reason.
    """
    exp, spec = runtime.experiment, runtime.spec
    trial = exp.trial(index)
    attempt = int(trial.metadata.get("attempt", 0)) + 1
    run_id = trial.metadata.get("run_id")
    try:
        if run_id is None:
            run_id = runtime.tracker.start_trial_run(
                runtime.state.parent_run_id, index, trial.params, trial.suggester,
                attempt=attempt, search_existing=runtime.resuming,
            )
        elif attempt > 1:
            runtime.tracker.mark_trial_status(run_id, "running", attempt=attempt)
    except StorageError as exc:  # tracking is a view; the checkpoint stays the truth
        logger.warning("trial %d: MLflow run not opened: %s", index, exc)
    env = {
        "PATH": _path_with_this_python(),
        **spec.trial.env,
        "PREFECT_HPO_OBJECTIVES": json.dumps(list(exp.objectives)),
        "MLFLOW_TRACKING_URI": runtime.tracker.tracking_uri,
        "MLFLOW_EXPERIMENT_ID": runtime.tracker.experiment_id,
    }
    if run_id:
        env["MLFLOW_RUN_ID"] = run_id
    params = trial_params(runtime, index)
    request = LaunchRequest(
        experiment=spec.name,
        index=index,
        attempt=attempt,
        command=build_command(spec.trial, params),
        params=params,
        env=env,
        workdir=runtime.attempt_dir(index, attempt),
        cwd=Path(spec.trial.cwd) if spec.trial.cwd else None,
        timeout_s=spec.trial.timeout_s,
        gpus_per_trial=spec.trial.gpus_per_trial,
    )
    trial.metadata.update({"attempt": attempt, "run_id": run_id, "history": [], "handle": None})
    if trial.status is TrialStatus.PENDING:
        exp.mark_running(index)
    try:
        handle = runtime.launcher.launch(request)
    except OSError as exc:
        reason = f"could not start: {exc}"
        trial.metadata["attempts"] = [*trial.metadata.get("attempts", []), {"attempt": attempt, "reason": reason}]
        exp.tell(index, failed=reason)
        if run_id:
            try:
                runtime.tracker.finish_trial_run(run_id, status="failed", failure_reason=reason, attempt=attempt)
            except StorageError as track_exc:
                logger.warning("trial %d: MLflow run not closed: %s", index, track_exc)
        return None
    trial.metadata["handle"] = handle
    # the checkpoint comes after this task; a flow killed in between finds the process here
    request.workdir.mkdir(parents=True, exist_ok=True)  # a remote launcher makes no local folder
    (request.workdir / HANDLE_FILE).write_text(json.dumps(handle))
    return handle
