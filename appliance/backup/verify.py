"""Read a target's backups back: list them, load a manifest, re-hash everything.

`verify_backup` proves a backup restorable without restoring it: the manifest matches its
recorded digest; every file it lists (metadata snapshot, secrets bundle, each blob) is present
with its size and digest; the snapshot opens, each manifest stored in it matches its own
digest, and every blob a manifest needs is one the backup holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from appliance.backup import BackupCorrupt, BackupError, layout, records
from appliance.backup.layout import FileEntry, Manifest
from appliance.backup.target import Target

PARALLEL = 4


def load_manifest(target: Target, backup_id: str) -> Manifest:
    """The manifest of one backup, checked against its digest (blocking).

    Raises BackupError when there is no such complete backup, BackupCorrupt when it is damaged.
    """
    layout.check_id(backup_id)
    if target.stat(layout.manifest_path(backup_id)) is None:
        if target.stat(layout.started_path(backup_id)) is not None:
            raise BackupError(f"backup {backup_id} in {target.url} is incomplete (no manifest)")
        raise BackupError(f"no backup {backup_id} in {target.url}")
    raw = target.read_all(layout.manifest_path(backup_id))
    if target.stat(layout.manifest_digest_path(backup_id)) is None:
        raise BackupCorrupt(f"backup {backup_id}: manifest.sha256 is missing")
    recorded = target.read_all(layout.manifest_digest_path(backup_id)).decode(errors="replace")
    if recorded.strip() != layout.manifest_digest(raw):
        raise BackupCorrupt(f"backup {backup_id}: the manifest does not match its digest")
    return Manifest.from_json(raw, backup_id)


def list_backups(target: Target) -> list[dict[str, Any]]:
    """Every backup in the target, newest first: complete ones with their summary, the others
    as `incomplete` (running, or interrupted) (blocking)."""
    found: dict[str, set[str]] = {}
    for path in target.files("backups/"):
        parts = path.split("/")
        if len(parts) == 3:
            found.setdefault(parts[1], set()).add(parts[2])
    out: list[dict[str, Any]] = []
    for backup_id in sorted(found, reverse=True):
        names = found[backup_id]
        if "manifest.json" in names:
            try:
                out.append({**load_manifest(target, backup_id).summary(), "status": "complete"})
            except BackupError as e:
                out.append({"id": backup_id, "status": "corrupt", "error": e.message})
        else:
            out.append({"id": backup_id, "status": "incomplete"})
    return out


def check_file(target: Target, entry: FileEntry) -> str | None:
    """None when the file is whole, else what is wrong with it (blocking)."""
    algorithm = entry.digest.partition(":")[0]
    if algorithm not in ("sha256", "sha512"):
        return f"{entry.path}: unknown digest algorithm"
    hasher = hashlib.new(algorithm)
    size = 0
    try:
        for chunk in target.read(entry.path):
            hasher.update(chunk)
            size += len(chunk)
    except BackupError as e:
        return e.message
    if size != entry.size:
        return f"{entry.path}: {size} bytes, the manifest says {entry.size} (truncated?)"
    if f"{algorithm}:{hasher.hexdigest()}" != entry.digest:
        return f"{entry.path}: content does not match its digest {entry.digest}"
    return None


def fetch_file(target: Target, entry: FileEntry, dest: Path) -> None:
    """Copy one backup file to a local path, checking its digest (blocking)."""
    problem = check_file(target, entry)
    if problem is not None:
        raise BackupCorrupt(problem)
    with open(dest, "wb") as f:
        for chunk in target.read(entry.path):
            f.write(chunk)
    if check_local(dest, entry) is not None:
        raise BackupCorrupt(f"{entry.path} changed while it was read")


def check_local(path: Path, entry: FileEntry) -> str | None:
    hasher = hashlib.new(entry.digest.partition(":")[0])
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
    if size != entry.size or f"{entry.digest.partition(':')[0]}:{hasher.hexdigest()}" != (
        entry.digest
    ):
        return f"{entry.path}: does not match its digest"
    return None


@dataclass
class VerifyResult:
    id: str
    ok: bool
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ok": self.ok,
            "files": self.files,
            "bytes": self.bytes,
            "problems": self.problems,
        }


async def verify_backup(
    target: Target,
    backup_id: str,
    work: Path,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyResult:
    """Re-hash every file of a backup; the result lists every problem found (none: ok).
    `work` is a local scratch folder for the snapshot."""
    try:
        manifest = await trio.to_thread.run_sync(load_manifest, target, backup_id)
    except BackupCorrupt as e:
        return VerifyResult(backup_id, False, problems=[e.message])
    result = VerifyResult(backup_id, True)
    total = manifest.size
    limit = trio.CapacityLimiter(PARALLEL)

    async def one(entry: FileEntry) -> None:
        async with limit:
            problem = await trio.to_thread.run_sync(check_file, target, entry)
        result.files += 1
        result.bytes += entry.size
        if problem is not None:
            result.problems.append(problem)
        if progress is not None:
            progress(result.bytes, total)

    seen: set[str] = set()
    async with trio.open_nursery() as nursery:
        for entry in manifest.files:
            if entry.path not in seen:
                seen.add(entry.path)
                nursery.start_soon(one, entry)
    meta = manifest.file("metadata")
    local = work / f"verify-{backup_id}.db"
    try:
        await trio.to_thread.run_sync(fetch_file, target, meta, local)
        result.problems += await trio.to_thread.run_sync(records.check_snapshot, local, manifest)
    except BackupCorrupt as e:
        if e.message not in result.problems:
            result.problems.append(e.message)
    finally:
        local.unlink(missing_ok=True)
    result.problems.sort()
    result.ok = not result.problems
    return result
