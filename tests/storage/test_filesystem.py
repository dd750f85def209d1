"""The storage conformance suite over the filesystem store; the side door is the directory tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.oci.digest import Digest
from appliance.storage import layout
from appliance.storage.filesystem import FilesystemStore
from tests.storage.suite import SideDoor, StoreSuite
from tests.support.servers import unavailable

# Directories the store may keep while empty: the roots of the key tree (layout.py).
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
                    str(rel) in _SKELETON or (len(rel.parts) == 2 and rel.parts[0] == "blobs")
                ):
                    continue  # blobs/, blobs/<algorithm>/, uploads/
                left.append(str(rel) + ("/" if path.is_dir() else ""))
            return left

        return walk


# -- hard-linked uploads (an import from a store on the same file system) --------------------


async def _linked_blob(store: FilesystemStore, source: Path) -> tuple[str, int | None]:
    upload = layout.new_upload_id()
    await store.create_upload(upload)
    return upload, await store.link_upload(upload, source)


async def test_a_linked_upload_is_the_same_file_and_commit_never_writes_to_it(
    tmp_path: Path,
) -> None:
    store = FilesystemStore(tmp_path / "storage")
    source = tmp_path / "other-registry" / "data"
    source.parent.mkdir()
    source.write_bytes(b"layer bytes")
    source.chmod(0o444)
    before = source.stat()
    upload, size = await _linked_blob(store, source)
    assert size == len(b"layer bytes")
    digest = await store.hash_upload(upload, size, "sha256")
    assert digest == Digest.of(b"layer bytes")
    key = await store.commit(upload, size, digest)
    committed = (store.root / key).stat()
    assert (committed.st_ino, committed.st_nlink) == (before.st_ino, 2)
    after = source.stat()
    assert (after.st_mtime_ns, after.st_size, source.read_bytes()) == (
        before.st_mtime_ns,
        before.st_size,
        b"layer bytes",
    )
    await store.delete(key)  # the collector removes Berth's name only
    assert source.read_bytes() == b"layer bytes"
    assert source.stat().st_nlink == 1


def _other_file_system(here: Path) -> Path | None:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and shm.stat().st_dev != here.stat().st_dev else None


async def test_what_cannot_be_linked_is_left_to_a_copy(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "storage")
    await store.check()
    folder = tmp_path / "folder"
    folder.mkdir()
    upload, size = await _linked_blob(store, folder)  # not a regular file
    assert size is None
    assert await store.upload_size(upload) == 0  # the upload is as it was: empty
    shm = _other_file_system(tmp_path)
    if shm is not None:
        other = shm / f"berth-link-test-{upload}"
        other.write_bytes(b"elsewhere")
        try:
            assert (await _linked_blob(store, other))[1] is None  # another file system
        finally:
            other.unlink()
    with pytest.raises(FileNotFoundError):
        await _linked_blob(store, tmp_path / "missing")


async def test_a_file_the_store_owner_could_not_read_is_not_linked(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("needs root, to give the store's root to another user")
    store = FilesystemStore(tmp_path / "storage")
    await store.check()
    os.chown(store.root, 65534, 65534)  # the server runs as `nobody`, say
    private = tmp_path / "private"
    private.write_bytes(b"secret layer")
    private.chmod(0o600)  # root's alone: the server could not serve a link to it
    assert (await _linked_blob(store, private))[1] is None
    private.chmod(0o644)
    assert (await _linked_blob(store, private))[1] == len(b"secret layer")
