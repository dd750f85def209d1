"""Take a backup: a consistent metadata snapshot, every blob it references, the secrets.

Order matters, and is what makes a backup taken during pushes restorable:

1. a GC hold is inserted (`gc_holds`), so the collector deletes nothing from here on;
2. the metadata is snapshotted in one consistent read: SQLite's online backup API, or for
   PostgreSQL one REPEATABLE READ transaction copied into a SQLite file by `metadata/copy.py`
   (the same portable file either way, restorable into either dialect);
3. the blobs are those of the snapshot's `blobs` table. A manifest is only ever stored with all
   its blobs present in the same transaction, so every manifest of the snapshot has its blobs
   in that list, and the hold keeps their bytes in the store until they are copied. Pushes that
   commit after the snapshot are simply not in this backup;
4. blobs the target already holds (same content address and size) are not copied again; every
   copied blob is re-hashed on the way and refused if its bytes do not match its digest;
5. the manifest is written last, then the hold is released.

The hold is renewed while the backup runs; if the process dies it lapses by itself. Upload
sessions in progress, leader leases and GC holds are process state and are left out of the
snapshot.

Cancellation: the hold is released and the record marked failed (shielded); files written so
far stay in the target (blobs are reused by the next backup; the incomplete backup folder,
which has no manifest, is removed by the next prune).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from appliance import __version__
from appliance.backup import BackupError, berth_error_in, crypto, layout, plain_error, records
from appliance.backup.layout import FileEntry, Manifest
from appliance.backup.records import SnapshotBlob
from appliance.backup.target import Target
from appliance.config import Config
from appliance.errors import BerthError
from appliance.metadata.copy import clear_records, copy_database, tables
from appliance.metadata.db import Database, too_new_error
from appliance.storage.base import BlobStore

log = logging.getLogger("berth.backup")

Progress = Callable[[int, int], None]  # bytes done, bytes in all
HOLD_TTL = 300.0
RENEW_EVERY = 30.0
PARALLEL = 4


def snapshot_metadata(db: Database, dest: Path, schema: int | None = None) -> None:
    """Write a consistent snapshot of `db` to the new SQLite file `dest` (blocking).

    `schema` is the schema version of a database that is behind this Berth (a backup before an
    upgrade): the snapshot keeps that version, so it restores as what it was.
    """
    from appliance.metadata.sqlite import SqliteDatabase  # noqa: PLC0415

    if isinstance(db, SqliteDatabase):
        src = sqlite3.connect(str(db.path), timeout=30)
        dst = sqlite3.connect(str(dest))
        try:
            src.backup(dst)  # all pages in one step: one read transaction, one snapshot
        except sqlite3.Error as e:
            raise BackupError(f"cannot snapshot the metadata database: {e}") from e
        finally:
            dst.close()
            src.close()
    else:
        snap = SqliteDatabase(dest, readers=1)
        try:
            snap.migrate(up_to=schema)
            clear_records(snap)  # rows a migration seeded: the source has its own
            copy_database(db, snap, schema=schema)
        finally:
            snap.close()
    records.scrub_snapshot(dest)


def collect_secrets(config: Config) -> dict[str, bytes]:
    """The config file, the server secret and the signing keys (blocking)."""
    files: dict[str, bytes] = {}
    data = config.data_dir
    if config.secret_path.is_file():  # server.secret_file, or <data_dir>/secret
        files["secret"] = config.secret_path.read_bytes()
    for pem in sorted((data / "keys").glob("*.pem")):
        files[f"keys/{pem.name}"] = pem.read_bytes()
    if config.source != "defaults" and Path(config.source).is_file():
        files["berth.toml"] = Path(config.source).read_bytes()
    return files


def _put_file(target: Target, path: str, source: Path) -> FileEntry:
    """Copy a local file into the target, hashing it on the way (blocking)."""
    hasher = hashlib.sha256()
    size = 0
    writer = target.writer(path)
    try:
        with open(source, "rb") as f:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)
                writer.write(chunk)
                size += len(chunk)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    kind = "metadata" if path.endswith("metadata.db") else "secrets"
    return FileEntry(path, kind, f"sha256:{hasher.hexdigest()}", size)


@dataclass
class _Counter:
    done: int = 0
    total: int = 0
    copied: int = 0
    progress: Progress | None = None

    def add(self, n: int, copied: bool = True) -> None:
        self.done += n
        if copied:
            self.copied += n
        if self.progress is not None:
            self.progress(self.done, self.total)


def _check_copied(blob: SnapshotBlob, size: int, actual: str) -> None:
    if size != blob.size or actual != blob.digest:
        raise BackupError(
            f"blob {blob.digest} in the blob store does not match its digest "
            f"(read {size} bytes, {actual}): the store is damaged; run `berth ctl doctor`"
        )


async def _copy_blob(
    store: BlobStore, target: Target, blob: SnapshotBlob, counter: _Counter
) -> None:
    path = layout.blob_path(blob.digest)
    algorithm = blob.digest.partition(":")[0]
    hasher = hashlib.new(algorithm)
    writer = await trio.to_thread.run_sync(target.writer, path)
    size = 0

    def put(chunk: bytes) -> None:
        hasher.update(chunk)
        writer.write(chunk)

    try:
        async for chunk in store.read(blob.storage_key, 0, blob.size):
            await trio.to_thread.run_sync(put, chunk)
            size += len(chunk)
            counter.add(len(chunk))
        _check_copied(blob, size, f"{algorithm}:{hasher.hexdigest()}")
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(writer.abort)
        raise
    await trio.to_thread.run_sync(writer.commit)


async def create_backup(
    config: Config,
    db: Database,
    store: BlobStore,
    target: Target,
    *,
    passphrase: str | None,
    trigger: str = "cli",
    actor: str = "cli",
    clock: Callable[[], float] = time.time,
    progress: Progress | None = None,
    renew_every: float = RENEW_EVERY,
    hold_ttl: float = HOLD_TTL,
    after_snapshot: Callable[[], Any] | None = None,
    backup_id: str | None = None,
) -> tuple[Manifest, dict[str, Any]]:
    """Take one backup into `target`; return its manifest and a summary (what `--json` prints).

    Raises BackupError (or another BerthError) after recording the failure, auditing it and
    counting it. `after_snapshot` is a test seam, awaited once the snapshot is taken.
    """
    started = clock()
    backup_id = backup_id or layout.new_id(started)
    status = await trio.to_thread.run_sync(db.schema_status)
    if status.too_new:
        raise BackupError(too_new_error(db.where, status).message)
    # A database that is behind this Berth (the backup `berth ctl reconfigure` takes before it
    # migrates) is only read: its tables are an older Berth's, so the backup is not recorded
    # in it (the caller records it once migrated). The GC hold is still taken where the table
    # exists (schema 4 on), because that older Berth may be serving, and collecting, meanwhile.
    behind = status.current if status.pending else None
    recorded = behind is None
    if recorded:
        await db.write(
            lambda tx: records.start(
                tx, backup_id, target=target.url, trigger=trigger, actor=actor, now=started
            )
        )
    hold_id: int | None = None
    if recorded or await db.read(lambda tx: "gc_holds" in tables(tx)):
        hold_id = await db.write(lambda tx: records.hold(tx, backup_id, clock(), hold_ttl))
    log.info("backup %s started into %s", backup_id, target.url)
    work = Path(tempfile.mkdtemp(prefix=f"berth-backup-{backup_id}-"))
    try:
        async with trio.open_nursery() as nursery:

            async def renew() -> None:
                while True:
                    await trio.sleep(renew_every)
                    if hold_id is not None:
                        await db.write(
                            lambda tx: records.renew_hold(tx, hold_id, clock(), hold_ttl)
                        )
                    if recorded:
                        await db.write(lambda tx: records.heartbeat(tx, backup_id, clock()))

            nursery.start_soon(renew)
            manifest, summary = await _take(
                config, db, store, target, backup_id, work, passphrase, started, clock,
                progress, after_snapshot, behind,
            )  # fmt: skip
            nursery.cancel_scope.cancel()
    except BaseException as e:
        found, plain = berth_error_in(e), plain_error(e)
        if found is not None:
            message = found.message
        elif isinstance(plain, trio.Cancelled):
            message = "cancelled"
        else:
            message = f"{type(plain).__name__}: {plain}"
            log.exception("backup %s failed", backup_id)
        records.FAILURES.inc()
        log.error("backup %s into %s failed: %s", backup_id, target.url, message)  # noqa: TRY400
        with trio.CancelScope(shield=True):
            try:
                if hold_id is not None:
                    await db.write(lambda tx: records.release(tx, hold_id))
                if recorded:
                    await db.write(
                        lambda tx: records.fail(
                            tx, backup_id, now=clock(), error=message, actor=actor,
                            where=target.url,
                        )
                    )  # fmt: skip
            except BerthError as again:
                log.error(  # noqa: TRY400 (the message says it all)
                    "backup %s: cannot record the failure: %s", backup_id, again.message
                )
            with contextlib.suppress(BerthError):
                await trio.to_thread.run_sync(target.delete, [layout.started_path(backup_id)])
        if found is not None and not isinstance(plain, trio.Cancelled):
            raise BackupError(message) from None
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

    finished = clock()
    summary["duration"] = round(finished - started, 3)

    def done(tx: Any) -> records.BackupRecord | None:
        if hold_id is not None:
            records.release(tx, hold_id)
        if not recorded:
            return None
        records.succeed(tx, backup_id, finished, summary, actor)
        return records.get(tx, backup_id)

    record = await db.write(done)
    records.SUCCESSES.inc()
    if record is not None:
        records.observe_success(record)
    log.info(
        "backup %s done: %d blobs, %d bytes (%d copied) in %.1f s",
        backup_id, summary["blobs"], summary["size"], summary["copied"], summary["duration"],
    )  # fmt: skip
    return manifest, summary


async def _take(  # noqa: PLR0917 (one call site)
    config: Config,
    db: Database,
    store: BlobStore,
    target: Target,
    backup_id: str,
    work: Path,
    passphrase: str | None,
    started: float,
    clock: Callable[[], float],
    progress: Progress | None,
    after_snapshot: Callable[[], Any] | None,
    behind: int | None,
) -> tuple[Manifest, dict[str, Any]]:
    await trio.to_thread.run_sync(
        target.write_all,
        layout.started_path(backup_id),
        json.dumps({"id": backup_id, "started_at": started}).encode(),
    )
    snapshot = work / "metadata.db"
    await trio.to_thread.run_sync(snapshot_metadata, db, snapshot, behind)
    if after_snapshot is not None:
        await after_snapshot()
    version, blobs = await trio.to_thread.run_sync(records.snapshot_facts, snapshot)
    present = await trio.to_thread.run_sync(target.files, "blobs/")
    missing = [
        b
        for b in blobs
        if (st := present.get(layout.blob_path(b.digest))) is None or st.size != b.size
    ]
    counter = _Counter(progress=progress)
    counter.total = snapshot.stat().st_size + sum(b.size for b in missing)

    files: list[FileEntry] = []
    meta_entry = await trio.to_thread.run_sync(
        _put_file, target, layout.metadata_path(backup_id), snapshot
    )
    counter.add(meta_entry.size)
    files.append(meta_entry)

    bundle = crypto.pack(await trio.to_thread.run_sync(collect_secrets, config))
    if passphrase:
        bundle = await trio.to_thread.run_sync(crypto.seal, bundle, passphrase)
    else:
        log.warning(
            "backup %s: no backup.passphrase is set, so the config, the server secret and the "
            "signing keys are stored unencrypted in %s",
            backup_id,
            target.url,
        )
    await trio.to_thread.run_sync(target.write_all, layout.secrets_path(backup_id), bundle)
    files.append(
        FileEntry(
            layout.secrets_path(backup_id),
            "secrets",
            "sha256:" + hashlib.sha256(bundle).hexdigest(),
            len(bundle),
        )
    )

    limit = trio.CapacityLimiter(PARALLEL)

    async def copy(blob: SnapshotBlob) -> None:
        async with limit:
            await _copy_blob(store, target, blob, counter)

    async with trio.open_nursery() as nursery:
        for blob in missing:
            nursery.start_soon(copy, blob)
    files += [FileEntry(layout.blob_path(b.digest), "blob", b.digest, b.size) for b in blobs]

    manifest = Manifest(
        id=backup_id,
        created_at=started,
        finished_at=clock(),
        berth_version=__version__,
        schema_version=version,
        source_metadata=db.dialect,
        source_storage=config["storage.backend"],
        encrypted=bool(passphrase),
        files=files,
    )
    raw = manifest.to_json()
    await trio.to_thread.run_sync(target.write_all, layout.manifest_path(backup_id), raw)
    await trio.to_thread.run_sync(
        target.write_all,
        layout.manifest_digest_path(backup_id),
        layout.manifest_digest(raw).encode() + b"\n",
    )
    await trio.to_thread.run_sync(target.delete, [layout.started_path(backup_id)])
    summary = {
        **manifest.summary(),
        "target": target.url,
        "copied": counter.copied,
        "reused_blobs": len(blobs) - len(missing),
    }
    return manifest, summary
