"""``hpo_flow``: an HPO experiment as a Prefect flow.

Run it directly (``hpo_flow("examples/quickstart.yaml")``), through ``prefect-hpo run``, or as a
deployment (``deployments/prefect.yaml``). It is safe to kill at any moment: the checkpoint is
written after every change, trial processes outlive the flow, and ``resume=True`` (or running
the same spec again) picks the experiment up where it stopped.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from prefect_hpo.errors import PrefectHPOError, SpecError
from prefect_hpo.flows.artifacts import LiveArtifacts
from prefect_hpo.flows.driver import close_runtime, finish, open_runtime
from prefect_hpo.flows.engine_logs import FLOW_NAME, quiet_engine_lines
from prefect_hpo.flows.loop import TrialLoop
from prefect_hpo.flows.progress import add_listener, remove_listener
from prefect_hpo.flows.trial_spans import TrialSpans
from prefect_hpo.spec import load_spec
from prefect_hpo.tasks.runtime import HPORuntime, describe_values, running

__all__ = ["hpo_flow", "run_trials"]


def run_trials(runtime: HPORuntime, spans: TrialSpans) -> None:
    """The experiment's loop: keep up to ``max_parallel`` trials running until the budget (trials
    or wall-clock time) or the search space is spent and every trial has ended.

    Each step is a task run only when it does something (:mod:`prefect_hpo.flows.loop`); every
    trial is one task run of its own, ``trial-0007``, from launch to result.
    """
    loop = TrialLoop(runtime, spans)
    with running(runtime):  # the tasks find the runtime here; their arguments are indexes and news
        while True:
            news = loop.poll()  # reports and ends of running trials (no task run: most polls find nothing)
            loop.report(news)  # trials whose attempt ended: told to the optimizer, or re-run
            loop.decide_stop(news)  # the stopping policy on new reports; kills free their slots
            if loop.out_of_time():
                loop.abandon_waiting()
            else:
                loop.suggest()  # new trials for the free slots, checkpointed before they launch
            loop.launch()  # one task per trial started
            loop.save()  # the checkpoint, if this pass changed anything not yet written
            if loop.done():
                return
            loop.wait_for_news()  # until a log grows or a trial exits, at most poll_interval_s


def _with_suffix(spec: dict[str, Any] | str | None, suffix: str) -> dict[str, Any]:
    if spec is None:
        raise SpecError("name_suffix: needs a spec to rename")
    when = flow_run.scheduled_start_time or datetime.now(timezone.utc)
    doc = load_spec(spec).to_dict()
    doc["name"] = doc["name"] + suffix.replace("{date}", when.strftime("%Y%m%d"))
    return load_spec(doc).to_dict()


def _run_name() -> str:
    params = flow_run.parameters or {}
    spec = params.get("spec")
    if isinstance(spec, dict) and spec.get("name"):
        return f"hpo-{spec['name']}"
    if params.get("name"):
        return f"hpo-{params['name']}"
    if isinstance(spec, str):
        try:
            return f"hpo-{load_spec(spec).name}"
        except PrefectHPOError:  # the flow itself reports the bad spec
            return "hpo"
    return "hpo"


@flow(name=FLOW_NAME, flow_run_name=_run_name, log_prints=False)
def hpo_flow(
    spec: dict[str, Any] | str | None = None,
    resume: bool = False,
    name: str | None = None,
    storage: str | None = None,
    lease_wait_s: float = 0.0,
    name_suffix: str | None = None,
    tenant: str | None = None,
) -> dict[str, Any] | None:
    """Run (or resume) the experiment described by ``spec`` (a dict or a YAML/JSON path).

    With ``resume=True`` and no spec, ``name`` (and ``storage`` unless it is the default
    ``file://.prefect-hpo``) find the checkpoint, which carries the spec. Returns the best trial
    as ``{"index", "params", "values"}``, or None when no (feasible) trial completed. With
    several objectives it returns ``{"pareto_front": [{"index", "params", "values"}, ...],
    "hypervolume", "reference_point"}`` and logs a Pareto plot to the MLflow parent run.

    ``name_suffix`` is appended to the spec's name; ``{date}`` in it becomes the flow run's
    scheduled date (``YYYYMMDD``), so a scheduled deployment starts a new experiment per day
    instead of continuing yesterday's. ``tenant`` (default ``$PREFECT_HPO_TENANT``) is the
    caller's tenant; see :mod:`prefect_hpo.tenancy`.
    """
    log = get_run_logger()
    quiet_engine_lines()
    if name_suffix:
        spec = _with_suffix(spec, name_suffix)
    runtime = open_runtime(spec, resume=resume, name=name, storage=storage, lease_wait_s=lease_wait_s, tenant=tenant)
    exp = runtime.experiment
    log.info(
        "experiment %r: %d/%d trials on record, checkpoint %s, MLflow %s (parent run %s)",
        exp.name, len(exp.trials), runtime.spec.budget.trials, runtime.store.location(exp.name),
        runtime.tracker.tracking_uri, runtime.state.parent_run_id,
    )
    live = LiveArtifacts(exp, runtime.tracker.tracking_uri, runtime.state.parent_run_id, runtime.tracker.experiment_id)
    live.start(runtime.spec.budget.trials)
    add_listener(live)
    spans = TrialSpans()
    clean = False
    failure: BaseException | None = None
    try:
        run_trials(runtime, spans)
        best = finish(runtime)
        clean = True
    except BaseException as exc:
        failure = exc  # what closing meets after it is logged, so this stays the error raised
        raise
    finally:
        spans.close()  # trials still running (the flow failed or was cancelled) end as detached
        remove_listener(live)
        live.close()  # what it still had is sent; the final publish below comes after it
        close_runtime(runtime, write=True, failure=failure)
    live.publish(best)
    if best is None:
        log.warning("experiment %r: no trial completed", exp.name)
    elif "pareto_front" in best:
        log.info("experiment %r: Pareto front of %d trial(s), hypervolume %.6g (reference point %s)", exp.name,
                 len(best["pareto_front"]), best["hypervolume"], describe_values(best["reference_point"]))
    else:
        log.info("experiment %r: best trial %d: %s %s", exp.name, best["index"], describe_values(best["values"]), best["params"])
    return best if clean else None
