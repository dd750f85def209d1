"""Retention: which backups of a target to keep, and removing the others.

A complete backup is kept when it is one of the newest `keep_last`, or the newest of one of
the newest `keep_daily` days that have a backup, or of one of the newest `keep_weekly` ISO
weeks (days and weeks in UTC). The newest backup is always kept. Incomplete backups (no
manifest) older than `stale_after` seconds are leftovers of interrupted runs and are removed.

Then blobs that no remaining backup lists are removed, unless a backup is running (it may be
copying blobs that no manifest lists yet) or a manifest cannot be read (its blobs are unknown);
the result says when that sweep was skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from appliance.backup import BackupError, layout
from appliance.backup.target import Target
from appliance.backup.verify import load_manifest

STALE_AFTER = 24 * 3600.0


@dataclass(frozen=True)
class Retention:
    keep_last: int = 7
    keep_daily: int = 7
    keep_weekly: int = 4

    def __post_init__(self) -> None:
        if min(self.keep_last, self.keep_daily, self.keep_weekly) < 0:
            raise BackupError("retention counts cannot be negative")


def select(backups: list[tuple[str, float]], policy: Retention) -> set[str]:
    """The ids to keep among complete backups given as (id, created_at)."""
    ordered = sorted(backups, key=lambda b: (b[1], b[0]), reverse=True)
    keep = {backup_id for backup_id, _ in ordered[: max(1, policy.keep_last)]}

    def newest_per(bucket_of: Any, count: int) -> None:
        seen: list[object] = []
        for backup_id, created in ordered:
            bucket = bucket_of(datetime.fromtimestamp(created, UTC))
            if bucket in seen:
                continue
            if len(seen) >= count:
                return
            seen.append(bucket)
            keep.add(backup_id)

    newest_per(lambda d: d.date(), policy.keep_daily)
    newest_per(lambda d: d.isocalendar()[:2], policy.keep_weekly)
    return keep


@dataclass
class PruneResult:
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    incomplete_removed: list[str] = field(default_factory=list)
    blobs_removed: int = 0
    bytes_freed: int = 0
    sweep_skipped: str | None = None
    dry_run: bool = False

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def prune(
    target: Target,
    policy: Retention,
    *,
    now: float | None = None,
    dry_run: bool = False,
    stale_after: float = STALE_AFTER,
) -> PruneResult:
    """Apply `policy` to `target` (blocking)."""
    now = time.time() if now is None else now
    result = PruneResult(dry_run=dry_run)
    found: dict[str, set[str]] = {}
    for path in target.files("backups/"):
        parts = path.split("/")
        if len(parts) == 3:
            found.setdefault(parts[1], set()).add(parts[2])
    complete: dict[str, Any] = {}
    running = False
    unreadable = False
    for backup_id, names in found.items():
        if "manifest.json" in names:
            try:
                complete[backup_id] = load_manifest(target, backup_id)
            except BackupError:
                unreadable = True
            continue
        started = _started_at(backup_id)
        if started is not None and now - started < stale_after:
            running = True
        else:
            result.incomplete_removed.append(backup_id)
    keep = select([(i, m.created_at) for i, m in complete.items()], policy)
    result.kept = sorted(keep, reverse=True)
    result.removed = sorted(set(complete) - keep, reverse=True)
    doomed = [
        f"backups/{backup_id}/{name}"
        for backup_id in result.removed + result.incomplete_removed
        for name in sorted(found[backup_id])
    ]
    if running:
        result.sweep_skipped = "a backup is running"
    elif unreadable:
        result.sweep_skipped = "a backup's manifest cannot be read"
    orphans: list[str] = []
    if result.sweep_skipped is None:
        wanted = {layout.blob_path(b.digest) for i in keep for b in complete[i].blobs}
        for path, stat in target.files("blobs/").items():
            if path not in wanted:
                orphans.append(path)
                result.bytes_freed += stat.size
        result.blobs_removed = len(orphans)
    if not dry_run:
        # Manifests first: a backup folder is never left looking complete without its files.
        doomed.sort(key=lambda p: not p.endswith("/manifest.json"))
        target.delete(doomed)
        target.delete(orphans)
    return result


def _started_at(backup_id: str) -> float | None:
    try:
        return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
