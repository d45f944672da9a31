"""Trials as flow runs of a deployment on a Prefect work pool: the path from one machine to many.

Each attempt is ``run_deployment(..., timeout=0)`` of the trial deployment (the package's
:func:`~prefect_hpo.flows.trial.trial_flow`), with the trial's command, parameters and
environment as flow parameters and ``gpus_per_trial`` as a job variable. The worker of the pool
starts it wherever the pool says. Nothing flows back to the HPO flow's machine directly:

* the learning curve is read from the trial's MLflow run, where the trial flow logs every report
  (so :class:`~prefect_hpo.launchers.base.PollResult` says ``tracked``: the flow must not log the
  same reports a second time);
* whether it ended, and why, is the flow run's state in the Prefect API;
* stopping it is cancelling the flow run (the worker tears the infrastructure down; the trial flow
  kills its command's process group on the way out).

The handle holds the flow run id, so a resumed HPO flow re-attaches to trials that are still
running instead of launching them again. Launches carry an idempotency key per attempt, so an
HPO flow killed between starting a flow run and checkpointing its id gets the same flow run back
on resume, not a second one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelling

from prefect_hpo.launchers.remote_attempt import attempt_parameters
from prefect_hpo.launchers.base import Launcher, LaunchRequest, PollResult, TrialState
from prefect_hpo.launchers.mlflow_curves import MlflowCurveReader
from prefect_hpo.spec import WorkPoolSpec
from prefect_hpo.storage.tracking import MlflowTracker
from prefect_hpo.tenancy import check_work_pool_names

__all__ = ["WorkPoolLauncher", "job_variables_for"]

logger = logging.getLogger(__name__)

KIND = "work_pool"
_FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


def job_variables_for(pool: WorkPoolSpec, gpus_per_trial: int) -> dict[str, Any]:
    """The job variables of one trial's flow run: the spec's, plus its GPU count under
    ``pool.gpu_variable`` (only for GPU trials, so a CPU trial's manifest requests no GPU)."""
    variables = dict(pool.job_variables)
    if pool.gpu_variable and gpus_per_trial > 0:
        variables[pool.gpu_variable] = gpus_per_trial
    return variables


class WorkPoolLauncher(Launcher):
    """Starts attempts as flow runs of ``pool.deployment``; see the module docstring."""

    kind = KIND

    def __init__(
        self, pool: WorkPoolSpec, tracker: MlflowTracker, metric_names: Sequence[str] = (), *, tenant: str | None = None
    ) -> None:
        self.pool = pool
        self.work_queue = pool.work_queue
        self.concurrency_limit = pool.concurrency_limit
        if tenant is not None:  # the tenant's queue, and its GPU limit unless another of its own is named
            self.work_queue, self.concurrency_limit = check_work_pool_names(tenant, pool.work_queue, pool.concurrency_limit)
        self.tracker = tracker
        self.curves = MlflowCurveReader(tracker, metric_names)
        self._final: dict[str, PollResult] = {}

    # -- the Launcher interface ---------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> dict[str, Any]:
        job_variables = job_variables_for(self.pool, request.gpus_per_trial)
        parameters = attempt_parameters(
            request, mlflow_experiment=self.tracker.experiment_name, concurrency_limit=self.concurrency_limit,
            slot_retry_s=self.pool.slot_retry_s,
        )
        run_id = request.env.get("MLFLOW_RUN_ID")
        try:
            # On a Prefect server backed by SQLite this call often meets a 503 (the database is
            # locked by another writer) and the client waits its fixed 2 s before asking again:
            # most of a launch's time there (benchmarks/README.md); Postgres has no such wait.
            flow_run: FlowRun = run_deployment(  # type: ignore[assignment]
                name=self.pool.deployment,
                parameters=parameters,
                job_variables=job_variables or None,
                work_queue_name=self.work_queue,
                timeout=0,
                as_subflow=False,
                flow_run_name=f"{request.experiment}-trial-{request.index}-attempt-{request.attempt}",
                # the same key on a retried request or a resumed flow: never a second flow run
                idempotency_key=f"prefect-hpo:{request.experiment}:{request.index}:{request.attempt}:{run_id or ''}",
                tags=["prefect-hpo", f"prefect-hpo:{request.experiment}"],
            )
        except Exception as exc:  # noqa: BLE001 - an unknown deployment, a refused job variable, ...
            raise OSError(f"deployment {self.pool.deployment!r}: {type(exc).__name__}: {exc}") from exc
        return {
            "kind": KIND,
            "flow_run_id": str(flow_run.id),
            "deployment": self.pool.deployment,
            "run_id": run_id,
            "index": request.index,
            "attempt": request.attempt,
            "started_at": time.time(),
            "timeout_s": request.timeout_s,
        }

    def poll(self, handle: dict[str, Any]) -> PollResult:
        key = handle["flow_run_id"]
        done = self._final.get(key)
        if done is not None:
            return PollResult(done.state, [], done.reason, done.exit_code, tracked=True)
        flow_run = self._read(key)
        state = flow_run.state
        final = state is not None and state.type in _FINAL
        # read the curve after the state, so a final state's poll sees every report
        reports = self.curves.new_reports(key, handle)
        killed = handle.get("killed")
        if killed:
            result = PollResult(TrialState.FAILED, reports, killed, None, tracked=True)
        elif not final:
            return PollResult(TrialState.RUNNING, reports, tracked=True)
        elif state is not None and state.type is StateType.COMPLETED:
            result = PollResult(TrialState.SUCCEEDED, reports, None, 0, tracked=True)
        else:
            kind = state.type.value.lower() if state is not None else "unknown"
            message = (state.message or "").strip() if state is not None else ""
            result = PollResult(TrialState.FAILED, reports, f"flow run {kind}: {message or 'no message'}", None, tracked=True)
        if final or killed:
            self._final[key] = result
        return result

    def kill(self, handle: dict[str, Any], reason: str = "killed") -> None:
        key = handle["flow_run_id"]
        if key in self._final or handle.get("killed"):
            return
        flow_run = self._read(key)
        if flow_run.state is not None and flow_run.state.type in _FINAL:
            return  # it ended on its own; poll reports the real outcome
        handle["killed"] = reason
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(UUID(key), Cancelling(message=reason), force=True)
        deadline = time.monotonic() + self.pool.kill_wait_s
        while time.monotonic() < deadline:
            state = self._read(key).state
            if state is not None and state.type in _FINAL:
                return
            time.sleep(0.5)
        logger.warning("trial %s: flow run %s not cancelled after %.0f s; its worker may be gone",
                       handle.get("index"), key, self.pool.kill_wait_s)

    def reattach(self, handle: dict[str, Any]) -> bool:
        state = self._read(handle["flow_run_id"]).state
        return state is None or state.type not in _FINAL

    def wait_any(self, handles: Sequence[dict[str, Any]], timeout_s: float) -> None:
        # The API has no cheap "tell me when one of these changes" for flow runs and metrics;
        # the poll interval bounds the delay.
        time.sleep(timeout_s)

    def free_slots(self, gpus_per_trial: int) -> int | None:
        return None  # the pool's capacity, and the concurrency limit, are the pool's business

    def log_path(self, handle: dict[str, Any]):  # type: ignore[no-untyped-def]
        return None  # the trial flow attaches its log to the MLflow run itself

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def _read(flow_run_id: str) -> FlowRun:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(UUID(flow_run_id))
