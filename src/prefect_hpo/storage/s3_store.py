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


from prefect_hpo.storage.checkpoint import (
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


