"""The online garbage collector: reviews the GC queues and removes what nothing references.

Writes that may drop a blob's or a manifest's last reference queue a review after `gc.delay`
(metadata/store.py). The collector, a job of the leader (or `berth gc`), takes due rows in
batches, each batch one write transaction that

1. checks the fence (a former leader cannot delete) and that no unexpired `gc_holds` row
   exists (a backup is copying: collect nothing now);
2. takes the due rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so two collectors never take
   the same rows; SQLite has one writer anyway) and deletes them;
3. re-checks references in that same transaction and deletes what is still unreferenced:

   * a manifest with no tag and no index listing it, untagged for `gc.untagged_age`; a
     referrer (a manifest with a subject) only once its subject is gone, when `gc.referrers`
     is on. Its blobs, children and referrers are queued for review in turn;
   * a blob's access from every repository none of whose manifests uses it, then the blob
     row itself when no repository is left.

Bytes are deleted after the transaction commits, by the storage key recorded in the row,
never by digest: a blob uploaded again meanwhile has a row of its own with a fresh key. A crash
between the commit and the byte deletion leaves an orphan file, which `berth fsck --repair`
removes. Because the rows are checked and deleted in one serializable transaction, a manifest
PUT racing the collection of a blob it needs either commits first (the blob stays) or finds
the blob gone and fails with MANIFEST_BLOB_UNKNOWN.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import trio
from prometheus_client import Counter, Gauge

from appliance.lifecycle import records
from appliance.lifecycle.records import blobs_freed, held, manifest_needed
from appliance.metadata import audit, events
from appliance.metadata.db import Database, Tx
from appliance.metadata.leader import Fence, check_fence
from appliance.metadata.store import drop_manifest
from appliance.runtime.metrics import REGISTRY
from appliance.storage.base import BlobStore, BulkDelete

log = logging.getLogger("berth.gc")
DELETE_CHUNK = 50  # byte deletions per call to BulkDelete.delete_many

QUEUE_DEPTH = Gauge(
    "berth_gc_queue_depth",
    "Rows waiting in a garbage-collection review queue (due or not).",
    ["queue"],
    registry=REGISTRY,
    multiprocess_mode="max",
)
RECLAIMED_ITEMS = Counter(
    "berth_gc_reclaimed_items",
    "Blobs and manifests removed by the garbage collector.",
    ["kind"],
    registry=REGISTRY,
)
RECLAIMED_BYTES = Counter(
    "berth_gc_reclaimed_bytes",
    "Bytes of blobs removed from storage by the garbage collector.",
    registry=REGISTRY,
)


@dataclass
class GcSettings:
    delay: float = 86400.0
    batch: int = 500
    untagged_age: float = 604800.0  # negative: untagged manifests are kept
    referrers: bool = True
    # The share of its time a run may spend working: after each batch it rests for as long as
    # the batch took times (1 / pace - 1), so that a serving process keeps answering promptly
    # while it collects. 1.0 (the CLI): no rest.
    pace: float = 1.0


@dataclass
class CollectResult:
    """What one collection removed."""

    blobs: int = 0
    bytes: int = 0
    manifests: int = 0
    unlinked: int = 0  # repository access to blobs no manifest of theirs uses
    held: bool = False  # a gc hold stopped the run
    failed_deletes: int = 0  # byte deletions that failed (orphans for fsck --repair)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DryRun:
    """What a collection now would remove, and the blobs that would follow after the delay."""

    blobs: int = 0
    blob_bytes: int = 0
    manifests: int = 0
    then_blobs: int = 0
    then_bytes: int = 0
    held: bool = False
    queued_blobs: int = 0
    queued_manifests: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Batch:
    taken: int = 0
    held: bool = False
    manifests: int = 0
    unlinked: int = 0
    gone: list[tuple[str, int, str]] = field(default_factory=list)  # digest, size, key


class Collector:
    """Collects what the queues say may be garbage (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        store: BlobStore,
        clock: Callable[[], float],
        settings: GcSettings | None = None,
        *,
        actor: str = "system",
    ) -> None:
        self.db = db
        self.store = store
        self.clock = clock
        self.settings = settings or GcSettings()
        self.actor = actor
        self._deletes = trio.CapacityLimiter(store.parallel_deletes)  # see BlobStore
        self._busy_since: float | None = None

    async def _rest(self) -> None:
        """Between batches: rest in proportion to the work just done (`GcSettings.pace`)."""
        pace = self.settings.pace
        now = trio.current_time()
        if self._busy_since is not None and 0 < pace < 1:
            await trio.sleep((now - self._busy_since) * (1 / pace - 1))
        else:
            await trio.lowlevel.checkpoint()
        self._busy_since = trio.current_time()

    def _untagged_before(self, now: float) -> float | None:
        """Manifest rows due for untagged removal were queued before this (None: never).

        A row is queued `gc.delay` after the manifest lost its tag; untagged_age counts from
        the loss itself."""
        s = self.settings
        if s.untagged_age < 0:
            return None
        return now - max(0.0, s.untagged_age - s.delay)

    # -- one batch, one transaction --------------------------------------------------------

    def _manifest_batch(self, tx: Tx, fence: Fence | None, now: float, sweep: bool) -> _Batch:
        if fence is not None:
            check_fence(tx, fence)
        if held(tx, now):
            return _Batch(held=True)
        if sweep:
            records.sweep_manifest_queue(tx, now)
        ids = records.due_manifests(
            tx,
            now,
            self._untagged_before(now),
            self.settings.batch,
            locking=tx.dialect == "postgresql",
        )
        out = _Batch(taken=len(ids))
        later = now + self.settings.delay
        for manifest_id in ids:
            records.unqueue_manifest(tx, manifest_id)
            if manifest_needed(tx, manifest_id, self.settings.referrers):
                continue
            row = records.manifest_name(tx, manifest_id)
            generated = drop_manifest(tx, manifest_id, later)
            if row is not None:  # subscribers hear of it as of any other delete
                for gone in [row[1], *generated]:
                    events.emit(
                        tx, "delete", repository=row[0], digest=gone, actor=self.actor, gc=True
                    )
            out.manifests += 1 + len(generated)
        return out

    def _blob_batch(self, tx: Tx, fence: Fence | None, now: float) -> _Batch:
        if fence is not None:
            check_fence(tx, fence)
        if held(tx, now):
            return _Batch(held=True)
        due = records.due_blobs(tx, now, self.settings.batch, locking=tx.dialect == "postgresql")
        out = _Batch(taken=len(due))
        if not due:
            return out
        records.unqueue_blobs(tx, due)
        # Access from repositories none of whose manifests use the blob (pushed or mounted,
        # never referenced within the delay).
        out.unlinked = len(records.unlink_unused(tx, due))
        gone = records.delete_unreferenced_blobs(tx, due)
        out.gone = [(r[0], int(r[1]), r[2]) for r in gone]
        return out

    # -- runs ----------------------------------------------------------------------------

    async def run(
        self, fence: Fence | None = None, *, max_batches: int | None = None
    ) -> CollectResult:
        """Collect everything due now, batch by batch, until the queues hold nothing due.

        `fence`: the leadership this runs under (checked in every batch's transaction;
        LeadershipLost when it moved on). Cancellation waits for the batch in progress (its
        rows and its bytes are removed together); the rest waits for the next run.
        """
        result = CollectResult()
        batches = 0
        now = self.clock()
        sweep = True
        while max_batches is None or batches < max_batches:
            await self._rest()
            batch = await self.db.write(
                lambda tx, sweep=sweep: self._manifest_batch(tx, fence, now, sweep)  # type: ignore[misc]
            )
            sweep = False
            batches += 1
            result.manifests += batch.manifests
            if batch.held:
                result.held = True
                break
            if batch.taken < self.settings.batch:
                break
        while not result.held and (max_batches is None or batches < max_batches):
            await self._rest()
            # Shielded, rows and bytes together: a cancellation between the two would leave
            # the bytes of deleted rows behind (a batch is short).
            with trio.CancelScope(shield=True):
                batch = await self.db.write(lambda tx: self._blob_batch(tx, fence, now))
                result.failed_deletes += await self._delete_bytes(batch.gone)
            batches += 1
            if batch.held:
                result.held = True
                break
            result.unlinked += batch.unlinked
            result.blobs += len(batch.gone)
            result.bytes += sum(size for _, size, _ in batch.gone)
            if batch.taken < self.settings.batch:
                break
        self._busy_since = None
        RECLAIMED_ITEMS.labels("manifest").inc(result.manifests)
        RECLAIMED_ITEMS.labels("blob").inc(result.blobs)
        RECLAIMED_BYTES.inc(result.bytes)
        await self.record(result)
        if result.held:
            log.info("garbage collection paused: a gc hold is in place")
        if result.blobs or result.manifests:
            log.info(
                "collected %d manifest(s), %d blob(s), %d bytes",
                result.manifests,
                result.blobs,
                result.bytes,
            )
        return result

    async def _delete_bytes(self, gone: list[tuple[str, int, str]]) -> int:
        """Delete the bytes of collected rows: in chunks, several at once (each deletion
        waits on the disk or the network, so they overlap), one call per chunk when the store
        can delete many keys at once. Returns how many failed (left as orphans)."""
        store = self.store
        if isinstance(store, BulkDelete) and gone:
            failed_chunks: list[list[tuple[str, int, str]]] = []

            async def chunk(part: list[tuple[str, int, str]]) -> None:
                async with self._deletes:
                    try:
                        await store.delete_many([key for _, _, key in part])
                    except Exception:
                        failed_chunks.append(part)

            async with trio.open_nursery() as nursery:
                for i in range(0, len(gone), DELETE_CHUNK):
                    nursery.start_soon(chunk, gone[i : i + DELETE_CHUNK])
            gone = [item for part in failed_chunks for item in part]  # retried one by one
        failed = 0

        async def one(digest: str, key: str) -> None:
            nonlocal failed
            async with self._deletes:
                try:
                    await self.store.delete(key)
                except Exception:
                    failed += 1
                    log.exception("could not delete the bytes of %s at %s", digest, key)

        async with trio.open_nursery() as nursery:
            for digest, _, key in gone:
                nursery.start_soon(one, digest, key)
        return failed

    async def record(self, result: CollectResult) -> None:
        """Audit a run that removed something, and refresh the queue-depth gauge."""
        now = self.clock()

        def fn(tx: Tx) -> tuple[int, int]:
            if result.blobs or result.manifests or result.unlinked:
                audit.record(tx, self.actor, "gc.collect", "registry", at=now, **result.as_json())
            return records.queued_blobs(tx), records.queued_manifests(tx)

        if result.blobs or result.manifests or result.unlinked:
            blobs, manifests = await self.db.write(fn)
        else:
            blobs, manifests = await self.db.read(fn)
        QUEUE_DEPTH.labels("blob").set(blobs)
        QUEUE_DEPTH.labels("manifest").set(manifests)

    async def dry_run(self) -> DryRun:
        """What `run()` would remove now (read-only), and the blobs only those manifests use,
        which would follow after the delay."""
        now = self.clock()

        def fn(tx: Tx) -> DryRun:
            out = DryRun(held=held(tx, now))
            out.queued_blobs = records.queued_blobs(tx)
            out.queued_manifests = records.queued_manifests(tx)
            out.blobs, out.blob_bytes = records.due_unused_blobs(tx, now)
            going = [
                manifest_id
                for manifest_id in records.all_due_manifests(tx, now, self._untagged_before(now))
                if not manifest_needed(tx, manifest_id, self.settings.referrers)
            ]
            out.manifests = len(going)
            out.then_blobs, out.then_bytes = blobs_freed(tx, going)
            return out

        return await self.db.read(fn)
