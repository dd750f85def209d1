"""Blob store on S3-compatible object storage (AWS S3, MinIO, SeaweedFS, Ceph RGW).

**Client.** boto3/botocore, called in worker threads (`trio.to_thread.run_sync`, with a
limiter of its own so S3 never starves the database of threads). botocore is AWS's own,
maintained client: SigV4 signing, presigned URLs, path-style and virtual-host addressing,
custom CA bundles and the whole multipart and copy API come with it, and nothing here signs a
request by hand. Measured against SeaweedFS on loopback it moves 16 MiB parts and 1 MiB reads
as fast as the server takes them. botocore's own retries are turned off: `_call` retries 5xx,
SlowDown/throttling and connection errors itself, with exponential backoff and full jitter,
sleeping in trio between attempts so a cancellation is never held up by a backoff.

**Keys** (layout.py, under an optional prefix)::

    blobs/<alg>/<ab>/<hex>/<storage-id>   a committed blob (a fresh storage id per commit)
    uploads/<id>/state                    the upload's state (JSON): the source of truth
    uploads/<id>/tail/<segment>           bytes not yet in a part (< 5 MiB together)
    uploads/<id>/data                     where the upload's multipart upload completes

**Uploads** are S3 multipart uploads. Bytes are gathered into parts of `part_size` (doubling
every 1,000 parts, so 10,000 parts reach terabytes); up to `PARTS_IN_FLIGHT` parts are sent
while the next one is received, so memory per upload is bounded by a few parts, whatever the
blob's size. What is left at the end of a request (less than 5 MiB, S3's smallest part) is kept
as a small tail segment object and merged into the next part. Nothing lives only in memory: the
state object lists the parts and tail segments, and `Progress.written` counts only bytes the
state object records, so after a crash, a disconnect or a cancellation the upload holds exactly
what the caller was told.

A crash may leave more bytes than the database recorded; the next append then starts at an
older offset. The state keeps the checkpoint at which the latest append started (`base`), and
the store rolls back to it by forgetting the later parts (their numbers are simply uploaded
again) and restoring the tail segments of that checkpoint, which are deleted only once a later
append confirms the new size. Any other offset is reached by completing the upload and
copying its first bytes into a new multipart upload (rare, and server-side).

**Verification before visibility** (DESIGN.md, storage key layout). S3 cannot read back an
incomplete multipart upload and has no rename, and a blob's key contains its digest. So:

* When the digest is known before the bytes (a monolithic `POST ?digest=`, or a `PUT
  ?digest=` that carries the whole blob), the multipart upload is created at the blob's final
  key, the running hash is checked before `CompleteMultipartUpload`, and there is no copy.
* Otherwise (chunks sent with `PATCH`, as docker, podman and skopeo do) the upload completes at
  `uploads/<id>/data` once its digest is verified, and is copied server-side to its final key
  (`CopyObject`, or parallel `UploadPartCopy` for large and > 5 GiB blobs). Until the database
  row exists, nothing refers to either key.
* When the running hash was lost (a restart, or another worker), `hash_upload` completes the
  upload where it stands, reads it back once and hashes it; `commit` then copies it, or leaves
  it in place when it already sits at its final key. An upload completed this way still takes
  more chunks: they continue in a new multipart upload whose first parts are copied from it.

A cancelled, expired or failed upload is removed with everything under `uploads/<id>/`, and
its multipart uploads are aborted, found both from the state and by listing in-progress
multipart uploads, so no orphaned parts stay billed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import random
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import boto3
import botocore.exceptions
import trio
import urllib3.exceptions
from botocore.config import Config as BotoConfig

from appliance import backoff
from appliance.config import Config, read_secret
from appliance.errors import (
    BlobNotFound,
    ConfigError,
    SizeInvalid,
    StorageFull,
    Unavailable,
    UploadNotFound,
)
from appliance.oci.digest import Digest, Hasher, new_hasher
from appliance.storage import layout
from appliance.storage.base import Progress, StoredObject
from appliance.storage.pending import Pending
from appliance.storage.pieces import PieceCutter

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

log = logging.getLogger("berth.storage.s3")

T = TypeVar("T")
Addressing = Literal["auto", "virtual", "path"]
MIB = 1 << 20
MIN_PART = 5 * MIB  # S3's smallest part, except the last
MAX_PART = 5 << 30  # S3's largest part, and largest single CopyObject
MAX_PARTS = 10_000
PARTS_IN_FLIGHT = 3
READ_CHUNK = MIB
COPY_PART = 256 * MIB  # parallel UploadPartCopy ranges for large copies
COPY_SINGLE = 64 * MIB  # up to this size one CopyObject is enough
COPIES_IN_FLIGHT = 4
REDIRECT_TTL = 1200  # seconds a presigned download URL stays valid

_RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "ServerBusy",
}
_FULL_CODES = {"XMinioStorageFull", "QuotaExceeded", "InsufficientStorage", "StorageFull"}
_UNSUPPORTED_CODES = {"NotImplemented"}
_MISSING_CODES = {"NoSuchKey", "NoSuchUpload", "NotFound", "404"}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "403",
    "InvalidToken",
    "ExpiredToken",
}


class _Missing(Exception):
    """An object or multipart upload does not exist (callers pick the domain error)."""


def _error_code(e: botocore.exceptions.ClientError) -> tuple[str, int]:
    error = e.response.get("Error", {})
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(error.get("Code", status)), status


def _retryable(e: Exception) -> bool:
    if isinstance(e, botocore.exceptions.ClientError):
        code, status = _error_code(e)
        if code in _UNSUPPORTED_CODES or status == 501:
            return False  # asking again will not make the service implement it
        return code in _RETRYABLE_CODES or (status >= 500 and code not in _FULL_CODES)
    if isinstance(e, botocore.exceptions.SSLError):
        return False  # a certificate that does not verify will not verify next time either
    return isinstance(
        e,
        (
            botocore.exceptions.ConnectionError,  # refused, connect timeouts
            botocore.exceptions.HTTPClientError,  # closed, reset, read timeouts, broken bodies
            botocore.exceptions.IncompleteReadError,
            urllib3.exceptions.HTTPError,
            ConnectionError,
            TimeoutError,
        ),
    )


@dataclass(frozen=True)
class S3Settings:
    """Everything the store needs from `[storage.s3]`, secrets already read from their files."""

    bucket: str
    endpoint: str = ""
    region: str = "us-east-1"
    prefix: str = ""
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    addressing: str = "path"
    tls_verify: bool = True
    ca_file: str = ""
    create_bucket: bool = False
    redirect: bool = False
    part_size: int = 16 * MIB
    max_attempts: int = 5
    batch_delete: bool = True

    @classmethod
    def from_config(cls, config: Config) -> S3Settings:
        def secret(name: str) -> str:
            return read_secret(config, "storage.s3", name, f"{name}_file")

        settings = cls(
            bucket=config["storage.s3.bucket"],
            endpoint=config["storage.s3.endpoint"],
            region=config["storage.s3.region"],
            prefix=config["storage.s3.prefix"],
            access_key=secret("access_key"),
            secret_key=secret("secret_key"),
            addressing=config["storage.s3.addressing"],
            tls_verify=config["storage.s3.tls_verify"],
            ca_file=config["storage.s3.ca_file"],
            create_bucket=config["storage.s3.create_bucket"],
            redirect=config["storage.s3.redirect"],
            part_size=config["storage.s3.part_size"],
            max_attempts=config["storage.s3.max_attempts"],
            batch_delete=config["storage.s3.batch_delete"],
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.bucket:
            raise ConfigError("storage.s3.bucket must be set when storage.backend is 's3'")
        if not MIN_PART <= self.part_size <= MAX_PART:
            raise ConfigError(
                f"storage.s3.part_size must be between {MIN_PART} (5 MiB) and {MAX_PART} (5 GiB)"
            )
        if self.max_attempts < 1:
            raise ConfigError("storage.s3.max_attempts must be at least 1")
        if bool(self.access_key) != bool(self.secret_key):
            raise ConfigError("storage.s3.access_key and storage.s3.secret_key go together")
        if self.ca_file and not Path(self.ca_file).is_file():
            raise ConfigError(f"storage.s3.ca_file: {self.ca_file} is not a file")

    @property
    def where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint or 'AWS S3 ' + self.region}"


def make_client(settings: S3Settings) -> S3Client:
    """A botocore S3 client for `settings`, with botocore's own retries off (see `_call`)."""
    verify: bool | str = (settings.ca_file or True) if settings.tls_verify else False
    if not settings.tls_verify:
        # Said once here, not by urllib3 on every request.
        log.warning("storage.s3.tls_verify is off: the S3 endpoint's certificate is not checked")
        warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    config = BotoConfig(
        region_name=settings.region,
        signature_version="s3v4",
        s3={
            "addressing_style": cast(Addressing, settings.addressing),
            # Part bodies are not hashed a second time for the signature; TLS (or loopback)
            # protects them, and the digest of the whole blob is verified anyway.
            "payload_signing_enabled": False,
        },
        # Newer botocore adds CRC checksums (aws-chunked bodies) that several S3-compatible
        # servers refuse; send them only where the API requires one.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=64,
        connect_timeout=5,
        read_timeout=60,
        tcp_keepalive=True,
    )
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key or None,
        aws_secret_access_key=settings.secret_key or None,
        region_name=settings.region,
    )
    try:
        return session.client(
            "s3",
            endpoint_url=settings.endpoint or None,
            verify=verify,
            config=config,
        )
    except (botocore.exceptions.BotoCoreError, ValueError) as e:
        raise ConfigError(f"storage.s3: {e}") from e


@dataclass
class _Checkpoint:
    parts: int = 0
    tail: list[tuple[str, int]] = field(default_factory=list)
    sealed: int | None = None


@dataclass
class _State:
    """An upload, as its state object records it (see the module docstring)."""

    key: str  # where the multipart upload completes, relative to the prefix
    digest: str | None = None  # set when `key` is the final key of this digest
    mpu: str | None = None  # the multipart upload's id
    parts: list[tuple[str, int]] = field(default_factory=list)  # (ETag, size); number = index+1
    tail: list[tuple[str, int]] = field(default_factory=list)  # (segment name, size)
    sealed: int | None = None  # completed at `key` with this many bytes
    base: _Checkpoint = field(default_factory=_Checkpoint)

    @property
    def size(self) -> int:
        if self.sealed is not None:
            return self.sealed
        return sum(s for _, s in self.parts) + sum(s for _, s in self.tail)

    @property
    def base_size(self) -> int:
        if self.base.sealed is not None:
            return self.base.sealed
        return sum(s for _, s in self.parts[: self.base.parts]) + sum(s for _, s in self.base.tail)

    @property
    def tail_size(self) -> int:
        return sum(s for _, s in self.tail)

    def checkpoint(self) -> None:
        """This state is confirmed: a later crash rolls back to it."""
        self.base = _Checkpoint(len(self.parts), list(self.tail), self.sealed)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "v": 1,
                "key": self.key,
                "digest": self.digest,
                "mpu": self.mpu,
                "parts": self.parts,
                "tail": self.tail,
                "sealed": self.sealed,
                "base": {
                    "parts": self.base.parts,
                    "tail": self.base.tail,
                    "sealed": self.base.sealed,
                },
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> _State:
        raw: dict[str, Any] = json.loads(data)
        base = raw["base"]
        return cls(
            key=raw["key"],
            digest=raw["digest"],
            mpu=raw["mpu"],
            parts=[(str(e), int(s)) for e, s in raw["parts"]],
            tail=[(str(n), int(s)) for n, s in raw["tail"]],
            sealed=raw["sealed"],
            base=_Checkpoint(
                int(base["parts"]), [(str(n), int(s)) for n, s in base["tail"]], base["sealed"]
            ),
        )


def _part_size(base: int, number: int) -> int:
    """The size part `number` is cut at: doubling every 1,000 parts, so 10,000 parts of a
    16 MiB base hold about 16 TiB."""
    return min(MAX_PART, base << ((number - 1) // 1000))


def _upload_prefix(upload_id: str) -> str:
    return layout.upload_key(upload_id).rsplit("/", 1)[0] + "/"


class Deleter:
    """Deletes objects many per request (DeleteObjects), or one per request where the
    service lacks DeleteObjects: when `batch` is off (`storage.s3.batch_delete`), or from the
    first NotImplemented answer on (Google Cloud Storage answers so). Blocking; raises
    botocore's errors for the caller to retry and translate."""

    def __init__(self, client: S3Client, bucket: str, where: str, batch: bool = True) -> None:
        self.client = client
        self.bucket = bucket
        self.where = where
        self.batch = batch

    def delete(self, keys: list[str]) -> None:
        """Delete up to 1,000 objects (full keys); missing ones are fine."""
        if len(keys) > 1 and self.batch:
            objects: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in keys]
            try:
                result = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )
            except botocore.exceptions.ClientError as e:
                if _error_code(e)[0] not in _UNSUPPORTED_CODES:
                    raise
                self.batch = False
                log.warning(
                    "S3 %s does not implement DeleteObjects: deleting one object per request "
                    "(set storage.s3.batch_delete = false to skip the attempt)",
                    self.where,
                )
            else:
                failed = result.get("Errors", [])
                if failed:
                    raise botocore.exceptions.ClientError(
                        {
                            "Error": {
                                "Code": failed[0].get("Code", "InternalError"),
                                "Message": failed[0].get("Message", ""),
                            }
                        },
                        "DeleteObjects",
                    )
                return
        for key in keys:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except botocore.exceptions.ClientError as e:
                # S3 answers 204 for a missing object, Google Cloud Storage 404.
                if _error_code(e)[0] not in _MISSING_CODES:
                    raise


class S3Store:
    """A BlobStore in one S3 bucket, under an optional key prefix (see the module docstring).

    Also a `BlobRedirect`: with `redirect` on, blob downloads may go straight to S3 through a
    presigned URL.
    """

    parallel_deletes = 8  # see BlobStore

    def __init__(
        self,
        settings: S3Settings,
        client: S3Client | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        settings.validate()
        self.settings = settings
        self.bucket = settings.bucket
        prefix = settings.prefix.strip("/")
        self.prefix = prefix + "/" if prefix else ""
        self.part_size = settings.part_size
        self.max_attempts = settings.max_attempts
        self.client = client if client is not None else make_client(settings)
        self.deleter = Deleter(self.client, self.bucket, settings.where, settings.batch_delete)
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        # S3 calls get threads of their own: a slow S3 must not hold up database calls.
        self._threads = trio.CapacityLimiter(48)

    # -- plumbing ------------------------------------------------------------------------

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(5 s, 0.1 s·2^attempt)]."""
        return backoff.full_jitter(attempt, 0.1, 5.0, self._rng)

    def _translate(self, e: Exception, what: str) -> Exception:
        if isinstance(e, botocore.exceptions.ClientError):
            code, status = _error_code(e)
            message = e.response.get("Error", {}).get("Message", "") or code
            if code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket"):
                return _Missing(f"{what}: {code}")
            if code in _FULL_CODES or status == 507:
                return StorageFull(f"object storage is full: no space left for {what}")
            if code == "NoSuchBucket":
                return Unavailable(f"S3 {self.settings.where} does not exist")
            if code in _CREDENTIAL_CODES:
                return Unavailable(
                    f"S3 refused access to {self.settings.where} ({code}): check "
                    "storage.s3.access_key and secret_key"
                )
            return Unavailable(f"S3 error on {what}: {code}: {message}")
        if isinstance(e, botocore.exceptions.NoCredentialsError):
            return Unavailable(
                "no S3 credentials: set storage.s3.access_key and storage.s3.secret_key"
            )
        return Unavailable(f"cannot reach S3 {self.settings.where} for {what}: {e}")

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one S3 request in a thread; retry 5xx, throttling and connection errors with
        backoff and jitter; translate what is left into domain errors (or `_Missing`).

        Cancellation waits for a request already sent (boto3 cannot be interrupted; its
        connect and read timeouts bound the wait); a backoff sleep is cancelled at once.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await trio.to_thread.run_sync(fn, limiter=self._threads)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                if _retryable(e) and attempt < self.max_attempts:
                    delay = self._backoff(attempt)
                    log.warning("S3 %s failed (%s); retrying in %.2fs", what, e, delay)
                    await self._sleep(delay)
                    continue
                raise self._translate(e, what) from e

    async def _get_bytes(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        def get() -> bytes:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._k(key)}
            if length is not None:
                if length == 0:
                    return b""
                kwargs["Range"] = f"bytes={start}-{start + length - 1}"
            body = self.client.get_object(**kwargs)["Body"]
            try:
                data = body.read()
            finally:
                body.close()
            if length is not None and len(data) != length:
                raise botocore.exceptions.IncompleteReadError(
                    actual_bytes=len(data), expected_bytes=length
                )
            return data

        return await self._call(f"reading {key}", get)

    async def _put_bytes(self, key: str, data: bytes) -> None:
        await self._call(
            f"writing {key}",
            lambda: self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data),
        )

    async def _delete_keys(self, keys: list[str]) -> None:
        """Delete objects (full keys, prefix included); missing ones are fine."""
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            await self._call("deleting objects", functools.partial(self.deleter.delete, batch))

    async def _list_keys(self, prefix: str) -> list[str]:
        """Full keys of the objects under `prefix` (prefix included)."""

        def listing() -> list[str]:
            keys: list[str] = []
            token: str | None = None
            while True:
                kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
                if token:
                    kwargs["ContinuationToken"] = token
                page = self.client.list_objects_v2(**kwargs)
                keys.extend(o["Key"] for o in page.get("Contents", []))
                token = page.get("NextContinuationToken")
                if not page.get("IsTruncated") or not token:
                    return keys

        return await self._call(f"listing {prefix}", listing)

    async def _abort_all(self, prefix: str) -> None:
        """Abort every multipart upload in progress under `prefix` (a full key prefix)."""

        def listing() -> list[tuple[str, str]]:
            found: list[tuple[str, str]] = []
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            while True:
                page = self.client.list_multipart_uploads(**kwargs)
                found.extend((u["Key"], u["UploadId"]) for u in page.get("Uploads", []))
                if not page.get("IsTruncated"):
                    return found
                kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
                kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

        for key, mpu in await self._call(f"listing multipart uploads {prefix}", listing):
            await self._abort(key, mpu)

    async def _abort(self, full_key: str, mpu: str) -> None:
        with contextlib.suppress(_Missing):
            await self._call(
                "aborting a multipart upload",
                lambda: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full_key, UploadId=mpu
                ),
            )

    # -- upload state --------------------------------------------------------------------

    def _state_key(self, upload_id: str) -> str:
        if not layout.is_upload_id(upload_id):
            raise UploadNotFound("upload unknown")
        return _upload_prefix(upload_id) + "state"

    def _segment_key(self, upload_id: str, name: str) -> str:
        return f"{_upload_prefix(upload_id)}tail/{name}"

    async def _load(self, upload_id: str) -> _State:
        try:
            data = await self._get_bytes(self._state_key(upload_id))
        except _Missing:
            raise UploadNotFound("upload unknown") from None
        return _State.from_json(data)

    async def _save(self, upload_id: str, state: _State) -> None:
        await self._put_bytes(self._state_key(upload_id), state.to_json())

    async def _forget_segments(self, upload_id: str, names: list[str]) -> None:
        if names:
            await self._delete_keys([self._k(self._segment_key(upload_id, n)) for n in names])

    async def _read_tail(self, upload_id: str, tail: list[tuple[str, int]]) -> bytes:
        pieces = [await self._get_bytes(self._segment_key(upload_id, n), 0, s) for n, s in tail]
        return b"".join(pieces)

    async def _settle(self, upload_id: str, state: _State, offset: int) -> _State:
        """Make the upload hold exactly `offset` bytes (see the module docstring)."""
        size = state.size
        if offset > size:
            raise UploadNotFound("upload data is shorter than recorded")
        if state.sealed is not None:
            if offset == size:
                return state
            return await self._unseal(upload_id, state, offset)
        if offset == size:
            garbage = [n for n, s in state.base.tail if (n, s) not in state.tail]
            if state.base != _Checkpoint(len(state.parts), state.tail, None):
                state.checkpoint()
                await self._save(upload_id, state)
                await self._forget_segments(upload_id, garbage)
            return state
        if offset == state.base_size and state.base.sealed is None:
            garbage = [n for n, s in state.tail if (n, s) not in state.base.tail]
            state.parts = state.parts[: state.base.parts]
            state.tail = list(state.base.tail)
            await self._save(upload_id, state)
            await self._forget_segments(upload_id, garbage)
            return state
        state = await self._seal(upload_id, state)
        return await self._unseal(upload_id, state, offset)

    async def _start_multipart(self, upload_id: str, state: _State, *, save: bool = True) -> str:
        """Start the multipart upload of `state` at its key and record it (unless `save` is
        off: the caller records it). A multipart upload that a crash leaves unrecorded is
        found by `_remove_upload`, which lists those in progress at the upload's keys."""
        if save and not state.key.startswith(_upload_prefix(upload_id)):
            # Record where it goes first, so that a crash cannot hide an upload at a blob key.
            await self._save(upload_id, state)
        key = self._k(state.key)
        result = await self._call(
            "starting a multipart upload",
            lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=key),
        )
        state.mpu = result["UploadId"]
        if save:
            await self._save(upload_id, state)
        return state.mpu

    async def _upload_part(self, state: _State, number: int, data: bytes) -> str:
        mpu = state.mpu
        assert mpu is not None
        try:
            result = await self._call(
                f"uploading part {number}",
                lambda: self.client.upload_part(
                    Bucket=self.bucket,
                    Key=self._k(state.key),
                    UploadId=mpu,
                    PartNumber=number,
                    Body=data,
                ),
            )
        except _Missing:
            raise UploadNotFound("the upload's multipart upload has gone; start again") from None
        return result["ETag"]

    async def _complete(self, state: _State) -> None:
        mpu = state.mpu
        assert mpu is not None
        parts = [{"ETag": etag, "PartNumber": i + 1} for i, (etag, _) in enumerate(state.parts)]
        size = sum(s for _, s in state.parts)
        try:
            await self._call(
                "completing a multipart upload",
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self._k(state.key),
                    UploadId=mpu,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                ),
            )
        except _Missing:
            # A retried completion whose first attempt went through, or a crash after it.
            if await self._object_size(state.key) != size:
                raise UploadNotFound("the upload's multipart upload has gone") from None

    async def _object_size(self, key: str) -> int | None:
        try:
            head = await self._call(
                f"checking {key}",
                lambda: self.client.head_object(Bucket=self.bucket, Key=self._k(key)),
            )
        except _Missing:
            return None
        return int(head["ContentLength"])

    async def _seal(self, upload_id: str, state: _State) -> _State:
        """Complete the multipart upload at `state.key` (the tail becomes its last part), so
        that its bytes can be read and copied. The upload goes on as a sealed one."""
        if state.sealed is not None:
            return state
        if state.tail:
            if state.mpu is None:
                await self._start_multipart(upload_id, state)
            data = await self._read_tail(upload_id, state.tail)
            etag = await self._upload_part(state, len(state.parts) + 1, data)
            state.parts.append((etag, len(data)))
        if not state.parts:  # nothing at all: an empty object (S3 completes no empty upload)
            if state.mpu is not None:
                await self._abort(self._k(state.key), state.mpu)
            await self._put_bytes(state.key, b"")
        else:
            await self._complete(state)
        garbage = [n for n, _ in state.tail + state.base.tail]
        sealed = _State(state.key, state.digest, sealed=sum(s for _, s in state.parts))
        sealed.checkpoint()
        await self._save(upload_id, sealed)
        await self._forget_segments(upload_id, garbage)
        return sealed

    async def _unseal(self, upload_id: str, state: _State, offset: int) -> _State:
        """Continue a sealed upload from its first `offset` bytes: copy them server-side into
        a new multipart upload at the same key (a tail segment when under 5 MiB)."""
        fresh = _State(state.key, state.digest)
        if offset >= MIN_PART:
            # Recorded only once its parts are: until then the sealed state stays the truth.
            await self._start_multipart(upload_id, fresh, save=False)
            source = self._k(state.key)
            fresh.parts = await self._copy_parts(source, fresh, offset)
        elif offset:
            name = uuid.uuid4().hex
            data = await self._get_bytes(state.key, 0, offset)
            await self._put_bytes(self._segment_key(upload_id, name), data)
            fresh.tail = [(name, offset)]
        fresh.checkpoint()
        await self._save(upload_id, fresh)
        if fresh.mpu is None:
            # The completed object is not needed any more (with parts, the next completion
            # at the same key replaces it).
            await self._delete_keys([self._k(state.key)])
        return fresh

    async def _copy_parts(self, source: str, target: _State, length: int) -> list[tuple[str, int]]:
        """Copy the first `length` bytes of `source` (a full key) into `target`'s multipart
        upload as parts 1..n, all at least 5 MiB, several at a time."""
        mpu = target.mpu
        assert mpu is not None
        size = max(COPY_PART, math.ceil(length / MAX_PARTS))
        ranges = [(start, min(size, length - start)) for start in range(0, length, size)]
        if len(ranges) > 1 and ranges[-1][1] < MIN_PART:
            last = ranges.pop()
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + last[1])
        parts: list[tuple[str, int]] = [("", 0)] * len(ranges)
        limit = trio.Semaphore(COPIES_IN_FLIGHT)
        failures: list[Exception] = []

        async def copy(i: int, start: int, n: int) -> None:
            async with limit:
                try:
                    result = await self._call(
                        "copying a part",
                        lambda: self.client.upload_part_copy(
                            Bucket=self.bucket,
                            Key=self._k(target.key),
                            UploadId=mpu,
                            PartNumber=i + 1,
                            CopySource={"Bucket": self.bucket, "Key": source},
                            CopySourceRange=f"bytes={start}-{start + n - 1}",
                        ),
                    )
                except (_Missing, Unavailable, StorageFull) as e:
                    failures.append(e)
                    nursery.cancel_scope.cancel()
                    return
                parts[i] = (result["CopyPartResult"]["ETag"], n)

        async with trio.open_nursery() as nursery:
            for i, (start, n) in enumerate(ranges):
                nursery.start_soon(copy, i, start, n)
        if failures:
            failure = failures[0]
            if isinstance(failure, _Missing):
                raise Unavailable(f"S3 object {source} vanished during a copy")
            raise failure
        return parts

    async def _copy(self, source_key: str, target_key: str, length: int) -> None:
        """Server-side copy of `source_key` (exactly `length` bytes) to `target_key`.
        On failure nothing is left at `target_key`."""
        source = self._k(source_key)
        if length <= COPY_SINGLE:
            await self._call(
                f"copying to {target_key}",
                lambda: self.client.copy_object(
                    Bucket=self.bucket,
                    Key=self._k(target_key),
                    CopySource={"Bucket": self.bucket, "Key": source},
                ),
            )
            return
        target = _State(target_key)
        result = await self._call(
            "starting a multipart copy",
            lambda: self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self._k(target_key)
            ),
        )
        target.mpu = result["UploadId"]
        try:
            target.parts = await self._copy_parts(source, target, length)
            await self._complete(target)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._abort(self._k(target_key), target.mpu)
            raise

    # -- BlobStore -----------------------------------------------------------------------

    async def create_upload(self, upload_id: str) -> None:
        key = self._state_key(upload_id)
        with contextlib.suppress(UploadNotFound):
            await self._load(upload_id)
            return
        await self._put_bytes(key, _State(layout.upload_key(upload_id)).to_json())

    async def upload_size(self, upload_id: str) -> int:
        return (await self._load(upload_id)).size

    async def append(
        self,
        upload_id: str,
        offset: int,
        chunks: AsyncIterator[bytes],
        hasher: Hasher | None,
        progress: Progress,
        *,
        digest: Digest | None = None,
    ) -> int:
        """See BlobStore.append. `digest`, when given at offset 0, is what the caller expects
        the whole blob to be: its parts then go straight to that blob's key (no copy later)."""
        state = await self._settle(upload_id, await self._load(upload_id), offset)
        if state.sealed is not None:
            state = await self._unseal(upload_id, state, offset)
        if offset == 0:
            if state.mpu is not None:  # parts of an abandoned first attempt
                await self._abort(self._k(state.key), state.mpu)
                state.mpu = None
            if not state.key.startswith(_upload_prefix(upload_id)):
                await self._abort_all(self._k(state.key))  # one a crash left unrecorded
            state.key = layout.blob_key(digest) if digest else layout.upload_key(upload_id)
            state.digest = str(digest) if digest else None
        appender = _Appender(self, upload_id, state, offset, progress)
        try:
            await appender.run(chunks, hasher)
        except StorageFull:
            with trio.CancelScope(shield=True):
                await self._settle(upload_id, appender.state, offset)
            progress.written = 0
            raise
        finally:
            # The hasher is in step only if it saw exactly the bytes the upload now holds.
            if hasher is not None and appender.hashed != progress.written:
                progress.hashed = False
        return offset + progress.written

    async def hash_upload(self, upload_id: str, length: int, algorithm: str) -> Digest:
        state = await self._settle(upload_id, await self._load(upload_id), length)
        hasher = new_hasher(algorithm)
        if state.sealed is None and not state.parts:
            for name, size in state.tail:
                async for data in self._stream(self._segment_key(upload_id, name), 0, size):
                    await trio.to_thread.run_sync(hasher.update, data)
        else:
            state = await self._seal(upload_id, state)
            async for data in self._stream(state.key, 0, length, chunk=8 * MIB):
                await trio.to_thread.run_sync(hasher.update, data)
        return Digest(algorithm, hasher.hexdigest())

    async def commit(self, upload_id: str, length: int, digest: Digest) -> str:
        state = await self._settle(upload_id, await self._load(upload_id), length)
        final = layout.blob_key(digest)
        if state.sealed is None and not state.parts:
            # A small blob, all in tail segments (less than 5 MiB); a multipart upload with
            # no part recorded (a cancelled first append) is aborted with the upload.
            if len(state.tail) == 1:
                await self._copy(self._segment_key(upload_id, state.tail[0][0]), final, length)
            else:
                await self._put_bytes(final, await self._read_tail(upload_id, state.tail))
        else:
            state = await self._seal(upload_id, state)
            if state.digest == str(digest):
                final = state.key  # completed where it belongs: no copy
            else:
                try:
                    await self._copy(state.key, final, length)
                except BaseException:
                    with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await self._delete_keys([self._k(final)])
                    raise
        with trio.CancelScope(shield=True):
            try:
                await self._remove_upload(upload_id, state, keep=final)
            except (Unavailable, StorageFull) as e:
                # The blob is in place; what is left of the upload is garbage, not an error.
                log.warning("upload %s committed, but its leftovers stay: %s", upload_id, e)
        return final

    async def delete_upload(self, upload_id: str) -> None:
        try:
            state: _State | None = await self._load(upload_id)
        except UploadNotFound:
            state = None
        await self._remove_upload(upload_id, state)

    async def _remove_upload(self, upload_id: str, state: _State | None, keep: str = "") -> None:
        """Abort the upload's multipart uploads and delete its objects, the state last."""
        prefix = self._k(_upload_prefix(upload_id))
        if state is not None and not state.key.startswith(_upload_prefix(upload_id)):
            # Started at a blob key: abort what is in progress there, and delete what it
            # completed unless that is the blob being committed.
            await self._abort_all(self._k(state.key))
            if state.key != keep:
                await self._delete_keys([self._k(state.key)])
        elif state is not None and state.mpu is not None:
            await self._abort(self._k(state.key), state.mpu)
        await self._abort_all(prefix)
        keys = await self._list_keys(prefix)
        state_key = self._k(self._state_key(upload_id))
        await self._delete_keys([k for k in keys if k != state_key])
        await self._delete_keys([state_key])

    async def _stream(
        self, key: str, start: int, length: int, chunk: int = READ_CHUNK
    ) -> AsyncIterator[bytes]:
        """`length` bytes of the object at `key` from `start`, re-requesting the rest after a
        broken connection. Raises `_Missing`.

        Reads ahead: the next piece is read from S3 in a thread while the caller handles this
        one (sends it to a client), so the two overlap. Closing the iterator early waits for
        that one read (a few milliseconds) before closing the connection to S3.
        """
        pos = 0
        failures = 0
        while pos < length:
            span = f"bytes={start + pos}-{start + length - 1}"

            def get(span: str = span) -> Any:
                return self.client.get_object(Bucket=self.bucket, Key=self._k(key), Range=span)

            body = (await self._call(f"reading {key}", get))["Body"]
            ahead: Pending[bytes] | None = None
            try:
                ahead = await Pending.start(
                    functools.partial(body.read, min(chunk, length - pos)), self._threads
                )
                while ahead is not None:
                    try:
                        data = await ahead.result()
                    except (
                        botocore.exceptions.BotoCoreError,
                        urllib3.exceptions.HTTPError,
                        OSError,
                    ) as e:
                        ahead = None
                        failures += 1
                        if failures >= self.max_attempts:
                            raise Unavailable(f"reading {key} from S3 failed: {e}") from e
                        log.warning("S3 read of %s broke at %d (%s); resuming", key, pos, e)
                        await self._sleep(self._backoff(failures))
                        break
                    ahead = None
                    if not data:
                        raise Unavailable(f"S3 object {key} is shorter than recorded")
                    pos += len(data)
                    if pos < length:
                        ahead = await Pending.start(
                            functools.partial(body.read, min(chunk, length - pos)),
                            self._threads,
                        )
                    yield data
            finally:
                if ahead is not None:  # never close a body a thread is reading from
                    with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await ahead.result()
                body.close()

    def read(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        return self._read(key, start, length)

    async def _read(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        try:
            async for data in self._stream(key, start, length):
                yield data
        except _Missing:
            raise BlobNotFound(f"blob bytes missing at {key}") from None

    async def delete(self, key: str) -> None:
        await self._delete_keys([self._k(key)])

    async def delete_many(self, keys: list[str]) -> None:
        await self._delete_keys([self._k(key) for key in keys])

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._k(prefix)}
            if token:
                kwargs["ContinuationToken"] = token
            page: Any = await self._call(
                f"listing {prefix}", functools.partial(self.client.list_objects_v2, **kwargs)
            )
            for o in page.get("Contents", []):
                yield StoredObject(
                    o["Key"][len(self.prefix) :], int(o["Size"]), o["LastModified"].timestamp()
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    # -- reading a bucket another program wrote (berth import) ---------------------------

    async def object_size(self, key: str) -> int | None:
        """The size of the object at `key` (under the prefix), None when there is none."""
        return await self._object_size(key)

    async def read_object(self, key: str, limit: int) -> bytes | None:
        """The whole object at `key` if it holds at most `limit` bytes (one GET); None when
        there is none. Raises SizeInvalid when it is larger."""

        def get() -> bytes:
            body = self.client.get_object(
                Bucket=self.bucket, Key=self._k(key), Range=f"bytes=0-{limit}"
            )["Body"]
            try:
                return body.read(limit + 1)
            finally:
                body.close()

        try:
            data = await self._call(f"reading {key}", get)
        except _Missing:
            return None
        except Unavailable:
            # An empty object has no byte 0: S3 refuses the range (InvalidRange, 416).
            if await self._object_size(key) == 0:
                return b""
            raise
        if len(data) > limit:
            raise SizeInvalid(f"{key} is larger than {limit} bytes")
        return data

    async def folders(self, prefix: str) -> list[str]:
        """The names one level below `prefix` (a '/'-terminated key prefix under the store's
        prefix) that have objects under them: what a directory listing would show."""
        names: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": self._k(prefix),
                "Delimiter": "/",
            }
            if token:
                kwargs["ContinuationToken"] = token
            page: Any = await self._call(
                f"listing {prefix}", functools.partial(self.client.list_objects_v2, **kwargs)
            )
            start = len(self._k(prefix))
            names.extend(p["Prefix"][start:].rstrip("/") for p in page.get("CommonPrefixes", []))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return names

    async def check(self) -> None:
        """Check that the bucket exists and the credentials may use it (creating the bucket
        when `create_bucket` says so). Raises Unavailable with one clear line."""
        where = self.settings.where
        try:
            await self._call(
                "checking the bucket", lambda: self.client.head_bucket(Bucket=self.bucket)
            )
        except _Missing:
            if not self.settings.create_bucket:
                raise Unavailable(
                    f"S3 {where} does not exist (create it, or set storage.s3.create_bucket = true)"
                ) from None
            await self._create_bucket()
        # HEAD answers without a reason; a listing also says why the keys do not work.
        try:
            await self._call(
                "listing the bucket",
                lambda: self.client.list_objects_v2(
                    Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1
                ),
            )
        except _Missing as e:
            raise Unavailable(f"S3 {where} cannot be listed: {e}") from e

    async def _create_bucket(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.settings.region and self.settings.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}

        def create() -> None:
            # Every worker of the host (and every host) checks at start: the ones that lose
            # the race find the bucket made. Whether these keys may use it, the listing after
            # this says.
            try:
                self.client.create_bucket(**kwargs)
            except botocore.exceptions.ClientError as e:
                if _error_code(e)[0] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        try:
            await self._call("creating the bucket", create)
        except _Missing as e:
            raise Unavailable(f"cannot create S3 {self.settings.where}: {e}") from e
        log.info("created S3 %s", self.settings.where)

    # -- BlobRedirect --------------------------------------------------------------------

    async def download_url(self, key: str) -> str | None:
        if not self.settings.redirect:
            return None
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._k(key)},
            ExpiresIn=REDIRECT_TTL,
        )


class _Appender(PieceCutter):
    """One append: receive chunks, cut them into parts sent a few at a time, and record each
    part in the state object as soon as every part before it is recorded too."""

    def __init__(
        self, store: S3Store, upload_id: str, state: _State, offset: int, progress: Progress
    ) -> None:
        super().__init__(progress, PARTS_IN_FLIGHT)
        self.store = store
        self.upload_id = upload_id
        self.state = state
        self.offset = offset
        self.next_number = len(state.parts) + 1
        self.finished: dict[int, tuple[str, int, bool]] = {}  # number → (etag, size, had tail)
        self.tail_pending = bool(state.tail)  # the next part starts with the tail segments

    def _target(self) -> int:
        return _part_size(self.store.part_size, self.next_number)

    def piece_ready(self) -> int:
        tail = self.state.tail_size * self.tail_pending
        return self._target() - tail if tail + self.buffered >= self._target() else 0

    async def run(self, chunks: AsyncIterator[bytes], hasher: Hasher | None) -> None:
        """Raises the first failure of S3, or else the source's own error (after keeping
        everything the source gave). Never an ExceptionGroup: failures inside the nurseries
        are collected in `failures` and raised alone."""
        source_error = await self.receive_all(chunks, hasher)
        # What is left: a last part if S3 would take one, otherwise a tail segment.
        if self.state.tail_size * self.tail_pending + self.buffered >= MIN_PART:
            await self.launch_last(self.buffered)
        elif self.buffered:
            await self._write_segment()
        if source_error is not None:
            raise source_error

    async def launch(self, n: int) -> None:
        """Start uploading the next part: the pending tail segments plus `n` buffered bytes."""
        await self.slots.acquire()
        if self.state.mpu is None:
            await self.store._start_multipart(self.upload_id, self.state)
        number = self.next_number
        self.next_number += 1
        with_tail = self.tail_pending
        self.tail_pending = False
        self.nursery.start_soon(self._part, number, self._take(n), with_tail)

    async def _part(self, number: int, data: bytes, with_tail: bool) -> None:
        try:
            if with_tail:
                data = await self.store._read_tail(self.upload_id, self.state.tail) + data
            etag = await self.store._upload_part(self.state, number, data)
            async with self.record_lock:
                self.finished[number] = (etag, len(data), with_tail)
                await self._record()
        except (Unavailable, StorageFull, UploadNotFound, _Missing) as e:
            self._fail(e if not isinstance(e, _Missing) else Unavailable(str(e)))
        finally:
            self.slots.release()

    async def _record(self) -> None:
        """Write every part that now continues the recorded ones into the state object."""
        changed = False
        while len(self.state.parts) + 1 in self.finished:
            etag, size, with_tail = self.finished.pop(len(self.state.parts) + 1)
            self.state.parts.append((etag, size))
            if with_tail:
                self.state.tail = []  # now inside this part; the checkpoint still has them
            changed = True
        if changed:
            await self.store._save(self.upload_id, self.state)
            self.progress.written = self.state.size - self.offset

    async def _write_segment(self) -> None:
        name = uuid.uuid4().hex
        data = self._take(self.buffered)
        await self.store._put_bytes(self.store._segment_key(self.upload_id, name), data)
        self.state.tail.append((name, len(data)))
        await self.store._save(self.upload_id, self.state)
        self.progress.written = self.state.size - self.offset
