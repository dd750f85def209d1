"""The storage conformance suite over the filesystem store; the side door is the directory tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.errors import Unavailable, UploadNotFound
from appliance.oci.digest import Digest
from appliance.storage import layout
from appliance.storage.filesystem import FilesystemStore
from tests.storage.suite import SideDoor, StoreSuite, data_of, feed, read_all, sha, split
from tests.support.servers import unavailable

# Directories the store may keep while empty: the roots of the key tree (layout.py) and the
# 256 two-digit prefix directories under each algorithm.
_SKELETON = {"blobs", "uploads"}


class TestFilesystemStore(StoreSuite):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FilesystemStore:
        return FilesystemStore(tmp_path / "storage")

    @pytest.fixture
    def side_door(self, tmp_path: Path) -> SideDoor:
        root = tmp_path / "storage"

        def walk() -> list[str]:
            if not root.exists():
                return []
            left = []
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root)
                if path.is_dir() and (
                    str(rel) in _SKELETON
                    or (rel.parts[0] == "blobs" and len(rel.parts) == 2)
                    or (rel.parts[0] == "blobs" and len(rel.parts) == 3 and len(rel.name) == 2)
                ):
                    continue  # blobs/, blobs/<algorithm>/, its 256 prefixes <ab>/, uploads/
                left.append(str(rel) + ("/" if path.is_dir() else ""))
            return left

        return walk


# -- files placed by an import: hard-linked on the same file system, copied otherwise -------


async def _upload(store: FilesystemStore) -> str:
    upload = layout.new_upload_id()
    await store.create_upload(upload)
    return upload


async def test_a_linked_file_is_the_same_file_and_nothing_writes_to_it(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "storage")
    upload = await _upload(store)
    source = tmp_path / "other-registry" / "data"
    source.parent.mkdir()
    source.write_bytes(b"layer bytes")
    source.chmod(0o444)
    before = source.stat()
    placed = await store.place_file(upload, source, Digest.of(b"layer bytes"), link=True)
    assert placed.linked
    assert (placed.digest, placed.size) == (Digest.of(b"layer bytes"), len(b"layer bytes"))
    (key,) = await store.commit_files([placed])
    committed = (store.root / key).stat()
    assert (committed.st_ino, committed.st_nlink) == (before.st_ino, 2)
    assert await read_all(store, key, 0, placed.size) == b"layer bytes"
    await store.delete_upload(upload)
    after = source.stat()
    assert (after.st_mtime_ns, after.st_size, source.read_bytes()) == (
        before.st_mtime_ns,
        before.st_size,
        b"layer bytes",
    )
    await store.delete(key)  # the collector removes Berth's name only
    assert source.read_bytes() == b"layer bytes"
    assert source.stat().st_nlink == 1


async def test_copies_and_files_committed_together(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "storage")
    upload = await _upload(store)
    placed = []
    for i in range(5):
        source = tmp_path / f"layer-{i}"
        source.write_bytes(b"layer %d " % i * 300_000)  # more than one buffer
        done = await store.place_file(
            upload, source, Digest.of(source.read_bytes()), link=bool(i % 2)
        )
        assert done.linked is bool(i % 2)
        placed.append(done)
    keys = await store.commit_files(placed)
    for i, key in enumerate(keys):
        data = (tmp_path / f"layer-{i}").read_bytes()
        assert await read_all(store, key, 0, len(data)) == data
        linked = (store.root / key).stat().st_ino == (tmp_path / f"layer-{i}").stat().st_ino
        assert linked is bool(i % 2)
    shm = _other_file_system(tmp_path)
    if shm is not None:
        other = shm / f"berth-place-test-{os.getpid()}"
        other.write_bytes(b"elsewhere")
        try:
            done = await store.place_file(upload, other, Digest.of(b"elsewhere"), link=True)
            assert not done.linked  # another file system: copied
            assert done.digest == Digest.of(b"elsewhere")
        finally:
            other.unlink()
    # What a file holds is hashed, whatever digest it was placed for: the caller compares.
    wrong = await store.place_file(upload, tmp_path / "layer-0", Digest.of(b"other"), link=True)
    assert wrong.digest == placed[0].digest
    # An interruption leaves an upload, which goes with everything placed in it.
    await store.delete_upload(upload)
    assert not (store.root / "uploads" / upload).exists()


async def test_a_failed_commit_leaves_no_key(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "storage")
    upload = await _upload(store)
    source = tmp_path / "layer"
    source.write_bytes(b"layer")
    good = await store.place_file(upload, source, Digest.of(b"layer"), link=False)
    gone = await store.place_file(upload, source, Digest.of(b"gone"), link=False)
    (store.root / "uploads" / upload / f"sha256-{Digest.of(b'gone').hex}").unlink()
    with pytest.raises(Unavailable):  # an error of its own, not an exception group
        await store.commit_files([good, gone])
    blobs = store.root / "blobs"
    assert not [p for p in blobs.rglob("*") if p.is_file()]
    # Both files are back in their upload, which goes with them.
    assert (store.root / good.key).exists()


def _other_file_system(here: Path) -> Path | None:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and shm.stat().st_dev != here.stat().st_dev else None


async def test_what_is_not_a_file_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "storage")
    upload = await _upload(store)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError):
        await store.place_file(upload, folder, Digest.of(b""), link=True)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(IsADirectoryError):  # refused, not waited on
        await store.place_file(upload, fifo, Digest.of(b""), link=False)
    with pytest.raises(FileNotFoundError):
        await store.place_file(upload, tmp_path / "missing", Digest.of(b""), link=True)
    with pytest.raises(UploadNotFound):
        await store.place_file(layout.new_upload_id(), tmp_path / "fifo", Digest.of(b""), link=True)
    assert [p.name for p in (store.root / "uploads" / upload).iterdir()] == ["data"]


async def test_a_file_the_store_owner_does_not_own_is_copied(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("needs root, to give the store's root to another user")
    store = FilesystemStore(tmp_path / "storage")
    upload = await _upload(store)
    os.chown(store.root, 65534, 65534)  # the server runs as `nobody`, say
    private = tmp_path / "private"
    private.write_bytes(b"secret layer")
    private.chmod(0o600)  # root's alone: the server could not serve a link to it
    placed = await store.place_file(upload, private, Digest.of(b"secret layer"), link=True)
    assert not placed.linked
    private.chmod(0o644)
    second = await _upload(store)
    placed = await store.place_file(second, private, Digest.of(b"secret layer"), link=True)
    assert not placed.linked, "another user's file: a link would share its mode with Berth"
    os.chown(private, 65534, 65534)  # the store owner's own file: linked
    third = await _upload(store)
    placed = await store.place_file(third, private, Digest.of(b"secret layer"), link=True)
    assert placed.linked


async def test_a_large_upload_is_sent_on_to_disk_as_it_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every WRITEBACK_EVERY bytes an append asks the kernel to start writing them (so the
    fsync before a 201 has little left to do): contiguous ranges covering what was written,
    wherever the append started, and the bytes are the ones sent."""
    from appliance.storage import filesystem  # noqa: PLC0415
    from appliance.storage.base import Progress  # noqa: PLC0415

    assert filesystem._SYNC_FILE_RANGE is not None  # Linux: the real call is made
    asked: list[tuple[int, int]] = []
    real = filesystem.start_writeback

    def recorded(fd: int, offset: int, length: int) -> None:
        asked.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(filesystem, "start_writeback", recorded)
    store = FilesystemStore(tmp_path / "blobs")
    upload_id = layout.new_upload_id()
    await store.create_upload(upload_id)
    every = filesystem.WRITEBACK_EVERY
    first, second = data_of(every + every // 2, 1), data_of(2 * every, 2)
    size = await store.append(upload_id, 0, feed(split(first)), None, Progress())
    assert asked == [(0, every)]
    size = await store.append(upload_id, size, feed(split(second)), None, Progress())
    assert asked == [(0, every), (len(first), every), (len(first) + every, every)]
    key = await store.commit(upload_id, size, sha(first + second))
    assert await read_all(store, key, 0, size) == first + second
