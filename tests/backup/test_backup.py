"""Backups in-process: take, verify, restore, prune; consistency while pushes go on; failures
recorded; the schedule. Real SQLite, real filesystem store, real target directory."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing

from appliance.backup import BackupCorrupt, BackupError, layout, records
from appliance.backup.create import create_backup
from appliance.backup.prune import Retention, prune, select
from appliance.backup.restore import restore_backup
from appliance.backup.target import DirTarget
from appliance.backup.verify import list_backups, load_manifest, verify_backup
from appliance.metadata import audit
from appliance.metadata.db import Tx
from appliance.server import Services
from tests.api.oci import digest as digest_of
from tests.api.oci import push_image
from tests.backup.conftest import FakeClock, make_config, pull_all, push_images, registry_at


async def take(services: Services, target: DirTarget, **kwargs: object) -> dict[str, object]:
    registry = services.registry
    _, summary = await create_backup(
        services.backups.config if services.backups else make_config(Path("/nonexistent")),
        services.db,
        registry.store,
        target,
        passphrase=kwargs.pop("passphrase", None),  # type: ignore[arg-type]
        clock=kwargs.pop("clock", services.access.clock),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )
    return summary


def db_rows(data_dir: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(data_dir / "berth.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_round_trip_backup_verify_restore(
    data_dir: Path, clock: FakeClock, target: DirTarget, tmp_path: Path
) -> None:
    async with registry_at(data_dir, clock) as (services, client):
        refs = await push_images(client, 3)
        before = await pull_all(client, refs)
        summary = await take(services, target)
        record = await services.db.read(lambda tx: records.get(tx, str(summary["id"])))
    backup_id = str(summary["id"])
    assert summary["blobs"] == len([d for d in before if d not in refs.values()])
    assert record is not None
    assert record.status == "succeeded"
    assert record.size == summary["size"]
    assert record.blobs == summary["blobs"]
    assert [b["id"] for b in list_backups(target)] == [backup_id]
    result = await verify_backup(target, backup_id, tmp_path)
    assert result.ok, result.problems
    assert result.files == int(summary["files"])

    restored = tmp_path / "restored"
    report = await restore_backup(make_config(restored), target, backup_id)
    assert report["blobs"] == summary["blobs"]
    assert (restored / "secret").read_bytes() == (data_dir / "secret").read_bytes()
    # The signing keys are records (sealed with that secret): they come back with the rest.
    keys = "SELECT kid, created_at, sealed FROM signing_keys ORDER BY kid"
    assert db_rows(restored, keys) == db_rows(data_dir, keys) != []
    async with registry_at(restored, clock) as (_, client):
        assert await pull_all(client, refs) == before
        # The admin's password came back with the users table.
        assert (await client.get("/v2/")).status_code == 200
    events = db_rows(
        restored, "SELECT action, target FROM audit_events WHERE action LIKE 'backup.%'"
    )
    assert ("backup.restore", backup_id) in events


async def test_a_second_backup_copies_only_new_blobs(
    data_dir: Path, clock: FakeClock, target: DirTarget
) -> None:
    async with registry_at(data_dir, clock) as (services, client):
        await push_images(client, 3)
        first = await take(services, target)
        clock.advance(60)
        await push_image(client, "team/small", "1", seed="small", layers=1)
        second = await take(services, target)
    assert first["reused_blobs"] == 0
    assert second["reused_blobs"] == first["blobs"]
    assert second["blobs"] == int(first["blobs"]) + 2  # one config, one layer
    # Only the two new blobs and the metadata snapshot were copied.
    assert int(second["copied"]) < int(first["copied"])
    assert len(target.files("blobs/")) == second["blobs"]


def flip_byte(path: Path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["corrupt-blob", "truncated-blob", "missing-blob", "metadata"])
async def test_damage_is_found_by_verify_and_refused_by_restore(
    damage: str, data_dir: Path, clock: FakeClock, target: DirTarget, tmp_path: Path
) -> None:
    async with registry_at(data_dir, clock) as (services, client):
        await push_images(client, 2)
        backup_id = str((await take(services, target))["id"])
    blob = target.root / sorted(target.files("blobs/"))[0]
    if damage == "corrupt-blob":
        flip_byte(blob)
    elif damage == "truncated-blob":
        blob.write_bytes(blob.read_bytes()[:-7])
    elif damage == "missing-blob":
        blob.unlink()
    else:
        meta = target.root / layout.metadata_path(backup_id)
        meta.write_bytes(meta.read_bytes()[:4096])
    result = await verify_backup(target, backup_id, tmp_path)
    assert not result.ok
    text = " ".join(result.problems)
    if damage == "metadata":
        assert "metadata.db" in text
    else:
        assert str(blob.relative_to(target.root)) in text
    restored = tmp_path / "restored"
    with pytest.raises(BackupCorrupt, match="damaged, nothing was restored"):
        await restore_backup(make_config(restored), target, backup_id)
    assert not (restored / "storage" / "blobs").exists()
    assert not (restored / "secret").exists()
    assert db_rows(restored, "SELECT COUNT(*) FROM repositories") == [(0,)]


async def test_a_changed_manifest_is_detected(
    data_dir: Path, clock: FakeClock, target: DirTarget, tmp_path: Path
) -> None:
    async with registry_at(data_dir, clock) as (services, client):
        await push_images(client, 1)
        backup_id = str((await take(services, target))["id"])
    path = target.root / layout.manifest_path(backup_id)
    doc = json.loads(path.read_bytes())
    doc["files"] = doc["files"][:-1]  # drop a blob from the list
    path.write_text(json.dumps(doc))
    result = await verify_backup(target, backup_id, tmp_path)
    assert result.problems == [f"backup {backup_id}: the manifest does not match its digest"]
    with pytest.raises(BackupCorrupt, match="does not match its digest"):
        await restore_backup(make_config(tmp_path / "restored"), target, backup_id)


async def test_restore_refuses_a_destination_that_is_not_empty(
    data_dir: Path, clock: FakeClock, target: DirTarget, tmp_path: Path
) -> None:
    async with registry_at(data_dir, clock) as (services, client):
        refs = await push_images(client, 1)
        backup_id = str((await take(services, target))["id"])
        await push_image(client, "team/later", "1", seed="later")
    # The source itself is not empty: refused, and unchanged.
    with pytest.raises(BackupError, match=r"not empty.*has records.*--force"):
        await restore_backup(make_config(data_dir), target, backup_id)
    assert ("team/later",) in db_rows(data_dir, "SELECT name FROM repositories")
    # With --force it is replaced by the backup: the later image is gone.
    await restore_backup(make_config(data_dir), target, backup_id, force=True)
    assert db_rows(data_dir, "SELECT name FROM repositories ORDER BY name") == [("team/img-0",)]
    async with registry_at(data_dir, clock) as (_, client):
        await pull_all(client, refs)
        assert (await client.get("/v2/team/later/tags/list")).status_code == 404


async def test_secrets_are_encrypted_with_the_passphrase(
    data_dir: Path, clock: FakeClock, target: DirTarget, tmp_path: Path
) -> None:
    async with registry_at(data_dir, clock) as (services, client):
        await push_images(client, 1)
        backup_id = str((await take(services, target, passphrase="correct horse"))["id"])
    sealed = (target.root / layout.secrets_path(backup_id)).read_bytes()
    secret = (data_dir / "secret").read_bytes().strip()
    assert secret not in sealed
    assert b"BEGIN PRIVATE KEY" not in sealed
    with pytest.raises(BackupError, match="secrets are encrypted"):
        await restore_backup(make_config(tmp_path / "a"), target, backup_id)
    with pytest.raises(BackupError, match="wrong passphrase"):
        await restore_backup(make_config(tmp_path / "b"), target, backup_id, passphrase="nope")
    assert not (tmp_path / "b" / "storage" / "blobs").exists()
    await restore_backup(make_config(tmp_path / "c"), target, backup_id, passphrase="correct horse")
    assert (tmp_path / "c" / "secret").read_bytes().strip() == secret


async def test_a_backup_during_pushes_is_consistent(
    data_dir: Path, clock: FakeClock, target: DirTarget, tmp_path: Path
) -> None:
    """Pushes run before, during and after the snapshot; the backup holds exactly what the
    snapshot saw, each manifest with all its blobs, and the GC hold is in place meanwhile."""
    async with registry_at(data_dir, clock) as (services, client):
        first = await push_images(client, 2, "before")
        holds_during: list[list[tuple[object, ...]]] = []
        late: dict[str, str] = {}

        async def pusher(prefix: str, count: int, into: dict[str, str]) -> None:
            into.update(await push_images(client, count, prefix))

        async def after_snapshot() -> None:
            holds_during.append(
                await services.db.read(lambda tx: tx.execute("SELECT holder FROM gc_holds"))
            )
            await pusher("after", 2, late)  # committed after the snapshot: not in it

        during: dict[str, str] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pusher, "during", 4, during)
            summary = await take(services, target, after_snapshot=after_snapshot)
        holds_after = await services.db.read(lambda tx: tx.execute("SELECT * FROM gc_holds"))
    backup_id = str(summary["id"])
    assert holds_during == [[(f"backup:{backup_id}",)]]
    assert holds_after == []
    result = await verify_backup(target, backup_id, tmp_path)
    assert result.ok, result.problems  # includes: every blob a manifest needs is in the backup
    restored = tmp_path / "restored"
    await restore_backup(make_config(restored), target, backup_id)
    names = {r[0] for r in db_rows(restored, "SELECT name FROM repositories")}
    assert {r.rpartition(":")[0] for r in first} <= names
    assert not {r.rpartition(":")[0] for r in late} & names
    async with registry_at(restored, clock) as (_, client):
        await pull_all(client, first)
        # Whatever part of the concurrent pushes made it into the snapshot pulls whole.
        tagged = {
            f"{name}:{tag}"
            for name, tag in db_rows(
                restored,
                "SELECT r.name, t.name FROM tags t JOIN repositories r ON r.id = t.repository_id",
            )
        }
        await pull_all(client, {r: d for r, d in during.items() if r in tagged})


async def test_a_failed_backup_is_recorded_audited_and_counted(
    data_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the target should be")
    failures = records.FAILURES._value.get()
    async with registry_at(data_dir, clock) as (services, client):
        await push_images(client, 1)
        with pytest.raises(BackupError):
            await take(services, DirTarget(blocked))
        found = await services.db.read(records.recent)
        events = await services.db.read(lambda tx: audit.events(tx, action="backup.failed"))
        holds = await services.db.read(lambda tx: tx.execute("SELECT * FROM gc_holds"))
    assert [(r.status, r.error is not None) for r in found] == [("failed", True)]
    assert events
    assert events[0]["target"] == found[0].id
    assert records.FAILURES._value.get() == failures + 1
    assert holds == []


def test_retention_selects_last_daily_and_weekly() -> None:
    day = 86400.0
    start = datetime(2026, 11, 2, tzinfo=UTC).timestamp()  # a Monday
    backups = [(f"b{i:02d}", start + i * day / 2) for i in range(28)]  # two a day, 14 days
    keep = select(backups, Retention(keep_last=2, keep_daily=3, keep_weekly=2))
    # Last two: b27, b26; newest of the last three days: b27, b25, b23; of two weeks: b27, b13.
    assert keep == {"b27", "b26", "b25", "b23", "b13"}
    assert select(backups, Retention(0, 0, 0)) == {"b27"}  # the newest always stays


async def test_prune_removes_backups_and_the_blobs_only_they_needed(
    data_dir: Path, clock: FakeClock, target: DirTarget
) -> None:
    ids = []
    async with registry_at(data_dir, clock) as (services, client):
        for day in range(3):
            await push_image(client, f"team/day-{day}", "1", seed=f"day-{day}")
            ids.append(str((await take(services, target))["id"]))
            if day == 1:  # day-0's image is deleted, and collected, before the last backup
                manifest = await client.get("/v2/team/day-0/manifests/1")
                d = manifest.headers["docker-content-digest"]
                assert (await client.delete(f"/v2/team/day-0/manifests/{d}")).status_code == 202
                doc = manifest.json()
                gone = [doc["config"]["digest"], *(x["digest"] for x in doc["layers"])]

                def collect(tx: Tx, gone: list[str] = gone) -> None:
                    for table in ("repository_blobs", "gc_blob_queue", "blobs"):
                        tx.executemany(
                            f"DELETE FROM {table} WHERE digest = :d", [{"d": g} for g in gone]
                        )

                await services.db.write(collect)
            clock.advance(86400)
    dry = prune(target, Retention(1, 0, 0), now=clock(), dry_run=True)
    assert dry.removed == [ids[1], ids[0]]
    assert len(target.files("backups/")) == 12
    result = prune(target, Retention(1, 0, 0), now=clock())
    assert result.kept == [ids[2]]
    assert result.removed == [ids[1], ids[0]]
    assert result.blobs_removed == 3  # day-0's config and two layers
    assert [b["id"] for b in list_backups(target)] == [ids[2]]
    kept = load_manifest(target, ids[2])
    assert sorted(target.files("blobs/")) == sorted(layout.blob_path(b.digest) for b in kept.blobs)


async def test_prune_leaves_blobs_alone_while_a_backup_runs(
    data_dir: Path, clock: FakeClock, target: DirTarget
) -> None:
    async with registry_at(data_dir, clock) as (services, client):
        await push_images(client, 1)
        await take(services, target)
    running = layout.new_id(clock())
    target.write_all(layout.started_path(running), b"{}")
    target.write_all("blobs/sha256/00/" + "0" * 64, b"copied by the running backup")
    result = prune(target, Retention(), now=clock() + 60)
    assert result.sweep_skipped == "a backup is running"
    assert ("blobs/sha256/00/" + "0" * 64) in target.files("blobs/")
    # A day later the interrupted backup is a leftover: removed with its orphan blob.
    result = prune(target, Retention(), now=clock() + 2 * 86400)
    assert result.incomplete_removed == [running]
    assert result.blobs_removed == 1


async def test_the_schedule_runs_backups_at_the_cron_times(tmp_path: Path) -> None:
    """The leader's backup job on trio's MockClock with an injected wall clock: configured
    for 03:00 UTC, started at 02:59, it takes a backup at 03:00 on each of two days."""
    base = datetime(2026, 11, 27, 2, 59, tzinfo=UTC).timestamp()
    data = tmp_path / "data"
    backups_dir = tmp_path / "scheduled"
    # Jump only after 0.2 s of real idleness: a jump at every wait for a worker thread would
    # let the backup's 30-second hold renewals run the clock far ahead while it copies.
    mock = trio.testing.MockClock(autojump_threshold=0.2)

    async def main() -> list[tuple[str, float, str]]:
        from appliance.metadata.leader import Fence  # noqa: PLC0415
        from appliance.runtime.jobs import Scheduler  # noqa: PLC0415

        def wall() -> float:  # also read from worker threads, so not trio.current_time()
            return base + mock.current_time()

        settings = {"backup.schedule": "0 3 * * *", "backup.target": str(backups_dir)}
        async with registry_at(data, wall, **settings) as (services, client):  # type: ignore[arg-type]
            await push_images(client, 1)
            assert services.backups is not None
            scheduler = Scheduler(services.backups.jobs(), wall_clock=wall)
            with trio.move_on_after(2 * 86400):
                await scheduler.run(Fence("jobs", 1))

            def rows(tx: Tx) -> list[tuple[str, float, str]]:
                return [(r.trigger, r.started_at, r.status) for r in reversed(records.recent(tx))]

            return await services.db.read(rows)

    ran = await trio.to_thread.run_sync(lambda: trio.run(main, clock=mock))
    assert [
        (t, datetime.fromtimestamp(s, UTC).strftime("%d %H:%M:%S"), st) for t, s, st in ran
    ] == [
        ("schedule", "27 03:00:00", "succeeded"),
        ("schedule", "28 03:00:00", "succeeded"),
    ]
    assert len(list_backups(DirTarget(backups_dir))) == 2


async def test_the_api_takes_lists_verifies_and_prunes(
    data_dir: Path, clock: FakeClock, tmp_path: Path
) -> None:
    settings = {"backup.target": str(tmp_path / "api-backups"), "backup.keep_last": 1}
    async with registry_at(data_dir, clock, **settings) as (services, client):
        assert services.backups is not None
        await push_images(client, 1)
        async with trio.open_nursery() as nursery:
            await nursery.start(services.backups.run)
            resp = await client.post("/api/v1/backups", params={"wait": "true"})
            assert resp.status_code == 201, resp.text
            backup_id = resp.json()["id"]
            listed = (await client.get("/api/v1/backups")).json()
            assert listed["target"] == str(tmp_path / "api-backups")
            assert [b["id"] for b in listed["backups"]] == [backup_id]
            assert listed["backups"][0]["status"] == "succeeded"
            resp = await client.post(f"/api/v1/backups/{backup_id}/verify", params={"wait": "1"})
            assert resp.json()["ok"] is True
            one = (await client.get(f"/api/v1/backups/{backup_id}")).json()
            assert one["verify_status"] == "ok"
            assert one["verified_at"] is not None
            inside = (await client.get("/api/v1/backups/target")).json()
            assert [b["id"] for b in inside["backups"]] == [backup_id]
            clock.advance(60)
            resp = await client.post("/api/v1/backups", params={"wait": "true"})
            second = resp.json()["id"]
            pruned = (await client.post("/api/v1/backups/prune", json={})).json()
            assert pruned["removed"] == [backup_id]
            assert pruned["kept"] == [second]
            assert (await client.get("/api/v1/backups/nonsense")).status_code == 400
            assert (
                await client.post("/api/v1/backups/20260101T000000Z-abcd/verify")
            ).status_code == 404
            missing = "/api/v1/backups/20260101T000000Z-abcd/verify?wait=true"
            assert (await client.post(missing)).status_code == 404
            spec = (await client.get("/api/v1/openapi.json")).json()
            assert "/backups/{backup_id}/verify" in spec["paths"]
            nursery.cancel_scope.cancel()


async def test_the_collector_deletes_nothing_while_a_backup_copies(
    data_dir: Path, clock: FakeClock, target: DirTarget, tmp_path: Path
) -> None:
    """An image deleted and due for collection when the backup starts: the collector (run in
    the middle of the backup) is held off, the backup holds the image's blobs whole, and once
    the backup is done the collector removes them."""
    async with registry_at(data_dir, clock) as (services, client):
        assert services.lifecycle is not None
        collector = services.lifecycle.collector
        await push_images(client, 2, "gone")
        doomed = "team/gone-0"
        resp = await client.get(f"/v2/{doomed}/manifests/1")
        layers = [x["digest"] for x in resp.json()["layers"]]
        manifest_digest = resp.headers["docker-content-digest"]
        assert (await client.delete(f"/v2/{doomed}/manifests/{manifest_digest}")).status_code == 202
        clock.advance(30 * 86400)  # far past gc.delay and gc.untagged_age
        during = []

        async def collect_meanwhile() -> None:
            during.append(await collector.run())

        summary = await take(services, target, after_snapshot=collect_meanwhile)
        assert [r.held for r in during] == [True]
        after = await collector.run()
        assert after.blobs >= len(layers)
        for layer in layers:
            assert (await client.get(f"/v2/{doomed}/blobs/{layer}")).status_code == 404
    result = await verify_backup(target, str(summary["id"]), tmp_path)
    assert result.ok, result.problems
    restored = tmp_path / "restored"
    await restore_backup(make_config(restored), target, str(summary["id"]))
    async with registry_at(restored, clock) as (_, client):
        for layer in layers:  # in the snapshot, so in the backup and back after a restore
            blob = await client.get(f"/v2/{doomed}/blobs/{layer}")
            assert blob.status_code == 200
            assert digest_of(blob.content) == layer
