"""Checkpoints in a local folder: ``<root>/<name>/experiment.json``, written atomically.

Writes go through a temporary file in the same folder, ``fsync`` and ``os.replace``; lease
changes are serialized by an ``fcntl.flock`` on ``lease.lock`` (which must never be deleted).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect_hpo.errors import (
    LeaseLostError,
    StorageError,
)


from prefect_hpo.storage.store_base import (
    EXPERIMENT_FILE,
    LEASE_FILE,
    LOCK_FILE,
    CheckpointStore,
    _decode_checkpoint,
    _validate_name,
)
from prefect_hpo.storage.lease import (
    _lost_message,
    _parse_lease,
    _takeover_reason,
)

logger = logging.getLogger(__name__)

__all__ = ["LocalFolderStore"]


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


