"""Checkpoint stores: where an experiment's JSON state lives between (and across) flow runs.

The HPO flow rewrites the experiment document after every state change, so a crash at any moment
must leave either the old or the new document, never a torn one. A *lease* next to the document
keeps two flows from driving the same experiment (which would launch every trial twice); it
expires unless renewed, and a lease whose holder process is known to be dead (same host, pid gone
or reused) is taken over at once, so ``resume`` after a SIGKILL does not have to wait out the TTL.

Two backends share one interface:

* :class:`LocalFolderStore` -- ``<root>/<name>/experiment.json`` (+ ``lease.json``, ``lease.lock``);
  writes go through a temporary file, ``fsync`` and ``os.replace``; lease changes are serialized
  by an ``fcntl.flock`` on ``lease.lock``.
* :class:`S3Store` -- ``<prefix>/<name>/experiment.json`` (+ ``lease.json``) in any S3-compatible
  store; a PUT is atomic, and lease changes use conditional writes (``If-None-Match: *`` to create,
  ``If-Match: <etag>`` to compare-and-swap).

Every OS/boto3 failure crossing this boundary is re-raised as :class:`StorageError` whose message
starts with the location concerned and says what went wrong.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from prefect_hpo.errors import (
    CorruptCheckpointError,
    LeaseHeldError,
    LeaseLostError,
    SpecError,
    StorageError,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointStore",
    "Lease",
    "LocalFolderStore",
    "S3Store",
    "StoreURIError",
    "open_store",
]

EXPERIMENT_FILE = "experiment.json"
LEASE_FILE = "lease.json"
LOCK_FILE = "lease.lock"
_POLL_S = 0.5
_MAX_NAME_LEN = 200
_BAD_NAME_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


class StoreURIError(StorageError, ValueError):
    """A checkpoint-store URI that cannot be understood (unknown scheme, missing bucket, ...).

    It is both a :class:`StorageError` and a ``ValueError`` so either kind of handler catches it.
    """


# --------------------------------------------------------------------------------------------
# Helpers shared by both stores
# --------------------------------------------------------------------------------------------


def _validate_name(name: str) -> str:
    """Experiment names become a folder / key component, so they must be one safe path segment."""
    if not isinstance(name, str) or not name or name.strip() != name:
        raise SpecError(f"invalid experiment name {name!r}: it must be a non-empty string without "
                        "leading or trailing spaces")
    if name in (".", "..") or _BAD_NAME_CHARS.search(name) or len(name) > _MAX_NAME_LEN:
        raise SpecError(f"invalid experiment name {name!r}: it is used as a folder name, so it must "
                        f"not be '.' or '..', contain slashes, backslashes or control characters, "
                        f"or be longer than {_MAX_NAME_LEN} characters")
    return name


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
    except PermissionError:
        pass  # exists, owned by someone else
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
        return f"it expired at {_fmt_time(doc['expires_at'])}"
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


def _fmt_time(epoch: Any) -> str:
    if not isinstance(epoch, (int, float)):
        return "an unknown time"
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def _held_message(name: str, doc: dict[str, Any], lease_location: str, wait_s: float) -> str:
    waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
    return (
        f"experiment {name!r} is already being driven by another flow{waited}: host "
        f"{doc.get('host', '?')}, pid {doc.get('pid', '?')}, holding the lease since "
        f"{_fmt_time(doc.get('acquired_at'))} (last renewed {_fmt_time(doc.get('renewed_at'))}). "
        f"The lease expires at {_fmt_time(doc.get('expires_at'))} unless that flow renews it. "
        f"Stop that flow or wait for it to finish; if it was killed on another machine, retry after "
        f"the lease expires, or delete {lease_location} if you are sure it is gone."
    )


def _lost_message(name: str, doc: dict[str, Any] | None, lease_location: str) -> str:
    if doc is None:
        holder = f"the lease was removed ({lease_location} is gone)"
    else:
        holder = (f"it is now held by host {doc.get('host', '?')}, pid {doc.get('pid', '?')} since "
                  f"{_fmt_time(doc.get('acquired_at'))}")
    return (f"lost the lease on experiment {name!r}: {holder}. This flow must stop driving the "
            "experiment so trials are not launched twice.")


def _parse_lease(raw: bytes) -> dict[str, Any]:
    """Parse a lease document; an unreadable one comes back as ``{"error": ...}``."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return {"error": f"unreadable lease document: {e}"}
    return doc if isinstance(doc, dict) else {"error": "unreadable lease document: not an object"}


def _decode_checkpoint(raw: bytes, location: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptCheckpointError(f"{location}: the checkpoint is not UTF-8 text ({e}); it was "
                                     "left untouched") from e


# --------------------------------------------------------------------------------------------
# Lease
# --------------------------------------------------------------------------------------------


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
                f"expires_at={_fmt_time(self.info.get('expires_at'))}, lost={self._lost})")


# --------------------------------------------------------------------------------------------
# Store interface
# --------------------------------------------------------------------------------------------


class CheckpointStore(ABC):
    """Where experiment documents and their leases live (a local folder or an S3 prefix)."""

    uri: str

    @abstractmethod
    def read(self, name: str) -> str | None:
        """The experiment's JSON text, or None when it has no checkpoint."""

    @abstractmethod
    def write(self, name: str, text: str) -> None:
        """Replace the checkpoint atomically: readers see the old or the new text, never a mix."""

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether the experiment has a checkpoint."""

    @abstractmethod
    def list_names(self) -> list[str]:
        """Sorted names of the experiments that have a checkpoint."""

    @abstractmethod
    def location(self, name: str) -> str:
        """Where the checkpoint of ``name`` lives, for messages."""

    @abstractmethod
    def lease_location(self, name: str) -> str:
        """Where the lease of ``name`` lives, for messages."""

    @abstractmethod
    def read_lease(self, name: str) -> dict[str, Any] | None:
        """The lease document (None if no lease; ``{"error": ...}`` if it cannot be parsed)."""

    def acquire_lease(self, name: str, *, ttl_s: float = 60.0, wait_s: float = 0.0) -> Lease:
        """Become the only driver of ``name``, waiting up to ``wait_s`` for the current holder.

        An existing lease is taken over when it has expired or its holder process on this host is
        dead; otherwise :class:`LeaseHeldError` says who holds it and until when.
        """
        _validate_name(name)
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s!r}")
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            doc = _new_lease_doc(owner, ttl_s)
            holder = self._try_acquire(name, doc)
            if holder is None:
                logger.debug("acquired the lease on %s (owner %s)", self.lease_location(name), owner)
                return Lease(self, name, doc, ttl_s)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LeaseHeldError(_held_message(name, holder, self.lease_location(name), wait_s))
            time.sleep(min(_POLL_S, remaining))

    @abstractmethod
    def _try_acquire(self, name: str, doc: dict[str, Any]) -> dict[str, Any] | None:
        """Install ``doc`` as the lease if free or taken over; else return the holder's document."""

    @abstractmethod
    def _renew_lease(self, name: str, owner: str, ttl_s: float) -> dict[str, Any]:
        """Extend ``owner``'s lease (compare-and-swap) and return the new document."""

    @abstractmethod
    def _release_lease(self, name: str, owner: str) -> None:
        """Delete the lease if ``owner`` still holds it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


# --------------------------------------------------------------------------------------------
# Local folder
# --------------------------------------------------------------------------------------------


class LocalFolderStore(CheckpointStore):
    """Checkpoints in ``<root>/<name>/experiment.json`` on a local (or POSIX-locking) filesystem."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
        self.uri = self.root.as_uri()

    def _dir(self, name: str) -> Path:
        return self.root / _validate_name(name)

    def location(self, name: str) -> str:
        return str(self._dir(name) / EXPERIMENT_FILE)

    def lease_location(self, name: str) -> str:
        return str(self._dir(name) / LEASE_FILE)

    def read(self, name: str) -> str | None:
        path = self._dir(name) / EXPERIMENT_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"{path}: cannot read the checkpoint: {e.strerror or e}") from e
        return _decode_checkpoint(raw, str(path))

    def write(self, name: str, text: str) -> None:
        path = self._dir(name) / EXPERIMENT_FILE
        data = text.encode("utf-8")  # fails before any file is touched if the text is not encodable
        try:
            _atomic_write(path, data)
        except OSError as e:
            raise StorageError(f"{path}: cannot write the checkpoint: {e.strerror or e}") from e

    def exists(self, name: str) -> bool:
        return (self._dir(name) / EXPERIMENT_FILE).is_file()

    def list_names(self) -> list[str]:
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StorageError(f"{self.root}: cannot list experiments: {e.strerror or e}") from e
        return sorted(p.name for p in entries if (p / EXPERIMENT_FILE).is_file())

    def read_lease(self, name: str) -> dict[str, Any] | None:
        path = self._dir(name) / LEASE_FILE
        try:
            return _parse_lease(path.read_bytes())
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"{path}: cannot read the lease: {e.strerror or e}") from e

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        """Serialize lease changes for ``name`` across processes with flock on ``lease.lock``."""
        folder = self._dir(name)
        lock_path = folder / LOCK_FILE
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(f"{lock_path}: cannot open the lease lock: {e.strerror or e}") from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                raise StorageError(f"{lock_path}: cannot lock: {e.strerror or e}") from e
            yield folder / LEASE_FILE
        finally:
            os.close(fd)  # closing drops the flock

    def _try_acquire(self, name: str, doc: dict[str, Any]) -> dict[str, Any] | None:
        data = json.dumps(doc).encode("utf-8")
        with self._locked(name) as path:
            try:
                if _create_exclusive(path, data):
                    return None
                current = _parse_lease(path.read_bytes())
                reason = _takeover_reason(current, time.time())
                if reason is None:
                    return current
                _atomic_write(path, data)
            except OSError as e:
                raise StorageError(f"{path}: cannot take the lease: {e.strerror or e}") from e
        logger.warning("took over the lease on experiment %r from host %s pid %s: %s", name,
                       current.get("host", "?"), current.get("pid", "?"), reason)
        return None

    def _renew_lease(self, name: str, owner: str, ttl_s: float) -> dict[str, Any]:
        with self._locked(name) as path:
            try:
                current = _parse_lease(path.read_bytes())
            except FileNotFoundError:
                raise LeaseLostError(_lost_message(name, None, str(path))) from None
            except OSError as e:
                raise StorageError(f"{path}: cannot read the lease: {e.strerror or e}") from e
            if current.get("owner") != owner:
                raise LeaseLostError(_lost_message(name, current, str(path)))
            now = time.time()
            new = dict(current, renewed_at=now, expires_at=now + ttl_s)
            try:
                _atomic_write(path, json.dumps(new).encode("utf-8"))
            except OSError as e:
                raise StorageError(f"{path}: cannot renew the lease: {e.strerror or e}") from e
            return new

    def _release_lease(self, name: str, owner: str) -> None:
        with self._locked(name) as path:
            try:
                current = _parse_lease(path.read_bytes())
                if current.get("owner") == owner:
                    path.unlink()
                else:
                    logger.debug("not releasing %s: it is held by another owner now", path)
            except FileNotFoundError:
                return
            except OSError as e:
                raise StorageError(f"{path}: cannot release the lease: {e.strerror or e}") from e


def _write_temp(path: Path, data: bytes) -> str:
    """Write ``data`` to a fsynced temporary file next to ``path``; the caller renames or deletes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; some filesystems cannot fsync a directory, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        logger.debug("fsync of folder %s failed: %s", folder, e)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` only if it does not exist; readers never see it half-written.

    A hard link of a complete temporary file is an atomic create-if-absent; filesystems without
    hard links fall back to ``O_CREAT | O_EXCL`` (safe here because lease writers hold the flock).
    """
    tmp = _write_temp(path, data)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(path.parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------------

_ACCESS_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                 "AllAccessDisabled", "ExpiredToken", "InvalidToken", "AccountProblem"}
_CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey",
                   "404"}
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}


class S3Store(CheckpointStore):
    """Checkpoints in ``s3://<bucket>/<prefix>/<name>/experiment.json`` on any S3-compatible store.

    The client is ``boto3.client("s3")`` with no explicit endpoint, so ``AWS_ENDPOINT_URL`` /
    ``AWS_ENDPOINT_URL_S3`` (MinIO, Ceph, moto, ...) and the usual credential chain apply. Leases
    need conditional writes (``If-None-Match`` / ``If-Match``), which AWS S3, recent MinIO and moto
    support.
    """

    def __init__(self, bucket: str, prefix: str = "", *, client: Any | None = None) -> None:
        if not bucket or "/" in bucket:
            raise StoreURIError(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        if client is None:
            client = self._default_client()
        self._client = client

    def _default_client(self) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as e:  # pragma: no cover - boto3 is a dependency
            raise StorageError(f"{self.uri}: boto3 is required for S3 checkpoint stores") from e
        try:
            # Short connect timeout: an unreachable endpoint should fail in seconds, not minutes.
            return boto3.client("s3", config=Config(connect_timeout=5, read_timeout=30))
        except Exception as e:  # noqa: BLE001 -- boto3 raises many unrelated types for bad config
            raise StorageError(f"{self.uri}: cannot create an S3 client: {e}") from e

    @property
    def endpoint(self) -> str:
        return str(getattr(getattr(self._client, "meta", None), "endpoint_url", "") or "?")

    def _key(self, name: str, leaf: str) -> str:
        name = _validate_name(name)
        return f"{self.prefix}/{name}/{leaf}" if self.prefix else f"{name}/{leaf}"

    def location(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name, EXPERIMENT_FILE)}"

    def lease_location(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name, LEASE_FILE)}"

    # -- error translation ------------------------------------------------------------------

    def _error(self, e: Exception, what: str, key: str | None = None) -> StorageError:
        """Turn a botocore error into a StorageError that says what failed and what to check."""
        from botocore.exceptions import (
            ClientError,
            ConnectionError as BotoConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = f"s3://{self.bucket}/{key}" if key else self.uri
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            message = err.get("Message") or ""
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                detail = (f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it or "
                          "fix the store URI")
            elif code in _ACCESS_CODES or status == 403:
                detail = (f"access denied while trying to {what} ({code}: {message or 'no detail'});"
                          " check the AWS credentials and the bucket policy (S3 also answers "
                          "AccessDenied for a missing key when s3:ListBucket is not granted)")
            else:
                detail = f"could not {what}: {code or status} {message}".rstrip()
        elif isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            detail = (f"no usable AWS credentials to {what} ({e}); set AWS_ACCESS_KEY_ID and "
                      "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        elif isinstance(e, BotoConnectionError):
            detail = (f"cannot reach the S3 endpoint {self.endpoint} to {what} ({e}); check "
                      "AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 and the network")
        elif isinstance(e, HTTPClientError):
            detail = f"the S3 endpoint {self.endpoint} failed while trying to {what} ({e})"
        else:
            detail = f"could not {what}: {e}"
        return StorageError(f"{where}: {detail}")

    @staticmethod
    def _code(e: Exception) -> str:
        response = getattr(e, "response", None)
        if not isinstance(response, dict):
            return ""
        code = str(response.get("Error", {}).get("Code", ""))
        return code or str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))

    @staticmethod
    def _boto_errors() -> tuple[type[Exception], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)

    # -- raw object access -------------------------------------------------------------------

    def _get(self, key: str, what: str) -> tuple[bytes, str] | None:
        """(body, etag) of an object, or None if the key does not exist."""
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response["ETag"]
        except self._boto_errors() as e:
            if self._code(e) in _MISSING_KEY_CODES:
                return None
            raise self._error(e, what, key) from e

    def _put(self, key: str, data: bytes, **conditions: str) -> None:
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                ContentType="application/json", **conditions)

    # -- documents ---------------------------------------------------------------------------

    def read(self, name: str) -> str | None:
        key = self._key(name, EXPERIMENT_FILE)
        got = self._get(key, "read the checkpoint")
        return None if got is None else _decode_checkpoint(got[0], f"s3://{self.bucket}/{key}")

    def write(self, name: str, text: str) -> None:
        key = self._key(name, EXPERIMENT_FILE)
        data = text.encode("utf-8")
        try:
            self._put(key, data)
        except self._boto_errors() as e:
            raise self._error(e, "write the checkpoint", key) from e

    def exists(self, name: str) -> bool:
        key = self._key(name, EXPERIMENT_FILE)
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
            return True
        except self._boto_errors() as e:
            if self._code(e) not in _MISSING_KEY_CODES:
                raise self._error(e, "check for the checkpoint", key) from e
        # HEAD has no error body, so a 404 may also mean "no such bucket": tell them apart.
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except self._boto_errors() as e:
            if self._code(e) in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"s3://{self.bucket}/{key}: bucket {self.bucket!r} does not exist"
                                   f" at {self.endpoint}; create it or fix the store URI") from e
            raise self._error(e, "check the bucket", key) from e
        return False

    def list_names(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        names: set[str] = set()
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", []):
                    parts = obj["Key"][len(base):].split("/")
                    if len(parts) == 2 and parts[1] == EXPERIMENT_FILE and parts[0]:
                        names.add(parts[0])
        except self._boto_errors() as e:
            raise self._error(e, "list experiments") from e
        return sorted(names)

    # -- lease -------------------------------------------------------------------------------

    def read_lease(self, name: str) -> dict[str, Any] | None:
        got = self._get(self._key(name, LEASE_FILE), "read the lease")
        return None if got is None else _parse_lease(got[0])

    def _try_acquire(self, name: str, doc: dict[str, Any]) -> dict[str, Any] | None:
        key = self._key(name, LEASE_FILE)
        data = json.dumps(doc).encode("utf-8")
        holder: dict[str, Any] = {}
        for _ in range(8):  # only loops while other drivers change the lease under us
            try:
                self._put(key, data, IfNoneMatch="*")
                return None
            except self._boto_errors() as e:
                if self._code(e) not in _CONFLICT_CODES:
                    raise self._error(e, "create the lease", key) from e
            got = self._get(key, "read the lease")
            if got is None:
                continue  # released in between: try to create it again
            holder = _parse_lease(got[0])
            reason = _takeover_reason(holder, time.time())
            if reason is None:
                return holder
            try:
                self._put(key, data, IfMatch=got[1])
            except self._boto_errors() as e:
                if self._code(e) not in _CONFLICT_CODES:
                    raise self._error(e, "take over the lease", key) from e
                continue  # someone else changed it first: look again
            logger.warning("took over the lease on experiment %r from host %s pid %s: %s", name,
                           holder.get("host", "?"), holder.get("pid", "?"), reason)
            return None
        return holder

    def _renew_lease(self, name: str, owner: str, ttl_s: float) -> dict[str, Any]:
        key = self._key(name, LEASE_FILE)
        location = f"s3://{self.bucket}/{key}"
        for _ in range(5):
            got = self._get(key, "read the lease")
            current = None if got is None else _parse_lease(got[0])
            if current is None or current.get("owner") != owner:
                raise LeaseLostError(_lost_message(name, current, location))
            now = time.time()
            new = dict(current, renewed_at=now, expires_at=now + ttl_s)
            try:
                self._put(key, json.dumps(new).encode("utf-8"), IfMatch=got[1])
                return new
            except self._boto_errors() as e:
                if self._code(e) not in _CONFLICT_CODES:
                    raise self._error(e, "renew the lease", key) from e
        raise LeaseLostError(_lost_message(name, self.read_lease(name), location))

    def _release_lease(self, name: str, owner: str) -> None:
        key = self._key(name, LEASE_FILE)
        got = self._get(key, "read the lease")
        if got is None or _parse_lease(got[0]).get("owner") != owner:
            return
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key, IfMatch=got[1])
        except self._boto_errors() as e:
            code = self._code(e)
            if code in _CONFLICT_CODES:
                return  # changed since we read it, so it is not ours any more
            if code not in ("NotImplemented", "501", "InvalidArgument"):
                raise self._error(e, "release the lease", key) from e
            # A store without conditional deletes: the owner check above must do.
            try:
                self._client.delete_object(Bucket=self.bucket, Key=key)
            except self._boto_errors() as e2:
                raise self._error(e2, "release the lease", key) from e2


# --------------------------------------------------------------------------------------------
# URI parsing
# --------------------------------------------------------------------------------------------

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def open_store(uri: str | os.PathLike[str]) -> CheckpointStore:
    """Open the checkpoint store named by ``uri``.

    Accepted: ``s3://bucket`` or ``s3://bucket/prefix``; ``file:///abs/path``;
    ``file://rel/path`` (relative to the current directory, made absolute now so a later ``chdir``
    does not move the store); or a plain path.
    """
    if isinstance(uri, os.PathLike):
        return LocalFolderStore(os.fspath(uri))
    if not isinstance(uri, str) or not uri.strip():
        raise StoreURIError(f"empty or invalid checkpoint store URI {uri!r}: use a folder path, "
                            "file:///path or s3://bucket/prefix")
    uri = uri.strip()
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else None
    if scheme == "s3":
        rest = uri[3:]
        if not rest.startswith("//"):
            raise StoreURIError(f"invalid S3 URI {uri!r}: expected s3://bucket or s3://bucket/prefix")
        bucket, _, prefix = rest[2:].partition("/")
        if not bucket:
            raise StoreURIError(f"invalid S3 URI {uri!r}: the bucket name is missing "
                                "(expected s3://bucket/prefix)")
        return S3Store(bucket, prefix)
    if scheme == "file":
        from urllib.parse import unquote

        rest = uri[5:]
        if rest.startswith("//"):
            rest = rest[2:]
        path = unquote(rest)
        if not path:
            raise StoreURIError(f"invalid file URI {uri!r}: the path is missing")
        return LocalFolderStore(path)
    # One-letter "schemes" are Windows drive letters; anything else with "://" is unsupported.
    if scheme is not None and len(scheme) > 1 and "://" in uri:
        raise StoreURIError(f"unsupported checkpoint store URI {uri!r}: scheme {scheme!r} is not "
                            "supported; use a folder path, file:///path or s3://bucket/prefix")
    return LocalFolderStore(uri)
