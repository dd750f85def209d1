"""The `backups` table (migration 0007), the GC hold a running backup keeps, and the metrics.

Every change here is audited in its own transaction (`metadata/audit.py`): a backup's start is not
a change of the registry, its end is (`backup.create` or `backup.failed`), as are a verify
(`backup.verify`), a prune (`backup.prune`) and a restore (`backup.restore`, written into the
restored database).
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from appliance.backup import BackupError
from appliance.backup.layout import Manifest
from appliance.metadata import audit, events
from appliance.metadata.db import Tx
from appliance.runtime.metrics import REGISTRY

LAST_SUCCESS = Gauge(
    "berth_backup_last_success_timestamp_seconds",
    "When the last successful backup finished (UNIX time).",
    registry=REGISTRY,
    multiprocess_mode="max",
)
LAST_DURATION = Gauge(
    "berth_backup_last_duration_seconds",
    "How long the last successful backup took.",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
LAST_SIZE = Gauge(
    "berth_backup_last_size_bytes",
    "Bytes the last successful backup references (metadata, secrets and every blob).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
LAST_COPIED = Gauge(
    "berth_backup_last_copied_bytes",
    "Bytes the last successful backup had to copy (blobs new to the target, metadata).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
FAILURES = Counter(
    "berth_backup_failures",
    "Backups that failed.",
    registry=REGISTRY,
)
SUCCESSES = Counter(
    "berth_backup_successes",
    "Backups that succeeded.",
    registry=REGISTRY,
)

COLUMNS = (
    "id, target, trigger, actor, status, started_at, heartbeat_at, finished_at, size, copied, "
    "files, blobs, encrypted, error, verified_at, verify_status, verify_error, pruned_at"
)


@dataclass(frozen=True)
class BackupRecord:
    id: str
    target: str
    trigger: str
    actor: str
    status: str
    started_at: float
    heartbeat_at: float
    finished_at: float | None
    size: int
    copied: int
    files: int
    blobs: int
    encrypted: bool
    error: str | None
    verified_at: float | None
    verify_status: str | None
    verify_error: str | None
    pruned_at: float | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> BackupRecord:
        values = list(row)
        values[12] = bool(values[12])
        return cls(*values)

    def as_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["duration"] = (
            None if self.finished_at is None else round(self.finished_at - self.started_at, 3)
        )
        return out


def start(tx: Tx, backup_id: str, *, target: str, trigger: str, actor: str, now: float) -> None:
    tx.execute(
        "INSERT INTO backups (id, target, trigger, actor, status, started_at, heartbeat_at) "
        "VALUES (:id, :target, :trigger, :actor, 'running', :now, :now)",
        {"id": backup_id, "target": target, "trigger": trigger, "actor": actor, "now": now},
    )


def hold(tx: Tx, backup_id: str, now: float, ttl: float) -> int:
    """Insert the GC hold that keeps the collector from deleting anything meanwhile."""
    row = tx.one(
        "INSERT INTO gc_holds (holder, created_at, expires_at) "
        "VALUES (:holder, :now, :expires) RETURNING id",
        {"holder": f"backup:{backup_id}", "now": now, "expires": now + ttl},
    )
    assert row is not None
    return int(row[0])


def renew_hold(tx: Tx, hold_id: int, now: float, ttl: float) -> None:
    tx.execute(
        "UPDATE gc_holds SET expires_at = :expires WHERE id = :id",
        {"id": hold_id, "expires": now + ttl},
    )


def heartbeat(tx: Tx, backup_id: str, now: float) -> None:
    tx.execute(
        "UPDATE backups SET heartbeat_at = :now WHERE id = :id", {"id": backup_id, "now": now}
    )


def release(tx: Tx, hold_id: int) -> None:
    tx.execute("DELETE FROM gc_holds WHERE id = :id", {"id": hold_id})


def succeed(tx: Tx, backup_id: str, now: float, summary: dict[str, Any], actor: str) -> None:
    tx.execute(
        "UPDATE backups SET status = 'succeeded', finished_at = :now, heartbeat_at = :now, "
        "size = :size, copied = :copied, files = :files, blobs = :blobs, "
        "encrypted = :encrypted WHERE id = :id",
        {
            "id": backup_id,
            "now": now,
            "size": summary["size"],
            "copied": summary["copied"],
            "files": summary["files"],
            "blobs": summary["blobs"],
            "encrypted": 1 if summary["encrypted"] else 0,
        },
    )
    audit.record(
        tx,
        actor,
        "backup.create",
        backup_id,
        at=now,
        where=summary["target"],
        size=summary["size"],
        copied=summary["copied"],
        blobs=summary["blobs"],
    )


def fail(tx: Tx, backup_id: str, *, now: float, error: str, actor: str, where: str) -> None:
    tx.execute(
        "UPDATE backups SET status = 'failed', finished_at = :now, heartbeat_at = :now, "
        "error = :error WHERE id = :id",
        {"id": backup_id, "now": now, "error": error[:2000]},
    )
    audit.record(tx, actor, "backup.failed", backup_id, at=now, where=where, error=error[:500])
    events.emit(
        tx,
        "backup",
        repository="",
        actor=actor,
        backup=backup_id,
        status="failed",
        where=where,
        error=error[:500],
    )


def verified(
    tx: Tx, backup_id: str, *, now: float, ok: bool, error: str | None, actor: str, where: str
) -> None:
    tx.execute(
        "UPDATE backups SET verified_at = :now, verify_status = :status, verify_error = :error "
        "WHERE id = :id",
        {"id": backup_id, "now": now, "status": "ok" if ok else "corrupt", "error": error},
    )
    audit.record(
        tx,
        actor,
        "backup.verify",
        backup_id,
        at=now,
        where=where,
        result="ok" if ok else "corrupt",
        error=error,
    )


def pruned(tx: Tx, ids: list[str], *, now: float, actor: str, where: str) -> None:
    for backup_id in ids:
        tx.execute(
            "UPDATE backups SET pruned_at = :now WHERE id = :id", {"id": backup_id, "now": now}
        )
    audit.record(tx, actor, "backup.prune", where, at=now, removed=ids)


def get(tx: Tx, backup_id: str) -> BackupRecord | None:
    row = tx.one(
        f"SELECT {COLUMNS} FROM backups WHERE id = :id",  # noqa: S608
        {"id": backup_id},
    )
    return None if row is None else BackupRecord.from_row(row)


def recent(tx: Tx, limit: int = 100) -> list[BackupRecord]:
    rows = tx.execute(
        f"SELECT {COLUMNS} FROM backups ORDER BY started_at DESC, id DESC LIMIT :limit",  # noqa: S608
        {"limit": limit},
    )
    return [BackupRecord.from_row(r) for r in rows]


def last_success(tx: Tx) -> BackupRecord | None:
    row = tx.one(
        f"SELECT {COLUMNS} FROM backups WHERE status = 'succeeded' "  # noqa: S608
        "ORDER BY finished_at DESC LIMIT 1"
    )
    return None if row is None else BackupRecord.from_row(row)


def observe_success(record: BackupRecord) -> None:
    """Set the gauges from a successful backup."""
    if record.finished_at is None:
        return
    LAST_SUCCESS.set(record.finished_at)
    LAST_DURATION.set(record.finished_at - record.started_at)
    LAST_SIZE.set(record.size)
    LAST_COPIED.set(record.copied)


def mark_interrupted(tx: Tx, now: float, stale: float) -> None:
    """Running backups whose process last renewed before `stale` failed (interrupted)."""
    tx.execute(
        "UPDATE backups SET status = 'failed', error = 'interrupted', finished_at = "
        ":now WHERE status = 'running' AND heartbeat_at < :stale",
        {"now": now, "stale": stale},
    )


def running_backup(tx: Tx, fresh: float) -> str | None:
    """The id of a running backup renewed since `fresh`, if any."""
    row = tx.one(
        "SELECT id FROM backups WHERE status = 'running' AND heartbeat_at >= :fresh",
        {"fresh": fresh},
    )
    return None if row is None else str(row[0])


def repoint_blobs(tx: Tx, keys: dict[str, str]) -> None:
    """Each blob's storage key (digest → key), as the restored store holds it."""
    tx.executemany(
        "UPDATE blobs SET storage_key = :key WHERE digest = :digest",
        [{"digest": d, "key": k} for d, k in keys.items()],
    )


# -- the snapshot file of a backup (SQLite, whatever the source's dialect) ----------------------

# Process state left out of a snapshot: it means nothing to the restored registry.
PROCESS_STATE = ("gc_holds", "leader_leases", "uploads")


@dataclass(frozen=True)
class SnapshotBlob:
    digest: str
    size: int
    storage_key: str


def scrub_snapshot(dest: Path) -> None:
    """Clear the process state and running backup rows out of the snapshot file `dest`, and
    make it one self-contained file (blocking)."""
    conn = sqlite3.connect(str(dest), isolation_level=None)
    try:
        present = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        conn.execute("BEGIN")
        for table in PROCESS_STATE:
            if table in present:
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 (a fixed name)
        if "backups" in present:
            conn.execute("DELETE FROM backups WHERE status = 'running'")
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        conn.execute("VACUUM")
    finally:
        conn.close()


def snapshot_facts(path: Path) -> tuple[int, list[SnapshotBlob]]:
    """The schema version and the blobs of a snapshot file (blocking)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        version = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        blobs = [
            SnapshotBlob(str(d), int(s), str(k))
            for d, s, k in conn.execute(
                "SELECT digest, size, storage_key FROM blobs ORDER BY digest"
            )
        ]
    except sqlite3.Error as e:
        raise BackupError(f"cannot read the metadata snapshot: {e}") from e
    finally:
        conn.close()
    return int(version[0]), blobs


def check_snapshot(path: Path, manifest: Manifest) -> list[str]:
    """What is wrong inside a metadata snapshot file (blocking)."""
    problems: list[str] = []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        return [f"the metadata snapshot does not open: {e}"]
    try:
        if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            problems.append("the metadata snapshot fails SQLite's integrity check")
        for digest, payload in conn.execute("SELECT digest, payload FROM manifests"):
            algorithm = str(digest).partition(":")[0]
            if f"{algorithm}:{hashlib.new(algorithm, bytes(payload)).hexdigest()}" != digest:
                problems.append(f"manifest {digest}: stored bytes do not match the digest")
        held = {b.digest for b in manifest.blobs}
        listed = {str(r[0]) for r in conn.execute("SELECT digest FROM blobs")}
        if listed != held:
            problems.append(
                f"the snapshot lists {len(listed)} blobs, the manifest {len(held)}: they differ"
            )
        for (digest,) in conn.execute("SELECT DISTINCT digest FROM manifest_layers"):
            if digest not in held:
                problems.append(f"a manifest needs blob {digest}, which the backup lacks")
    except (sqlite3.Error, ValueError) as e:
        problems.append(f"the metadata snapshot is unreadable: {e}")
    finally:
        conn.close()
    return problems
