"""Put a backup back: into the database, blob store and data directory that a config names.

The destination may be another backend than the source: the snapshot is a SQLite file that
`metadata/copy.py` copies into SQLite or PostgreSQL, and blobs go through the blob store's own
upload path (so S3 gets multipart uploads, and every blob is verified before it is committed).

Order, so that nothing is changed before the backup is known to be good:

1. the destination must be empty (no records in the database, no blobs in the store, no
   server secret or signing keys in the data directory), unless `force`;
2. the whole backup is verified (`verify.py`: every file's digest, every stored manifest's
   digest, every blob a manifest needs present); the secrets are decrypted. A damaged backup
   or a wrong passphrase is refused here, with the destination untouched;
3. with `force`, the destination's records, blobs and keys are removed;
4. blobs are streamed into the store, each hashed again on the way and refused if it differs
   (the blobs already committed are then deleted again);
5. the snapshot is migrated to this Berth's schema, pointed at the new storage keys, and copied
   into the database in one transaction; the secrets are written last.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import trio

from appliance.auth.secrets import write_private
from appliance.backup import (
    BackupCorrupt,
    BackupError,
    berth_error_in,
    crypto,
    plain_error,
    records,
)
from appliance.backup.layout import FileEntry, Manifest
from appliance.backup.target import DirTarget, Target, azure_target, s3_target
from appliance.backup.verify import fetch_file, load_manifest, verify_backup
from appliance.config import Config
from appliance.metadata import audit
from appliance.metadata.changes import EVERYTHING
from appliance.metadata.copy import clear_records, copy_database, row_counts
from appliance.metadata.db import Database, Options, Tx, open_database, redact
from appliance.storage import open_store
from appliance.storage.base import BlobStore, Progress
from appliance.storage.layout import new_upload_id

log = logging.getLogger("berth.backup")

Report = Callable[[str], None]
PARALLEL = 4


def store_view(config: Config) -> Target:
    """The blob store's own files, seen as a target (to tell whether it is empty, to wipe it)."""
    if config["storage.backend"] == "azure":
        return azure_target(
            config,
            config["storage.azure.container"],
            config["storage.azure.prefix"],
            section="storage.azure",
        )
    if config["storage.backend"] == "s3":
        return s3_target(
            config, config["storage.s3.bucket"], config["storage.s3.prefix"], section="storage.s3"
        )
    return DirTarget(config.storage_root)


def _seeded() -> dict[str, int]:
    """Rows a freshly migrated database already holds (migrations may seed a table)."""
    from appliance.metadata.sqlite import SqliteDatabase  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="berth-fresh-") as tmp:
        fresh = SqliteDatabase(Path(tmp) / "fresh.db", readers=1)
        try:
            fresh.migrate()
            return fresh.run_sync_read(row_counts)
        finally:
            fresh.close()


def _records_in(db: Database) -> list[str]:
    seeded = _seeded()
    counts = db.run_sync_read(row_counts)
    return [name for name, n in sorted(counts.items()) if n > seeded.get(name, 0)]


def destination_contents(config: Config, db: Database) -> list[str]:
    """What the destination already holds, as phrases; empty when it is empty (blocking)."""
    found = []
    filled = _records_in(db)
    if filled:
        found.append(f"the database {redact(config.metadata_url)} has records ({filled[0]}, ...)")
    view = store_view(config)
    if view.files("blobs/"):
        found.append(f"the blob store {view.url} holds blobs")
    data = config.data_dir
    if config.secret_path.exists():
        found.append(f"a server secret exists ({config.secret_path})")
    if any((data / "keys").glob("*.pem")):
        found.append(f"the data directory {data} holds signing keys")
    return found


def _wipe_destination(config: Config, db: Database) -> None:
    clear_records(db)
    view = store_view(config)
    view.delete(sorted(view.files("blobs/")) + sorted(view.files("uploads/")))
    data = config.data_dir
    config.secret_path.unlink(missing_ok=True)
    for pem in (data / "keys").glob("*.pem"):
        pem.unlink()


async def _chunks(target: Target, path: str) -> AsyncIterator[bytes]:
    it = target.read(path)
    while True:
        chunk = await trio.to_thread.run_sync(next, it, None)
        if chunk is None:
            return
        yield chunk


async def _restore_blob(store: BlobStore, target: Target, entry: FileEntry) -> str:
    from appliance.oci.digest import Digest  # noqa: PLC0415

    digest = Digest.parse(entry.digest)
    upload_id = new_upload_id()
    await store.create_upload(upload_id)
    try:
        hasher = digest.hasher()
        size = await store.append(
            upload_id, 0, _chunks(target, entry.path), hasher, Progress(), digest=digest
        )
        if size != entry.size or f"{digest.algorithm}:{hasher.hexdigest()}" != entry.digest:
            raise BackupCorrupt(f"{entry.path}: content does not match its digest {entry.digest}")
        return await store.commit(upload_id, size, digest)
    finally:
        with trio.CancelScope(shield=True):
            await store.delete_upload(upload_id)


def _prepare_snapshot(path: Path, keys: dict[str, str], latest: int) -> None:
    """Bring the snapshot file to this Berth's schema and point it at the new storage keys."""
    from appliance.metadata.sqlite import SqliteDatabase  # noqa: PLC0415

    snap = SqliteDatabase(path, readers=1)
    try:
        status = snap.schema_status()
        if status.current > latest:
            raise BackupError(
                f"the backup's schema version {status.current} is newer than this Berth knows "
                f"({latest}): restore it with the Berth version that took it, or a newer one"
            )
        snap.migrate()

        def point(tx: Tx) -> None:
            records.repoint_blobs(tx, keys)

        snap.run_sync_write(point)
    finally:
        snap.close()


def _write_secrets(config: Config, files: dict[str, bytes]) -> list[str]:
    data = config.data_dir
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for name, content in sorted(files.items()):
        if name == "secret":
            path = config.secret_path  # server.secret_file, or <data_dir>/secret
        elif name.startswith("keys/") and name.count("/") == 1 and name.endswith(".pem"):
            (data / "keys").mkdir(exist_ok=True, mode=0o700)
            path = data / name
        elif name == "berth.toml":
            path = data / "restored-berth.toml"  # for reference: the running config wins
        else:
            continue
        path.unlink(missing_ok=True)
        write_private(path, content)
        written.append(str(path))
    return written


async def restore_backup(
    config: Config,
    target: Target,
    backup_id: str,
    *,
    force: bool = False,
    passphrase: str | None = None,
    report: Report | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Restore `backup_id` from `target` into the destination `config` names.

    Raises BackupError (refused: not empty, corrupt, wrong passphrase) with the destination
    untouched, or after undoing the blobs it had put back.
    """

    def say(text: str) -> None:
        log.info("restore %s: %s", backup_id, text)
        if report is not None:
            report(text)

    from appliance.metadata.db import migrations  # noqa: PLC0415

    manifest: Manifest = await trio.to_thread.run_sync(load_manifest, target, backup_id)
    options = Options(readers=1, pool_size=2, statement_timeout=3600.0)
    db = await trio.to_thread.run_sync(open_database, config.metadata_url, options)
    try:
        await trio.to_thread.run_sync(db.migrate)
        contents = await trio.to_thread.run_sync(destination_contents, config, db)
        if contents and not force:
            raise BackupError(
                "refusing to restore into a destination that is not empty: "
                + "; ".join(contents)
                + " (use --force to replace it)"
            )
        work = Path(tempfile.mkdtemp(prefix=f"berth-restore-{backup_id}-"))
        try:
            say(f"verifying {len(manifest.files)} files ({manifest.size} bytes)")
            result = await verify_backup(target, backup_id, work)
            if not result.ok:
                raise BackupCorrupt(
                    f"backup {backup_id} is damaged, nothing was restored: "
                    + "; ".join(result.problems[:5])
                    + (
                        f" (and {len(result.problems) - 5} more)"
                        if len(result.problems) > 5
                        else ""
                    )
                )
            snapshot = work / "metadata.db"
            await trio.to_thread.run_sync(fetch_file, target, manifest.file("metadata"), snapshot)
            sealed_entry = manifest.file("secrets")
            secrets_local = work / "secrets.bin"
            await trio.to_thread.run_sync(fetch_file, target, sealed_entry, secrets_local)
            bundle = await trio.to_thread.run_sync(
                crypto.unseal, secrets_local.read_bytes(), passphrase
            )
            files = crypto.unpack(bundle)
            if contents:
                say("--force: removing the destination's records, blobs and keys")
                await trio.to_thread.run_sync(_wipe_destination, config, db)
            else:  # empty, but a migration may have seeded a table: the backup has its own
                await trio.to_thread.run_sync(clear_records, db)
            store = open_store(config)
            await store.check()
            keys = await _put_blobs(store, target, manifest, say)
            try:
                latest = migrations(db.dialect)[-1].version
                await trio.to_thread.run_sync(_prepare_snapshot, snapshot, keys, latest)
                say(f"writing the metadata into {redact(config.metadata_url)}")
                counts = await trio.to_thread.run_sync(_copy_snapshot, snapshot, db)
            except BaseException:
                with trio.CancelScope(shield=True):
                    for key in keys.values():
                        with contextlib.suppress(Exception):
                            await store.delete(key)
                raise
            written = await trio.to_thread.run_sync(_write_secrets, config, files)
            now = clock()

            def record(tx: Tx) -> None:
                audit.record(
                    tx,
                    "cli",
                    "backup.restore",
                    backup_id,
                    at=now,
                    source=target.url,
                    blobs=len(keys),
                    forced=bool(contents),
                )
                tx.touch(EVERYTHING)  # every cache of every process of this registry reloads

            await db.write(record)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        db.close()
    say(f"restored {len(keys)} blobs and {sum(counts.values())} records")
    return {
        "id": backup_id,
        "source": target.url,
        "database": redact(config.metadata_url),
        "storage": store_view(config).url,
        "blobs": len(keys),
        "records": counts,
        "secrets": written,
        "replaced": contents,
    }


def _copy_snapshot(snapshot: Path, db: Database) -> dict[str, int]:
    from appliance.metadata.sqlite import SqliteDatabase  # noqa: PLC0415

    snap = SqliteDatabase(snapshot, readers=1)
    try:
        return copy_database(snap, db)
    finally:
        snap.close()


async def _put_blobs(
    store: BlobStore, target: Target, manifest: Manifest, say: Report
) -> dict[str, str]:
    entries = {e.digest: e for e in manifest.blobs}
    say(f"restoring {len(entries)} blobs ({sum(e.size for e in entries.values())} bytes)")
    keys: dict[str, str] = {}
    limit = trio.CapacityLimiter(PARALLEL)

    async def one(entry: FileEntry) -> None:
        async with limit:
            keys[entry.digest] = await _restore_blob(store, target, entry)

    try:
        async with trio.open_nursery() as nursery:
            for entry in entries.values():
                nursery.start_soon(one, entry)
    except BaseException as e:
        with trio.CancelScope(shield=True):
            for key in keys.values():
                with contextlib.suppress(Exception):
                    await store.delete(key)
        found = berth_error_in(e)
        if found is not None and not isinstance(plain_error(e), trio.Cancelled):
            raise BackupError(found.message) from None
        raise
    return keys
