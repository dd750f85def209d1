"""Built-in backups: consistent snapshots of the metadata and the blobs they reference,
verified, pruned, restored onto any backend, and taken on a schedule by the leader.

A backup target (a directory or `s3://bucket/prefix`) is laid out so that blobs are shared
between backups, by content address, and each backup is a folder whose manifest is written
last (`layout.py` draws the tree).

    create.py    take a backup (`berth backup create`, the schedule, the management API)
    verify.py    re-hash every file a backup lists
    restore.py   put a backup back, into the same or another database and blob store
    prune.py     retention: keep the last N, daily and weekly backups
    target.py    where backups are written: a directory or an S3 bucket
    crypto.py    the passphrase-sealed bundle of the config, the server secret and signing keys
    records.py   the `backups` table and the metrics
    service.py   what a running Berth does: the scheduled job and the API's operations
"""

from __future__ import annotations

from appliance.errors import BerthError


class BackupError(BerthError):
    """A backup, verify, restore or prune could not be done; the message says why."""


class BackupCorrupt(BackupError):
    """A file of a backup is missing, truncated or does not match its digest."""


def berth_error_in(e: BaseException) -> BerthError | None:
    """The first BerthError in `e` or in the exception groups a nursery wrapped it in."""
    if isinstance(e, BerthError):
        return e
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            found = berth_error_in(inner)
            if found is not None:
                return found
    return None


def plain_error(e: BaseException) -> BaseException:
    """`e` without the exception groups that wrap a single exception."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e
