"""The boto3 client of S3 checkpoint stores, and how to tell an S3 answer from another server's.

Bounded waits: a 30 s read timeout with botocore's legacy retries made one operation against a
silent endpoint cost about 95 s, and the flow checkpoints after every change. Here a request
gives up after ``connect_timeout_s`` to connect and ``read_timeout_s`` of silence, and is tried
``max_attempts`` times in all (the first try included) in botocore's "standard" retry mode,
which waits rand(0, 1) x 2^(n-1) s before retry n (so at most 1 s, then 2 s). Worst case per
operation with the defaults (3 s, 5 s, 3 attempts): 3 x (3 + 5) s + 3 s of backoff = 27 s
(measured against a silent endpoint: 15 s, three 5 s reads); a refused connection fails in the
backoff alone (~3 s). ``PREFECT_HPO_S3_CONNECT_TIMEOUT_S``, ``PREFECT_HPO_S3_READ_TIMEOUT_S`` and
``PREFECT_HPO_S3_MAX_ATTEMPTS`` change them (a lease renewal must fit the lease's TTL: 60 s).

Foreign answers: an ``AWS_ENDPOINT_URL`` that points at another HTTP server (a web UI, a
proxy) answers too, just not in S3's language: errors without an S3 error document (botocore
then reports the bare status as the code), pages of ``text/html``, objects without an ETag.
Taken at face value, a 404 to a conditional PUT looked like a lease conflict and the HTML page
like someone else's unreadable lease ("held by host ?, pid ?"); :func:`foreign_answer` names
what came back instead, so the error can say the store could not be read.
"""

from __future__ import annotations

import os
from typing import Any

from prefect_hpo.errors import StorageError

__all__ = ["S3Settings", "foreign_answer", "foreign_response", "make_client"]

#: Numeric codes a real S3 may send without an error document: conditional-request conflicts.
_BARE_CONFLICTS = {"409", "412"}


class S3Settings:
    """Timeouts and attempts of the S3 client, from ``PREFECT_HPO_S3_*`` (defaults above)."""

    def __init__(self) -> None:
        self.connect_timeout_s = _number("PREFECT_HPO_S3_CONNECT_TIMEOUT_S", 3.0)
        self.read_timeout_s = _number("PREFECT_HPO_S3_READ_TIMEOUT_S", 5.0)
        self.max_attempts = int(_number("PREFECT_HPO_S3_MAX_ATTEMPTS", 3, integer=True))

    def describe(self) -> str:
        """For messages: how long the client waited before it gave up."""
        tries = "once" if self.max_attempts == 1 else f"{self.max_attempts} times"
        return f"{self.read_timeout_s:g} s per request, tried {tries}"


def _number(variable: str, default: float, *, integer: bool = False) -> float:
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    if not value > 0 or value == float("inf"):
        kind = "a positive integer" if integer else "a positive number of seconds"
        raise StorageError(f"{variable}={raw!r}: must be {kind}")
    return value


def make_client(uri: str, settings: S3Settings) -> Any:
    """``boto3.client("s3")`` (endpoint and credentials from the usual AWS variables), bounded."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:  # pragma: no cover - boto3 is a dependency
        raise StorageError(f"{uri}: boto3 is required for S3 checkpoint stores") from e
    config = Config(
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},  # the first try included
    )
    try:
        return boto3.client("s3", config=config)
    except Exception as e:  # noqa: BLE001 -- boto3 raises many unrelated types for bad config
        raise StorageError(f"{uri}: cannot create an S3 client: {e}") from e


def _described(metadata: dict[str, Any]) -> str:
    status = metadata.get("HTTPStatusCode", "?")
    headers = {str(k).lower(): v for k, v in (metadata.get("HTTPHeaders") or {}).items()}
    content_type = headers.get("content-type") or "no Content-Type"
    server = f", Server: {headers['server']}" if headers.get("server") else ""
    return f"HTTP {status} ({content_type}{server})"


def foreign_answer(error: Exception, *, head: bool = False) -> str | None:
    """What came back, if a botocore error is an answer no S3 server gives; else None.

    S3 explains every failed GET/PUT/DELETE in an XML error document whose code botocore
    reports (``NoSuchKey``, ``PreconditionFailed``...); without one the code is the bare status.
    HEAD answers have no body (and moto labels its HEAD errors text/html), so a failed HEAD
    (``head=True``) tells nothing either way.
    """
    response = getattr(error, "response", None)
    if head or not isinstance(response, dict):
        return None
    code = str((response.get("Error") or {}).get("Code", ""))
    if not code or (code.isdigit() and code not in _BARE_CONFLICTS):
        return f"{_described(response.get('ResponseMetadata') or {})} without an S3 error document"
    return None


def foreign_response(response: dict[str, Any], *, etag: bool = True, html: bool = True) -> str | None:
    """What came back, if a successful answer is not one of S3's: an HTML page where an object
    or listing was asked for (``html``; our objects are application/json, listings XML), or no
    ETag where S3 always sends one (``etag``: GET, HEAD and PUT of an object)."""
    metadata = response.get("ResponseMetadata") or {}
    headers = {str(k).lower(): v for k, v in (metadata.get("HTTPHeaders") or {}).items()}
    if html and str(headers.get("content-type", "")).startswith("text/html"):
        return f"{_described(metadata)}: an HTML page, not an S3 object"
    if etag and not response.get("ETag"):
        return f"{_described(metadata)} without the ETag every S3 object has"
    return None
