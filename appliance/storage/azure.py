"""Blob store on Azure Blob Storage (block blobs): Azure, Azure Stack, sovereign clouds, Azurite.

**Client.** Microsoft's maintained SDK, `azure-storage-blob`, called in worker threads
(`trio.to_thread.run_sync`, with a limiter of its own so storage never starves the database of
threads); shared-key signing, SAS tokens and the block and copy API come with it, and nothing
here signs a request by hand. The SDK's own retries are off: `_call` retries 5xx, throttling
(ServerBusy, 429) and connection errors itself, with exponential backoff and full jitter,
sleeping in trio between attempts so a cancellation is never held up by a backoff.

**Keys** (layout.py, under an optional prefix), the S3 store's::

    blobs/<alg>/<ab>/<hex>/<storage-id>   a committed blob (a fresh storage id per commit)
    uploads/<id>/state                    the upload's state (JSON): the source of truth
    uploads/<id>/data                     where the upload's blocks are staged

**Uploads** are staged blocks (`Put Block`), committed by `Put Block List`. Staged blocks live
in Azure, not in Berth, so they survive a restart; the state blob lists the blocks in order
with their sizes, and `Progress.written` counts only blocks the state records. Unlike S3's
parts, a block may be of any size, so what is left at the end of a request is staged as a
short block of its own (no tail objects), and every size the database ever recorded is a block
boundary: rolling back what a crash left beyond it is forgetting the later blocks (uncommitted
blocks a `Put Block List` leaves out are discarded by Azure). An offset inside a block, which
only a caller that lost track could ask for, is reached by copying that block's first bytes
server-side (`Put Block From URL`) from the committed blob.

Blocks are cut at `block_size`, doubling every tenth of Azure's 50,000-block limit, and up to
`BLOCKS_IN_FLIGHT` are sent while the next is received, so memory per upload is a few blocks.
An upload that nevertheless gathers many blocks (thousands of small PATCH requests) is
compacted when it passes half the limit: committed, then re-staged server-side from itself in
large ranges.

**Verification before visibility** (DESIGN.md, storage key layout). A staged block is invisible
until a `Put Block List` names it, and a blob's key contains its digest. So:

* When the digest is known before the bytes (a monolithic upload), the blocks are staged at the
  blob's final key and committed there, by `commit`, once the caller has verified the digest:
  no copy.
* Otherwise the blocks are committed at `uploads/<id>/data` (readable from then on) and copied
  server-side to the final key: `Copy Blob From URL` up to 64 MiB, parallel `Put Block From URL`
  ranges and a `Put Block List` beyond. Until the database row exists nothing refers to either.
* When the running hash was lost (a restart, or another worker), `hash_upload` commits the
  blocks staged so far, reads them back once and hashes them. The upload still takes chunks:
  a later `Put Block List` names the committed blocks and the new ones alike.

Copies read their source through a SAS URL: made per request from the account key (valid for
an hour), or the configured SAS token. A cancelled, expired or failed upload is removed with its
state; blocks staged at a key that never got committed are discarded by committing an empty
list there and deleting the empty blob, so none stay billed.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import math
import random
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
import requests.adapters
import trio
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import (
    BlobBlock,
    BlobClient,
    BlobSasPermissions,
    ContainerClient,
    generate_blob_sas,
)

from appliance import backoff
from appliance.config import Config, read_secret
from appliance.errors import BlobNotFound, ConfigError, StorageFull, Unavailable, UploadNotFound
from appliance.oci.digest import Digest, Hasher, new_hasher
from appliance.storage import layout
from appliance.storage.base import Progress, StoredObject
from appliance.storage.pending import Pending
from appliance.storage.pieces import PieceCutter

log = logging.getLogger("berth.storage.azure")

T = TypeVar("T")
MIB = 1 << 20
MIN_BLOCK = MIB  # smallest block_size the settings take (Azure itself has no minimum)
MAX_BLOCK = 4000 * MIB  # Azure's largest block
MAX_BLOCKS = 50_000  # Azure's most blocks in one blob
BLOCKS_IN_FLIGHT = 3
READ_CHUNK = 4 * MIB  # one ranged GET per chunk
COPY_SINGLE = 64 * MIB  # up to this size one synchronous Copy Blob From URL is enough
COPY_BLOCK = 100 * MIB  # Put Block From URL ranges for larger copies and compaction
COPIES_IN_FLIGHT = 4
BATCH = 256  # most deletions in one blob batch request
REDIRECT_TTL = 1200  # seconds a download SAS URL stays valid
SOURCE_TTL = 3600  # seconds the SAS of a copy's source stays valid
PUBLIC_SUFFIX = "blob.core.windows.net"

_RETRYABLE_CODES = {"ServerBusy", "OperationTimedOut", "InternalError", "TooManyRequests"}
_FULL_CODES = {"InsufficientStorage", "AccountStorageQuotaExceeded"}


class _Missing(Exception):
    """A blob, or a block a block list names, does not exist (callers pick the domain error)."""


class _NoContainer(Unavailable):
    """The container does not exist (start-up may create it)."""


def _error_code(e: HttpResponseError) -> tuple[str, int]:
    return str(getattr(e, "error_code", None) or ""), int(e.status_code or 0)


def _retryable(e: Exception) -> bool:
    """Whether a failed request may succeed when sent again: throttling, 5xx and broken or
    refused connections, but never a certificate that did not verify."""
    if isinstance(e, IncompleteReadError):
        return True  # the connection broke in the middle of a body
    if isinstance(e, HttpResponseError) and e.status_code:
        code, status = _error_code(e)
        if code in _FULL_CODES or status in (501, 507):
            return False
        return code in _RETRYABLE_CODES or status in (408, 429) or status >= 500
    if isinstance(e, (ServiceRequestError, ServiceResponseError)):
        inner = getattr(e, "inner_exception", None)
        return not isinstance(inner, (requests.exceptions.SSLError, ssl.SSLError))
    return isinstance(e, (requests.exceptions.RequestException, ConnectionError, TimeoutError))


@dataclass(frozen=True)
class AzureSettings:
    """Everything the store needs from `[storage.azure]`, secrets already read from files."""

    container: str
    account_name: str = ""
    account_key: str = field(default="", repr=False)
    sas_token: str = field(default="", repr=False)
    endpoint: str = ""
    prefix: str = ""
    create_container: bool = False
    redirect: bool = False
    block_size: int = 16 * MIB
    max_attempts: int = 5

    @classmethod
    def from_config(cls, config: Config) -> AzureSettings:
        section = "storage.azure"
        settings = cls(
            container=config[f"{section}.container"],
            account_name=config[f"{section}.account_name"],
            account_key=read_secret(config, section, "account_key", "account_key_file"),
            sas_token=read_secret(config, section, "", "sas_token_file").lstrip("?"),
            endpoint=config[f"{section}.endpoint"],
            prefix=config[f"{section}.prefix"],
            create_container=config[f"{section}.create_container"],
            redirect=config[f"{section}.redirect"],
            block_size=config[f"{section}.block_size"],
            max_attempts=config[f"{section}.max_attempts"],
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        s = "storage.azure"
        if not self.container:
            raise ConfigError(f"{s}.container must be set when storage.backend is 'azure'")
        if not self.account_name:
            raise ConfigError(f"{s}.account_name must be set when storage.backend is 'azure'")
        if bool(self.account_key) == bool(self.sas_token):
            raise ConfigError(
                f"set one of {s}.account_key (or account_key_file) and {s}.sas_token_file"
            )
        if self.redirect and not self.account_key:
            raise ConfigError(
                f"{s}.redirect needs {s}.account_key: short-lived download URLs are signed "
                "with it (the configured SAS token is never handed to clients)"
            )
        if not MIN_BLOCK <= self.block_size <= MAX_BLOCK:
            raise ConfigError(
                f"{s}.block_size must be between {MIN_BLOCK} (1 MiB) and {MAX_BLOCK} (4000 MiB)"
            )
        if self.max_attempts < 1:
            raise ConfigError(f"{s}.max_attempts must be at least 1")
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"{s}.endpoint must be an http:// or https:// URL")

    @property
    def account_url(self) -> str:
        """The account's blob endpoint: the public cloud's unless `endpoint` says otherwise."""
        return self.endpoint.rstrip("/") or f"https://{self.account_name}.{PUBLIC_SUFFIX}"

    @property
    def where(self) -> str:
        return f"container {self.container!r} at {self.account_url}"


def make_client(settings: AzureSettings) -> ContainerClient:
    """An SDK client on the container, with the SDK's own retries off (see `_call`) and a
    connection pool large enough for the store's threads."""
    # The SDK logs every request at INFO; Berth logs what matters itself.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    transport = RequestsTransport(
        session=session, session_owner=False, connection_timeout=5, read_timeout=60
    )
    credential: AzureNamedKeyCredential | AzureSasCredential = (
        AzureNamedKeyCredential(settings.account_name, settings.account_key)
        if settings.account_key
        else AzureSasCredential(settings.sas_token)
    )
    try:
        client = ContainerClient(
            settings.account_url,
            settings.container,
            credential=credential,
            transport=transport,
            retry_total=0,
            max_single_get_size=READ_CHUNK,
            max_chunk_get_size=READ_CHUNK,
        )
    except (AzureError, ValueError) as e:
        raise ConfigError(f"storage.azure: {e}") from e
    # The transport does not own the session (blob clients made from this one share it):
    # AzureStore.close() closes it.
    client.berth_session = session  # type: ignore[attr-defined]
    return client


def _new_block_id() -> str:
    """A block id: every id in one blob must have the same length (the SDK base64-encodes)."""
    return uuid.uuid4().hex


def _upload_prefix(upload_id: str) -> str:
    return layout.upload_key(upload_id).rsplit("/", 1)[0] + "/"


@dataclass
class _State:
    """An upload, as its state blob records it (see the module docstring)."""

    key: str  # where the blocks are staged, relative to the prefix
    digest: str | None = None  # set when `key` is the final key of this digest
    blocks: list[tuple[str, int]] = field(default_factory=list)  # (block id, size), in order
    readable: int = 0  # the blob at `key` holds these first bytes of the upload, committed

    @property
    def size(self) -> int:
        return sum(n for _, n in self.blocks)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "v": 1,
                "key": self.key,
                "digest": self.digest,
                "blocks": self.blocks,
                "readable": self.readable,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> _State:
        raw: dict[str, Any] = json.loads(data)
        return cls(
            key=str(raw["key"]),
            digest=raw["digest"],
            blocks=[(str(b), int(n)) for b, n in raw["blocks"]],
            readable=int(raw["readable"]),
        )


class AzureStore:
    """A BlobStore in one Azure Blob Storage container, under an optional prefix (see the
    module docstring). Also a `BulkDelete` (blob batches) and a `BlobRedirect`: with `redirect`
    on, blob downloads may go straight to Azure through a short-lived SAS URL."""

    parallel_deletes = 8  # see BlobStore

    def __init__(
        self,
        settings: AzureSettings,
        client: ContainerClient | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
        rng: random.Random | None = None,
        max_blocks: int = MAX_BLOCKS,
    ) -> None:
        settings.validate()
        self.settings = settings
        prefix = settings.prefix.strip("/")
        self.prefix = prefix + "/" if prefix else ""
        self.block_size = settings.block_size
        self.max_attempts = settings.max_attempts
        self.max_blocks = max_blocks  # lowered by tests to reach the limit with small blobs
        self.client = client if client is not None else make_client(settings)
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._threads = trio.CapacityLimiter(48)

    def close(self) -> None:
        """Close the client and its pooled connections (a process's store lives as long as
        the process; stores made for a while, as in tests and tools, are closed)."""
        self.client.close()
        session = getattr(self.client, "berth_session", None)
        if session is not None:
            session.close()

    # -- plumbing ------------------------------------------------------------------------

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _blob(self, key: str) -> BlobClient:
        return self.client.get_blob_client(self._k(key))

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(5 s, 0.1 s·2^attempt)]."""
        return backoff.full_jitter(attempt, 0.1, 5.0, self._rng)

    def _translate(self, e: Exception, what: str) -> Exception:
        where = self.settings.where
        if isinstance(e, HttpResponseError) and e.status_code:
            code, status = _error_code(e)
            message = (str(e.message or "").splitlines() or [code])[0]
            if code == "ContainerNotFound":
                return _NoContainer(f"Azure {where} does not exist")
            if status == 404 or code == "InvalidBlockList":
                return _Missing(f"{what}: {code or status}")
            if code in _FULL_CODES or status == 507:
                return StorageFull(f"object storage is full: no space left for {what}")
            if status in (401, 403) or isinstance(e, ClientAuthenticationError):
                return Unavailable(
                    f"Azure refused access to {where} ({code or status}): check "
                    "storage.azure.account_name and account_key or sas_token_file"
                )
            return Unavailable(f"Azure error on {what}: {code or status}: {message}")
        return Unavailable(f"cannot reach Azure {where} for {what}: {e}")

    async def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request in a thread; retry throttling, 5xx and connection errors with
        backoff and jitter; translate what is left into domain errors (or `_Missing`).

        Cancellation waits for a request already sent (the SDK cannot be interrupted; its
        connect and read timeouts bound the wait); a backoff sleep is cancelled at once.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await trio.to_thread.run_sync(fn, limiter=self._threads)
            except (AzureError, requests.exceptions.RequestException, OSError) as e:
                if _retryable(e) and attempt < self.max_attempts:
                    delay = self._backoff(attempt)
                    log.warning("Azure %s failed (%s); retrying in %.2fs", what, e, delay)
                    await self._sleep(delay)
                    continue
                raise self._translate(e, what) from e

    def _source_url(self, key: str) -> str:
        """A URL Azure may read the blob at `key` from, for a server-side copy."""
        url = self._blob(key).url.split("?", 1)[0]
        if self.settings.sas_token:
            return f"{url}?{self.settings.sas_token}"
        return f"{url}?{self._sas(key, SOURCE_TTL)}"

    def _sas(self, key: str, ttl: int) -> str:
        now = datetime.datetime.now(datetime.UTC)
        return generate_blob_sas(
            self.settings.account_name,
            self.settings.container,
            self._k(key),
            account_key=self.settings.account_key,
            permission=BlobSasPermissions(read=True),
            start=now - datetime.timedelta(minutes=5),  # clocks differ a little
            expiry=now + datetime.timedelta(seconds=ttl),
            # Never usable over plain HTTP when the account is reached over HTTPS.
            protocol="https" if self.settings.account_url.startswith("https:") else "https,http",
        )

    async def _get_bytes(self, key: str) -> bytes:
        blob = self._blob(key)
        return await self._call(f"reading {key}", lambda: blob.download_blob().readall())

    async def _put_bytes(self, key: str, data: bytes) -> None:
        blob = self._blob(key)
        await self._call(
            f"writing {key}", lambda: blob.upload_blob(data, overwrite=True, length=len(data))
        )

    async def _stage(self, key: str, block_id: str, data: bytes) -> None:
        blob = self._blob(key)
        await self._call(
            f"staging a block of {key}",
            lambda: blob.stage_block(block_id, data, length=len(data)),
        )

    async def _stage_from(self, key: str, block_id: str, source: str, start: int, n: int) -> None:
        """Stage bytes [start, start + n) of the committed blob at `source` as a block."""
        blob = self._blob(key)
        await self._call(
            f"copying a block into {key}",
            lambda: blob.stage_block_from_url(
                block_id, self._source_url(source), source_offset=start, source_length=n
            ),
        )

    async def _commit_blocks(self, key: str, ids: list[str]) -> None:
        """Make the blob at `key` exactly these blocks (committed or staged); blocks staged
        there and left out are discarded. Raises `_Missing` when a named block has gone."""
        blob = self._blob(key)
        await self._call(
            f"committing {key}", lambda: blob.commit_block_list([BlobBlock(i) for i in ids])
        )

    async def _delete(self, keys: list[str]) -> None:
        """Delete committed blobs (keys relative to the prefix); missing ones are fine."""
        for i in range(0, len(keys), BATCH):
            names = [self._k(k) for k in keys[i : i + BATCH]]
            if len(names) == 1:
                with contextlib.suppress(_Missing):
                    blob = self.client.get_blob_client(names[0])
                    await self._call(f"deleting {keys[i]}", blob.delete_blob)
                continue

            def batch(names: list[str] = names) -> None:
                for response in self.client.delete_blobs(*names, raise_on_any_failure=False):
                    if response.status_code not in (200, 202, 404):
                        raise HttpResponseError(response=response)

            await self._call("deleting blobs", batch)

    async def _discard(self, key: str) -> None:
        """Remove the blob at `key`, and blocks staged there but never committed (Azure
        would keep them a week): committing an empty list drops them."""
        try:
            await self._call(f"deleting {key}", self._blob(key).delete_blob)
        except _Missing:
            pass
        else:
            return
        try:
            await self._commit_blocks(key, [])
        except _Missing:
            return
        with contextlib.suppress(_Missing):
            await self._call(f"deleting {key}", self._blob(key).delete_blob)

    # -- upload state --------------------------------------------------------------------

    def _state_key(self, upload_id: str) -> str:
        if not layout.is_upload_id(upload_id):
            raise UploadNotFound("upload unknown")
        return _upload_prefix(upload_id) + "state"

    async def _load(self, upload_id: str) -> _State:
        try:
            data = await self._get_bytes(self._state_key(upload_id))
        except _Missing:
            raise UploadNotFound("upload unknown") from None
        return _State.from_json(data)

    async def _save(self, upload_id: str, state: _State) -> None:
        await self._put_bytes(self._state_key(upload_id), state.to_json())

    async def _seal(self, upload_id: str, state: _State) -> _State:
        """Commit the recorded blocks at `state.key`, so that they can be read and copied."""
        if state.readable == state.size and state.blocks:
            return state
        try:
            await self._commit_blocks(state.key, [b for b, _ in state.blocks])
        except _Missing:
            raise UploadNotFound("the upload's staged blocks have gone; start again") from None
        state.readable = state.size
        await self._save(upload_id, state)
        return state

    async def _settle(self, upload_id: str, state: _State, offset: int) -> _State:
        """Make the upload hold exactly `offset` bytes (see the module docstring)."""
        size = state.size
        if offset > size:
            raise UploadNotFound("upload data is shorter than recorded")
        if offset == size:
            return state
        start, i = 0, 0
        for i, (_, n) in enumerate(state.blocks):  # noqa: B007 - `i` is used below
            if start + n > offset:
                break
            start += n
        if start == offset:  # a block boundary: forget the later blocks
            state.blocks = state.blocks[:i]
            state.readable = min(state.readable, offset)
        else:  # inside block i: copy its first bytes from the committed blob
            if state.readable < offset:
                state = await self._seal(upload_id, state)
            block = _new_block_id()
            try:
                await self._stage_from(state.key, block, state.key, start, offset - start)
            except _Missing:
                raise UploadNotFound("the upload's bytes have gone; start again") from None
            state.blocks = [*state.blocks[:i], (block, offset - start)]
            state.readable = offset
        await self._save(upload_id, state)
        return state

    async def _compact(self, upload_id: str, state: _State) -> _State:
        """Re-stage the whole upload in a few large blocks (server-side, from itself)."""
        state = await self._seal(upload_id, state)
        size = state.size
        length = min(MAX_BLOCK, max(COPY_BLOCK, math.ceil(size / (self.max_blocks // 10))))
        blocks = await self._copy_ranges(state.key, state.key, size, length)
        log.info("upload %s: %d blocks compacted to %d", upload_id, len(state.blocks), len(blocks))
        state.blocks = blocks
        await self._save(upload_id, state)
        return state

    async def _copy_ranges(
        self, source: str, target: str, length: int, step: int = COPY_BLOCK
    ) -> list[tuple[str, int]]:
        """Stage the first `length` bytes of `source` as blocks of `target`, several at a
        time; returns them in order (not committed)."""
        ranges = [(start, min(step, length - start)) for start in range(0, length, step)]
        blocks = [(_new_block_id(), n) for _, n in ranges]
        limit = trio.Semaphore(COPIES_IN_FLIGHT)
        failures: list[Exception] = []

        async def copy(i: int, start: int) -> None:
            async with limit:
                try:
                    await self._stage_from(target, blocks[i][0], source, start, blocks[i][1])
                except (_Missing, Unavailable, StorageFull) as e:
                    failures.append(e)
                    nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for i, (start, _) in enumerate(ranges):
                nursery.start_soon(copy, i, start)
        if failures:
            failure = failures[0]
            if isinstance(failure, _Missing):
                raise Unavailable(f"Azure blob {source} vanished during a copy")
            raise failure
        return blocks

    async def _copy(self, source: str, target: str, length: int) -> None:
        """Server-side copy of the committed blob `source` (exactly `length` bytes) to
        `target`. On failure nothing is left at `target`."""
        try:
            if length <= COPY_SINGLE:
                blob = self._blob(target)
                await self._call(
                    f"copying to {target}",
                    lambda: blob.start_copy_from_url(self._source_url(source), requires_sync=True),
                )
                return
            blocks = await self._copy_ranges(source, target, length)
            await self._commit_blocks(target, [b for b, _ in blocks])
        except BaseException:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._discard(target)
            raise

    async def _remove_upload(self, upload_id: str, state: _State | None, keep: str = "") -> None:
        """Remove the upload's blobs and staged blocks, the state last."""
        data = layout.upload_key(upload_id)
        if state is None or state.key == data:
            await self._discard(data)
        elif state.key != keep:
            await self._discard(state.key)  # staged at a blob key that is not being kept
        await self._delete([self._state_key(upload_id)])

    # -- reading -------------------------------------------------------------------------

    async def _stream(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """`length` bytes of the blob at `key` from `start`, one ranged GET per 4 MiB, the next
        one read in a thread while the caller handles this one. A broken connection is retried
        from where it broke. Raises `_Missing`."""
        blob = self._blob(key)
        pos = 0
        failures = 0
        while pos < length:
            downloader = await self._call(
                f"reading {key}",
                functools.partial(
                    blob.download_blob, offset=start + pos, length=length - pos, max_concurrency=1
                ),
            )
            chunks: Iterator[bytes] = downloader.chunks()
            ahead: Pending[bytes | None] | None = None
            try:
                ahead = await Pending.start(functools.partial(next, chunks, None), self._threads)
                while ahead is not None:
                    try:
                        data = await ahead.result()
                    except (AzureError, requests.exceptions.RequestException, OSError) as e:
                        ahead = None
                        failures += 1
                        if failures >= self.max_attempts or not _retryable(e):
                            raise self._translate(e, f"reading {key}") from e
                        log.warning("Azure read of %s broke at %d (%s); resuming", key, pos, e)
                        await self._sleep(self._backoff(failures))
                        break
                    ahead = None
                    if not data:
                        raise Unavailable(f"Azure blob {key} is shorter than recorded")
                    pos += len(data)
                    if pos < length:
                        ahead = await Pending.start(
                            functools.partial(next, chunks, None), self._threads
                        )
                    yield data
            finally:
                if ahead is not None:  # never leave a thread reading behind
                    with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await ahead.result()

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
        the whole blob to be: its blocks are then staged at that blob's key (no copy later)."""
        state = await self._load(upload_id)
        data = layout.upload_key(upload_id)
        if offset == 0:  # a fresh start, wherever the blocks go
            fresh = _State(layout.blob_key(digest) if digest else data)
            fresh.digest = str(digest) if digest else None
            if state != fresh:
                if state.key != fresh.key and (state.blocks or state.readable or state.digest):
                    await self._discard(state.key)  # what an abandoned first attempt left
                # Recorded first, so that a crash cannot hide blocks at a blob key.
                state = fresh
                await self._save(upload_id, state)
        else:
            state = await self._settle(upload_id, state, offset)
            if len(state.blocks) > self.max_blocks // 2:
                state = await self._compact(upload_id, state)
        stager = _Stager(self, upload_id, state, offset, progress)
        try:
            await stager.run(chunks, hasher)
        except StorageFull:
            with trio.CancelScope(shield=True):
                await self._settle(upload_id, stager.state, offset)
            progress.written = 0
            raise
        finally:
            # The hasher is in step only if it saw exactly the bytes the upload now holds.
            if hasher is not None and stager.hashed != progress.written:
                progress.hashed = False
        return offset + progress.written

    async def hash_upload(self, upload_id: str, length: int, algorithm: str) -> Digest:
        state = await self._settle(upload_id, await self._load(upload_id), length)
        hasher = new_hasher(algorithm)
        if length:
            if state.readable < length:
                state = await self._seal(upload_id, state)
            try:
                async for data in self._stream(state.key, 0, length):
                    await trio.to_thread.run_sync(hasher.update, data)
            except _Missing:
                raise UploadNotFound("the upload's bytes have gone; start again") from None
        return Digest(algorithm, hasher.hexdigest())

    async def commit(self, upload_id: str, length: int, digest: Digest) -> str:
        state = await self._settle(upload_id, await self._load(upload_id), length)
        final = layout.blob_key(digest)
        if state.digest == str(digest) and state.key != layout.upload_key(upload_id):
            final = state.key  # staged where it belongs: committing makes it visible
            try:
                await self._commit_blocks(final, [b for b, _ in state.blocks])
            except _Missing:
                raise UploadNotFound("the upload's staged blocks have gone") from None
        elif length == 0:
            await self._commit_blocks(final, [])  # an empty blob
        else:
            if state.readable < length:
                state = await self._seal(upload_id, state)
            try:
                await self._copy(state.key, final, length)
            except _Missing:
                raise UploadNotFound("the upload's bytes have gone") from None
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

    def read(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        return self._read(key, start, length)

    async def _read(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        try:
            async for data in self._stream(key, start, length):
                yield data
        except _Missing:
            raise BlobNotFound(f"blob bytes missing at {key}") from None

    async def delete(self, key: str) -> None:
        await self._delete([key])

    async def delete_many(self, keys: list[str]) -> None:
        await self._delete(keys)

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        pages = self.client.list_blobs(name_starts_with=self._k(prefix)).by_page()
        while True:
            page = await self._call(f"listing {prefix}", lambda: list(next(pages, [])))
            if not page:
                return
            for b in page:
                yield StoredObject(
                    b.name[len(self.prefix) :], int(b.size), b.last_modified.timestamp()
                )

    async def check(self) -> None:
        """Check that the container exists and the credentials may use it (creating it when
        `create_container` says so). Raises Unavailable with one clear line."""
        where = self.settings.where

        def first_page() -> list[Any]:
            pages = self.client.list_blobs(
                name_starts_with=self.prefix, results_per_page=1
            ).by_page()
            return list(next(pages, []))

        try:
            await self._call("listing the container", first_page)
        except _NoContainer:
            if not self.settings.create_container:
                raise Unavailable(
                    f"Azure {where} does not exist (create it, or set "
                    "storage.azure.create_container = true)"
                ) from None

            def create() -> None:
                # Every worker of the host (and every host) checks at start: the ones that
                # lose the race find it made, which is what they wanted.
                with contextlib.suppress(ResourceExistsError):
                    self.client.create_container()

            try:
                await self._call("creating the container", create)
            except _Missing as e:
                raise Unavailable(f"cannot create Azure {where}: {e}") from e
            log.info("created Azure %s", where)
        except _Missing as e:
            raise Unavailable(f"Azure {where} cannot be listed: {e}") from e

    # -- BlobRedirect --------------------------------------------------------------------

    async def download_url(self, key: str) -> str | None:
        if not self.settings.redirect:
            return None
        return f"{self._blob(key).url.split('?', 1)[0]}?{self._sas(key, REDIRECT_TTL)}"


def _block_size(base: int, index: int, max_blocks: int) -> int:
    """The size block `index` (from 0) is cut at: doubling every tenth of the block limit, so
    50,000 blocks of a 16 MiB base hold far more than any image layer."""
    return min(MAX_BLOCK, base << (index // max(1, max_blocks // 10)))


class _Stager(PieceCutter):
    """One append: receive chunks, cut them into blocks staged a few at a time, and record
    each block in the state blob as soon as every block before it is recorded too."""

    def __init__(
        self, store: AzureStore, upload_id: str, state: _State, offset: int, progress: Progress
    ) -> None:
        super().__init__(progress, BLOCKS_IN_FLIGHT)
        self.store = store
        self.upload_id = upload_id
        self.state = state
        self.offset = offset
        self.next_index = len(state.blocks)
        self.finished: dict[int, tuple[str, int]] = {}

    def piece_ready(self) -> int:
        target = _block_size(self.store.block_size, self.next_index, self.store.max_blocks)
        return target if self.buffered >= target else 0

    async def run(self, chunks: AsyncIterator[bytes], hasher: Hasher | None) -> None:
        """Raises the first failure of Azure, or else the source's own error (after keeping
        everything the source gave). Never an ExceptionGroup."""
        source_error = await self.receive_all(chunks, hasher)
        if self.buffered:  # what is left: a short block of its own
            await self.launch_last(self.buffered)
        if source_error is not None:
            raise source_error

    async def launch(self, n: int) -> None:
        await self.slots.acquire()
        index = self.next_index
        self.next_index += 1
        self.nursery.start_soon(self._block, index, self._take(n))

    async def _block(self, index: int, data: bytes) -> None:
        try:
            block = _new_block_id()
            await self.store._stage(self.state.key, block, data)
            async with self.record_lock:
                self.finished[index] = (block, len(data))
                await self._record()
        except (Unavailable, StorageFull, UploadNotFound, _Missing) as e:
            self._fail(e if not isinstance(e, _Missing) else Unavailable(str(e)))
        finally:
            self.slots.release()

    async def _record(self) -> None:
        """Write every block that now continues the recorded ones into the state blob."""
        changed = False
        while len(self.state.blocks) in self.finished:
            self.state.blocks.append(self.finished.pop(len(self.state.blocks)))
            changed = True
        if changed:
            await self.store._save(self.upload_id, self.state)
            self.progress.written = self.state.size - self.offset
