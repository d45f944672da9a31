"""The trial flow: one trial attempt as a Prefect flow run, for trials that run on a work pool.

The HPO flow starts it through a deployment (``run_deployment``, see
:mod:`prefect_hpo.launchers.work_pool`), so a trial runs wherever the deployment's work pool puts
it: a process on a worker's machine, a Docker container, a Kubernetes pod with GPUs. Inside, the
trial's command runs exactly as the local launcher runs it (its own process group, the report
protocol, a timeout), and every report goes to the trial's MLflow run, created by the HPO flow
and named in ``MLFLOW_RUN_ID``: MLflow is where the HPO flow reads the learning curve back, so a
trial needs no path back to the flow's machine other than the tracking server.

With ``concurrency_limit`` the attempt holds ``gpus`` slots of that Prefect global concurrency
limit while its command runs: experiments that share a limit of N never run more than N GPUs of
trials together, whatever their own ``max_parallel``; a waiting trial asks for its slots again every
``slot_retry_s`` at most (see :mod:`prefect_hpo.launchers.gpu_quota`).

Start-up time is the price of a flow run per trial, so nothing slow stands before the command:
MLflow is imported and connected in a thread beside it.

The flow run ends COMPLETED when the command exits 0, FAILED with the reason otherwise; a
cancelled flow run (a stopping policy, or a user in the UI) kills the command's process group on
its way out.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from prefect_hpo.launchers.remote_attempt import run_attempt

__all__ = ["TRIAL_FLOW_NAME", "trial_flow"]

TRIAL_FLOW_NAME = "prefect-hpo-trial"


@flow(name=TRIAL_FLOW_NAME, log_prints=False, persist_result=False)
def trial_flow(
    experiment: str,
    index: int,
    attempt: int,
    command: str,
    params: dict[str, Any],
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout_s: float | None = None,
    gpus: int = 0,
    concurrency_limit: str | None = None,
    mlflow_experiment: str | None = None,
    slot_retry_s: float = 2.0,
) -> dict[str, Any]:
    """Run one attempt of trial ``index``; returns its exit code and how many reports it made."""
    return run_attempt(
        experiment, index, attempt, command, params, env=env, cwd=cwd, timeout_s=timeout_s, gpus=gpus,
        concurrency_limit=concurrency_limit, mlflow_experiment=mlflow_experiment, slot_retry_s=slot_retry_s,
    )
