"""Around an HPO flow's loop: open (or resume) an experiment, and finish and close it.

Opening takes the lease, loads the state (checkpoint, else MLflow, else new), picks the
launcher and reconciles trials left by an earlier flow run; the loop itself is
:func:`prefect_hpo.flows.hpo.run_trials`, its steps :mod:`prefect_hpo.flows.loop`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect_hpo.flows.artifacts import prefect_flow_run_url
from prefect_hpo.errors import ExperimentNotFoundError, PrefectHPOError, SpecError, StorageError
from prefect_hpo.flows.pareto_plot import render_pareto_png
from prefect_hpo.flows.superseded import current_flow_run_id, mark_superseded
from prefect_hpo.launchers.base import Launcher, handle_kind
from prefect_hpo.launchers.inprocess import InProcessLauncher
from prefect_hpo.launchers.local import LocalProcessLauncher, check_cwd
from prefect_hpo.launchers.work_pool import WorkPoolLauncher
from prefect_hpo.optim.outcome import experiment_outcome
from prefect_hpo.optim.stopping import StoppingPolicy
from prefect_hpo.optim.trials import Trial, TrialStatus
from prefect_hpo.spec import DEFAULT_STORAGE, IN_PROCESS, ExperimentSpec, check_runnable, load_spec
from prefect_hpo.storage.checkpoint import CheckpointStore, open_store
from prefect_hpo.storage.recovery import _search_part, rebuild_from_mlflow
from prefect_hpo.storage.state import ExperimentState
from prefect_hpo.storage.tracking import MlflowTracker
from prefect_hpo.tenancy import caller_tenant, check_owner, mlflow_experiment_name, resolve_tenant, scoped_storage
from prefect_hpo.tasks import HPORuntime
from prefect_hpo.tasks.checkpoint import write_checkpoint
from prefect_hpo.tasks.dashboard import update_dashboard
from prefect_hpo.tasks.launch import HANDLE_FILE
from prefect_hpo.tasks.report import close_tracking, repair_tracking
from prefect_hpo.storage.trial_run import run_of

__all__ = ["check_access", "open_runtime", "finish", "trials_dir_for", "close_runtime"]

logger = logging.getLogger(__name__)

#: Launcher kinds whose attempts die with the flow that started them: its threads, and Dask tasks
#: whose futures only it held ("dask": launchers.dask is only imported when used).
_DIES_WITH_FLOW = frozenset({InProcessLauncher.kind, "dask"})


def trials_dir_for(storage: str, name: str, tenant: str | None = None) -> Path:
    """Where trial folders (logs, exit status) live: beside a local checkpoint, else under
    ``$PREFECT_HPO_WORKDIR`` (default ``.prefect-hpo``): trial processes are local either way.
    ``storage`` is the tenant's own store (:func:`~prefect_hpo.tenancy.scoped_storage`)."""
    if storage.startswith("s3://"):
        root = Path(os.environ.get("PREFECT_HPO_WORKDIR", ".prefect-hpo"))
        if tenant is not None:
            root = root / "tenants" / tenant
    else:
        root = Path(storage.removeprefix("file://"))
    return root.resolve() / name / "trials"


def open_runtime(
    spec: ExperimentSpec | Mapping[str, Any] | str | Path | None,
    *,
    resume: bool = False,
    name: str | None = None,
    storage: str | None = None,
    lease_wait_s: float = 0.0,
    launcher: Launcher | None = None,
    tenant: str | None = None,
) -> HPORuntime:
    """Take the experiment's lease and load its state: the checkpoint, else MLflow, else new.

    Running a spec whose experiment already exists continues it (nothing is repeated) as long
    as the search itself (space, objectives, algorithm, seed) is unchanged; budget, trial and
    tracking settings may change between runs, which is how a budget is extended.

    ``tenant`` (else ``$PREFECT_HPO_TENANT``) is the caller's tenant: the experiment's
    checkpoint is looked for under that tenant's part of the store only, and an experiment of
    another tenant is refused (:mod:`prefect_hpo.tenancy`).
    """
    given = load_spec(spec) if spec is not None else None
    if given is not None:
        check_runnable(given)  # what would fail later, refused before a lease, database or folder exists
    caller = caller_tenant(tenant)
    owner = resolve_tenant(given.tenant if given is not None else None, caller)
    if given is not None and given.tenant != owner:
        given = given.model_copy(update={"tenant": owner})  # run by a tenant: the experiment is its
    if given is None and name is None:
        raise SpecError("give a spec, or the name of an experiment to resume")
    if given is not None and name is not None and name != given.name:
        raise SpecError(f"name {name!r} does not match the spec's name {given.name!r}")
    exp_name = given.name if given is not None else str(name)
    storage_uri = storage or (given.storage if given is not None else DEFAULT_STORAGE)
    store = open_store(scoped_storage(storage_uri, owner))
    lease = store.acquire_lease(exp_name, wait_s=lease_wait_s)
    # Renew from the start: loading state, MLflow's first migrations and reconciling trials can
    # outlast the TTL on a cold machine, and an expired lease would invite a second driver in.
    lease.start_heartbeat()
    try:
        state, resuming = _load_state(store, exp_name, given, resume, owner)
        if given is not None and given.storage != storage_uri:
            state.spec = state.spec.model_copy(update={"storage": storage_uri})
        tracker = MlflowTracker(  # background: an MLflow outage queues writes instead of stalling the loop
            state.spec.tracking_uri or state.tracking_uri, mlflow_experiment_name(exp_name, owner), background=True
        )
        launcher = launcher or _launcher_for(state.spec, tracker, state.experiment.metric_names)
        launcher.free_slots(state.spec.trial.gpus_per_trial)  # refuses impossible GPU requests before anything is written
        state.tracking_uri = tracker.tracking_uri
        state.driver_runs += 1
        previous_flow_run, state.flow_run_id = state.flow_run_id, current_flow_run_id()
        tracker.set_flow_run(state.flow_run_id, prefect_flow_run_url(state.flow_run_id))
        parent = state.parent_run_id or (tracker.find_experiment_run() if resuming else None)
        if parent is None:
            parent = tracker.start_experiment_run(state.spec.to_dict(), state.experiment.space.to_list())
        else:  # resumed: the parent now belongs to this flow run (queued, like every view write)
            tracker.tag_run(parent, tracker.flow_run_tags, "tag the experiment run with this flow run")
        state.parent_run_id = parent
        runtime = HPORuntime(
            state=state,
            store=store,
            lease=lease,
            tracker=tracker,
            launcher=launcher,
            trials_dir=trials_dir_for(scoped_storage(storage_uri, owner), exp_name, owner),
            policy=_stopping_policy(state),
            resuming=resuming,
        )
        if resuming:
            _reconcile(runtime)
            if previous_flow_run and previous_flow_run != state.flow_run_id:
                mark_superseded(previous_flow_run, state.flow_run_id, exp_name)  # we hold the lease: it is gone
            repair_tracking(runtime)  # what an earlier MLflow outage left, repaired in the background
        lease.renew()  # also proves the lease is still ours before the first write
        write_checkpoint(runtime)
        return runtime
    except BaseException:
        lease.release()
        if launcher is not None:
            launcher.close()
        raise


def check_access(
    spec: Mapping[str, Any] | None, *, name: str | None = None, storage: str | None = None, tenant: str | None = None
) -> None:
    """What ``open_runtime`` would refuse for the caller's tenant, checked without a flow run, so
    the CLI can say it in one line (a refusal inside the flow also prints Prefect's traceback)."""
    caller = caller_tenant(tenant)
    owner = resolve_tenant((spec or {}).get("tenant"), caller)
    exp_name = str((spec or {}).get("name") or name)
    store = open_store(scoped_storage(storage or (spec or {}).get("storage") or DEFAULT_STORAGE, owner))
    text = store.read(exp_name)
    if text is not None:
        check_owner(exp_name, ExperimentState.from_json(text, store.location(exp_name)).spec.tenant, owner)


def _stopping_policy(state: ExperimentState) -> StoppingPolicy:
    """The spec's policy, with the memory it had when the checkpoint was written (if unchanged)."""
    policy = state.spec.stopping.build()
    saved = state.stopping or {}
    if saved.get("policy") == policy.describe():
        policy.load_state_dict(saved.get("state") or {})
    elif saved:
        logger.warning("stopping policy changed from %s to %s: it starts with no memory of earlier rungs",
                       saved.get("policy"), policy.describe())
    return policy


def _launcher_for(spec: ExperimentSpec, tracker: MlflowTracker, metric_names: Sequence[str]) -> Launcher:
    trial = spec.trial
    if trial.work_pool is not None:
        return WorkPoolLauncher(trial.work_pool, tracker, metric_names, tenant=spec.tenant)
    if trial.dask is not None:
        from prefect_hpo.launchers.dask import DaskLauncher  # imports prefect-dask only when used

        return DaskLauncher(trial.dask, tracker, metric_names, tenant=spec.tenant)
    if trial.in_process:
        assert callable(trial.callable)
        return InProcessLauncher(trial.callable, list(spec.objectives))
    if isinstance(trial.callable, str) and trial.callable.startswith(IN_PROCESS):
        raise SpecError(
            f"trial.callable: {trial.callable.removeprefix(IN_PROCESS)} was a Python function run in-process, "
            "which a checkpoint cannot hold; resume from Python: hpo_flow(spec={..., 'trial': {'callable': "
            "the_function}}, resume=True)"
        )
    check_cwd(trial.cwd)  # local trials run here: a missing cwd is refused before any starts
    return LocalProcessLauncher(gpus=trial.gpus)


def _load_state(
    store: CheckpointStore, name: str, given: ExperimentSpec | None, resume: bool, tenant: str | None
) -> tuple[ExperimentState, bool]:
    text = store.read(name)
    if text is not None:
        state = ExperimentState.from_json(text, store.location(name))
        check_owner(name, state.spec.tenant, tenant)  # also when --storage points into another tenant's part
        if given is not None:
            if _search_part(given) != _search_part(state.spec):
                raise SpecError(
                    f"experiment {name!r} already exists at {store.location(name)} with a different search "
                    "(parameters, objectives, algorithm or seed); resume it as it is with "
                    f"`prefect-hpo resume {name}`, or give the new experiment another name"
                )
            state.spec = given
        return state, True
    tracker_uri = given.tracking_uri if given is not None else None
    # `run SPEC` too: a parent run without a checkpoint (a flow killed before its first one, or a
    # lost checkpoint) is continued, not joined by a second parent run that stays RUNNING forever
    try:
        rebuilt = rebuild_from_mlflow(MlflowTracker(tracker_uri, mlflow_experiment_name(name, tenant)), given, name=name)
    except StorageError as exc:
        if resume or given is None:
            raise
        logger.warning("experiment %r: MLflow could not be searched for an earlier run (%s); starting it anew", name, exc)
        rebuilt = None
    if rebuilt is not None:
        return rebuilt, True
    if given is None:
        raise ExperimentNotFoundError(
            f"experiment {name!r}: no checkpoint at {store.location(name)} and no MLflow record; "
            "check the name and --storage, or start it with `prefect-hpo run SPEC`"
        )
    return ExperimentState(given, given.build_experiment()), False


def _reconcile(runtime: HPORuntime) -> None:
    """After a restart: re-attach to live trial processes, schedule re-runs of dead ones.

    A trial whose process finished while no flow was watching keeps its handle: the next poll
    reads its exit status and whole log, so its result is not lost and it is not run again.
    """
    _check_launcher_kind(runtime)
    for trial in runtime.experiment.trials:
        if not trial.status.in_flight:
            continue
        handle = run_of(trial).handle
        if handle is None:
            handle = _adopt_unrecorded_launch(runtime, trial)
        if handle is None:
            continue
        if runtime.launcher.reattach(handle):
            trial_log().info("trial %d: re-attached to its running process", trial.index)
        # the first poll after a re-attach returns the whole log again; skip what is known
        run_of(trial).expect_replay()


def _check_launcher_kind(runtime: HPORuntime) -> None:
    """The spec may move an experiment to another launcher between runs (local processes to a
    work pool, say). Attempts of the old kind that died with the old flow (in-process threads,
    Dask tasks only it knew) simply run again on the new one; attempts that may still be running
    (a process, a flow run) cannot be watched by the new launcher, and neither dropping them
    (they would run twice) nor waiting blindly is right, so the resume is refused until they end."""
    kind = getattr(runtime.launcher, "kind", None)
    if kind is None:
        return
    stranded: dict[str, list[int]] = {}
    for trial in runtime.experiment.trials:
        handle = run_of(trial).handle
        if not trial.status.in_flight or handle is None or handle_kind(handle) == kind:
            continue
        old = handle_kind(handle)
        if old in _DIES_WITH_FLOW:
            logger.warning("trial %d: its %s attempt ended with the previous flow; it runs again on the %s launcher",
                           trial.index, old, kind)
            run_of(trial).handle = None
        else:
            stranded.setdefault(old, []).append(trial.index)
    if stranded:
        where = "; ".join(f"trials {', '.join(map(str, idx))} on the {old!r} launcher" for old, idx in stranded.items())
        name = runtime.spec.name
        raise SpecError(
            f"trial: experiment {name!r} now runs trials on the {kind!r} launcher, but {where} may still be "
            f"running and only that launcher can watch them; resume it as it was (`prefect-hpo resume {name}`, "
            "which uses the checkpoint's spec) until they end, then switch"
        )


def _adopt_unrecorded_launch(runtime: HPORuntime, trial: Trial) -> dict[str, Any] | None:
    """A launch the checkpoint missed (the flow died between starting the process and writing
    the checkpoint) left its handle in the attempt folder: adopt it instead of launching again."""
    run = run_of(trial)
    attempt = run.next_attempt
    path = runtime.attempt_dir(trial.index, attempt) / HANDLE_FILE
    if not path.exists():
        return None
    handle = json.loads(path.read_text())
    logger.warning("trial %d: adopting attempt %d, launched just before the previous flow stopped", trial.index, attempt)
    if trial.status is TrialStatus.PENDING:
        runtime.experiment.mark_running(trial.index)
    run_id = run.run_id
    if run_id is None:
        try:
            run_id = runtime.tracker.start_trial_run(
                runtime.state.parent_run_id, trial.index, trial.params, trial.suggester, attempt=attempt, search_existing=True
            )
        except StorageError as exc:
            logger.warning("trial %d: MLflow run not found: %s", trial.index, exc)
    run.start_attempt(attempt, run_id, handle)
    return handle


def trial_log() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """Where per-trial events are logged: the flow run's logger inside a flow run (they reach the
    Prefect UI's Logs tab, one line per event that matters), this module's logger outside one."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logger


def finish(runtime: HPORuntime) -> dict[str, Any] | None:
    """Record the outcome in MLflow and return it (see :func:`experiment_outcome`): the best
    trial, or for several objectives the Pareto front, whose plot goes to the parent run.

    The dashboard's final update is queued here; :func:`close_tracking` repeats its best-trial
    tags after the reconciliation, for a trial whose run only that creates."""
    exp = runtime.experiment
    outcome = experiment_outcome(exp)
    parent = runtime.state.parent_run_id
    update_dashboard(runtime, final=True)
    try:
        if exp.is_multi_objective:
            _log_pareto(runtime, outcome)
        runtime.tracker.finish_experiment_run(parent, "FINISHED")
    except StorageError as exc:
        logger.warning("%s: MLflow summary not written: %s", exp.name, exc)
    return outcome


def _log_pareto(runtime: HPORuntime, outcome: dict[str, Any] | None) -> None:
    """The Pareto plot (PNG) and the front itself (JSON) as artifacts of the parent run."""
    parent = runtime.state.parent_run_id
    with tempfile.TemporaryDirectory(prefix="prefect-hpo-pareto-") as tmp:
        png = render_pareto_png(runtime.experiment, Path(tmp) / "pareto_front.png")
        if png is not None:
            runtime.tracker.log_experiment_file(parent, png)
        if outcome is not None:
            doc = Path(tmp) / "pareto_front.json"
            doc.write_text(json.dumps(outcome, indent=2, allow_nan=False))
            runtime.tracker.log_experiment_file(parent, doc)


def close_runtime(runtime: HPORuntime, *, write: bool = True, failure: BaseException | None = None) -> None:
    """Write the last checkpoint and give the lease back; trial processes are left alone.

    The first error is the one that reaches the user: ``failure`` (what the flow is failing
    with) stays the one raised, and a failed write is raised rather than the release's error
    after it; a store that refused one usually refuses the next, and the later error would hide
    the cause. Errors met after the first are logged."""
    failed = failure is not None
    try:
        if write and not runtime.lease.lost:  # while the heartbeat runs: the wait may outlast the lease's TTL
            close_tracking(runtime)  # MLflow made to match the checkpoint (bounded wait)
        else:
            runtime.tracker.close(0)
        runtime.lease.stop_heartbeat()
        if write and not runtime.lease.lost:
            write_checkpoint(runtime)
    except PrefectHPOError as exc:
        if failure is None:
            failed = True
            raise
        logger.info("%s: closing after %s: %s", runtime.spec.name, type(failure).__name__, exc)
    except BaseException:
        failed = True
        raise
    finally:
        try:
            runtime.lease.release()
        except PrefectHPOError as exc:
            if not failed:
                raise
            logger.info("%s: the lease was not released either: %s", runtime.spec.name, exc)
        finally:
            runtime.launcher.close()
