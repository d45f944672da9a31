"""Trials as Prefect tasks on Dask workers, through prefect-dask's ``DaskTaskRunner``.

For teams whose compute is a Dask cluster: each attempt is the task ``run_trial`` submitted to a
``DaskTaskRunner`` (a local cluster, or the scheduler at ``dask.address``), so it shows up as a
task run of the HPO flow in the Prefect UI and runs on whichever Dask worker the scheduler picks.
The task runs the trial's command like a local trial and logs every report to the trial's MLflow
run, where the flow reads the learning curve back (as on a work pool).

A Dask task cannot be cancelled once it runs, so a stop is cooperative: the flow sets a tag on the
trial's MLflow run and the task, which looks every half second, kills its command. Futures live
in the flow's process: after a flow restart the tasks of the old flow are unknown, so their
trials count as vanished and run again (with a local cluster, the cluster went down with the
flow anyway).

GPU trials ask the scheduler for ``gpus_per_trial`` units of the worker resource
``dask.gpu_resource`` and keep the ``CUDA_VISIBLE_DEVICES`` of the worker they land on (one worker
per device, as dask-cuda starts them); ``concurrency_limit`` adds the Prefect quota shared with
other experiments. Ray would be the same pattern around prefect-ray's ``RayTaskRunner``; it is not
built, nor a dependency.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from dask import annotate as dask_annotate
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from prefect_hpo.errors import SpecError, StorageError, TrialError
from prefect_hpo.launchers.remote_attempt import attempt_parameters, run_attempt
from prefect_hpo.launchers.base import Launcher, LaunchRequest, PollResult, TrialState
from prefect_hpo.launchers.mlflow_curves import MlflowCurveReader
from prefect_hpo.spec import DaskSpec
from prefect_hpo.storage.tracking import MlflowTracker
from prefect_hpo.tenancy import tenant_limit

__all__ = ["DaskLauncher", "run_trial"]

logger = logging.getLogger(__name__)

KIND = "dask"


def _trial_task() -> Task[..., dict[str, Any]]:
    """The ``run_trial`` task, its function defined in here on purpose.

    prefect-dask submits a closure decorated with ``functools.wraps(task)``, which gives it the
    task function's module and qualified name; for a module-level function pickle then resolves
    that name, finds a different object and fails. A function local to this factory has a
    ``<locals>`` name, so Dask's cloudpickle ships it by value (its globals still by reference).
    """

    def run_trial_attempt(
        experiment: str,
        index: int,
        attempt: int,
        command: str,
        params: dict[str, Any],
        env: dict[str, str],
        cwd: str | None,
        timeout_s: float | None,
        mlflow_experiment: str,
        gpus: int = 0,
        concurrency_limit: str | None = None,
        slot_retry_s: float = 2.0,
    ) -> dict[str, Any]:
        """One trial attempt on a Dask worker; fails with the trial's reason."""
        return run_attempt(
            experiment, index, attempt, command, params, env=env, cwd=cwd, timeout_s=timeout_s, gpus=gpus,
            concurrency_limit=concurrency_limit, mlflow_experiment=mlflow_experiment, watch_stop=True,
            slot_retry_s=slot_retry_s,
        )

    return task(name="run_trial", task_run_name="trial-{index}-attempt-{attempt}", cache_policy=NO_CACHE,
                persist_result=False)(run_trial_attempt)


run_trial = _trial_task()


def _outside_task_run(submit: Callable[[], Any]) -> Any:
    """Submit as a task of the flow run, not of the ``launch_trial`` task that calls this:
    prefect-dask ships the calling task run's context to the worker, and that task's
    parameters hold the flow's runtime (locks, clients), which cannot be pickled."""
    ctx = contextvars.copy_context()

    def call() -> Any:
        TaskRunContext.__var__.set(None)  # type: ignore[arg-type]
        return submit()

    return ctx.run(call)


def flow_api_url() -> str:
    """The Prefect API this process talks to: the configured one, else the temporary server that
    Prefect started for it (a client names its URL)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        return str(url)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url)


class DaskLauncher(Launcher):
    """Submits attempts as ``run_trial`` tasks to a DaskTaskRunner; see the module docstring."""

    kind = KIND

    def __init__(
        self, dask: DaskSpec, tracker: MlflowTracker, metric_names: Sequence[str] = (), *, tenant: str | None = None
    ) -> None:
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise SpecError("dask: needs prefect-dask; `pip install 'prefect-hpo[dask]'`") from None
        if dask.address:
            self.runner = DaskTaskRunner(address=dask.address)
            api = flow_api_url()
            if "127.0.0.1" in api or "localhost" in api:
                logger.warning(
                    "trial.dask.address: this flow's Prefect API is %s, which workers of a remote Dask cluster "
                    "cannot reach; start them with PREFECT_API_URL set to a server they can reach (a worker "
                    "without one boots a temporary server of its own for every task)", api,
                )
        else:
            cluster = {"n_workers": dask.n_workers, "threads_per_worker": dask.threads_per_worker, "processes": True}
            if dask.worker_resources:
                cluster["resources"] = dict(dask.worker_resources)
            # Each worker runs its trials as Prefect task runs, so it needs an API; without one it
            # boots a temporary server of its own (seconds each, and a timeout under load), so the
            # workers are pointed at the flow's own API, the temporary one included.
            cluster["env"] = {"PREFECT_API_URL": flow_api_url()}
            self.runner = DaskTaskRunner(cluster_kwargs=cluster)
        self.dask = dask
        self.concurrency_limit = dask.concurrency_limit
        if tenant is not None:
            self.concurrency_limit = tenant_limit(tenant, dask.concurrency_limit, "trial.dask.concurrency_limit")
        self.kill_wait_s = dask.kill_wait_s
        self.tracker = tracker
        self.curves = MlflowCurveReader(tracker, metric_names)
        self._futures: dict[str, Any] = {}
        self._final: dict[str, PollResult] = {}
        self._gpu_checked = False
        self.runner.__enter__()  # the cluster (or the connection) lives as long as the launcher

    def close(self) -> None:
        self.runner.__exit__(None, None, None)

    def launch(self, request: LaunchRequest) -> dict[str, Any]:
        parameters = attempt_parameters(
            request, mlflow_experiment=self.tracker.experiment_name, concurrency_limit=self.concurrency_limit,
            slot_retry_s=self.dask.slot_retry_s,
        )
        resource = self.dask.gpu_resource
        # a GPU trial only lands on a worker that declared the devices (dask.annotate reaches the
        # scheduler through the submit below)
        needs = {"resources": {resource: request.gpus_per_trial}} if resource and request.gpus_per_trial > 0 else {}
        if needs and not self._gpu_checked:
            self._gpu_checked = True
            self._warn_if_no_worker_has(resource, request.gpus_per_trial)  # type: ignore[arg-type]
        try:
            with dask_annotate(**needs):
                future = _outside_task_run(lambda: self.runner.submit(run_trial, parameters=parameters))
        except Exception as exc:  # noqa: BLE001 - e.g. the scheduler went away: this attempt could not start
            raise TrialError(f"the Dask cluster did not take the trial: {type(exc).__name__}: {exc}") from exc
        key = str(future.task_run_id)
        self._futures[key] = future
        return {"kind": KIND, "task_run_id": key, "run_id": request.env.get("MLFLOW_RUN_ID"), "index": request.index,
                "attempt": request.attempt, "started_at": time.time()}

    def _warn_if_no_worker_has(self, resource: str, amount: int) -> None:
        """A task that asks for a resource no worker has waits forever without a word from
        Dask; say so once (workers of an adaptive cluster may still join, so no error)."""
        try:
            workers = self.runner.client.scheduler_info().get("workers", {}).values()
            best = max((w.get("resources", {}).get(resource, 0) for w in workers), default=0)
        except Exception as exc:  # noqa: BLE001 - a check, not a requirement
            logger.debug("could not read the Dask workers' resources: %s", exc)
            return
        if best < amount:
            logger.warning(
                "no Dask worker declares %d %r now (most: %s): GPU trials wait until one joins; start workers "
                "with `--resources %s=%d` or set trial.dask.gpu_resource: null", amount, resource, best, resource, amount,
            )

    def poll(self, handle: dict[str, Any]) -> PollResult:
        key = handle["task_run_id"]
        done = self._final.get(key)
        if done is not None:
            return PollResult(done.state, [], done.reason, done.exit_code, tracked=True)
        future = self._futures.get(key)
        finished = future is None or future.wrapped_future.done()
        reports = self.curves.new_reports(key, handle)  # after the state: a final poll sees every report
        killed = handle.get("killed")
        if future is None:
            result = PollResult(TrialState.FAILED, reports, "the Dask task vanished (its flow stopped)", None, tracked=True)
        elif killed and finished:
            result = PollResult(TrialState.FAILED, reports, killed, None, tracked=True)
        elif not finished:
            return PollResult(TrialState.RUNNING, reports, tracked=True)
        else:
            # the state the task returned, not the API's view (task states reach the API by events, later)
            try:
                state = future.wrapped_future.result()
            except Exception as exc:  # noqa: BLE001 - the worker's side failed: this trial fails, not the flow
                reason = f"the Dask worker could not run the trial: {type(exc).__name__}: {exc}"
                self._final[key] = PollResult(TrialState.FAILED, reports, reason[:2000], None, tracked=True)
                return self._final[key]
            if state.is_completed():
                result = PollResult(TrialState.SUCCEEDED, reports, None, 0, tracked=True)
            else:
                result = PollResult(TrialState.FAILED, reports, (state.message or state.type.value).strip(), None, tracked=True)
        self._final[key] = result
        return result

    def kill(self, handle: dict[str, Any], reason: str = "killed") -> None:
        key = handle["task_run_id"]
        future = self._futures.get(key)
        if future is None or key in self._final or future.wrapped_future.done():
            return
        handle["killed"] = reason
        if handle.get("run_id"):
            try:
                self.tracker.request_stop(handle["run_id"], reason)
            except StorageError as exc:
                logger.warning("trial %s: stop request not written: %s", handle.get("index"), exc)
        deadline = time.monotonic() + self.kill_wait_s
        while time.monotonic() < deadline and not future.wrapped_future.done():
            time.sleep(0.2)

    def reattach(self, handle: dict[str, Any]) -> bool:
        future = self._futures.get(handle["task_run_id"])
        return future is not None and not future.wrapped_future.done()

    def wait_any(self, handles: Sequence[dict[str, Any]], timeout_s: float) -> None:
        futures = [self._futures[h["task_run_id"]] for h in handles if h.get("task_run_id") in self._futures]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not any(f.wrapped_future.done() for f in futures):
            time.sleep(min(0.1, timeout_s))

    def free_slots(self, gpus_per_trial: int) -> int | None:
        return None

    def log_path(self, handle: dict[str, Any]):  # type: ignore[no-untyped-def]
        return None
