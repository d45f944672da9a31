"""The ``checkpoint`` task: write the experiment state to the store, atomically."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_hpo.errors import LeaseLostError
from prefect_hpo.tasks.runtime import HPORuntime, current_runtime

__all__ = ["checkpoint", "write_checkpoint"]


def write_checkpoint(runtime: HPORuntime) -> None:
    """Write the state unless another driver took the lease over (two writers would fork history)."""
    if runtime.lease.lost:
        raise LeaseLostError(
            f"experiment {runtime.spec.name!r}: the lease on {runtime.store.location(runtime.spec.name)} "
            "was taken over by another driver; this flow stops without writing"
        )
    runtime.update_clock()
    runtime.store.write(runtime.spec.name, runtime.state.to_json())


@task(name="checkpoint", task_run_name="checkpoint", cache_policy=NO_CACHE, persist_result=False)
def checkpoint() -> None:
    write_checkpoint(current_runtime())
