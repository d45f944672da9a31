"""The checkpoint-store interface and what every store shares (file names, name rules, decoding).

The storage package imports one way: ``lease`` (the lease document) <- this module <- the stores
(``local_store``, ``s3_store``) <- ``checkpoint`` (``open_store``), so each module can be imported
on its own, in any order (the stores used to import names back from ``checkpoint``, which
imported them at its bottom: importing a store first failed with a circular import).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from abc import ABC, abstractmethod
from typing import Any

from prefect_hpo.errors import CorruptCheckpointError, LeaseHeldError, SpecError, StorageError
from prefect_hpo.storage.lease import Lease, _held_message, _new_lease_doc

logger = logging.getLogger("prefect_hpo.storage.checkpoint")

__all__ = ["CheckpointStore", "StoreURIError", "EXPERIMENT_FILE", "LEASE_FILE", "LOCK_FILE"]

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


def _decode_checkpoint(raw: bytes, location: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptCheckpointError(f"{location}: the checkpoint is not UTF-8 text ({e}); it was "
                                     "left untouched") from e


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
