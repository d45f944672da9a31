"""MLflow writes off the flow's loop: one background thread, in order, retried while MLflow is down.

Every MLflow write of a flow is a view of the checkpoint (metrics, tags, statuses, artifacts), so
none of them may hold up launching, polling or checkpointing. The flow hands each write to
:class:`TrackingQueue` and goes on; the queue's thread makes the writes one at a time in the
order they were handed in. When MLflow is unreachable the write at the head is retried with a
growing pause (the backlog grows behind it, still in order), one WARNING says so, and another
says when the backlog has drained. A write MLflow refuses for good (a bad value, a deleted run)
is dropped with a warning: retrying it would block every write behind it forever.

Nothing here knows what the writes are; :mod:`prefect_hpo.storage.tracking` builds them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException

__all__ = ["TrackingQueue", "is_outage"]

logger = logging.getLogger(__name__)

#: Pauses between tries of the write at the head while MLflow is down (the last one repeats).
DEFAULT_RETRY_DELAYS_S: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
#: A server that answers with an internal error (not an unreachable one) gets this many tries.
_SERVER_ERROR_TRIES = 5
_SERVER_ERROR_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}

try:
    from sqlalchemy.exc import OperationalError as _SqlOperationalError
except ImportError:  # pragma: no cover - mlflow-skinny without SQLAlchemy
    _SqlOperationalError = OSError  # type: ignore[misc,assignment]


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def is_outage(exc: BaseException) -> bool:
    """True when the tracking backend could not be reached at all (refused, reset, timed out,
    a locked or missing database): such a write succeeds later unchanged, so it waits."""
    import requests

    for err in _causes(exc):
        if isinstance(err, (requests.ConnectionError, requests.Timeout, _SqlOperationalError, ConnectionError, TimeoutError)):
            return True
        if isinstance(err, MlflowException) and "failed with exception" in str(err) and "API request to" in str(err):
            return True  # MLflow's wrapping of a requests failure after its own retries
    return False


def _server_error(exc: BaseException) -> bool:
    return any(isinstance(err, MlflowException) and err.error_code in _SERVER_ERROR_CODES for err in _causes(exc))


@dataclass
class _Write:
    operation: str
    run: Callable[[], Any]
    tries: int = 0


class TrackingQueue:
    """A FIFO of writes made by one daemon thread; see the module docstring.

    ``retry_delays_s`` are the pauses between tries while the backend is unreachable.
    """

    def __init__(self, target: str, *, retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S) -> None:
        self.target = target
        self._delays = tuple(retry_delays_s) or (1.0,)
        self._items: deque[_Write] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stop = threading.Event()  # wakes the writer out of a retry pause (new writes do not)
        self._down_since: float | None = None  # monotonic time the backlog started
        self._replayed = 0
        self._dropped = 0

    # ---- what the flow sees ------------------------------------------------------------------
    def submit(self, operation: str, write: Callable[[], Any]) -> None:
        """Queue ``write`` (named ``operation`` in warnings); it runs after every earlier write."""
        with self._cond:
            if self._stopping:  # the flow is ending: the next one's reconciliation covers this write
                logger.warning("MLflow at %s: could not %s, the tracker is closed already", self.target, operation)
                return
            self._items.append(_Write(operation, write))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"{WRITER_THREAD_PREFIX}-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    @property
    def backlogged(self) -> bool:
        """MLflow was found unreachable and the writes queued since have not all been made."""
        with self._cond:
            return self._down_since is not None

    @property
    def pending(self) -> int:
        """Writes not made yet (the one in progress included)."""
        with self._cond:
            return len(self._items)

    @property
    def dropped(self) -> int:
        with self._cond:
            return self._dropped

    def note_unreachable(self, operation: str, exc: BaseException) -> None:
        """A call made outside the queue found MLflow down: start the backlog (and its warning)."""
        with self._cond:
            self._enter_backlog(operation, exc)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every write so far is made (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while self._items:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 3600.0))  # an infinite timeout overflows the lock's wait
            return True

    def close(self, timeout_s: float) -> bool:
        """Drain for at most ``timeout_s``, then stop the thread; False when writes were left."""
        drained = self.drain(timeout_s)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._stop.set()
        return drained

    # ---- the writer thread -------------------------------------------------------------------
    def _enter_backlog(self, operation: str, exc: BaseException) -> None:  # holds self._cond
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._replayed = 0
            logger.warning(
                "MLflow at %s is unreachable (could not %s: %s); the experiment goes on, its MLflow writes "
                "wait in order (%d queued) and are replayed once MLflow answers again",
                self.target, operation, _root_cause(exc), len(self._items),
            )

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._stopping:
                    self._cond.wait()
                if self._stopping:  # what is left waits for the next flow's reconciliation
                    return
                item = self._items[0]
            item.tries += 1
            try:
                item.run()
            except Exception as exc:  # noqa: BLE001 - classified below; the thread must survive any write
                if is_outage(exc) or (_server_error(exc) and item.tries < _SERVER_ERROR_TRIES):
                    with self._cond:
                        self._enter_backlog(item.operation, exc)
                    if self._stop.wait(self._delays[min(item.tries, len(self._delays)) - 1]):
                        return
                    continue
                logger.warning("MLflow at %s: could not %s, the write is dropped: %s", self.target, item.operation, _short(exc))
                with self._cond:
                    self._dropped += 1
            with self._cond:
                self._items.popleft()
                if self._down_since is not None:
                    self._replayed += 1
                    if not self._items:
                        logger.warning(
                            "MLflow at %s is back: %d queued write(s) replayed after %.0f s",
                            self.target, self._replayed, time.monotonic() - self._down_since,
                        )
                        self._down_since = None
                self._cond.notify_all()


def _root_cause(exc: BaseException) -> str:
    """The innermost error (``Connection refused``...), not MLflow's and our wrappings of it."""
    return _short(_causes(exc)[-1], 200)


class _QuietWriterRetries(logging.Filter):
    """urllib3 logs a WARNING per retried request; the writer's retries during an outage are
    summed up by the queue's own two warnings instead. Other threads' records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.threadName or "").startswith(WRITER_THREAD_PREFIX)


WRITER_THREAD_PREFIX = "prefect-hpo-mlflow"
logging.getLogger("urllib3.connectionpool").addFilter(_QuietWriterRetries())


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
