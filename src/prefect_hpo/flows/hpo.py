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
from prefect_hpo.flows.artifacts import publish_artifacts
from prefect_hpo.flows.driver import close_runtime, drive, finish, open_runtime
from prefect_hpo.spec import load_spec
from prefect_hpo.tasks.runtime import describe_values

__all__ = ["hpo_flow"]


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


@flow(name="prefect-hpo", flow_run_name=_run_name, log_prints=False)
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
    if name_suffix:
        spec = _with_suffix(spec, name_suffix)
    runtime = open_runtime(spec, resume=resume, name=name, storage=storage, lease_wait_s=lease_wait_s, tenant=tenant)
    exp = runtime.experiment
    log.info(
        "experiment %r: %d/%d trials on record, checkpoint %s, MLflow %s (parent run %s)",
        exp.name, len(exp.trials), runtime.spec.budget.trials, runtime.store.location(exp.name),
        runtime.tracker.tracking_uri, runtime.state.parent_run_id,
    )
    clean = False
    try:
        drive(runtime)
        best = finish(runtime)
        clean = True
    finally:
        close_runtime(runtime, write=True)
    publish_artifacts(exp, best, runtime.tracker.tracking_uri, runtime.state.parent_run_id)
    if best is None:
        log.warning("experiment %r: no trial completed", exp.name)
    elif "pareto_front" in best:
        log.info("experiment %r: Pareto front of %d trial(s), hypervolume %.6g (reference point %s)", exp.name,
                 len(best["pareto_front"]), best["hypervolume"], describe_values(best["reference_point"]))
    else:
        log.info("experiment %r: best trial %d: %s %s", exp.name, best["index"], describe_values(best["values"]), best["params"])
    return best if clean else None
