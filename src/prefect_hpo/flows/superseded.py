"""Closing the Prefect flow run of a driver that died without a word (kill -9, a lost machine).

A flow run whose process is killed outright never reports an end, so a real Prefect server shows
it RUNNING forever (nothing on the server notices a dead process that no worker watches). The
checkpoint names the flow run that drove the experiment last; the next driver, which holds the
experiment's lease and therefore knows the old one is gone, marks that run CRASHED and says which
flow run took over.
"""

from __future__ import annotations

import logging

__all__ = ["current_flow_run_id", "mark_superseded"]

logger = logging.getLogger(__name__)


def current_flow_run_id() -> str | None:
    """The id of the flow run this code runs in, or None outside a flow run."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def mark_superseded(previous: str, current: str | None, experiment: str) -> bool:
    """Mark ``previous`` CRASHED if it is still in a non-final state; True when it was.

    Best effort: a run the API does not know (it lived on another server, or its temporary
    server's database is gone) is left alone with a debug line; nothing here can stop a resume.
    """
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(previous)
            if run.state is None or run.state.is_final():
                return False
            by = f"flow run {current}" if current else "a driver outside Prefect"
            client.set_flow_run_state(
                previous,
                Crashed(message=f"its process died while driving experiment {experiment!r}; {by} resumed it"),
                force=True,
            )
    except Exception as exc:  # noqa: BLE001 - the API may not know the run, or be another server
        logger.debug("flow run %s of experiment %r not marked crashed: %s", previous, experiment, exc)
        return False
    logger.warning("experiment %r: flow run %s died without ending; marked it crashed (superseded by %s)",
                   experiment, previous, current or "this driver")
    return True
