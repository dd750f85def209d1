"""Blob store on a local filesystem: uploads are files, commit is fsync + rename.

A file of this machine (an import) is placed at a blob key by a hard link when it is on the
same file system, by a copy otherwise (`place_file`); nothing here ever writes to a linked
file, so its other name keeps exactly what it had.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO, TypeVar

import trio

from appliance import libc
from appliance.errors import BlobNotFound, Conflict, StorageFull, Unavailable, UploadNotFound
from appliance.oci.digest import Digest, Hasher, new_hasher
from appliance.storage import layout
from appliance.storage.base import PlacedFile, Progress, StoredObject
from appliance.storage.pending import Pending

CHUNK = 1 << 20
READ_PIECE = 1 << 20  # a download reads this much at a time, one piece ahead of the send
SHARED_HOP = 256 << 10  # up to this, a piece is hashed and written in one thread hop
WRITEBACK_EVERY = 8 << 20  # an upload's written bytes are sent on to disk at this pace
COPY_CHUNK = 4 << 20  # an import's copy: fewer, larger reads
SYNC_THREADS = 16
_FULL = {errno.ENOSPC, errno.EDQUOT}
T = TypeVar("T")


def _translate(e: OSError, what: str) -> Exception:
    if e.errno in _FULL:
        return StorageFull(f"storage is full: no space left for {what}")
    return Unavailable(f"storage error on {what}: {e.strerror}")


async def _run(fn: Callable[[], T], what: str, *, here: bool = False) -> T:
    """Run blocking file work in a thread, translating OS errors at this boundary. `here`:
    on the calling thread instead, for work on a small file that costs less than the hop."""
    try:
        return fn() if here else await trio.to_thread.run_sync(fn)
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

    parallel_deletes = 2  # see BlobStore

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
        opened: list[BinaryIO] = []  # the upload's file (unbuffered), from the first write on
        pending = [offset, 0]  # where the bytes not yet sent on to disk start, and how many

        def open_at() -> BinaryIO:
            try:
                f = path.open("r+b", buffering=0)
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

        def write(data: bytes, *, hashing: bool) -> None:
            if not opened:
                opened.append(open_at())
            if hashing and hasher is not None:
                hasher.update(data)
            _write_all(opened[0], data)
            pending[1] += len(data)
            if pending[1] >= WRITEBACK_EVERY:
                start_writeback(opened[0].fileno(), pending[0], pending[1])
                pending[0] += pending[1]
                pending[1] = 0

        async def put(data: bytes) -> None:
            if hasher is None or len(data) <= SHARED_HOP:
                # One thread hop for the open, the digest and the write of a small piece (the
                # body comes in pieces of about 1 MiB: a small blob is one): the hop costs a
                # request more than hashing and writing 256 KiB does.
                await _run(lambda: write(data, hashing=True), "an upload")
                return
            # A large piece is hashed and written in two threads at once. A write error is
            # raised after the nursery, not inside it: the nursery would wrap it in an
            # ExceptionGroup, and StorageFull must reach `except StorageFull` below as itself.
            failed: Exception | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, hasher.update, data)
                try:
                    await _run(lambda: write(data, hashing=False), "an upload")
                except Exception as e:
                    failed = e
            if failed is not None:
                raise failed

        try:
            # A failure of the body source (a disconnect) leaves the hasher in step with what
            # was written; a failure while writing or hashing does not.
            async for data in chunks:
                try:
                    await put(data)
                except BaseException:
                    progress.hashed = False
                    raise
                progress.written += len(data)
            if not opened:  # an empty body: the upload must still be there
                await _run(lambda: write(b"", hashing=False), "an upload")
        except StorageFull:
            progress.written = 0
            if opened:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_cut, opened[0], offset)
            raise
        finally:
            if opened:
                opened[0].close()
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
            # A small upload is read from the page cache and hashed in less than a thread
            # hop costs (the process that carried its running digest was another).
            return await _run(digest, "an upload", here=length <= SHARED_HOP)
        except FileNotFoundError:
            raise UploadNotFound("upload unknown") from None

    async def commit(self, upload_id: str, length: int, digest: Digest) -> str:
        src = self._upload(upload_id)
        key = layout.blob_key(digest)
        dst = self._path(key)

        def commit() -> None:
            # Opened for reading: fsync needs no more, and a hard-linked upload (link_upload)
            # must never be written through. Only bytes left past `length` by a crash are cut.
            with src.open("rb") as f:
                longer = f.seek(0, os.SEEK_END) != length
                if not longer:
                    os.fsync(f.fileno())
            if longer:
                with src.open("r+b") as f:
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

    def _placed(self, upload_id: str, digest: Digest) -> Path:
        return self._upload(upload_id).parent / f"{digest.algorithm}-{digest.hex}"

    async def place_file(
        self, upload_id: str, source: Path, digest: Digest, *, link: bool
    ) -> PlacedFile:
        dst = self._placed(upload_id, digest)

        def place() -> PlacedFile:
            if not dst.parent.is_dir():
                raise UploadNotFound("upload unknown")
            with open_regular(source) as src:
                st = os.fstat(src.fileno())
                try:
                    linked = link and self._link(source, st, dst)
                    hasher = new_hasher(digest.algorithm)
                    size = _pump(src, hasher, None if linked else dst)
                except FileExistsError:
                    raise Conflict(f"upload {upload_id} holds {digest} already") from None
                except BaseException:
                    dst.unlink(missing_ok=True)
                    raise
            key = str(dst.relative_to(self.root))
            return PlacedFile(key, Digest(digest.algorithm, hasher.hexdigest()), size, linked)

        try:
            return await trio.to_thread.run_sync(place)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise
        except OSError as e:
            raise _translate(e, f"blob {digest}") from e

    async def commit_files(self, files: list[PlacedFile]) -> list[str]:
        # Files are fsync'ed concurrently: parallel fsyncs share the file system's journal
        # commits and the disk's cache flushes, where one after the other each would wait for
        # its own. Then each is renamed to its key and its new folder synced, concurrently too.
        moves = [(self._path(f.key), layout.blob_key(f.digest)) for f in files]
        await self._each(lambda src, key: _fsync_file(src), moves)
        done: list[tuple[Path, str]] = []

        def move(src: Path, key: str) -> None:
            dst = self._path(key)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dst)
            done.append((src, key))
            _fsync_dir(dst.parent)

        try:
            await self._each(move, moves)
        except BaseException:
            with trio.CancelScope(shield=True):
                await _run(lambda: _move_back(self.root, done), "placed blobs")
            raise
        return [key for _, key in moves]

    async def _each(self, fn: Callable[[Path, str], None], moves: list[tuple[Path, str]]) -> None:
        """`fn(src, key)` for every move, in threads, SYNC_THREADS at a time; the first error
        is raised as itself (not in an exception group), after every thread has finished."""
        limiter = trio.CapacityLimiter(SYNC_THREADS)
        failed: list[Exception] = []

        async def one(src: Path, key: str) -> None:
            async with limiter:
                try:
                    await _run(lambda: fn(src, key), f"blob {key}")
                except FileNotFoundError:
                    failed.append(Unavailable(f"storage error: placed file {src} vanished"))
                except Exception as e:
                    failed.append(e)

        async with trio.open_nursery() as nursery:
            for src, key in moves:
                nursery.start_soon(one, src, key)
        if failed:
            raise failed[0]

    def _link(self, source: Path, st: os.stat_result, dst: Path) -> bool:
        """Hard-link `source` (whose open file `st` describes) at `dst`; False when it cannot
        or should not be (another file system, not readable by the store's owner, owned by
        another user, refused). A link shares the file's mode: Berth tightens the modes of
        what it stores (filemodes.py), which must not change another user's registry."""
        owner = self.root.stat()
        if st.st_dev != owner.st_dev or not _readable_by(st, owner.st_uid, owner.st_gid):
            return False
        if st.st_uid != owner.st_uid:
            return False
        try:
            os.link(source, dst)
        except OSError as e:
            if e.errno in _NO_LINK:
                return False
            raise
        linked = dst.stat()
        if (linked.st_dev, linked.st_ino) != (st.st_dev, st.st_ino):
            dst.unlink()  # `source` was replaced after it was opened: link nothing else
            return False
        return True

    async def delete_upload(self, upload_id: str) -> None:
        path = self._upload(upload_id).parent
        await _run(lambda: shutil.rmtree(path, ignore_errors=True), "an upload")

    async def open_range(self, key: str, start: int, length: int) -> BinaryIO:
        """The open file of `key` (unbuffered), checked to hold `start + length` bytes, for a
        server that sends it without reading it into this process (sendfile). The caller
        closes it. Raises BlobNotFound when the file is missing, Unavailable when short."""
        path = self._path(key)

        def opened() -> BinaryIO:
            f = path.open("rb", buffering=0)
            if os.fstat(f.fileno()).st_size >= start + length:
                return f
            f.close()
            raise Unavailable(f"blob at {key} is shorter than recorded")

        try:
            # A small layer or config is sent from the event loop (server.INLINE_SEND): its
            # open and length check cost a fraction of a thread hop too.
            return await _run(opened, "a blob", here=length <= SHARED_HOP)
        except FileNotFoundError:
            raise BlobNotFound(f"blob bytes missing at {key}") from None

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
            # The blob's own directory (`blobs/<algorithm>/<ab>/<hex>/`) goes with it; its
            # prefix directory (one of 256) stays. Removing that one could only succeed for
            # the last blob under it, and each try locked `blobs/<algorithm>/`, which every
            # deleting thread shares: three quarters of a collection's time went there.
            for path in paths:
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    path.parent.rmdir()

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


def open_regular(path: Path) -> io.FileIO:
    """`path` opened for reading, unbuffered, if it is a regular file (following symbolic
    links); IsADirectoryError otherwise. Never blocks: a FIFO planted where a file should be
    is refused, not waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return io.FileIO(fd, "rb")


# Why a hard link can fail where a copy would not: another file system, a file system without
# links, too many links, or links refused to a file this user does not own.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.EOPNOTSUPP}


def _readable_by(st: os.stat_result, uid: int, gid: int) -> bool:
    """Whether the owner of the store's root (who runs the server) may read the file `st`
    describes: a linked file keeps its owner and mode, so it must be readable as it is."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def _fsync_file(path: Path) -> None:
    """fsync a placed file: a link's bytes too, as its other writer may never have."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_back(root: Path, done: list[tuple[Path, str]]) -> None:
    """Undo the renames of a failed `commit_files`: the files go back into their upload."""
    for src, key in done:
        with contextlib.suppress(OSError):
            os.rename(root / key, src)
            (root / key).parent.rmdir()
            (root / key).parent.parent.rmdir()


def _pump(src: io.RawIOBase, hasher: Hasher, dst: Path | None) -> int:
    """Hash every byte of `src` (and copy them to a new file `dst`); the length. One reused
    buffer: no allocation per chunk."""
    buffer = bytearray(COPY_CHUNK)
    view = memoryview(buffer)
    size = 0
    out = dst.open("xb", buffering=0) if dst is not None else None
    try:
        while n := src.readinto(buffer):
            hasher.update(view[:n])  # type: ignore[arg-type]  # hashlib takes any buffer
            if out is not None:
                out.write(view[:n])
            size += n
        if out is not None and hasattr(os, "posix_fadvise"):
            # Start writing the copy to disk now (and let its pages go: nothing reads them
            # soon), so that the fsync of `commit_files` finds little left to wait for.
            os.posix_fadvise(out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        if out is not None:
            out.close()
    return size


# sync_file_range(2) (Linux), or None where the C library has none.
_SYNC_FILE_RANGE = libc.function(
    "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
)
SYNC_FILE_RANGE_WRITE = 2  # start writing the range's dirty pages; do not wait for them


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing `length` bytes of `fd` from `offset` to disk, without
    waiting: a large upload's bytes then go to disk while the rest arrives, and the fsync
    before its 201 finds little left to write (a 1 GiB blob's fsync took 0.45-0.55 s at the
    end of a 2 s upload). Durability is still the fsync's; this only starts it early."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def _write_all(f: BinaryIO, data: bytes) -> None:
    """Write all of `data` to an unbuffered file (a raw write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[f.write(view) :]


def _cut(f: BinaryIO, length: int) -> None:
    with contextlib.suppress(OSError):
        f.truncate(length)
