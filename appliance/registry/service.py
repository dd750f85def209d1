"""The registry's operations: uploads, blobs, manifests, tags, catalog and referrers.

This is where the rules of the OCI Distribution spec live, independent of HTTP. Bytes go to the
BlobStore, records to the MetadataStore; the order of the two is chosen so that a crash or a
cancellation at any point leaves nothing visible that is incomplete:

* an upload's bytes are committed to their final key before the blob row exists, and a failed
  row insert deletes those bytes again;
* a manifest is inserted only after its blobs are checked inside the same transaction.

Python cannot save a hash object's state, so the running digest of an upload lives in the memory
of this process, next to the offset it has seen; a chunk or commit arriving without that state
(after a restart, or at another process) falls back to reading the stored bytes once at commit.

Uploads are bounded: one account holds at most `max_open_uploads` sessions at once, and in a
namespace with a quota the bytes of open uploads count against it while they are written
(reserved ahead of the writes, `RESERVE_AHEAD` at a time for a body of unknown length; a chunk
that does not fit is refused with the quota's Denied). Committing, cancelling or expiring the
session releases them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from appliance.errors import (
    BlobNotFound,
    InvalidDigest,
    ManifestTooLarge,
    RangeInvalid,
    SizeInvalid,
)
from appliance.metadata.db import Tx
from appliance.metadata.leader import Fence
from appliance.metadata.store import (
    BlobRecord,
    ManifestRecord,
    MetadataStore,
    PutResult,
    UploadRecord,
)
from appliance.oci import manifest as manifests
from appliance.oci.digest import Digest, Hasher, is_digest, new_hasher
from appliance.oci.names import readable_reference, validate_name, validate_tag
from appliance.registry.copy import each
from appliance.storage import layout
from appliance.storage.base import (
    BlobRedirect,
    BlobStore,
    BulkDelete,
    FileImport,
    PlacedFile,
    Progress,
)

log = logging.getLogger(__name__)

RESERVE_AHEAD = 64 << 20  # quota reserved ahead of a streamed body, to write less often


@dataclass
class _HashState:
    offset: int
    hasher: Hasher


class _HashStates:
    """The running digests of this process's uploads, by upload id: the newest `size`. A
    client's requests spread over the serving processes, so an upload's digest is often
    carried on by another process and its state here is never asked for again; the oldest go.
    An upload whose state is gone is hashed from its stored bytes when it completes."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._states: OrderedDict[str, _HashState] = OrderedDict()

    def get(self, upload_id: str) -> _HashState | None:
        return self._states.get(upload_id)

    def pop(self, upload_id: str) -> _HashState | None:
        return self._states.pop(upload_id, None)

    def put(self, upload_id: str, state: _HashState) -> None:
        self._states[upload_id] = state
        self._states.move_to_end(upload_id)
        while len(self._states) > self.size:
            self._states.popitem(last=False)

    def __len__(self) -> int:
        return len(self._states)


@dataclass(frozen=True)
class ManifestPut:
    digest: str
    subject: str | None
    created: bool


class Registry:
    """Registry operations over `meta` (records) and `store` (bytes)."""

    def __init__(
        self,
        meta: MetadataStore,
        store: BlobStore,
        *,
        clock: Callable[[], float],
        max_manifest_size: int = 4 << 20,
        upload_expiry: float = 86400.0,
        max_open_uploads: int = 0,
    ) -> None:
        self.meta = meta
        self.store = store
        self.clock = clock
        self.max_manifest_size = max_manifest_size
        self.upload_expiry = upload_expiry
        self.max_open_uploads = max_open_uploads
        self._hashes = _HashStates()
        self._locks: dict[str, trio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        # Told of every tag resolved (pulls by tag): lifecycle/pulls.py keeps last-pull times.
        self.on_tag_resolved: Callable[[str, str], None] | None = None
        # Asked before a manifest is served to a pull (repository, digest, media type,
        # payload); raises Denied to refuse it (the vulnerability policy, scan/policy.py).
        self.pull_gate: Callable[[str, str, str, bytes], Awaitable[None]] | None = None

    # -- uploads -------------------------------------------------------------------------

    @asynccontextmanager
    async def _upload_lock(self, upload_id: str) -> AsyncIterator[None]:
        """Serialise work on one upload within this process."""
        lock = self._locks.setdefault(upload_id, trio.Lock())
        self._lock_users[upload_id] = self._lock_users.get(upload_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._lock_users[upload_id] -= 1
            if not self._lock_users[upload_id]:
                del self._lock_users[upload_id]
                del self._locks[upload_id]

    async def start_upload(self, repository: str, owner: str | None = None) -> UploadRecord:
        """A new session of `owner` (who the audit log names; None: not capped). Raises
        TooMany when `owner` holds `max_open_uploads` sessions already."""
        validate_name(repository)
        upload_id = layout.new_upload_id()
        # The record and the store's file are made at once (each is a thread hop, or a round
        # trip to the object store); whichever was made is removed when the other failed.
        records: list[UploadRecord] = []
        failed: list[Exception] = []
        stored = False

        async def make_record() -> None:
            try:
                records.append(
                    await self.meta.create_upload(
                        repository, upload_id, owner, self.max_open_uploads
                    )
                )
            except Exception as e:
                failed.insert(0, e)  # the record's refusal (TooMany) is the one to report

        async def make_file() -> None:
            nonlocal stored
            try:
                await self.store.create_upload(upload_id)
                stored = True
            except Exception as e:
                failed.append(e)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(make_record)
                nursery.start_soon(make_file)
        finally:
            if failed or not (records and stored):
                with trio.CancelScope(shield=True):
                    if records:
                        await self.meta.delete_upload(upload_id)
                    if stored:
                        await self.store.delete_upload(upload_id)
        if failed:
            raise failed[0]
        return records[0]

    async def upload_status(self, repository: str, upload_id: str) -> UploadRecord:
        validate_name(repository)
        return await self.meta.upload(repository, upload_id)

    async def _append(
        self,
        record: UploadRecord,
        chunks: AsyncIterator[bytes],
        start: int | None,
        expected: Digest | None = None,
        length: int | None = None,
    ) -> int:
        """Append to an upload whose lock is held; return its new size. `expected`: the digest
        the whole blob should have, when these chunks are all of it (a hint for the store).
        `length`: the chunk's declared length, if known (reserved under a quota up front)."""
        offset = record.size
        if start is not None and start != offset:
            raise RangeInvalid(
                f"chunk starts at {start} but the upload holds {offset} bytes", offset
            )
        if record.limited:
            reserved = record.reserved
            if expected is not None and offset == 0:
                # A blob the namespace holds already costs nothing once committed: up to its
                # size needs no reservation (a body that is not that blob is discarded).
                reserved = max(
                    reserved, await self.meta.quota_free(record.repository, str(expected))
                )
            if length is not None and offset + length > reserved:
                reserved = await self.meta.reserve_upload(
                    record.repository, record.id, offset + length
                )
            chunks = self._within_quota(record, chunks, offset, reserved)
        state = self._hashes.pop(record.id)
        if state is None and offset == 0:
            state = _HashState(0, new_hasher("sha256"))  # a first chunk, wherever it lands
        hasher = state.hasher if state is not None and state.offset == offset else None
        progress = Progress()
        appended = False
        try:
            size = await self.store.append(
                record.id,
                offset,
                chunks,
                hasher,
                progress,
                digest=expected if offset == 0 else None,
            )
            appended = True
        finally:
            if progress.written:
                # What reached the store stays, even after a disconnect: the client may ask
                # how far it got and resume from there. A compare-and-set on the offset: when
                # another process appended to this upload meanwhile, this raises RangeInvalid
                # (416 with the upload's size) and no digest state is kept.
                with trio.CancelScope(shield=True):
                    await self.meta.set_upload_size(record.id, offset + progress.written, offset)
                if hasher is not None and progress.hashed:
                    self._hashes.put(record.id, _HashState(offset + progress.written, hasher))
            elif appended and hasher is not None and state is not None:
                self._hashes.put(record.id, state)  # an empty chunk: the digest is untouched
        return size

    async def _within_quota(
        self, record: UploadRecord, chunks: AsyncIterator[bytes], offset: int, reserved: int
    ) -> AsyncIterator[bytes]:
        """`chunks`, reserving quota before each piece goes beyond what is reserved; raises
        Denied (nothing of the refused piece is written) when the quota has no room."""
        total = offset
        try:
            async for data in chunks:
                total += len(data)
                if total > reserved:
                    reserved = await self.meta.reserve_upload(
                        record.repository, record.id, total, RESERVE_AHEAD
                    )
                yield data
        finally:
            close = getattr(chunks, "aclose", None)  # at once, when the quota refuses
            if close is not None:
                await close()

    async def append(
        self,
        repository: str,
        upload_id: str,
        chunks: AsyncIterator[bytes],
        start: int | None = None,
        length: int | None = None,
    ) -> int:
        """PATCH: append a chunk (at `start`, when the client says where; `length` when the
        request declares it). Returns the size."""
        validate_name(repository)
        async with self._upload_lock(upload_id):
            record = await self.meta.upload(repository, upload_id)
            return await self._append(record, chunks, start, length=length)

    async def complete(  # noqa: PLR0917 (the PUT's parts, in the order the protocol names them)
        self,
        repository: str,
        upload_id: str,
        digest_text: str,
        chunks: AsyncIterator[bytes] | None = None,
        start: int | None = None,
        length: int | None = None,
    ) -> BlobRecord:
        """PUT: append an optional last chunk, verify the digest, and commit the blob.

        A digest that does not match ends the upload and stores nothing.
        """
        validate_name(repository)
        digest = Digest.parse(digest_text)
        async with self._upload_lock(upload_id):
            record = await self.meta.upload(repository, upload_id)
            size = record.size
            if chunks is not None:
                size = await self._append(record, chunks, start, digest, length=length)
            state = self._hashes.get(upload_id)
            if state is not None and state.offset == size and digest.algorithm == "sha256":
                actual = Digest("sha256", state.hasher.hexdigest())
            else:
                actual = await self.store.hash_upload(upload_id, size, digest.algorithm)
            if actual != digest:
                await self._discard(upload_id)
                raise InvalidDigest(
                    f"digest {digest} does not match the uploaded content ({actual})",
                    {"expected": str(digest), "actual": str(actual)},
                )
            key = await self.store.commit(upload_id, size, digest)
            self._hashes.pop(upload_id)
            try:
                blob = await self.meta.commit_blob(repository, upload_id, str(digest), size, key)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self.store.delete(key)
                    await self.meta.delete_upload(upload_id)
                raise
            if blob.storage_key != key:
                # Another upload of the same content committed first; its bytes serve.
                with trio.CancelScope(shield=True):
                    await self.store.delete(key)
            return blob

    async def _discard(self, upload_id: str) -> None:
        with trio.CancelScope(shield=True):
            self._hashes.pop(upload_id)
            await self.meta.delete_upload(upload_id)
            await self.store.delete_upload(upload_id)

    async def upload_monolithic(
        self,
        repository: str,
        digest_text: str,
        chunks: AsyncIterator[bytes],
        owner: str | None = None,
        length: int | None = None,
    ) -> BlobRecord:
        """POST with `?digest=`: a whole blob in one request."""
        Digest.parse(digest_text)
        record = await self.start_upload(repository, owner)
        try:
            return await self.complete(repository, record.id, digest_text, chunks, 0, length)
        except BaseException:
            await self._discard(record.id)
            raise

    async def cancel_upload(self, repository: str, upload_id: str) -> None:
        validate_name(repository)
        async with self._upload_lock(upload_id):
            await self.meta.upload(repository, upload_id)
            await self._discard(upload_id)

    async def purge_expired_uploads(self, fence: Fence | None = None) -> int:
        """Remove upload sessions idle for longer than the expiry, with their bytes.

        Run by the jobs leader, which passes its `fence`: each row is deleted only while that
        leadership is current (LeadershipLost otherwise), and bytes only after their row.
        """
        idle_before = self.clock() - self.upload_expiry
        removed = 0
        for upload_id in await self.meta.expired_uploads(idle_before):
            async with self._upload_lock(upload_id):
                if await self.meta.expire_upload(upload_id, idle_before, fence):
                    self._hashes.pop(upload_id)
                    await self.store.delete_upload(upload_id)
                    removed += 1
        if removed:
            log.info("removed %d expired upload(s)", removed)
        return removed

    # -- blobs ---------------------------------------------------------------------------

    async def blob(self, repository: str, digest_text: str) -> BlobRecord:
        validate_name(repository)
        digest = str(Digest.parse(digest_text))
        record = await self.meta.blob(repository, digest)
        if record is None:
            raise BlobNotFound(
                f"blob {digest} is not in repository {repository}", {"digest": digest}
            )
        return record

    async def blob_checked(self, blob: BlobRecord) -> None:
        """A client saw that `blob` exists and may now reference it instead of uploading it:
        if the collector is due to review it soon, give the client the whole delay again.
        Only then is this a write, so a HEAD stays a read in the common case."""
        delay = self.meta.gc_delay
        if blob.review_after is not None and blob.review_after < self.clock() + delay / 2:
            await self.meta.touch_blob_review(blob.digest)

    async def mount(self, repository: str, source: str, digest_text: str) -> BlobRecord | None:
        """Make a blob of `source` readable by `repository`; None if `source` lacks it."""
        validate_name(repository)
        validate_name(source)
        digest = str(Digest.parse(digest_text))
        return await self.meta.mount_blob(repository, source, digest)

    async def adopt_blobs(self, repository: str, digests: Sequence[str]) -> set[str]:
        """Make those of `digests` Berth stores already (for any repository) readable by
        `repository`, as an import does instead of copying them again; returns them."""
        validate_name(repository)
        wanted = [str(Digest.parse(d)) for d in digests]
        return {b.digest for b in await self.meta.adopt_blobs(repository, wanted)}

    async def import_files(
        self,
        repository: str,
        files: Sequence[tuple[str, Path]],
        *,
        link: bool = True,
        parallel: int = 4,
    ) -> list[PlacedFile] | None:
        """Store local files (digest, path) as blobs of `repository`, in one upload: each
        placed by the store in one pass (hard-linked where it can and `link` allows, else
        copied; hashed on the way; up to `parallel` at once), then all made durable together
        and recorded in one transaction, once every digest is verified. All or nothing; None
        when the store cannot take local files (S3: the caller streams them instead).

        Raises InvalidDigest when a file's content does not match, FileNotFoundError or
        IsADirectoryError when one is missing or not a file, and what recording raises
        (Denied for a quota); nothing is then stored. A cancellation, or a crash, leaves an
        upload at most, removed with the expired ones.
        """
        if not isinstance(self.store, FileImport):
            return None
        store = self.store
        wanted = [(Digest.parse(d), path) for d, path in dict(files).items()]
        upload = await self.start_upload(repository)
        self._hashes.pop(upload.id)  # nothing is appended to this one
        placed: list[PlacedFile] = []
        keys: list[str] = []

        async def place(item: tuple[Digest, Path]) -> None:
            digest, path = item
            done = await store.place_file(upload.id, path, digest, link=link)
            placed.append(done)
            if done.digest != digest:
                raise InvalidDigest(
                    f"digest {digest} does not match the content of {path} ({done.digest})",
                    {"expected": str(digest), "actual": str(done.digest)},
                )

        try:
            await each(wanted, place, parallel)
            keys = await store.commit_files(placed)
            records = await self.meta.record_blobs(
                repository,
                [(str(f.digest), f.size, k) for f, k in zip(placed, keys, strict=True)],
                upload_id=upload.id,
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._delete_keys(keys)
                await self._discard(upload.id)
            raise
        # Digests stored meanwhile by an upload or another import: their bytes serve.
        redundant = [k for k, r in zip(keys, records, strict=True) if r.storage_key != k]
        with trio.CancelScope(shield=True):
            await self._delete_keys(redundant)
            await store.delete_upload(upload.id)
        return placed

    async def _delete_keys(self, keys: list[str]) -> None:
        if not keys:
            return
        if isinstance(self.store, BulkDelete):
            await self.store.delete_many(keys)
        else:
            for key in keys:
                await self.store.delete(key)

    async def delete_blob(self, repository: str, digest_text: str) -> None:
        validate_name(repository)
        digest = str(Digest.parse(digest_text))
        if not await self.meta.unlink_blob(repository, digest):
            raise BlobNotFound(
                f"blob {digest} is not in repository {repository}", {"digest": digest}
            )

    def read_blob(self, blob: BlobRecord, start: int, length: int) -> AsyncIterator[bytes]:
        return self.store.read(blob.storage_key, start, length)

    async def blob_url(self, blob: BlobRecord) -> str | None:
        """Where a client may download `blob` directly (a presigned S3 URL), or None."""
        if isinstance(self.store, BlobRedirect):
            return await self.store.download_url(blob.storage_key)
        return None

    # -- manifests -----------------------------------------------------------------------

    async def put_manifest(
        self,
        repository: str,
        reference: str,
        payload: bytes,
        content_type: str | None,
        pushed_by: str | None = None,
        *,
        move_tag: bool = True,
    ) -> ManifestPut:
        """Store a manifest (by digest, or tagged). With `move_tag` false an existing tag that
        points elsewhere is left alone and Conflict raised (an import that must not overwrite)."""
        validate_name(repository)
        if len(payload) > self.max_manifest_size:
            raise ManifestTooLarge(
                f"manifest is larger than {self.max_manifest_size} bytes",
                {"limit": self.max_manifest_size},
            )
        tag: str | None = None
        if is_digest(reference):
            claimed = Digest.parse(reference)
            digest = Digest.of(payload, claimed.algorithm)
            if digest != claimed:
                raise InvalidDigest(
                    f"manifest digest is {digest}, not {claimed}",
                    {"expected": str(claimed), "actual": str(digest)},
                )
        else:
            tag = validate_tag(reference)
            digest = Digest.of(payload)
        parsed = manifests.parse(payload, content_type)
        result: PutResult = await self.meta.put_manifest(
            repository, digest, parsed, payload, tag, pushed_by=pushed_by, move_tag=move_tag
        )
        return ManifestPut(
            result.digest,
            str(parsed.subject.digest) if parsed.subject is not None else None,
            result.created,
        )

    async def manifest(self, repository: str, reference: str) -> ManifestRecord:
        validate_name(repository)
        reference = readable_reference(reference)
        if is_digest(reference):
            return await self.meta.manifest(repository, reference, True)
        record = await self.meta.manifest(repository, reference, False)
        if self.on_tag_resolved is not None:
            self.on_tag_resolved(repository, reference)
        return record

    async def delete_manifest(
        self, repository: str, reference: str, audit: Callable[[Tx], None] | None = None
    ) -> None:
        """By digest: the manifest and its tags. By tag: the tag only (then `audit`, if
        given, runs in the delete's transaction)."""
        validate_name(repository)
        if is_digest(reference):
            await self.meta.delete_manifest(repository, str(Digest.parse(reference)))
        else:
            await self.meta.delete_tag(repository, validate_tag(reference), audit)

    # -- listings ------------------------------------------------------------------------

    async def tags(self, repository: str, n: int | None, last: str | None) -> list[str]:
        validate_name(repository)
        return await self.meta.tags(repository, n, last)

    async def catalog(self, n: int | None, last: str | None) -> list[str]:
        return await self.meta.catalog(n, last)

    async def referrers(
        self, repository: str, digest_text: str, artifact_type: str | None
    ) -> list[dict[str, object]]:
        validate_name(repository)
        digest = str(Digest.parse(digest_text))
        return await self.meta.referrers(repository, digest, artifact_type)


__all__ = ["ManifestPut", "Registry", "SizeInvalid"]
