"""Blob store on a local filesystem: uploads are files, commit is fsync + rename."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO, TypeVar

import trio

from appliance.errors import BlobNotFound, StorageFull, Unavailable, UploadNotFound
from appliance.oci.digest import Digest, Hasher, new_hasher
from appliance.storage import layout
from appliance.storage.base import Progress, StoredObject
from appliance.storage.pending import Pending

CHUNK = 1 << 20
READ_PIECE = 1 << 20  # a download reads this much at a time, one piece ahead of the send
_FULL = {errno.ENOSPC, errno.EDQUOT}
T = TypeVar("T")


def _translate(e: OSError, what: str) -> Exception:
    if e.errno in _FULL:
        return StorageFull(f"storage is full: no space left for {what}")
    return Unavailable(f"storage error on {what}: {e.strerror}")


async def _run(fn: Callable[[], T], what: str) -> T:
    """Run blocking file work in a thread, translating OS errors at this boundary."""
    try:
        return await trio.to_thread.run_sync(fn)
    except (FileNotFoundError, UploadNotFound, BlobNotFound):
        raise
    except OSError as e:
        raise _translate(e, what) from e


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemStore:
    """A BlobStore rooted at one directory (see `layout` for the key tree)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key

    def _upload(self, upload_id: str) -> Path:
        if not layout.is_upload_id(upload_id):
            raise UploadNotFound("upload unknown")
        return self._path(layout.upload_key(upload_id))

    async def create_upload(self, upload_id: str) -> None:
        path = self._upload(upload_id)

        def create() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

        await _run(create, "a new upload")

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
        path = self._upload(upload_id)  # `digest`: a rename needs no hint of the final key

        def open_at() -> BinaryIO:
            try:
                f = path.open("r+b")
            except FileNotFoundError:
                raise UploadNotFound("upload unknown") from None
            size = f.seek(0, os.SEEK_END)
            if size < offset:
                f.close()
                raise UploadNotFound("upload data is shorter than recorded")
            if size > offset:
                f.truncate(offset)
            f.seek(offset)
            return f

        async def put(f: BinaryIO, data: bytes) -> None:
            if hasher is None:
                await _run(lambda: f.write(data), "an upload")
                return
            # Hashing and writing each take a thread, so the two overlap. A write error is
            # raised after the nursery, not inside it: the nursery would wrap it in an
            # ExceptionGroup, and StorageFull must reach `except StorageFull` below as itself.
            failed: Exception | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, hasher.update, data)
                try:
                    await _run(lambda: f.write(data), "an upload")
                except Exception as e:
                    failed = e
            if failed is not None:
                raise failed

        f = await _run(open_at, "an upload")
        try:
            # A failure of the body source (a disconnect) leaves the hasher in step with what
            # was written; a failure while writing or hashing does not.
            async for data in chunks:
                try:
                    await put(f, data)
                except BaseException:
                    progress.hashed = False
                    raise
                progress.written += len(data)
            await _run(f.flush, "an upload")
        except StorageFull:
            progress.written = 0
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_cut, f, offset)
            raise
        finally:
            f.close()
        return offset + progress.written

    async def upload_size(self, upload_id: str) -> int:
        path = self._upload(upload_id)
        try:
            return await _run(lambda: path.stat().st_size, "an upload")
        except FileNotFoundError:
            raise UploadNotFound("upload unknown") from None

    async def hash_upload(self, upload_id: str, length: int, algorithm: str) -> Digest:
        path = self._upload(upload_id)

        def digest() -> Digest:
            h = new_hasher(algorithm)
            remaining = length
            with path.open("rb") as f:
                while remaining > 0:
                    data = f.read(min(CHUNK, remaining))
                    if not data:
                        raise UploadNotFound("upload data is shorter than recorded")
                    h.update(data)
                    remaining -= len(data)
            return Digest(algorithm, h.hexdigest())

        try:
            return await _run(digest, "an upload")
        except FileNotFoundError:
            raise UploadNotFound("upload unknown") from None

    async def commit(self, upload_id: str, length: int, digest: Digest) -> str:
        src = self._upload(upload_id)
        key = layout.blob_key(digest)
        dst = self._path(key)

        def commit() -> None:
            with src.open("r+b") as f:
                if f.seek(0, os.SEEK_END) != length:
                    f.truncate(length)
                os.fsync(f.fileno())
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dst)
            _fsync_dir(dst.parent)
            shutil.rmtree(src.parent, ignore_errors=True)

        try:
            await _run(commit, f"blob {digest}")
        except FileNotFoundError:
            raise UploadNotFound("upload unknown") from None
        return key

    async def delete_upload(self, upload_id: str) -> None:
        path = self._upload(upload_id).parent
        await _run(lambda: shutil.rmtree(path, ignore_errors=True), "an upload")

    async def read(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """The bytes of `key` from `start`, in pieces of READ_PIECE, each read in a worker
        thread while the caller sends the one before (the copy out of the page cache and the
        copy into the socket run side by side). Cancelled or closed early, the piece being
        read is awaited before the file is closed."""
        path = self._path(key)
        try:
            fd = await _run(lambda: os.open(path, os.O_RDONLY | os.O_CLOEXEC), "a blob")
        except FileNotFoundError:
            raise BlobNotFound(f"blob bytes missing at {key}") from None
        end = start + length

        async def piece(offset: int) -> Pending[bytes]:
            read = partial(os.pread, fd, min(READ_PIECE, end - offset), offset)
            return await Pending.start(read, trio.to_thread.current_default_thread_limiter())

        ahead: Pending[bytes] | None = None
        try:
            offset = start
            ahead = await piece(offset) if offset < end else None
            while ahead is not None:
                try:
                    data = await ahead.result()
                except OSError as e:
                    ahead = None  # that read is over
                    raise _translate(e, "a blob") from e
                ahead = None  # (a cancelled wait leaves it set: the thread may still read)
                if not data:
                    raise Unavailable(f"blob at {key} is shorter than recorded")
                offset += len(data)
                if offset < end:
                    ahead = await piece(offset)
                yield data
        finally:
            if ahead is not None:
                with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                    await ahead.result()  # the thread still reads from fd
            os.close(fd)

    async def delete(self, key: str) -> None:
        await self.delete_many([key])

    async def delete_many(self, keys: list[str]) -> None:
        paths = [self._path(key) for key in keys]

        def delete() -> None:
            for path in paths:
                path.unlink(missing_ok=True)
                for parent in (path.parent, path.parent.parent):
                    try:
                        parent.rmdir()
                    except OSError:
                        break

        await _run(delete, "a blob" if len(paths) == 1 else f"{len(paths)} blobs")

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        base = self.root / prefix
        folders = os.walk(base) if base.is_dir() else iter(())

        def next_folder() -> list[StoredObject] | None:
            entry = next(folders, None)
            if entry is None:
                return None
            folder, _, files = entry
            found = []
            for name in files:
                path = Path(folder) / name
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # deleted meanwhile
                key = str(path.relative_to(self.root))
                found.append(StoredObject(key, st.st_size, st.st_mtime))
            return found

        while True:
            page = await _run(next_folder, "listing storage")
            if page is None:
                return
            for item in page:
                yield item

    async def check(self) -> None:
        def check() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):
                raise PermissionError(errno.EACCES, "not writable", str(self.root))

        await _run(check, f"storage root {self.root}")


def _cut(f: BinaryIO, length: int) -> None:
    with contextlib.suppress(OSError):
        f.truncate(length)
