"""One append to an object store, cut into pieces: the machinery the S3 store (multipart parts)
and the Azure store (staged blocks) share.

A `PieceCutter` receives the request body's chunks, hands them to a thread that hashes them
while the next chunk arrives, buffers them, and calls `launch(n)` whenever `piece_ready()` says
the buffer holds a piece. The backend's `launch` sends the piece in the nursery (a few at a time,
`slots`) and records it; a failure there is reported with `_fail`, which stops the append and
is raised alone (never an ExceptionGroup).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from appliance.errors import StorageFull, Unavailable, UploadNotFound
from appliance.oci.digest import Hasher
from appliance.storage.base import Progress


class PieceCutter:
    """The shared half of one append; a backend subclasses it with `piece_ready` and `launch`."""

    nursery: trio.Nursery

    def __init__(self, progress: Progress, in_flight: int) -> None:
        self.progress = progress
        self.hashed = 0  # bytes the hasher has seen
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.failures: list[Exception] = []
        self.slots = trio.Semaphore(in_flight)  # pieces being sent at once
        self.record_lock = trio.Lock()

    def piece_ready(self) -> int:
        """How many buffered bytes to send as the next piece now; 0 to wait for more."""
        raise NotImplementedError

    async def launch(self, n: int) -> None:
        """Start sending the next piece (`_take(n)`) in `nursery`."""
        raise NotImplementedError

    async def receive_all(
        self, chunks: AsyncIterator[bytes], hasher: Hasher | None
    ) -> Exception | None:
        """Take every chunk of the source, launching pieces as they fill; wait for them.
        Raises the first failure of the store; returns the source's own error (a disconnect),
        after keeping everything the source gave. What is left in the buffer is the caller's."""
        source_error: Exception | None = None
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            to_hasher, hashing = trio.open_memory_channel[bytes](2)
            if hasher is not None:
                nursery.start_soon(self._hash, hasher, hashing)
            async with to_hasher:
                try:
                    source_error = await self._receive(chunks, to_hasher, hasher is not None)
                except (Unavailable, StorageFull, UploadNotFound) as e:
                    self._fail(e)
        if self.failures:
            raise self.failures[0]
        return source_error

    async def launch_last(self, n: int) -> None:
        """Send a last piece of `n` buffered bytes and wait for it; raises its failure."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                await self.launch(n)
            except (Unavailable, StorageFull, UploadNotFound) as e:
                self._fail(e)
        if self.failures:
            raise self.failures[0]

    async def _receive(
        self,
        chunks: AsyncIterator[bytes],
        to_hasher: trio.MemorySendChannel[bytes],
        hashing: bool,
    ) -> Exception | None:
        iterator = chunks.__aiter__()
        while True:
            try:
                data = await iterator.__anext__()
            except StopAsyncIteration:
                return None
            except Exception as e:  # the source failed (a disconnect): keep what came
                return e
            if hashing:  # hashed in a thread while the next chunk arrives
                await to_hasher.send(data)
            self.buffer.append(data)
            self.buffered += len(data)
            while n := self.piece_ready():
                await self.launch(n)

    async def _hash(self, hasher: Hasher, chunks: trio.MemoryReceiveChannel[bytes]) -> None:
        async with chunks:
            async for data in chunks:
                await trio.to_thread.run_sync(hasher.update, data)
                self.hashed += len(data)

    def _fail(self, e: Exception) -> None:
        self.failures.append(e)
        self.nursery.cancel_scope.cancel()

    def _take(self, n: int) -> bytes:
        """The first `n` buffered bytes (one copy; only the last chunk is split)."""
        taken: list[bytes] = []
        size = 0
        while size < n:
            chunk = self.buffer.pop(0)
            if size + len(chunk) > n:
                cut = n - size
                self.buffer.insert(0, chunk[cut:])
                chunk = chunk[:cut]
            taken.append(chunk)
            size += len(chunk)
        self.buffered -= n
        return taken[0] if len(taken) == 1 else b"".join(taken)
