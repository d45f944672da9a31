"""The lease that keeps two flows from driving one experiment, and how its holder is judged.

A lease is a small JSON document next to the checkpoint: who holds it (host, pid, process start
time, boot id, pid namespace) and until when. It expires unless renewed; a holder known to be
dead (same host, pid gone or reused, or the host rebooted) loses it at once, so ``resume`` after a
SIGKILL does not wait out the TTL. The stores (local_store.py, s3_store.py) do the atomic
create / compare-and-swap; this module holds what is common to both.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from prefect_hpo.errors import (
    LeaseLostError,
    StorageError,
)

if TYPE_CHECKING:
    from prefect_hpo.storage.store_base import CheckpointStore

logger = logging.getLogger(__name__)

__all__ = ["Lease", "describe_time"]


def _read_proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None if unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may contain spaces or ')'; split after the last ')'.
    rest = raw[raw.rfind(")") + 2:].split()
    try:
        return rest[0], int(rest[19])  # fields 3 (state) and 22 (starttime)
    except (IndexError, ValueError):
        return None


def _process_start_time(pid: int) -> int | None:
    """Process start time (field 22 of /proc/<pid>/stat) so a reused pid is not mistaken for ours."""
    stat = _read_proc_stat(pid)
    return None if stat is None else stat[1]


def _read_first_line(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """Identity of our pid namespace: pids only mean something inside the same namespace."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


_OWN_PID_START: dict[int, int | None] = {}


def _own_pid_start() -> int | None:
    """Our start time, cached per pid (a forked child must not inherit its parent's)."""
    pid = os.getpid()
    if pid not in _OWN_PID_START:
        _OWN_PID_START[pid] = _process_start_time(pid)
    return _OWN_PID_START[pid]


_BOOT_ID = _read_first_line("/proc/sys/kernel/random/boot_id")
_PID_NS = _pid_namespace()


def _pid_is_dead(pid: int, pid_start: int | None) -> bool:
    """True only when we are sure the process is gone (exited, zombie, or pid reused)."""
    if pid <= 0:  # os.kill(0 or negative) would address process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, owned by another user: /proc below tells if it is a zombie
        logger.debug("pid %d exists but belongs to another user", pid)
    stat = _read_proc_stat(pid)
    if stat is None:
        return False
    state, start = stat
    if state in ("Z", "X"):
        return True
    return pid_start is not None and start != pid_start


def _new_lease_doc(owner: str, ttl_s: float, *, acquired_at: float | None = None) -> dict[str, Any]:
    now = time.time()
    return {
        "owner": owner,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _own_pid_start(),
        "boot_id": _BOOT_ID,
        "pid_ns": _PID_NS,
        "acquired_at": now if acquired_at is None else acquired_at,
        "renewed_at": now,
        "expires_at": now + ttl_s,
    }


def _takeover_reason(doc: Any, now: float) -> str | None:
    """Why an existing lease may be taken over, or None if its holder must be respected."""
    if not isinstance(doc, dict) or not isinstance(doc.get("expires_at"), (int, float)):
        return "the lease document is unreadable"
    if doc["expires_at"] <= now:
        return f"it expired at {describe_time(doc['expires_at'])}"
    if doc.get("host") != socket.gethostname():
        return None
    boot_id = doc.get("boot_id")
    if boot_id and _BOOT_ID and boot_id != _BOOT_ID:
        return "this host has rebooted since the lease was taken"
    pid_ns = doc.get("pid_ns")
    if pid_ns and _PID_NS and pid_ns != _PID_NS:
        return None  # another container sharing the host name: its pids are not ours to check
    pid, pid_start = doc.get("pid"), doc.get("pid_start")
    if isinstance(pid, int) and _pid_is_dead(pid, pid_start if isinstance(pid_start, int) else None):
        return f"its holder (pid {pid} on this host) is no longer running"
    return None


def describe_time(epoch: Any, now: float | None = None) -> str:
    """A lease time for people: UTC ISO and how far from now ("2026-12-06T21:15:03Z (in 42 s)").

    Lease documents hold epoch seconds (comparable across hosts); printed raw they said nothing.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not math.isfinite(epoch):
        return "an unknown time"
    try:
        stamp = datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"an impossible time ({epoch!r})"
    delta = epoch - (time.time() if now is None else now)
    return f"{stamp.replace('+00:00', 'Z')} ({_span(delta)})"


def _span(delta: float) -> str:
    size = abs(delta)
    if size < 1:
        return "now"
    if size < 120:
        amount = f"{size:.0f} s"
    elif size < 7200:
        amount = f"{size / 60:.0f} min"
    elif size < 172800:
        amount = f"{size / 3600:.0f} h"
    else:
        amount = f"{size / 86400:.0f} days"
    return f"in {amount}" if delta > 0 else f"{amount} ago"


def _held_message(name: str, doc: dict[str, Any], lease_location: str, wait_s: float) -> str:
    waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
    if "error" in doc and "owner" not in doc:
        return (
            f"experiment {name!r}: could not take the lease{waited}: {lease_location} is unreadable "
            f"({doc['error']}) and kept changing while it was being replaced; check what writes there"
        )
    return (
        f"experiment {name!r} is already being driven by another flow{waited}: host "
        f"{doc.get('host', '?')}, pid {doc.get('pid', '?')}, holding the lease since "
        f"{describe_time(doc.get('acquired_at'))} (last renewed {describe_time(doc.get('renewed_at'))}). "
        f"The lease expires at {describe_time(doc.get('expires_at'))} unless that flow renews it. "
        f"Stop that flow or wait for it to finish; if it was killed on another machine, retry after "
        f"the lease expires, or delete {lease_location} if you are sure it is gone."
    )


def _lost_message(name: str, doc: dict[str, Any] | None, lease_location: str) -> str:
    if doc is None:
        holder = f"the lease was removed ({lease_location} is gone)"
    else:
        holder = (f"it is now held by host {doc.get('host', '?')}, pid {doc.get('pid', '?')} since "
                  f"{describe_time(doc.get('acquired_at'))}")
    return (f"lost the lease on experiment {name!r}: {holder}. This flow must stop driving the "
            "experiment so trials are not launched twice.")


def _parse_lease(raw: bytes) -> dict[str, Any]:
    """Parse a lease document; an unreadable one comes back as ``{"error": ...}``."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return {"error": f"unreadable lease document: {e}"}
    return doc if isinstance(doc, dict) else {"error": "unreadable lease document: not an object"}



class Lease:
    """Proof that this process drives an experiment; renew it (or run the heartbeat) to keep it.

    Use it as a context manager so the lease is released however the flow ends.
    """

    def __init__(self, store: CheckpointStore, name: str, info: dict[str, Any], ttl_s: float) -> None:
        self._store = store
        self.name = name
        self.owner: str = info["owner"]
        self.info: dict[str, Any] = info
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._lost = False
        self._released = False
        self._hb_thread: threading.Thread | None = None
        self._hb_stop = threading.Event()
        #: The last error a heartbeat renewal hit (None if all went well); the flow may report it.
        self.heartbeat_error: BaseException | None = None

    @property
    def lost(self) -> bool:
        """True once a renewal found that another owner holds the lease."""
        return self._lost

    @property
    def expires_at(self) -> float:
        return float(self.info["expires_at"])

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the heartbeat found the lease taken over."""
        if self._lost:
            err = self.heartbeat_error
            raise LeaseLostError(str(err) if isinstance(err, LeaseLostError)
                                 else f"lost the lease on experiment {self.name!r}")

    def renew(self) -> None:
        """Push the expiry ``ttl_s`` into the future; raises LeaseLostError if we no longer own it."""
        with self._lock:
            if self._released:
                raise LeaseLostError(f"the lease on experiment {self.name!r} was already released")
            try:
                self.info = self._store._renew_lease(self.name, self.owner, self.ttl_s)
            except LeaseLostError:
                self._lost = True
                raise

    def release(self) -> None:
        """Give the lease up (idempotent); leaves it alone if another owner holds it now."""
        self.stop_heartbeat()
        with self._lock:
            if self._released:
                return
            self._store._release_lease(self.name, self.owner)
            self._released = True

    def start_heartbeat(self, interval_s: float | None = None) -> None:
        """Renew from a daemon thread every ``interval_s`` (default ttl/3) until stopped or lost."""
        if self._hb_thread is not None and self._hb_thread.is_alive():
            return
        interval = self.ttl_s / 3 if interval_s is None else interval_s
        if interval <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval!r}")
        self._hb_stop.clear()
        self._hb_thread = threading.Thread(
            target=self._heartbeat, args=(interval,), name=f"prefect-hpo-lease-{self.name}",
            daemon=True)
        self._hb_thread.start()

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat thread (no-op when none runs)."""
        self._hb_stop.set()
        thread = self._hb_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._hb_thread = None

    def _heartbeat(self, interval: float) -> None:
        while not self._hb_stop.wait(interval):
            try:
                self.renew()
            except LeaseLostError as e:
                self.heartbeat_error = e
                logger.error("%s", e)
                return
            except StorageError as e:  # transient: keep trying until the lease is really lost
                self.heartbeat_error = e
                logger.warning("could not renew the lease on experiment %r: %s", self.name, e)
            except Exception as e:  # noqa: BLE001 -- a daemon thread must not die silently
                self.heartbeat_error = e
                logger.exception("unexpected error renewing the lease on experiment %r", self.name)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.release()
            return
        try:  # do not let a failing release hide the error that is already propagating
            self.release()
        except StorageError as e:
            logger.warning("could not release the lease on experiment %r: %s", self.name, e)

    def __repr__(self) -> str:
        return (f"Lease(name={self.name!r}, owner={self.owner!r}, "
                f"expires_at={describe_time(self.info.get('expires_at'))}, lost={self._lost})")


