"""``hpo_flow``: an HPO experiment as a Prefect flow.

Run it directly (``hpo_flow("examples/quickstart.yaml")``), through ``prefect-hpo run``, or as a
deployment (``deployments/prefect.yaml``). It is safe to kill at any moment: the checkpoint is
written after every change, trial processes outlive the flow, and ``resume=True`` (or running
the same spec again) picks the experiment up where it stopped.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from prefect_hpo.flows.artifacts import publish_artifacts
from prefect_hpo.flows.driver import close_runtime, drive, finish, open_runtime
from prefect_hpo.tasks.runtime import describe_values

__all__ = ["hpo_flow"]


def _run_name() -> str:
    params = flow_run.parameters or {}
    spec = params.get("spec")
    if isinstance(spec, dict) and spec.get("name"):
        return f"hpo-{spec['name']}"
    if params.get("name"):
        return f"hpo-{params['name']}"
    return f"hpo-{spec}" if isinstance(spec, str) else "hpo"


@flow(name="prefect-hpo", flow_run_name=_run_name, log_prints=False)
def hpo_flow(
    spec: dict[str, Any] | str | None = None,
    resume: bool = False,
    name: str | None = None,
    storage: str | None = None,
    lease_wait_s: float = 0.0,
) -> dict[str, Any] | None:
    """Run (or resume) the experiment described by ``spec`` (a dict or a YAML/JSON path).

    With ``resume=True`` and no spec, ``name`` (and ``storage`` unless it is the default
    ``file://.prefect-hpo``) find the checkpoint, which carries the spec. Returns the best trial
    as ``{"index", "params", "values"}``, or None when no trial completed.
    """
    log = get_run_logger()
    runtime = open_runtime(spec, resume=resume, name=name, storage=storage, lease_wait_s=lease_wait_s)
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
    else:
        log.info("experiment %r: best trial %d: %s %s", exp.name, best["index"], describe_values(best["values"]), best["params"])
    return best if clean else None
