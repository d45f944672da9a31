"""Holding GPU slots of a Prefect global concurrency limit while a trial runs, with a short hand-off.

Prefect's ``concurrency()`` waits for a full limit by retrying after the server's ``Retry-After``,
which grows with the limit's average slot occupancy up to the server's
``maximum_concurrency_slot_wait_seconds`` (30 s by default): right for short tasks, but for GPU
trials that hold a slot for minutes it means a freed GPU commonly sits idle for tens of seconds
before the next waiting trial notices. Here a waiting trial asks again after at most ``retry_s``
(with jitter, so waiting trials do not knock in step), so the hand-off costs about ``retry_s``; the
price is one small API call per waiting trial every ``retry_s``.

Everything else is Prefect's: the slots are leased and the lease is renewed in the background, so a
trial whose machine dies gives its GPUs back when the lease runs out.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
from prefect.concurrency.sync import concurrency

try:  # where Prefect 3.8 defines it; re-exported under other names in some releases
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
except ImportError:  # pragma: no cover - a Prefect that moved it
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError  # type: ignore[no-redef]

__all__ = ["hold_gpu_slots"]

logger = logging.getLogger(__name__)

_LOCKED = 423
#: Never knock faster than this, whatever the server's Retry-After says (it can be 0).
_MIN_WAIT_S = 0.25


def _server_retry_after(exc: BaseException) -> float | None:
    """The server's Retry-After if ``exc`` is Prefect's "limit is full" answer, else None."""
    cause = exc.__cause__
    if isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == _LOCKED:
        try:
            return float(cause.response.headers.get("Retry-After", "0"))
        except ValueError:
            return 0.0
    return None


class _ExpectedDenials(logging.Filter):
    """Prefect logs every refused acquisition as an ERROR of its service thread; here a refusal
    is the normal "wait for a GPU", so those lines are dropped while a trial waits."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg == "Service %r failed to process item %r" and args and "ConcurrencySlot" in str(args[0]))


_PREFECT_SERVICE_LOGGER = logging.getLogger("prefect._internal.concurrency")


@contextmanager
def hold_gpu_slots(limit: str, gpus: int, *, retry_s: float = 2.0) -> Iterator[float]:
    """Hold ``gpus`` slots of the global concurrency limit ``limit`` for the ``with`` body.

    Yields how long the trial waited for them (seconds). A missing limit raises Prefect's
    ``ConcurrencySlotAcquisitionError`` at once (``strict``): a misspelt limit must fail the
    trial with that reason, not let it run outside any quota. A lease renewal that fails later
    (a short API outage) is logged, not fatal: killing hours of training for a bookkeeping blip
    is the worse trade; the server frees the slots when the lease expires.
    """
    waited_since = time.monotonic()
    announced = False
    quiet = _ExpectedDenials()
    with ExitStack() as stack:
        _PREFECT_SERVICE_LOGGER.addFilter(quiet)
        try:
            while True:
                try:
                    stack.enter_context(
                        concurrency(limit, occupy=gpus, max_retries=0, strict=True, raise_on_lease_renewal_failure=False)
                    )
                    break
                except ConcurrencySlotAcquisitionError as exc:
                    server_wait = _server_retry_after(exc)
                    if server_wait is None:
                        raise
                    logger.debug("limit %r full; the server says retry in %.1f s", limit, server_wait,
                                 extra={"server_wait": server_wait})
                    if not announced:
                        logger.info("waiting for %d slot(s) of concurrency limit %r", gpus, limit)
                        announced = True
                    time.sleep(max(_MIN_WAIT_S, min(server_wait, retry_s) * random.uniform(0.7, 1.0)))
        finally:
            _PREFECT_SERVICE_LOGGER.removeFilter(quiet)
        waited = time.monotonic() - waited_since
        if announced:
            logger.info("got %d slot(s) of %r after %.1f s", gpus, limit, waited)
        yield waited
