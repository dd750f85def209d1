"""Reading the files of another registry's storage: a local directory or an S3 bucket.

A `Tree` is read-only and knows nothing of the layout it holds (`distribution.py` does): it
lists folders, reads small files whole (bounded), tells sizes and streams large files. Paths
are '/'-separated and relative to the tree's root; they are built by the caller from validated
names and digests only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeVar

import trio

from appliance.errors import BlobNotFound, SizeInvalid, Unavailable
from appliance.storage.filesystem import open_regular

if TYPE_CHECKING:  # boto3 takes a while to import: only an S3 source needs it
    from appliance.storage.s3 import S3Store

CHUNK = 1 << 20
T = TypeVar("T")


class Tree(Protocol):
    where: str  # for messages: a path, or the bucket and prefix (never a credential)

    async def folders(self, path: str) -> list[str]:
        """Names of the folders in `path` ([] when there is no such folder)."""
        ...

    async def read(self, path: str, limit: int) -> bytes | None:
        """The whole file, None when it does not exist; SizeInvalid when larger than `limit`."""
        ...

    async def size(self, path: str) -> int | None:
        """The file's size, None when it does not exist."""
        ...

    def stream(self, path: str, size: int) -> AsyncIterator[bytes]:
        """The file's first `size` bytes, in chunks. Raises BlobNotFound when it is gone,
        Unavailable when it is shorter."""
        ...

    def local(self, path: str) -> Path | None:
        """The file on this machine's file system (to be hard-linked), if it is one."""
        ...


async def _run(fn: Callable[[], T], what: str) -> T:
    """Blocking file work in a thread; OS errors other than a missing file become Unavailable."""
    try:
        return await trio.to_thread.run_sync(fn)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise
    except OSError as e:
        raise Unavailable(f"cannot read {what}: {e.strerror or e}") from e


class DirectoryTree:
    """A tree in a local directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def local(self, path: str) -> Path:
        return self.root / path

    async def folders(self, path: str) -> list[str]:
        folder = self.local(path)

        def listing() -> list[str]:
            with os.scandir(folder) as entries:
                return [e.name for e in entries if e.is_dir()]

        try:
            return await _run(listing, str(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []

    async def read(self, path: str, limit: int) -> bytes | None:
        file = self.local(path)

        def read() -> bytes:
            with open_regular(file) as f:
                parts = []
                left = limit + 1
                while left > 0 and (data := f.read(left)):
                    parts.append(data)
                    left -= len(data)
                return b"".join(parts)

        try:
            data = await _run(read, str(file))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        if len(data) > limit:
            raise SizeInvalid(f"{file} is larger than {limit} bytes")
        return data

    async def size(self, path: str) -> int | None:
        file = self.local(path)
        try:
            st = await _run(file.stat, str(file))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    async def stream(self, path: str, size: int) -> AsyncIterator[bytes]:
        file = self.local(path)
        try:
            f: BinaryIO = await _run(lambda: open_regular(file), str(file))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise BlobNotFound(f"{file} is gone") from None
        try:
            left = size
            while left > 0:
                want = min(CHUNK, left)
                data = await _run(lambda n=want: f.read(n), str(file))  # type: ignore[misc]
                if not data:
                    raise Unavailable(f"{file} is shorter than {size} bytes")
                left -= len(data)
                yield data
        finally:
            f.close()


class BucketTree:
    """A tree under a key prefix of an S3 bucket, read through a read-only use of S3Store
    (its retries and error translation): nothing here writes to the bucket."""

    def __init__(self, store: S3Store, root: str) -> None:
        self.store = store
        self.root = root.strip("/") + "/" if root.strip("/") else ""
        self.where = f"s3://{store.bucket}/{store.prefix}{self.root}".rstrip("/")

    def local(self, path: str) -> None:
        return None

    async def folders(self, path: str) -> list[str]:
        return await self.store.folders(self.root + path.strip("/") + "/")

    async def read(self, path: str, limit: int) -> bytes | None:
        return await self.store.read_object(self.root + path, limit)

    async def size(self, path: str) -> int | None:
        return await self.store.object_size(self.root + path)

    def stream(self, path: str, size: int) -> AsyncIterator[bytes]:
        return self.store.read(self.root + path, 0, size)
