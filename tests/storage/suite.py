"""The BlobStore conformance suite, written once and run over every storage backend.

A backend's test module subclasses `StoreSuite` and provides two fixtures:

- `store`: a fresh, empty BlobStore;
- `side_door`: a callable listing everything the store holds, read around the store
  (the directory tree, or a raw S3 listing that includes multipart uploads in progress).

Every test removes what it made through the store's own API, and an autouse fixture then asserts
through the side door that nothing at all is left: a store that leaves files, objects, tail
segments or unfinished multipart uploads behind fails here.

Sizes: `PART` is the size a backend cuts multipart parts at in these tests (S3's smallest, 5 MiB),
so some tests cross part boundaries and leave tails on purpose.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

import pytest
import trio

from appliance.errors import BlobNotFound, UploadNotFound
from appliance.oci.digest import Digest
from appliance.storage import layout
from appliance.storage.base import BlobStore, BulkDelete, Progress

MIB = 1 << 20
PART = 5 * MIB

SideDoor = Callable[[], list[str]]


class SourceFailed(Exception):
    """Stands in for a client that went away in the middle of a request body."""


def data_of(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


async def feed(pieces: Iterable[bytes], *, fail: bool = False) -> AsyncIterator[bytes]:
    for piece in pieces:
        await trio.lowlevel.checkpoint()
        yield piece
    if fail:
        raise SourceFailed("client went away")


def split(data: bytes, size: int = MIB) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def read_all(store: BlobStore, key: str, start: int, length: int) -> bytes:
    out = bytearray()
    async for data in store.read(key, start, length):
        out += data
    return bytes(out)


async def commit_blob(store: BlobStore, data: bytes) -> str:
    """Upload `data` in one append and commit it; returns its storage key."""
    upload_id = layout.new_upload_id()
    await store.create_upload(upload_id)
    await store.append(upload_id, 0, feed(split(data)), None, Progress())
    return await store.commit(upload_id, len(data), sha(data))


class StoreSuite:
    """Tests every BlobStore must pass. Subclasses provide `store` and `side_door`."""

    @pytest.fixture
    def store(self) -> BlobStore:
        raise NotImplementedError

    @pytest.fixture
    def side_door(self) -> SideDoor:
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    def nothing_left_behind(self, store: BlobStore, side_door: SideDoor) -> Iterator[None]:
        # Synchronous on purpose: it runs around the test's trio.run, not inside it.
        assert side_door() == [], "the store was not empty before the test"
        yield
        assert side_door() == [], "the store left something behind"

    # -- helpers -------------------------------------------------------------------------

    async def upload(
        self,
        store: BlobStore,
        pieces_per_append: list[list[bytes]],
    ) -> tuple[str, bytes]:
        """A new upload fed by one append per item; returns its id and its bytes."""
        upload_id = layout.new_upload_id()
        await store.create_upload(upload_id)
        offset = 0
        held = b""
        for pieces in pieces_per_append:
            progress = Progress()
            offset = await store.append(upload_id, offset, feed(pieces), None, progress)
            held += b"".join(pieces)
            assert offset == len(held)
            assert progress.written == len(b"".join(pieces))
        return upload_id, held

    async def commit_and_check(
        self, store: BlobStore, upload_id: str, data: bytes, length: int | None = None
    ) -> str:
        """Commit the first `length` bytes (all by default); check and return the key."""
        data = data if length is None else data[:length]
        digest = sha(data)
        key = await store.commit(upload_id, len(data), digest)
        assert key.startswith(f"blobs/sha256/{digest.hex[:2]}/{digest.hex}/")
        assert await read_all(store, key, 0, len(data)) == data
        with pytest.raises(UploadNotFound):
            await store.upload_size(upload_id)
        return key

    # -- create / append / size ----------------------------------------------------------

    async def test_create_upload_is_empty_and_idempotent(self, store: BlobStore) -> None:
        upload_id = layout.new_upload_id()
        await store.create_upload(upload_id)
        assert await store.upload_size(upload_id) == 0
        progress = Progress()
        assert await store.append(upload_id, 0, feed([b"abc"]), None, progress) == 3
        await store.create_upload(upload_id)  # again: keeps what it holds
        assert await store.upload_size(upload_id) == 3
        await store.delete_upload(upload_id)

    async def test_append_feeds_the_hasher_and_counts_progress(self, store: BlobStore) -> None:
        upload_id = layout.new_upload_id()
        await store.create_upload(upload_id)
        data = data_of(3 * MIB + 123)
        hasher = hashlib.sha256()
        progress = Progress()
        size = await store.append(upload_id, 0, feed(split(data)), hasher, progress)
        assert size == len(data) == progress.written
        assert progress.hashed
        assert hasher.hexdigest() == sha(data).hex
        assert await store.upload_size(upload_id) == len(data)
        key = await self.commit_and_check(store, upload_id, data)
        await store.delete(key)

    async def test_round_trip_across_parts_and_tails(self, store: BlobStore) -> None:
        """One large append (several parts), small appends (tails), one that fills a part."""
        big = data_of(2 * PART + 3 * MIB + 7, seed=1)
        small = [data_of(700 * 1024, seed=i) for i in range(2, 6)]
        filler = data_of(PART + 5, seed=9)
        upload_id, data = await self.upload(
            store, [split(big), *[[s] for s in small], split(filler, 2 * MIB), [b"z"]]
        )
        assert await store.upload_size(upload_id) == len(data)
        key = await self.commit_and_check(store, upload_id, data)
        # Ranges, including ones across part boundaries.
        for start, length in [(0, 1), (PART - 3, 10), (2 * PART, PART + 1), (len(data) - 5, 5)]:
            assert await read_all(store, key, start, length) == data[start : start + length]
        await store.delete(key)

    async def test_resume_at_the_recorded_offset(self, store: BlobStore) -> None:
        first, second = data_of(PART + 1000, seed=1), data_of(2 * MIB, seed=2)
        upload_id, _ = await self.upload(store, [split(first)])
        progress = Progress()
        size = await store.append(upload_id, len(first), feed([second]), None, progress)
        assert size == len(first) + len(second)
        with pytest.raises(UploadNotFound):  # a gap: the store is shorter than that
            await store.append(upload_id, size + 1, feed([b"x"]), None, Progress())
        key = await self.commit_and_check(store, upload_id, first + second)
        await store.delete(key)

    # -- crashes -------------------------------------------------------------------------

    async def test_truncate_after_a_crash(self, store: BlobStore) -> None:
        """An append the caller never recorded (it crashed) is discarded by the next append
        at the recorded offset, whatever the unrecorded one had reached."""
        recorded = data_of(PART + 2 * MIB, seed=1)
        upload_id, _ = await self.upload(store, [split(recorded)])
        for lost in (data_of(300, seed=2), data_of(2 * PART + 1, seed=3)):
            await store.append(upload_id, len(recorded), feed(split(lost)), None, Progress())
        again = data_of(MIB + 17, seed=4)
        size = await store.append(upload_id, len(recorded), feed([again]), None, Progress())
        assert size == len(recorded) + len(again)
        # Then a commit of fewer bytes than the store holds (a crash after the last append).
        await store.append(upload_id, size, feed([b"unrecorded"]), None, Progress())
        key = await self.commit_and_check(store, upload_id, recorded + again)
        await store.delete(key)

    async def test_truncate_to_any_earlier_offset(self, store: BlobStore) -> None:
        data = data_of(2 * PART + MIB, seed=5)
        upload_id, _ = await self.upload(store, [split(data)])
        for cut in (2 * PART - 3, PART + 1, 4 * MIB, 10):
            rest = data_of(PART // 2, seed=cut)
            size = await store.append(upload_id, cut, feed(split(rest)), None, Progress())
            assert size == cut + len(rest)
            data = data[:cut] + rest
        key = await self.commit_and_check(store, upload_id, data)
        await store.delete(key)

    async def test_failing_source_keeps_what_arrived(self, store: BlobStore) -> None:
        data = data_of(PART + 3 * MIB, seed=6)
        upload_id = layout.new_upload_id()
        await store.create_upload(upload_id)
        hasher = hashlib.sha256()
        progress = Progress()
        with pytest.raises(SourceFailed):
            await store.append(upload_id, 0, feed(split(data), fail=True), hasher, progress)
        assert progress.written == len(data)
        assert progress.hashed
        assert hasher.hexdigest() == sha(data).hex
        assert await store.upload_size(upload_id) == len(data)
        more = data_of(MIB, seed=7)
        await store.append(upload_id, len(data), feed([more]), None, Progress())
        key = await self.commit_and_check(store, upload_id, data + more)
        await store.delete(key)

    @pytest.mark.parametrize("after", [1, 3, 7])
    async def test_cancellation_leaves_a_consistent_progress(
        self, store: BlobStore, after: int
    ) -> None:
        """Cancelled after `after` chunks: the caller can resume at offset + written, and a
        hasher said to be in step has seen exactly those bytes."""
        data = data_of(8 * MIB, seed=after)
        upload_id, head = await self.upload(store, [[b"head"]])
        sent = 0

        async def source() -> AsyncIterator[bytes]:
            nonlocal sent
            for piece in split(data):
                if sent == after:
                    scope.cancel()
                    await trio.sleep_forever()
                sent += 1
                yield piece

        hasher = hashlib.sha256(head)
        progress = Progress()
        with trio.CancelScope() as scope:
            await store.append(upload_id, len(head), source(), hasher, progress)
        assert scope.cancelled_caught
        assert 0 <= progress.written <= after * MIB
        held = len(head) + progress.written
        assert await store.upload_size(upload_id) >= held
        if progress.hashed:
            assert hasher.hexdigest() == sha(head + data[: progress.written]).hex
        rest = data[progress.written :]
        size = await store.append(upload_id, held, feed(split(rest)), None, Progress())
        assert size == len(head) + len(data)
        key = await self.commit_and_check(store, upload_id, head + data)
        await store.delete(key)

    @pytest.mark.parametrize("size", [0, 10])
    async def test_commit_after_a_cancelled_first_append(self, store: BlobStore, size: int) -> None:
        """A first append cancelled once a whole part's worth had arrived (a multipart upload
        may have been started, with nothing recorded in it)."""
        upload_id, head = await self.upload(store, [[data_of(size)]] if size else [])

        async def source() -> AsyncIterator[bytes]:
            for piece in split(data_of(PART + MIB, seed=1)):
                yield piece
            scope.cancel()
            await trio.sleep_forever()

        with trio.CancelScope() as scope:
            await store.append(upload_id, size, source(), None, Progress())
        assert await store.hash_upload(upload_id, size, "sha256") == sha(head)
        key = await self.commit_and_check(store, upload_id, head)
        await store.delete(key)

    # -- hash_upload and commit ----------------------------------------------------------

    async def test_hash_upload_then_more_chunks(self, store: BlobStore) -> None:
        """The fallback after a restart: the digest read from storage. The upload still takes
        chunks afterwards, and a commit of fewer bytes than held uses only those."""
        data = data_of(PART + MIB, seed=8)
        upload_id, _ = await self.upload(store, [split(data)])
        assert await store.hash_upload(upload_id, len(data), "sha256") == sha(data)
        assert await store.hash_upload(upload_id, len(data), "sha512") == Digest(
            "sha512", hashlib.sha512(data).hexdigest()
        )
        more = data_of(PART, seed=9)
        size = await store.append(upload_id, len(data), feed(split(more)), None, Progress())
        data += more
        assert await store.hash_upload(upload_id, size, "sha256") == sha(data)
        await store.append(upload_id, size, feed([b"never recorded"]), None, Progress())
        assert await store.hash_upload(upload_id, size, "sha256") == sha(data)
        key = await self.commit_and_check(store, upload_id, data)
        await store.delete(key)

    async def test_hash_upload_of_a_small_upload(self, store: BlobStore) -> None:
        upload_id, data = await self.upload(store, [[b"hello "], [b"world"]])
        assert await store.hash_upload(upload_id, len(data), "sha256") == sha(data)
        assert await store.hash_upload(upload_id, 5, "sha256") == sha(data[:5])
        key = await self.commit_and_check(store, upload_id, data, length=5)
        await store.delete(key)

    @pytest.mark.parametrize("size", [0, 1, 4 * MIB, PART, 2 * PART + 1])
    async def test_commit_sizes(self, store: BlobStore, size: int) -> None:
        data = data_of(size, seed=size)
        upload_id, _ = await self.upload(store, [split(data)] if data else [])
        key = await self.commit_and_check(store, upload_id, data)
        await store.delete(key)

    @pytest.mark.parametrize("size", [10, 2 * PART + 3])
    async def test_expected_digest_hint(self, store: BlobStore, size: int) -> None:
        """A monolithic upload names its digest up front; a wrong hint changes nothing."""
        data = data_of(size, seed=11)
        for hint in (sha(data), sha(b"something else")):
            upload_id = layout.new_upload_id()
            await store.create_upload(upload_id)
            await store.append(upload_id, 0, feed(split(data)), None, Progress(), digest=hint)
            key = await self.commit_and_check(store, upload_id, data)
            await store.delete(key)

    @pytest.mark.parametrize("size", [10, PART + 3])
    async def test_expected_digest_hint_then_a_restart(self, store: BlobStore, size: int) -> None:
        """A monolithic upload whose running hash was lost (a restart before the commit): the
        digest is read back from where the hint put the bytes, and the commit still lands at
        a fresh key of the true digest, whatever the hint said."""
        data = data_of(size, seed=13)
        for hint in (sha(data), sha(b"a wrong hint")):
            upload_id = layout.new_upload_id()
            await store.create_upload(upload_id)
            await store.append(upload_id, 0, feed(split(data)), None, Progress(), digest=hint)
            assert await store.hash_upload(upload_id, size, "sha256") == sha(data)
            key = await self.commit_and_check(store, upload_id, data)
            assert [o.key async for o in store.list_objects("blobs/")] == [key]
            await store.delete(key)

    async def test_each_commit_gets_a_fresh_key(self, store: BlobStore) -> None:
        data = data_of(PART + 1, seed=12)
        keys = []
        for _ in range(2):
            upload_id, _ = await self.upload(store, [split(data)])
            keys.append(await self.commit_and_check(store, upload_id, data))
        assert keys[0] != keys[1]
        await store.delete(keys[0])
        assert await read_all(store, keys[1], 0, len(data)) == data
        await store.delete(keys[1])

    # -- deletion and missing things -----------------------------------------------------

    async def test_delete_upload_is_idempotent_and_final(self, store: BlobStore) -> None:
        upload_id, _ = await self.upload(store, [split(data_of(2 * PART + 10, seed=13)), [b"t"]])
        await store.delete_upload(upload_id)
        await store.delete_upload(upload_id)
        await store.delete_upload(layout.new_upload_id())  # never existed
        with pytest.raises(UploadNotFound):
            await store.upload_size(upload_id)
        with pytest.raises(UploadNotFound):
            await store.append(upload_id, 0, feed([b"x"]), None, Progress())

    async def test_unknown_and_malformed_uploads(self, store: BlobStore) -> None:
        for upload_id in (layout.new_upload_id(), "../../etc", "not-an-id"):
            with pytest.raises(UploadNotFound):
                await store.upload_size(upload_id)
            with pytest.raises(UploadNotFound):
                await store.append(upload_id, 0, feed([b"x"]), None, Progress())
            with pytest.raises(UploadNotFound):
                await store.commit(upload_id, 0, sha(b""))

    async def test_missing_blob(self, store: BlobStore) -> None:
        key = layout.blob_key(sha(b"absent"))
        with pytest.raises(BlobNotFound):
            await read_all(store, key, 0, 6)
        await store.delete(key)  # idempotent
        await store.delete(key)

    async def test_delete_then_read(self, store: BlobStore) -> None:
        upload_id, data = await self.upload(store, [[b"short-lived"]])
        key = await self.commit_and_check(store, upload_id, data)
        await store.delete(key)
        with pytest.raises(BlobNotFound):
            await read_all(store, key, 0, len(data))

    async def test_check(self, store: BlobStore) -> None:
        await store.check()

    # -- listing (berth fsck) --------------------------------------------------------------

    async def test_list_objects_sees_committed_blobs_and_uploads(self, store: BlobStore) -> None:
        assert [o async for o in store.list_objects("blobs/")] == []
        keys = []
        for seed in (20, 21):
            upload_id, data = await self.upload(store, [[data_of(100 + seed, seed=seed)]])
            keys.append(await self.commit_and_check(store, upload_id, data))
        pending, _ = await self.upload(store, [[b"in progress"]])
        listed = {o.key: o for o in [o async for o in store.list_objects("blobs/")]}
        assert sorted(listed) == sorted(keys)
        assert [listed[k].size for k in keys] == [120, 121]
        assert all(o.modified > 1_600_000_000 for o in listed.values())
        uploads = [o.key async for o in store.list_objects("uploads/")]
        assert uploads
        assert all(k.startswith(f"uploads/{pending}/") for k in uploads)
        for key in keys:
            await store.delete(key)
        await store.delete_upload(pending)
        assert [o async for o in store.list_objects("blobs/")] == []

    async def test_delete_many_when_the_store_can(self, store: BlobStore) -> None:
        if not isinstance(store, BulkDelete):
            return  # an optional ability
        keys = []
        for seed in (30, 31, 32):
            upload_id, data = await self.upload(store, [[data_of(50, seed=seed)]])
            keys.append(await self.commit_and_check(store, upload_id, data))
        await store.delete_many([*keys[:2], layout.blob_key(sha(b"never stored"))])
        assert [o.key async for o in store.list_objects("blobs/")] == [keys[2]]
        await store.delete_many(keys)  # idempotent
        assert [o async for o in store.list_objects("blobs/")] == []
