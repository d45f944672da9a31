"""Checkpoints in any S3-compatible store: ``s3://<bucket>/<prefix>/<name>/experiment.json``.

A PUT is atomic; lease changes use conditional writes (``If-None-Match: *`` to create,
``If-Match: <etag>`` to compare-and-swap). boto3 finds the endpoint in ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3`` like any AWS tool, and every botocore error becomes a StorageError.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prefect_hpo.errors import (
    LeaseLostError,
    StorageError,
)


from prefect_hpo.storage.s3_client import S3Settings, foreign_answer, foreign_response, make_client
from prefect_hpo.storage.store_base import (
    EXPERIMENT_FILE,
    LEASE_FILE,
    CheckpointStore,
    StoreURIError,
    _decode_checkpoint,
    _validate_name,
)
from prefect_hpo.storage.lease import (
    _lost_message,
    _parse_lease,
    _takeover_reason,
)

logger = logging.getLogger(__name__)

__all__ = ["S3Store"]

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
        self._settings = S3Settings()
        # bounded timeouts and retries (s3_client.py): a silent endpoint fails within 27 s, not 95 s
        self._client = client if client is not None else make_client(self.uri, self._settings)

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

    def _not_s3(self, answer: str, what: str, key: str | None) -> StorageError:
        where = f"s3://{self.bucket}/{key}" if key else self.uri
        return StorageError(
            f"{where}: could not {what}: the endpoint {self.endpoint} answered {answer}, so it does not "
            "look like an S3 endpoint; check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3"
        )

    def _checked(self, response: dict[str, Any], what: str, key: str | None, *, etag: bool = True,
                 html: bool = True) -> dict[str, Any]:
        """``response`` if it is an S3 answer; else the StorageError saying what came back."""
        answer = foreign_response(response, etag=etag, html=html)
        if answer is not None:
            raise self._not_s3(answer, what, key)
        return response

    def _s3_code(self, e: Exception, what: str, key: str | None, *, head: bool = False) -> str:
        """The S3 error code of ``e``, for deciding what it means; a non-S3 answer raises instead."""
        answer = foreign_answer(e, head=head)
        if answer is not None:
            raise self._not_s3(answer, what, key) from e
        return self._code(e)

    def _error(self, e: Exception, what: str, key: str | None = None, *, head: bool = False) -> StorageError:
        """Turn a botocore error into a StorageError that says what failed and what to check."""
        from botocore.exceptions import (
            ClientError,
            ConnectionError as BotoConnectionError,
            ConnectTimeoutError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        where = f"s3://{self.bucket}/{key}" if key else self.uri
        answer = foreign_answer(e, head=head)
        if answer is not None:
            return self._not_s3(answer, what, key)
        if isinstance(e, ReadTimeoutError):
            return StorageError(
                f"{where}: could not {what}: the S3 endpoint {self.endpoint} accepted the connection but did "
                f"not answer ({self._settings.describe()}); check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, or "
                "raise PREFECT_HPO_S3_READ_TIMEOUT_S for a slow store"
            )
        if isinstance(e, ConnectTimeoutError):
            return StorageError(
                f"{where}: could not {what}: cannot reach the S3 endpoint {self.endpoint}: no connection within "
                f"{self._settings.connect_timeout_s:g} s (tried {self._settings.max_attempts} times); check "
                "AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 and the network"
            )
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
            self._checked(response, what, key)
            return response["Body"].read(), response["ETag"]
        except self._boto_errors() as e:
            if self._s3_code(e, what, key) in _MISSING_KEY_CODES:
                return None
            raise self._error(e, what, key) from e

    def _put(self, key: str, data: bytes, what: str, **conditions: str) -> None:
        """PUT an object; botocore errors propagate (the caller decides what a conflict means)."""
        response = self._client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                           ContentType="application/json", **conditions)
        self._checked(response, what, key, html=False)  # moto labels its PUT answers text/html

    # -- documents ---------------------------------------------------------------------------

    def read(self, name: str) -> str | None:
        key = self._key(name, EXPERIMENT_FILE)
        got = self._get(key, "read the checkpoint")
        return None if got is None else _decode_checkpoint(got[0], f"s3://{self.bucket}/{key}")

    def write(self, name: str, text: str) -> None:
        key = self._key(name, EXPERIMENT_FILE)
        data = text.encode("utf-8")
        try:
            self._put(key, data, "write the checkpoint")
        except self._boto_errors() as e:
            raise self._error(e, "write the checkpoint", key) from e

    def exists(self, name: str) -> bool:
        key = self._key(name, EXPERIMENT_FILE)
        what = "check for the checkpoint"
        try:
            self._checked(self._client.head_object(Bucket=self.bucket, Key=key), what, key)
            return True
        except self._boto_errors() as e:
            if self._s3_code(e, what, key, head=True) not in _MISSING_KEY_CODES:
                raise self._error(e, what, key, head=True) from e
        # HEAD has no error body, so its 404 may also mean "no such bucket", or that the endpoint is
        # not S3 at all; a GET's error document says which (NoSuchKey, NoSuchBucket, or none).
        return self._get(key, what) is not None

    def list_names(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        names: set[str] = set()
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                self._checked(page, "list experiments", None, etag=False)
                if "Name" not in page:  # every ListObjectsV2 result names its bucket
                    raise self._not_s3(f"HTTP {page.get('ResponseMetadata', {}).get('HTTPStatusCode', '?')} "
                                       "without a ListObjects result", "list experiments", None)
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
                self._put(key, data, "create the lease", IfNoneMatch="*")
                return None
            except self._boto_errors() as e:
                if self._s3_code(e, "create the lease", key) not in _CONFLICT_CODES:
                    raise self._error(e, "create the lease", key) from e
            got = self._get(key, "read the lease")
            if got is None:
                continue  # released in between: try to create it again
            holder = _parse_lease(got[0])
            reason = _takeover_reason(holder, time.time())
            if reason is None:
                return holder
            try:
                self._put(key, data, "take over the lease", IfMatch=got[1])
            except self._boto_errors() as e:
                if self._s3_code(e, "take over the lease", key) not in _CONFLICT_CODES:
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
                self._put(key, json.dumps(new).encode("utf-8"), "renew the lease", IfMatch=got[1])
                return new
            except self._boto_errors() as e:
                if self._s3_code(e, "renew the lease", key) not in _CONFLICT_CODES:
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
            code = self._s3_code(e, "release the lease", key)
            if code in _CONFLICT_CODES:
                return  # changed since we read it, so it is not ours any more
            if code not in ("NotImplemented", "501", "InvalidArgument"):
                raise self._error(e, "release the lease", key) from e
            # A store without conditional deletes: the owner check above must do.
            try:
                self._client.delete_object(Bucket=self.bucket, Key=key)
            except self._boto_errors() as e2:
                raise self._error(e2, "release the lease", key) from e2


