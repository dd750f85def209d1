"""The online garbage collector on every backend: what goes, when, and what must stay.

Runs on SQLite and PostgreSQL metadata with filesystem storage, and on SQLite with S3
(SeaweedFS), since these tests look at the bytes. Time is the injected clock; gc.delay is 100 s
and gc.untagged_age 1000 s unless a test says otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from appliance.errors import ManifestBlobUnknown, ManifestNotFound
from appliance.lifecycle.gc import RECLAIMED_BYTES, RECLAIMED_ITEMS, GcSettings
from appliance.metadata.leader import LeadershipLost, leader_lock
from appliance.oci import mediatypes as mt
from appliance.runtime.metrics import REGISTRY
from appliance.storage.filesystem import FilesystemStore
from tests.lifecycle.world import (
    World,
    build_world,
    descriptor,
    image_manifest,
    index_manifest,
    sha,
)
from tests.support.dialects import fresh_url, open_migrated

REPO = "team/app"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_an_unreferenced_blob_goes_after_the_delay_and_not_before(world: World) -> None:
    digest = await world.blob(REPO, b"nobody needs me")
    key = (await world.blob_rows())[digest]
    assert key in await world.stored()
    world.clock.advance(99)
    assert (await world.collect()).blobs == 0
    assert digest in await world.blob_rows()
    before = metric("berth_gc_reclaimed_items_total", kind="blob")
    world.clock.advance(2)
    result = await world.collect()
    assert (result.blobs, result.bytes) == (1, len(b"nobody needs me"))
    assert digest not in await world.blob_rows()
    assert key not in await world.stored()
    assert metric("berth_gc_reclaimed_items_total", kind="blob") == before + 1
    assert metric("berth_gc_queue_depth", queue="blob") == 0
    await world.assert_consistent()


async def test_referenced_blobs_stay_and_go_after_their_manifest(world: World) -> None:
    await world.image(REPO, [b"layer-1", b"layer-2"], "v1")
    world.clock.advance(10_000)
    assert (await world.collect()).blobs == 0
    assert len(await world.blob_rows()) == 3
    await world.registry.delete_manifest(REPO, "v1")  # untag: the manifest stays a while
    await world.put(REPO, image_manifest(b"{}", [b"layer-1", b"layer-2"]))
    digest = sha(image_manifest(b"{}", [b"layer-1", b"layer-2"]))
    await world.registry.delete_manifest(REPO, digest)
    world.clock.advance(50)
    assert (await world.collect()).blobs == 0
    world.clock.advance(51)
    bytes_before = metric("berth_gc_reclaimed_bytes_total")
    result = await world.collect()
    assert result.blobs == 3
    assert metric("berth_gc_reclaimed_bytes_total") == bytes_before + result.bytes
    assert await world.blob_rows() == {}
    assert await world.stored() == set()


async def test_blobs_shared_across_repositories_stay_while_one_uses_them(world: World) -> None:
    await world.image(REPO, [b"shared"], "v1")
    await world.image("team/other", [b"shared"], "v1")
    payload = image_manifest(b"{}", [b"shared"])
    await world.registry.delete_manifest(REPO, sha(payload))
    world.clock.advance(200)
    result = await world.collect()
    assert result.blobs == 0
    assert result.unlinked == 2  # the config and the layer, no longer readable by team/app
    assert await world.registry.meta.blob(REPO, sha(b"shared")) is None
    assert await world.registry.meta.blob("team/other", sha(b"shared")) is not None
    await world.assert_consistent()


async def test_untagged_manifests_go_after_their_age_unless_needed(world: World) -> None:
    child_a = await world.image(REPO, [b"amd64"])
    child_b = await world.image(REPO, [b"arm64"])
    await world.put(REPO, index_manifest([child_a, child_b]), "multi")
    kept = await world.image(REPO, [b"tagged"], "v1")
    moved = await world.image(REPO, [b"old"], "v2")
    await world.image(REPO, [b"new"], "v2")  # v2 moves: `moved` is untagged now
    world.clock.advance(999)
    assert (await world.collect()).manifests == 0
    world.clock.advance(2)
    result = await world.collect()
    assert result.manifests == 1
    digests = await world.manifest_digests(REPO)
    assert sha(moved) not in digests
    assert {sha(child_a), sha(child_b), sha(kept)} <= digests
    # Its blobs follow after the delay.
    world.clock.advance(101)
    assert (await world.collect()).blobs == 1  # b"old" (the config b"{}" is shared)
    await world.assert_consistent()


async def test_children_of_a_deleted_index_follow_it(world: World) -> None:
    child = await world.image(REPO, [b"only-in-index"])
    index = index_manifest([child])
    await world.put(REPO, index, "multi")
    await world.registry.delete_manifest(REPO, sha(index))
    world.clock.advance(1001)
    assert (await world.collect()).manifests == 1
    world.clock.advance(101)
    assert (await world.collect()).blobs == 2  # its config and its layer
    assert await world.manifest_digests(REPO) == set()


async def test_untagged_removal_can_be_switched_off(world: World) -> None:
    world.settings = GcSettings(delay=100.0, batch=7, untagged_age=-1)
    payload = await world.image(REPO, [b"digest-pinned"])
    world.clock.advance(1e6)
    assert (await world.collect()).manifests == 0
    assert sha(payload) in await world.manifest_digests(REPO)
    assert (await world.collector.dry_run()).manifests == 0


async def _referrer(world: World, subject: bytes, data: bytes) -> bytes:
    await world.blob(REPO, data)
    await world.blob(REPO, b"{}")
    payload = image_manifest(
        b"{}",
        [data],
        artifactType="application/vnd.example.sig",
        subject=descriptor(mt.OCI_MANIFEST, subject),
    )
    await world.put(REPO, payload)
    return payload


@pytest.mark.parametrize("referrers", [True, False])
async def test_referrers_go_with_their_subject(world: World, referrers: bool) -> None:
    world.settings = GcSettings(delay=100.0, batch=7, untagged_age=1000.0, referrers=referrers)
    subject = await world.image(REPO, [b"signed"], "v1")
    signature = await _referrer(world, subject, b"signature")
    world.clock.advance(5000)
    assert (await world.collect()).manifests == 0  # the subject is there: it stays
    await world.registry.delete_manifest(REPO, sha(subject))
    world.clock.advance(101)
    await world.collect()
    present = sha(signature) in await world.manifest_digests(REPO)
    assert present is not referrers
    world.clock.advance(101)
    await world.collect()
    assert (sha(b"signature") in await world.blob_rows()) is not referrers
    await world.assert_consistent()


async def test_a_hold_pauses_collection_until_it_expires(world: World) -> None:
    await world.blob(REPO, b"held")
    await world.db.write(
        lambda tx: tx.execute(
            "INSERT INTO gc_holds (holder, created_at, expires_at) VALUES ('backup', :a, :b)",
            {"a": world.clock.now, "b": world.clock.now + 500},
        )
    )
    world.clock.advance(200)
    result = await world.collect()
    assert result.held
    assert result.blobs == 0
    assert (await world.collector.dry_run()).held
    world.clock.advance(400)
    result = await world.collect()
    assert not result.held
    assert result.blobs == 1


async def test_a_stale_fence_deletes_nothing(world: World) -> None:
    await world.blob(REPO, b"fenced")
    lock = leader_lock(world.db, "jobs", ttl=30.0, clock=world.clock)
    fence = await lock.acquire()
    assert fence is not None
    await lock.release()
    other = leader_lock(world.db, "jobs", ttl=30.0, clock=world.clock)
    assert await other.acquire() is not None  # a new leader: the old fence is stale
    world.clock.advance(200)
    with pytest.raises(LeadershipLost):
        await world.collector.run(fence)
    assert len(await world.blob_rows()) == 1
    await other.release()


async def test_a_manifest_put_after_collection_fails_cleanly(world: World) -> None:
    await world.blob(REPO, b"{}")
    await world.blob(REPO, b"late layer")
    world.clock.advance(101)
    assert (await world.collect()).blobs == 2
    with pytest.raises(ManifestBlobUnknown):
        await world.put(REPO, image_manifest(b"{}", [b"late layer"]), "v1")
    await world.assert_consistent()


async def test_blob_head_and_mount_push_the_review_later(world: World) -> None:
    digest = await world.blob(REPO, b"checked")
    mounted = await world.blob("team/src", b"mounted")
    world.clock.advance(90)
    await world.blob(REPO, b"{}")  # the config, pushed later: due later anyway
    record = await world.registry.blob(REPO, digest)
    await world.registry.blob_checked(record)  # a HEAD: the client will reference it
    assert await world.registry.mount(REPO, "team/src", mounted) is not None
    world.clock.advance(60)  # both past their first review time, not the pushed one
    assert (await world.collect()).blobs == 0
    await world.put(REPO, image_manifest(b"{}", [b"checked", b"mounted"]), "v1")
    world.clock.advance(500)
    result = await world.collect()
    assert result.blobs == 0  # referenced; team/src's own access goes
    assert result.unlinked == 1
    await world.assert_consistent()


async def test_bytes_of_a_reupload_survive_the_collection_of_the_old_copy(world: World) -> None:
    """The collector deletes by storage key: a copy committed again while the old one was
    being collected keeps its own bytes."""
    digest = await world.blob(REPO, b"phoenix")
    old_key = (await world.blob_rows())[digest]
    world.clock.advance(101)
    collector = world.collector
    batch = await world.db.write(lambda tx: collector._blob_batch(tx, None, world.clock.now))
    assert [g[0] for g in batch.gone] == [digest]
    await world.blob(REPO, b"phoenix")  # committed again before the old bytes are deleted
    new_key = (await world.blob_rows())[digest]
    assert new_key != old_key
    await collector._delete_bytes(batch.gone)
    assert await world.stored() == {new_key}
    await world.assert_consistent()


async def test_dry_run_counts_what_would_go(world: World) -> None:
    await world.blob(REPO, b"x" * 10)
    untagged = await world.image(REPO, [b"y" * 20, b"z" * 30])
    await world.image(REPO, [b"z" * 30], "v1")  # shares z
    world.clock.advance(1001)
    dry = await world.collector.dry_run()
    assert (dry.blobs, dry.blob_bytes) == (1, 10)
    assert dry.manifests == 1
    assert sha(untagged) in await world.manifest_digests()
    assert (dry.then_blobs, dry.then_bytes) == (1, 20)
    result = await world.collect()
    assert (result.blobs, result.manifests) == (1, 1)


async def test_many_due_rows_are_taken_in_batches(world: World) -> None:
    for i in range(25):  # batch is 7
        await world.blob(REPO, f"blob {i}".encode())
    world.clock.advance(101)
    assert (await world.collect()).blobs == 25
    assert await world.stored() == set()


async def test_two_collectors_at_once_remove_each_item_once(world: World) -> None:
    for i in range(30):
        await world.blob(REPO, f"race {i}".encode())
    world.clock.advance(101)
    results = []

    async def one() -> None:
        results.append(await world.collector.run())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        nursery.start_soon(one)
    assert sum(r.blobs for r in results) == 30
    assert await world.blob_rows() == {}
    assert await world.stored() == set()
    assert RECLAIMED_ITEMS is not None
    assert RECLAIMED_BYTES is not None


async def test_a_pull_served_from_memory_never_outlives_what_the_collector_removed(
    world: World,
) -> None:
    """Manifests are cached per process (metadata/store.py); the collector's delete must reach
    that cache like a client's does."""
    payload = await world.image(REPO, [b"cached layer"], "v1")
    digest = sha(payload)
    assert (await world.registry.manifest(REPO, digest)).payload == payload  # now cached
    assert (await world.registry.manifest(REPO, "v1")).digest == digest
    await world.registry.delete_manifest(REPO, "v1")  # untagged: kept for gc.untagged_age
    with pytest.raises(ManifestNotFound):
        await world.registry.manifest(REPO, "v1")
    assert (await world.registry.manifest(REPO, digest)).payload == payload
    world.clock.advance(1001)
    assert (await world.collect()).manifests == 1
    with pytest.raises(ManifestNotFound):
        await world.registry.manifest(REPO, digest)


async def test_a_local_disk_gets_two_deletions_at_once_and_keeps_no_empty_blob_directory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On a filesystem the collector deletes at most `parallel_deletes` (2) chunks at once:
    the deletions are kernel work, and more threads of it took the CPUs of a small machine
    from the requests served meanwhile. Each blob's own directory goes with it."""
    running = 0
    most = 0

    class Counting(FilesystemStore):
        async def delete_many(self, keys: list[str]) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            try:
                await trio.sleep(0.01)  # let the others start, if the collector allows
                await super().delete_many(keys)
            finally:
                running -= 1

    db = open_migrated(fresh_url(request, tmp_path, "sqlite"))
    try:
        world = build_world(db, Counting(tmp_path / "storage"), GcSettings(delay=100.0, batch=400))
        for i in range(300):
            await world.blob(REPO, f"blob {i}".encode())
        world.clock.advance(101)
        assert (await world.collect()).blobs == 300
    finally:
        db.close()
    assert most == FilesystemStore.parallel_deletes == 2
    blobs = tmp_path / "storage" / "blobs" / "sha256"
    assert [p for p in blobs.rglob("*") if p.parent != blobs] == []  # the 2-hex prefixes only
