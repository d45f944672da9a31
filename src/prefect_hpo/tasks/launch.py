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

from prefect_hpo.errors import SpecError, StorageError
from prefect_hpo.launchers.base import LaunchRequest
from prefect_hpo.launchers.interpreter import path_with_interpreter
from prefect_hpo.optim.trials import TrialStatus
from prefect_hpo.spec import IN_PROCESS, TrialSpec
from prefect_hpo.storage.tracking import is_pending_run
from prefect_hpo.storage.tracking_http import trial_env as tracking_trial_env
from prefect_hpo.tasks.checkpoint import write_checkpoint
from prefect_hpo.tasks.runtime import HPORuntime, current_runtime
from prefect_hpo.storage.trial_run import run_of

__all__ = ["build_command", "launch_trial", "trial_params"]

logger = logging.getLogger(__name__)
HANDLE_FILE = "handle.json"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_VAR_PREFIX = "_hpo_"  # the shell variable that holds parameter NAME is _hpo_NAME


def build_command(trial_spec: TrialSpec, params: dict[str, Any]) -> str:
    """The shell line for one trial; a parameter's value is never part of the shell's code.

    Each ``{name}`` of a parameter becomes a reference to a shell variable that the line's first
    line assigns (its value shell-quoted once, in a context of our own): ``--lr {lr}`` runs as
    ``--lr "${_hpo_lr}"``. The reference is written for the quoting the template put around the
    placeholder (none, ``"..."`` or ``'...'``), so the trial gets the exact value as one argument
    whether or not the template quotes it, and a value such as ``$(cmd)``, a backtick or
    ``'; cmd; '`` is data: splicing quoted text into a template that quotes it again is how such
    values used to run as commands. Shell syntax of the template itself (pipes, ``&&``,
    ``$VAR``, ``VAR=x cmd``) keeps working, and other braces (``${HOME}``, an awk program) pass
    through untouched. A callable runs through ``prefect_hpo.launchers.run_callable`` in its own
    process, so it can be timed out and killed like any command.
    """
    if trial_spec.in_process:
        return f"{IN_PROCESS}{getattr(trial_spec.callable, '__qualname__', 'callable')}"
    if trial_spec.callable is not None:
        assert isinstance(trial_spec.callable, str)
        return shlex.join([sys.executable, "-m", "prefect_hpo.launchers.run_callable", trial_spec.callable])
    assert trial_spec.command is not None
    used: list[str] = []
    body = _substitute(trial_spec.command, params, used)
    if not used:
        return body
    assignments = " ".join(f"{_VAR_PREFIX}{name}={shlex.quote(str(params[name]))}" for name in used)
    return f"{assignments}\n{body}"


def _substitute(template: str, params: dict[str, Any], used: list[str]) -> str:
    """``template`` with each known ``{name}`` replaced by a variable reference that suits its
    quoting context; the names replaced are appended to ``used`` (once each, in order).

    A small lexer of POSIX quoting: outside quotes and inside double quotes a backslash escapes
    the next character; inside single quotes nothing is special but the closing quote. Where it
    misjudges a context (a placeholder inside ``$(...)`` inside double quotes, a here-document),
    the value can come out with stray quote characters, but it is never parsed as shell code:
    only the variable's name is in the text.
    """
    out: list[str] = []
    quote: str | None = None  # None, "'" or '"'
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c == "{":
            m = _PLACEHOLDER.match(template, i)
            if m is not None and m.group(1) in params:
                name = m.group(1)
                if name not in used:
                    used.append(name)
                ref = "${" + _VAR_PREFIX + name + "}"
                out.append(ref if quote == '"' else f"'\"{ref}\"'" if quote == "'" else f'"{ref}"')
                i = m.end()
                continue
        elif quote == "'":
            if c == "'":
                quote = None
        elif c == "\\":
            out.append(template[i : i + 2])
            i += 2
            continue
        elif c == '"':
            quote = None if quote == '"' else '"'
        elif c == "'":
            quote = "'"
        out.append(c)
        i += 1
    return "".join(out)


def trial_params(runtime: HPORuntime, index: int) -> dict[str, Any]:
    """The trial's parameters plus, when the spec names one, its resource (``stopping.resource``):
    the step budget the stopping policy gives it, e.g. ``epochs=27`` for ASHA with max_steps 27."""
    params = dict(runtime.experiment.trial(index).params)
    resource = runtime.spec.stopping.resource
    if resource is not None:
        params[resource] = runtime.policy.resource_for(index)
    return params


@task(name="launch_trial", task_run_name="launch-trial-{index:04d}", cache_policy=NO_CACHE, persist_result=False)
def launch_trial(index: int) -> dict[str, Any] | None:
    """Start the next attempt of trial ``index`` and write the checkpoint that records it;
    returns its handle, or None if it could not start.

    The MLflow child run is created first because its id travels into the trial's environment
    (``MLFLOW_RUN_ID``); on resume an existing run for this trial is reused, never duplicated.
    A trial that cannot even start (a missing cwd, a NUL byte in a value, an exec failure) is
    recorded failed with the reason; a :class:`SpecError` (about every trial) is raised.
    """
    runtime = current_runtime()
    exp, spec = runtime.experiment, runtime.spec
    trial = exp.trial(index)
    run = run_of(trial)
    attempt = run.next_attempt
    run_id = runtime.tracker.resolve(run.run_id)  # a pending run may exist by now
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
        "PATH": path_with_interpreter(os.environ.get("PATH", "")),  # `python` is the flow's interpreter
        **tracking_trial_env(),  # MLflow's own HTTP retries for the trial, not the flow's bounded ones
        **spec.trial.env,
        "PREFECT_HPO_OBJECTIVES": json.dumps(list(exp.objectives)),
        "MLFLOW_TRACKING_URI": runtime.tracker.tracking_uri,
        "MLFLOW_EXPERIMENT_ID": runtime.tracker.experiment_id,
    }
    if run_id and not is_pending_run(run_id):  # pending: MLflow is down, the run comes later
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
    run.start_attempt(attempt, run_id)
    if trial.status is TrialStatus.PENDING:
        exp.mark_running(index)
    try:
        handle = runtime.launcher.launch(request)
    except SpecError:  # about every trial (checked before any is marked running): refuse the run
        raise
    except (OSError, ValueError) as exc:
        # About this trial (a cwd that vanished, a NUL byte in a value, a TrialError): record it
        # failed with the reason, so the experiment goes on and a resume does not hit it again.
        reason = f"could not start: {exc}"
        logger.warning("trial %d %s", index, reason)
        run.record_failure(attempt, reason)
        exp.tell(index, failed=reason)
        if run_id:
            try:
                runtime.tracker.finish_trial_run(run_id, status="failed", failure_reason=reason, attempt=attempt)
            except StorageError as track_exc:
                logger.warning("trial %d: MLflow run not closed: %s", index, track_exc)
        write_checkpoint(runtime)
        return None
    run.handle = handle
    # a flow killed before the checkpoint below is written finds the process here
    request.workdir.mkdir(parents=True, exist_ok=True)  # a remote launcher makes no local folder
    (request.workdir / HANDLE_FILE).write_text(json.dumps(handle))
    write_checkpoint(runtime)
    return handle
