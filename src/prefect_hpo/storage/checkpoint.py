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

Imports run one way: ``lease`` (the lease document) <- ``store_base`` (the interface) <-
``local_store`` / ``s3_store`` <- this module (``open_store``), so any of them imports on its own.
"""

from __future__ import annotations

import os
import re

from prefect_hpo.storage.lease import Lease
from prefect_hpo.storage.local_store import LocalFolderStore
from prefect_hpo.storage.s3_store import S3Store
from prefect_hpo.storage.store_base import CheckpointStore, StoreURIError

__all__ = [
    "CheckpointStore",
    "Lease",
    "LocalFolderStore",
    "S3Store",
    "StoreURIError",
    "open_store",
]


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
