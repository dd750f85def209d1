"""The BlobStore protocol: the seam every storage backend implements.

Stores hold bytes only; which blobs exist and who may read them is the metadata database's
business. Every method may raise StorageFull (no space left) or Unavailable (backend
unreachable); other backend errors are translated at this boundary and never leak.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from appliance.oci.digest import Digest, Hasher


@dataclass
class Progress:
    """How far an append got; read it after a failure.

    `written` counts the bytes the upload now holds beyond the append's offset. `hashed` says
    whether the hasher has seen exactly those bytes; after a failed write it may have seen more,
    and must not be trusted.
    """

    written: int = 0
    hashed: bool = True


@dataclass(frozen=True)
class StoredObject:
    """One object a store holds, as `list_objects` reports it."""

    key: str  # relative to the store's root, as `layout` draws it
    size: int
    modified: float  # seconds since the epoch


class BlobStore(Protocol):
    # How many deletions the garbage collector runs at once. Where each waits on the network
    # (S3, Azure) several overlap; on a local disk they are kernel work that waits on nothing,
    # and many threads of it take a small machine's CPUs from the requests served meanwhile.
    parallel_deletes: int

    async def create_upload(self, upload_id: str) -> None:
        """Make an empty upload. Idempotent."""

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
        """Write `chunks` at `offset` and return the new length of the upload.

        `digest`, given only with `offset` 0, is what the caller expects the whole blob to be
        (a monolithic upload): a store may use it to place the bytes where that blob will live
        and save a copy at commit. It is a hint; nothing is trusted before `commit`.

        Bytes past `offset` (left by a crash or a failed earlier append) are discarded first.
        Each chunk also feeds `hasher` when one is given. `progress.written` counts the bytes
        written so far, so after a disconnect or cancellation the caller knows exactly what the
        upload holds. On StorageFull the upload is cut back to `offset` and `progress.written`
        is 0. After a failed write `progress.hashed` is False. Raises UploadNotFound if the
        upload does not exist or is shorter than `offset`.
        """

    async def upload_size(self, upload_id: str) -> int:
        """Bytes currently stored for the upload (may exceed what the database recorded)."""

    async def hash_upload(self, upload_id: str, length: int, algorithm: str) -> Digest:
        """Digest of the first `length` bytes of the upload, read once."""

    async def commit(self, upload_id: str, length: int, digest: Digest) -> str:
        """Make the first `length` bytes of the upload a durable blob; return its storage key.

        The caller has verified the digest. Atomic: afterwards the key holds exactly those
        bytes, or (on failure) nothing does and the upload is left as it was.
        """

    async def delete_upload(self, upload_id: str) -> None:
        """Remove an upload and its bytes. Idempotent."""

    def read(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """Stream `length` bytes of the blob at `key` from `start`. Raises BlobNotFound."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob at `key`. Idempotent."""

    async def check(self) -> None:
        """Raise Unavailable when the store cannot be used."""

    def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        """Every object whose key starts with `prefix` (`blobs/`, `uploads/`), in no set
        order, streamed page by page. Only `berth fsck` walks storage: the database is the
        source of truth for everything else. Objects written or deleted meanwhile may or may
        not appear."""
        ...


@runtime_checkable
class BulkDelete(Protocol):
    """An optional ability: deleting many blobs in one go (the garbage collector)."""

    async def delete_many(self, keys: list[str]) -> None:
        """Remove the blobs at `keys`, as `delete` does each (idempotent), with fewer round
        trips: one thread hop on a filesystem, one request per 1,000 keys on S3."""
        ...


@runtime_checkable
class BlobRedirect(Protocol):
    """An optional ability: blobs that clients may download from elsewhere (S3 presigned URLs)."""

    async def download_url(self, key: str) -> str | None:
        """A URL from which a client may GET the blob at `key` directly (it honours `Range`
        itself), valid for a while; None to serve the bytes through Berth."""
        ...


@dataclass(frozen=True)
class PlacedFile:
    """A local file put into an upload by `FileImport.place_file`: what its bytes hash to."""

    key: str  # where it is, inside its upload
    digest: Digest  # of the bytes placed (the caller compares it with the one it expected)
    size: int
    linked: bool  # a hard link to the file (no byte copied), not a copy


@runtime_checkable
class FileImport(Protocol):
    """An optional ability: taking files of this machine as blobs (an import), each by a hard
    link where the file system allows, by a copy otherwise, many made durable together.

    The files go into an upload first (`create_upload`), so that whatever an interruption
    leaves is an upload, removed with it (the purge of expired uploads, `delete_upload`).
    """

    async def place_file(
        self, upload_id: str, source: Path, digest: Digest, *, link: bool
    ) -> PlacedFile:
        """Put `source` into the upload as the file for `digest`, hashing it on the way.

        With `link`, a hard link is made when `source` is on the store's file system and its
        owner and mode let the store's owner read it (a link keeps them); otherwise, and
        without `link`, the bytes are copied. `source` is opened once, and what is linked or
        copied is that open file, so a path swapped for a symbolic link meanwhile places
        nothing else. Nothing ever writes through a link. Not yet durable: `commit_files`.

        Raises FileNotFoundError when `source` does not exist, IsADirectoryError when it is
        not a regular file, UploadNotFound when the upload does not exist, and Conflict when
        it holds a file for `digest` already.
        """
        ...

    async def commit_files(self, files: list[PlacedFile]) -> list[str]:
        """Make placed files durable blobs, each at a fresh storage key (returned, in order).

        Atomic as a whole: on failure none of the keys exists (the files stay in their
        upload). The keys are not visible to anyone until blobs rows name them.
        """
        ...
