"""`fsck` on every backend: orphans, missing bytes and wrong digests are found; `repair` removes
only orphans older than the delay and reports the rest."""

from __future__ import annotations

import time

from appliance.lifecycle.fsck import fsck
from appliance.oci.digest import Digest
from appliance.storage import layout
from appliance.storage.base import Progress
from appliance.storage.filesystem import FilesystemStore
from tests.lifecycle.world import World, one, sha

REPO = "team/app"


async def orphan_blob(world: World, data: bytes) -> str:
    """Bytes committed to storage with no row (a crash between the two)."""
    upload_id = layout.new_upload_id()
    await world.store.create_upload(upload_id)
    await world.store.append(upload_id, 0, one(data), None, Progress())
    return await world.store.commit(upload_id, len(data), Digest.parse(sha(data)))


async def overwrite(world: World, key: str, data: bytes) -> None:
    if isinstance(world.store, FilesystemStore):
        (world.store.root / key).write_bytes(data)
    else:
        await world.store._put_bytes(key, data)  # type: ignore[attr-defined]


async def test_a_consistent_registry_is_clean(world: World) -> None:
    await world.image(REPO, [b"layer one", b"layer two"], "v1")
    report = await fsck(world.db, world.store, time.time, delay=0)
    assert report.clean
    assert (report.objects, report.checked) == (3, 3)


async def test_faults_are_found_and_orphans_repaired(world: World) -> None:
    await world.image(REPO, [b"good layer", b"lost layer", b"rotten layer"], "v1")
    rows = await world.blob_rows()
    await world.store.delete(rows[sha(b"lost layer")])
    await overwrite(world, rows[sha(b"rotten layer")], b"rotten LAYER")
    orphan = await orphan_blob(world, b"orphaned bytes")
    stray_upload = layout.new_upload_id()
    await world.store.create_upload(stray_upload)
    await world.store.append(stray_upload, 0, one(b"half"), None, Progress())

    report = await fsck(world.db, world.store, time.time, delay=3600)
    assert [o["key"] for o in report.orphans] == [orphan]
    assert [u["upload"] for u in report.orphan_uploads] == [stray_upload]
    assert [m["digest"] for m in report.missing] == [sha(b"lost layer")]
    assert [c["digest"] for c in report.corrupt] == [sha(b"rotten layer")]
    assert "content is sha256:" in report.corrupt[0]["reason"]
    assert report.removed == []
    assert not report.clean

    # --repair: younger than the delay stays; with delay 0 the orphans go, the rest is reported.
    report = await fsck(world.db, world.store, time.time, delay=3600, repair=True)
    assert report.removed == []
    assert report.kept_young == 2
    report = await fsck(world.db, world.store, time.time, delay=0, repair=True)
    assert sorted(report.removed) == sorted([orphan, f"uploads/{stray_upload}"])
    assert orphan not in await world.stored()
    assert [o.key async for o in world.store.list_objects("uploads/")] == []
    after = await fsck(world.db, world.store, time.time, delay=0)
    assert (after.orphans, after.orphan_uploads) == ([], [])
    assert len(after.missing) == 1
    assert len(after.corrupt) == 1


async def test_sizes_only_without_verify(world: World) -> None:
    await world.image(REPO, [b"same size"], "v1")
    key = (await world.blob_rows())[sha(b"same size")]
    await overwrite(world, key, b"SAME SIZE")
    assert (await fsck(world.db, world.store, time.time, delay=0, verify=False)).clean
    await overwrite(world, key, b"longer content")
    report = await fsck(world.db, world.store, time.time, delay=0, verify=False)
    assert "14 bytes, not 9" in report.corrupt[0]["reason"]
