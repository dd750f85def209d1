"""The registry's records: repositories, blobs, manifests, tags, referrers and uploads.

Each public coroutine is one unit of work in one transaction, with the same SQL on SQLite and
PostgreSQL (write transactions are serializable on both, see db.py). Rules that must hold under
concurrency are enforced inside the transaction that makes the change: a manifest is only
inserted if every blob it needs is linked to its repository in that same transaction, and a
blob is only unlinked if no manifest of the repository needs it, so of a manifest PUT racing a
blob delete either the PUT fails with MANIFEST_BLOB_UNKNOWN or the delete fails with BlobInUse;
never does a manifest point at a blob its repository cannot read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.errors import (
    BlobInUse,
    Conflict,
    Denied,
    ManifestBlobUnknown,
    ManifestNotFound,
    RangeInvalid,
    RepositoryNotFound,
    TooMany,
    UploadNotFound,
)
from appliance.metadata.changes import StampedCache, repository_topic
from appliance.metadata.db import Database, Row, Tx
from appliance.metadata.leader import Fence, check_fence
from appliance.oci import mediatypes as mt
from appliance.oci.digest import Digest
from appliance.oci.manifest import Manifest


@dataclass(frozen=True)
class BlobRecord:
    digest: str
    size: int
    storage_key: str
    review_after: float | None = None  # when the collector will look at it, if queued


@dataclass(frozen=True)
class UploadRecord:
    id: str
    repository: str
    size: int
    started_at: float
    updated_at: float
    reserved: int = 0  # bytes granted under the namespace's quota (reserve_upload)
    limited: bool = False  # the namespace has a quota: writes must reserve first


@dataclass(frozen=True)
class ManifestRecord:
    digest: str
    media_type: str
    payload: bytes
    subject: str | None


MANIFEST_CACHE_BYTES = 32 << 20  # per serving process


@dataclass(frozen=True)
class PutResult:
    created: bool
    digest: str


def repository_id_of(tx: Tx, name: str) -> int | None:
    value = tx.scalar("SELECT id FROM repositories WHERE name = :name", {"name": name})
    return None if value is None else int(value)


def ensure_repository(tx: Tx, name: str, now: float) -> int:
    tx.execute(
        "INSERT INTO repositories (name, created_at) VALUES (:name, :now) "
        "ON CONFLICT (name) DO NOTHING",
        {"name": name, "now": now},
    )
    repo_id = repository_id_of(tx, name)
    assert repo_id is not None
    return repo_id


def enqueue_blobs(tx: Tx, digests: Sequence[str], review_after: float) -> None:
    """Ask the collector to look at blobs that may have lost their last reference."""
    if digests:
        tx.executemany(
            "INSERT INTO gc_blob_queue (digest, review_after) VALUES (:d, :t) "
            "ON CONFLICT (digest) DO UPDATE SET review_after = CASE "
            "WHEN gc_blob_queue.review_after > excluded.review_after "
            "THEN gc_blob_queue.review_after ELSE excluded.review_after END",
            [{"d": d, "t": review_after} for d in digests],
        )


def enqueue_manifests(tx: Tx, ids: Sequence[int], review_after: float) -> None:
    """Ask the collector to look at manifests that may have lost their last reference."""
    if ids:
        tx.executemany(
            "INSERT INTO gc_manifest_queue (manifest_id, review_after) VALUES (:m, :t) "
            "ON CONFLICT (manifest_id) DO UPDATE SET review_after = excluded.review_after",
            [{"m": m, "t": review_after} for m in ids],
        )


def _enqueue_manifest(tx: Tx, manifest_id: int, review_after: float) -> None:
    enqueue_manifests(tx, [manifest_id], review_after)


def _generated(manifest: Manifest) -> bool:
    """Whether Berth itself made this artifact (see `mediatypes.GENERATED_BY`)."""
    return (manifest.annotations or {}).get(mt.GENERATED_BY) == "berth"


def _generated_referrers(tx: Tx, manifest_id: int) -> list[tuple[int, str]]:
    """(id, digest) of the artifacts Berth attached to a manifest itself (the scanner's SBOMs,
    marked with `mediatypes.GENERATED_BY`): they go with their subject."""
    rows = tx.execute(
        "SELECT m.id, m.digest, m.annotations FROM manifests m JOIN manifests s ON "
        "s.repository_id = m.repository_id AND s.digest = m.subject_digest "
        "WHERE s.id = :id AND m.annotations IS NOT NULL",
        {"id": manifest_id},
    )
    return [
        (int(r[0]), str(r[1])) for r in rows if json.loads(r[2]).get(mt.GENERATED_BY) == "berth"
    ]


def drop_manifest(tx: Tx, manifest_id: int, review_after: float) -> list[str]:
    """Delete a manifest the caller has checked may go (no index lists it; its tags are
    gone), with the artifacts Berth generated for it; queue its blobs, children and other
    referrers for review at `review_after`. Returns the digests of those generated artifacts
    (the caller announces their deletion as it does the manifest's)."""
    generated = _generated_referrers(tx, manifest_id)
    dropped: list[str] = []
    for artifact_id, artifact_digest in generated:
        dropped += [artifact_digest, *drop_manifest(tx, artifact_id, review_after)]
    blobs = [
        r[0]
        for r in tx.execute(
            "SELECT digest FROM manifest_layers WHERE manifest_id = :id", {"id": manifest_id}
        )
    ]
    children = [
        int(r[0])
        for r in tx.execute(
            "SELECT child_id FROM manifest_references WHERE parent_id = :id", {"id": manifest_id}
        )
    ]
    referrers = [
        int(r[0])
        for r in tx.execute(
            "SELECT m.id FROM manifests m JOIN manifests s ON s.repository_id = m.repository_id "
            "AND s.digest = m.subject_digest WHERE s.id = :id",
            {"id": manifest_id},
        )
    ]
    repository = tx.scalar(
        "SELECT r.name FROM manifests m JOIN repositories r ON r.id = m.repository_id "
        "WHERE m.id = :id",
        {"id": manifest_id},
    )
    tx.execute("DELETE FROM gc_manifest_queue WHERE manifest_id = :id", {"id": manifest_id})
    tx.execute("DELETE FROM manifests WHERE id = :id", {"id": manifest_id})
    if repository is not None:
        tx.touch(repository_topic(str(repository)))  # cached pulls of it must miss
    enqueue_blobs(tx, blobs, review_after)
    enqueue_manifests(tx, [*children, *referrers], review_after)
    return dropped


class WriteChecks(Protocol):
    """Rules a write must pass, checked inside its transaction (lifecycle/rules.py: quotas
    and immutable tags). Each method raises Denied to refuse the change; they run in the
    unit of work's thread and must be cheap when no rule applies (no query)."""

    def blob_linking(self, tx: Tx, repository: str, digest: str, size: int) -> None:
        """`digest` (of `size` bytes) is about to become readable by `repository`."""

    def tag_moving(self, tx: Tx, repository: str, tag: str, previous: int | None, new: int) -> None:
        """`tag` is about to point at manifest `new` (from `previous`, None for a new tag)."""

    def tag_deleting(self, tx: Tx, repository: str, tag: str) -> None:
        """`tag` is about to be removed."""

    def manifest_deleting(self, tx: Tx, repository: str, manifest_id: int) -> None:
        """The manifest and every tag pointing at it are about to be removed."""

    def quota_limited(self, tx: Tx, repository: str) -> bool:
        """Whether `repository`'s namespace has a quota (uploads then reserve bytes)."""

    def upload_growing(self, tx: Tx, repository: str, upload_id: str, total: int) -> None:
        """Upload `upload_id` of `repository` is about to hold up to `total` bytes."""

    def held_size(self, tx: Tx, repository: str, digest: str) -> int:
        """The size of blob `digest` if `repository`'s namespace holds it already (linking it
        again costs no quota), else 0."""


@dataclass(frozen=True)
class Pushed:
    """A manifest PUT, as its transaction wrote it."""

    repository: str
    digest: str
    manifest_id: int
    manifest: Manifest
    size: int  # bytes of the manifest itself
    tag: str | None
    moved_from: str | None  # the digest `tag` pointed at before, when it moved
    created: bool  # a new manifest row (False: the same bytes were pushed before)
    at: float


class WriteEffects:
    """The one hook for what a registry write sets off beyond its own rows: audit rows and
    webhook events (metadata/events.py), the scan queue (scan/records.py). Features subclass it,
    override what they need, and are registered at assembly (`MetadataStore.effects`,
    registry/effects.py), so this module imports none of them.

    Each method runs inside the write's own transaction, after the change and its checks:
    what it writes commits with the change or not at all, and it must have no effect outside
    `tx` (a PostgreSQL unit of work may run again). The collector's queues are not effects:
    they are the store's own invariant (a blob or manifest that may have lost its last
    reference is queued whatever else is registered) and `drop_manifest` writes them too.
    """

    def manifest_pushed(self, tx: Tx, push: Pushed) -> None:
        """A manifest was stored (and `push.tag` pointed at it)."""

    def tag_deleted(self, tx: Tx, repository: str, tag: str, digest: str, *, audited: bool) -> None:
        """`tag` (at `digest`) was removed; `audited`: the caller wrote its own audit row."""

    def manifest_deleted(self, tx: Tx, repository: str, digest: str, tags: list[str]) -> None:
        """Manifest `digest` was removed, with `tags` that pointed at it."""

    def blob_deleted(self, tx: Tx, repository: str, digest: str) -> None:
        """`repository` can no longer read blob `digest`."""


class MetadataStore:
    """Registry records on one Database. `clock` gives the time; `gc_delay` the review delay;
    `checks` the rules writes must pass (none when None); `effects` what each write sets off
    in its transaction, in order (none when empty)."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float],
        gc_delay: float = 86400.0,
        checks: WriteChecks | None = None,
        effects: Sequence[WriteEffects] = (),
    ) -> None:
        self.db = db
        self.clock = clock
        self.gc_delay = gc_delay
        self.checks = checks
        self.effects = list(effects)
        # Manifests by (repository, reference), good while the repository's change stamp
        # holds (metadata/changes.py): a pull answered from memory, no query, no thread hop.
        self._manifests: StampedCache[tuple[str, str], ManifestRecord] = StampedCache(
            10_000, max_bytes=MANIFEST_CACHE_BYTES, weight=lambda m: len(m.payload) + 200
        )

    # -- blobs ---------------------------------------------------------------------------

    async def blob(self, repository: str, digest: str) -> BlobRecord | None:
        """The blob if `repository` may read it."""

        def fn(tx: Tx) -> BlobRecord | None:
            row = tx.one(
                "SELECT b.digest, b.size, b.storage_key, q.review_after FROM blobs b "
                "JOIN repository_blobs rb ON rb.digest = b.digest "
                "JOIN repositories r ON r.id = rb.repository_id "
                "LEFT JOIN gc_blob_queue q ON q.digest = b.digest "
                "WHERE r.name = :name AND b.digest = :digest",
                {"name": repository, "digest": digest},
            )
            return None if row is None else BlobRecord(*row)

        return await self.db.lookup(fn)

    async def commit_blob(
        self, repository: str, upload_id: str, digest: str, size: int, storage_key: str
    ) -> BlobRecord:
        """Record a verified upload as a blob readable by `repository`; end the upload.

        If the digest is already stored (another upload won the race), the existing record is
        kept and returned: the caller then deletes its own, now redundant, bytes.
        """
        now = self.clock()

        def fn(tx: Tx) -> BlobRecord:
            (blob,) = self._record_blobs(tx, repository, [(digest, size, storage_key)], now)
            tx.execute("DELETE FROM uploads WHERE id = :id", {"id": upload_id})
            return blob

        return await self.db.write(fn)

    async def record_blobs(
        self, repository: str, blobs: Sequence[tuple[str, int, str]], *, upload_id: str
    ) -> list[BlobRecord]:
        """Record verified bytes of one upload (an import's: digest, size, storage key each)
        as blobs readable by `repository`, and end the upload, in one transaction: all or
        none. A digest stored already keeps its record, returned instead (as `commit_blob`
        does)."""
        now = self.clock()

        def fn(tx: Tx) -> list[BlobRecord]:
            records = self._record_blobs(tx, repository, blobs, now)
            tx.execute("DELETE FROM uploads WHERE id = :id", {"id": upload_id})
            return records

        return await self.db.write(fn)

    def _record_blobs(
        self, tx: Tx, repository: str, blobs: Sequence[tuple[str, int, str]], now: float
    ) -> list[BlobRecord]:
        repo_id = ensure_repository(tx, repository, now)
        out = []
        for digest, size, storage_key in blobs:
            tx.execute(
                "INSERT INTO blobs (digest, size, storage_key, created_at) "
                "VALUES (:digest, :size, :key, :now) ON CONFLICT (digest) DO NOTHING",
                {"digest": digest, "size": size, "key": storage_key, "now": now},
            )
            row = tx.one(
                "SELECT digest, size, storage_key FROM blobs WHERE digest = :digest",
                {"digest": digest},
            )
            assert row is not None
            out.append(self._link(tx, repo_id, repository, row, now))
        # A blob nobody references yet must be collected if no manifest ever does.
        enqueue_blobs(tx, [b.digest for b in out], now + self.gc_delay)
        return out

    async def adopt_blobs(self, repository: str, digests: Sequence[str]) -> list[BlobRecord]:
        """Make those of `digests` that Berth stores already (for any repository) readable by
        `repository`, in one transaction; returns them. For an import, which reads from
        outside Berth, not on behalf of a client who must be able to read another repository.
        Only a read when none is stored (the common case)."""
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return []
        now = self.clock()

        def stored(tx: Tx) -> list[Row]:
            rows = (
                tx.one("SELECT digest, size, storage_key FROM blobs WHERE digest = :d", {"d": d})
                for d in wanted
            )
            return [row for row in rows if row is not None]

        if not await self.db.read(stored):
            return []

        def fn(tx: Tx) -> list[BlobRecord]:
            repo_id = ensure_repository(tx, repository, now)
            out = []
            for row in stored(tx):
                out.append(self._link(tx, repo_id, repository, row, now))
                # A manifest that needs it follows: give it the whole delay, as a mount does.
                self._hold_for_manifest(tx, str(row[0]), now)
            return out

        return await self.db.write(fn)

    def _link(self, tx: Tx, repo_id: int, repository: str, row: Row, now: float) -> BlobRecord:
        """Make the stored blob `row` (digest, size, storage key) readable by `repository`,
        after the write checks (quotas) allow it."""
        digest = str(row[0])
        if self.checks is not None:
            self.checks.blob_linking(tx, repository, digest, int(row[1]))
        tx.execute(
            "INSERT INTO repository_blobs (repository_id, digest, created_at) "
            "VALUES (:repo, :digest, :now) ON CONFLICT DO NOTHING",
            {"repo": repo_id, "digest": digest, "now": now},
        )
        return BlobRecord(*row)

    def _hold_for_manifest(self, tx: Tx, digest: str, now: float) -> None:
        """A linked blob's manifest is on its way: give it the whole GC delay."""
        tx.execute(
            "UPDATE gc_blob_queue SET review_after = :t "
            "WHERE digest = :digest AND review_after < :t",
            {"t": now + self.gc_delay, "digest": digest},
        )

    async def mount_blob(self, repository: str, source: str, digest: str) -> BlobRecord | None:
        """Link a blob readable by `source` into `repository`; None if `source` lacks it."""
        now = self.clock()

        def fn(tx: Tx) -> BlobRecord | None:
            row = tx.one(
                "SELECT b.digest, b.size, b.storage_key FROM blobs b "
                "JOIN repository_blobs rb ON rb.digest = b.digest "
                "JOIN repositories r ON r.id = rb.repository_id "
                "WHERE r.name = :name AND b.digest = :digest",
                {"name": source, "digest": digest},
            )
            if row is None:
                return None
            repo_id = ensure_repository(tx, repository, now)
            record = self._link(tx, repo_id, repository, row, now)
            self._hold_for_manifest(tx, digest, now)  # a mounting client pushes it next
            return record

        return await self.db.write(fn)

    async def unlink_blob(self, repository: str, digest: str) -> bool:
        """Remove `repository`'s access to a blob; False if it had none.

        Raises BlobInUse, naming a manifest of the repository that needs the blob: a manifest
        never points at a blob its repository cannot read (delete the manifest first).
        """
        now = self.clock()

        def fn(tx: Tx) -> bool:
            repo_id = repository_id_of(tx, repository)
            if repo_id is None:
                return False
            user = tx.scalar(
                "SELECT m.digest FROM manifest_layers ml JOIN manifests m ON m.id = ml.manifest_id "
                "WHERE m.repository_id = :repo AND ml.digest = :digest LIMIT 1",
                {"repo": repo_id, "digest": digest},
            )
            if user is not None:
                raise BlobInUse(
                    f"blob {digest} is used by manifest {user} of {repository}; delete the "
                    "manifest first",
                    {"manifest": user},
                )
            gone = tx.execute(
                "DELETE FROM repository_blobs WHERE repository_id = :repo AND digest = :digest "
                "RETURNING digest",
                {"repo": repo_id, "digest": digest},
            )
            if gone:
                enqueue_blobs(tx, [digest], now + self.gc_delay)
                for effect in self.effects:
                    effect.blob_deleted(tx, repository, digest)
            return bool(gone)

        return await self.db.write(fn)

    async def touch_blob_review(self, digest: str) -> None:
        """Push a queued blob's review later: a client that saw it exists may reference it."""
        later = self.clock() + self.gc_delay

        def fn(tx: Tx) -> None:
            tx.execute(
                "UPDATE gc_blob_queue SET review_after = :t "
                "WHERE digest = :digest AND review_after < :t",
                {"t": later, "digest": digest},
            )

        await self.db.write(fn)

    # -- uploads -------------------------------------------------------------------------

    async def create_upload(
        self, repository: str, upload_id: str, owner: str | None = None, max_open: int = 0
    ) -> UploadRecord:
        """A new upload session of `owner`. Raises TooMany when `owner` already holds
        `max_open` open sessions (0: no limit); counted in the same transaction, so racing
        starts cannot pass the cap together."""
        now = self.clock()

        def fn(tx: Tx) -> UploadRecord:
            if owner is not None and max_open > 0:
                held = int(tx.scalar("SELECT COUNT(*) FROM uploads WHERE owner = :o", {"o": owner}))
                if held >= max_open:
                    raise TooMany(
                        f"{owner} has {held} upload sessions open, the most allowed at once; "
                        "complete or cancel some, or wait for idle ones to expire",
                        {"open": held, "limit": max_open},
                    )
            repo_id = ensure_repository(tx, repository, now)
            tx.execute(
                "INSERT INTO uploads (id, repository_id, size, started_at, updated_at, owner) "
                "VALUES (:id, :repo, 0, :now, :now, :owner)",
                {"id": upload_id, "repo": repo_id, "now": now, "owner": owner},
            )
            limited = self.checks is not None and self.checks.quota_limited(tx, repository)
            return UploadRecord(upload_id, repository, 0, now, now, 0, limited)

        # Not durable: a session lost to a power cut is one the client starts again (the
        # commit that acknowledges its blob is durable, and makes this one durable with it).
        return await self.db.write(fn, durable=False)

    async def upload(self, repository: str, upload_id: str) -> UploadRecord:
        """The upload session, which must belong to `repository`. Raises UploadNotFound."""

        def fn(tx: Tx) -> UploadRecord:
            row = tx.one(
                "SELECT u.id, r.name, u.size, u.started_at, u.updated_at, u.reserved "
                "FROM uploads u JOIN repositories r ON r.id = u.repository_id "
                "WHERE u.id = :id AND r.name = :name",
                {"id": upload_id, "name": repository},
            )
            if row is None:
                raise UploadNotFound("upload unknown", {"uuid": upload_id})
            limited = self.checks is not None and self.checks.quota_limited(tx, repository)
            upload_id_, name, size, started, updated, reserved = row
            return UploadRecord(
                upload_id_, name, int(size), started, updated, int(reserved), limited
            )

        return await self.db.lookup(fn)

    async def quota_free(self, repository: str, digest: str) -> int:
        """Bytes an upload declared to be blob `digest` may hold without reserving quota:
        the blob's size when the namespace holds it already (it will cost nothing), else 0."""
        if self.checks is None:
            return 0
        checks = self.checks
        return await self.db.lookup(lambda tx: checks.held_size(tx, repository, digest))

    async def reserve_upload(
        self, repository: str, upload_id: str, needed: int, ahead: int = 0
    ) -> int:
        """Let the upload hold at least `needed` bytes under its namespace's quota, and up to
        `ahead` more if the quota has room (fewer writes for a long streamed body). Returns
        the bytes now reserved. Raises Denied (the quota's message) when even `needed` does
        not fit, UploadNotFound when the session is gone."""

        def fn(tx: Tx) -> int:
            reserved = tx.scalar("SELECT reserved FROM uploads WHERE id = :id", {"id": upload_id})
            if reserved is None:
                raise UploadNotFound("upload unknown", {"uuid": upload_id})
            if int(reserved) >= needed:
                return int(reserved)
            total = needed + ahead
            if self.checks is not None:
                try:
                    self.checks.upload_growing(tx, repository, upload_id, total)
                except Denied:
                    if not ahead:
                        raise
                    total = needed
                    self.checks.upload_growing(tx, repository, upload_id, total)
            tx.execute(
                "UPDATE uploads SET reserved = :total WHERE id = :id",
                {"total": total, "id": upload_id},
            )
            return total

        return await self.db.write(fn)

    async def set_upload_size(self, upload_id: str, size: int, expected: int) -> None:
        """Record that the upload now holds `size` bytes, if it still holds `expected`.

        A compare-and-set: of two processes appending at the same offset, one wins and the
        other gets RangeInvalid with the size the upload holds. Raises UploadNotFound.
        """
        now = self.clock()

        def fn(tx: Tx) -> None:
            updated = tx.execute(
                "UPDATE uploads SET size = :size, updated_at = :now "
                "WHERE id = :id AND size = :expected RETURNING id",
                {"size": size, "now": now, "id": upload_id, "expected": expected},
            )
            if updated:
                return
            current = tx.scalar("SELECT size FROM uploads WHERE id = :id", {"id": upload_id})
            if current is None:
                raise UploadNotFound("upload unknown", {"uuid": upload_id})
            raise RangeInvalid(
                f"the upload holds {current} bytes, not {expected}: another request appended",
                int(current),
            )

        # Not durable: after a power cut the client asks how far it got and resends the rest.
        await self.db.write(fn, durable=False)

    async def delete_upload(self, upload_id: str) -> bool:
        def fn(tx: Tx) -> bool:
            return bool(
                tx.execute("DELETE FROM uploads WHERE id = :id RETURNING id", {"id": upload_id})
            )

        return await self.db.write(fn)

    async def expired_uploads(self, idle_before: float, limit: int = 1000) -> list[str]:
        def fn(tx: Tx) -> list[str]:
            rows = tx.execute(
                "SELECT id FROM uploads WHERE updated_at < :t ORDER BY updated_at LIMIT :n",
                {"t": idle_before, "n": limit},
            )
            return [r[0] for r in rows]

        return await self.db.read(fn)

    async def expire_upload(
        self, upload_id: str, idle_before: float, fence: Fence | None = None
    ) -> bool:
        """Delete the upload row if it is still idle since before `idle_before`.

        With a `fence`, only while that leadership is current (checked in the same
        transaction); raises LeadershipLost otherwise.
        """

        def fn(tx: Tx) -> bool:
            if fence is not None:
                check_fence(tx, fence)
            return bool(
                tx.execute(
                    "DELETE FROM uploads WHERE id = :id AND updated_at < :t RETURNING id",
                    {"id": upload_id, "t": idle_before},
                )
            )

        return await self.db.write(fn)

    # -- manifests and tags --------------------------------------------------------------

    async def put_manifest(
        self,
        repository: str,
        digest: Digest,
        manifest: Manifest,
        payload: bytes,
        tag: str | None,
        *,
        pushed_by: str | None = None,
        move_tag: bool = True,
    ) -> PutResult:
        """Store a validated manifest (and point `tag` at it), all or nothing. `pushed_by`
        names who pushed it (shown in the console).

        Raises ManifestBlobUnknown when a blob it needs is not readable by the repository, a
        descriptor's size disagrees with the stored blob, or a child of an index is missing;
        with `move_tag` false, Conflict when `tag` points at another manifest already (checked
        in the same transaction, so a push in between is never overwritten).
        """
        now = self.clock()
        digest_s = str(digest)

        def fn(tx: Tx) -> PutResult:
            repo_id = ensure_repository(tx, repository, now)
            total = len(payload)
            blob_digests: list[str] = []
            for d in manifest.required_blobs:
                size = tx.scalar(
                    "SELECT b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest "
                    "WHERE rb.repository_id = :repo AND rb.digest = :digest",
                    {"repo": repo_id, "digest": str(d.digest)},
                )
                if size is None:
                    raise ManifestBlobUnknown(
                        f"blob {d.digest} is not in repository {repository}",
                        {"digest": str(d.digest)},
                    )
                if int(size) != d.size:
                    raise ManifestBlobUnknown(
                        f"blob {d.digest} is {size} bytes, the manifest says {d.size}",
                        {"digest": str(d.digest)},
                    )
                if str(d.digest) not in blob_digests:
                    blob_digests.append(str(d.digest))
                    total += d.size
            child_ids: list[int] = []
            moved_from: str | None = None
            for child in manifest.children:
                row = tx.one(
                    "SELECT id, total_size FROM manifests "
                    "WHERE repository_id = :repo AND digest = :digest",
                    {"repo": repo_id, "digest": str(child.digest)},
                )
                if row is None:
                    raise ManifestBlobUnknown(
                        f"manifest {child.digest} is not in repository {repository}",
                        {"digest": str(child.digest)},
                    )
                if row[0] not in child_ids:
                    child_ids.append(int(row[0]))
                    total += int(row[1])
            if _generated(manifest) and manifest.subject is not None:
                # Checked here, in the transaction that stores it, so that an artifact Berth
                # generates can never outlive a subject deleted meanwhile.
                subject = str(manifest.subject.digest)
                if (
                    tx.scalar(
                        "SELECT 1 FROM manifests WHERE repository_id = :repo AND digest = :d",
                        {"repo": repo_id, "d": subject},
                    )
                    is None
                ):
                    raise ManifestBlobUnknown(
                        f"subject {subject} is not in repository {repository}: an artifact "
                        "Berth generates exists only with its subject",
                        {"digest": subject},
                    )
            inserted = tx.execute(
                "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, "
                "annotations, payload, subject_digest, config_digest, total_size, created_at, "
                "pushed_by) VALUES (:repo, :digest, :mt, :at, :ann, :payload, :subject, :config, "
                ":total, :now, :by) ON CONFLICT (repository_id, digest) DO NOTHING RETURNING id",
                {
                    "repo": repo_id,
                    "digest": digest_s,
                    "mt": manifest.media_type,
                    "at": manifest.referrer_type,
                    "ann": json.dumps(manifest.annotations) if manifest.annotations else None,
                    "payload": payload,
                    "subject": str(manifest.subject.digest) if manifest.subject else None,
                    "config": str(manifest.config.digest) if manifest.config else None,
                    "total": total,
                    "now": now,
                    "by": pushed_by,
                },
            )
            if inserted:
                manifest_id = int(inserted[0][0])
                tx.executemany(
                    "INSERT INTO manifest_layers (manifest_id, digest) VALUES (:m, :d)",
                    [{"m": manifest_id, "d": d} for d in blob_digests],
                )
                tx.executemany(
                    "INSERT INTO manifest_references (parent_id, child_id) VALUES (:p, :c)",
                    [{"p": manifest_id, "c": c} for c in child_ids],
                )
                if tag is None and manifest.subject is None:
                    # Untagged and not a referrer: a candidate for untagged-manifest cleanup.
                    _enqueue_manifest(tx, manifest_id, now + self.gc_delay)
            else:
                manifest_id = int(
                    tx.scalar(
                        "SELECT id FROM manifests WHERE repository_id = :repo AND digest = :d",
                        {"repo": repo_id, "d": digest_s},
                    )
                )
            if tag is not None:
                previous = tx.scalar(
                    "SELECT manifest_id FROM tags WHERE repository_id = :repo AND name = :tag",
                    {"repo": repo_id, "tag": tag},
                )
                if not move_tag and previous is not None and int(previous) != manifest_id:
                    held = tx.scalar(
                        "SELECT digest FROM manifests WHERE id = :id", {"id": int(previous)}
                    )
                    raise Conflict(
                        f"tag {tag} of {repository} points at {held} already",
                        {"tag": tag, "digest": held},
                    )
                if self.checks is not None:
                    before = None if previous is None else int(previous)
                    self.checks.tag_moving(tx, repository, tag, before, manifest_id)
                tx.execute(
                    "INSERT INTO tags (repository_id, name, manifest_id, updated_at, pushed_by) "
                    "VALUES (:repo, :tag, :m, :now, :by) ON CONFLICT (repository_id, name) "
                    "DO UPDATE SET manifest_id = excluded.manifest_id, "
                    "updated_at = excluded.updated_at, pushed_by = excluded.pushed_by",
                    {"repo": repo_id, "tag": tag, "m": manifest_id, "now": now, "by": pushed_by},
                )
                if previous is not None and int(previous) != manifest_id:
                    _enqueue_manifest(tx, int(previous), now + self.gc_delay)
                    moved_from = tx.scalar(
                        "SELECT digest FROM manifests WHERE id = :id", {"id": int(previous)}
                    )
            pushed = Pushed(
                repository,
                digest_s,
                manifest_id,
                manifest,
                len(payload),
                tag,
                moved_from,
                created=bool(inserted),
                at=now,
            )
            for effect in self.effects:
                effect.manifest_pushed(tx, pushed)
            tx.touch(repository_topic(repository))
            return PutResult(bool(inserted), digest_s)

        return await self.db.write(fn)

    async def manifest(self, repository: str, reference: str, by_digest: bool) -> ManifestRecord:
        """The manifest a tag points at, or the one with that digest. Raises ManifestNotFound."""
        stamp = self.db.changes.stamp(repository_topic(repository))  # before the read
        cached = self._manifests.get((repository, reference), stamp)
        if cached is not None:
            return cached

        def fn(tx: Tx) -> ManifestRecord:
            if by_digest:
                row = tx.one(
                    "SELECT m.digest, m.media_type, m.payload, m.subject_digest FROM manifests m "
                    "JOIN repositories r ON r.id = m.repository_id "
                    "WHERE r.name = :name AND m.digest = :ref",
                    {"name": repository, "ref": reference},
                )
            else:
                row = tx.one(
                    "SELECT m.digest, m.media_type, m.payload, m.subject_digest FROM tags t "
                    "JOIN repositories r ON r.id = t.repository_id "
                    "JOIN manifests m ON m.id = t.manifest_id "
                    "WHERE r.name = :name AND t.name = :ref",
                    {"name": repository, "ref": reference},
                )
            if row is None:
                raise ManifestNotFound(
                    f"manifest {reference} is not in repository {repository}",
                    {"name": repository, "reference": reference},
                )
            return ManifestRecord(row[0], row[1], bytes(row[2]), row[3])

        record = await self.db.lookup(fn)
        self._manifests.put((repository, reference), record, stamp)
        return record

    async def delete_tag(
        self, repository: str, tag: str, audit: Callable[[Tx], None] | None = None
    ) -> None:
        """Remove a tag (not its manifest). Raises ManifestNotFound. `audit` runs in the
        same transaction, after the delete (to record who did it)."""
        now = self.clock()

        def fn(tx: Tx) -> None:
            if self.checks is not None:
                self.checks.tag_deleting(tx, repository, tag)
            gone = tx.execute(
                "DELETE FROM tags WHERE name = :tag AND repository_id = "
                "(SELECT id FROM repositories WHERE name = :name) RETURNING manifest_id",
                {"tag": tag, "name": repository},
            )
            if not gone:
                raise ManifestNotFound(f"tag {tag} is not in repository {repository}")
            tx.touch(repository_topic(repository))
            _enqueue_manifest(tx, int(gone[0][0]), now + self.gc_delay)
            if audit is not None:
                audit(tx)
            digest = tx.scalar("SELECT digest FROM manifests WHERE id = :id", {"id": gone[0][0]})
            for effect in self.effects:
                effect.tag_deleted(tx, repository, tag, str(digest), audited=audit is not None)

        await self.db.write(fn)

    async def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete a manifest and every tag pointing at it.

        Raises ManifestNotFound, or Conflict while an index in the repository still lists it.
        """
        now = self.clock()

        def fn(tx: Tx) -> None:
            row = tx.one(
                "SELECT m.id FROM manifests m JOIN repositories r ON r.id = m.repository_id "
                "WHERE r.name = :name AND m.digest = :digest",
                {"name": repository, "digest": digest},
            )
            if row is None:
                raise ManifestNotFound(f"manifest {digest} is not in repository {repository}")
            manifest_id = int(row[0])
            parent = tx.scalar(
                "SELECT p.digest FROM manifest_references mr JOIN manifests p ON p.id = "
                "mr.parent_id WHERE mr.child_id = :id LIMIT 1",
                {"id": manifest_id},
            )
            if parent is not None:
                raise Conflict(
                    f"manifest {digest} is listed by index {parent}; delete the index first",
                    {"index": parent},
                )
            if self.checks is not None:
                self.checks.manifest_deleting(tx, repository, manifest_id)
            tags = [
                r[0]
                for r in tx.execute(
                    "DELETE FROM tags WHERE manifest_id = :id RETURNING name", {"id": manifest_id}
                )
            ]
            # Referrers (signatures, SBOMs) pushed by clients are queued: the collector decides
            # whether they go with their subject (gc.referrers). Berth's own go now.
            generated = drop_manifest(tx, manifest_id, now + self.gc_delay)
            for effect in self.effects:
                for artifact in generated:
                    effect.manifest_deleted(tx, repository, artifact, [])
                effect.manifest_deleted(tx, repository, digest, sorted(tags))

        await self.db.write(fn)

    async def tags(self, repository: str, n: int | None, last: str | None) -> list[str]:
        """Tag names in lexical order after `last`, at most `n`. Raises RepositoryNotFound."""

        def fn(tx: Tx) -> list[str]:
            repo_id = repository_id_of(tx, repository)
            if repo_id is None:
                raise RepositoryNotFound(f"repository {repository} not known", {"name": repository})
            params: dict[str, Any] = {"repo": repo_id, "last": last or "", "n": n}
            sql = "SELECT name FROM tags WHERE repository_id = :repo AND name > :last ORDER BY name"
            rows = tx.execute(sql if n is None else sql + " LIMIT :n", params)
            return [r[0] for r in rows]

        return await self.db.read(fn)

    async def catalog(self, n: int | None, last: str | None) -> list[str]:
        """Repositories holding at least one manifest, in lexical order after `last`."""

        def fn(tx: Tx) -> list[str]:
            sql = (
                "SELECT r.name FROM repositories r WHERE r.name > :last AND EXISTS "
                "(SELECT 1 FROM manifests m WHERE m.repository_id = r.id) ORDER BY r.name"
            )
            params = {"last": last or "", "n": n}
            rows = tx.execute(sql if n is None else sql + " LIMIT :n", params)
            return [r[0] for r in rows]

        return await self.db.read(fn)

    async def referrers(
        self, repository: str, subject: str, artifact_type: str | None
    ) -> list[dict[str, Any]]:
        """Descriptors of the manifests in `repository` whose subject is `subject`."""

        def fn(tx: Tx) -> list[dict[str, Any]]:
            sql = (
                "SELECT m.media_type, m.digest, LENGTH(m.payload), m.artifact_type, "
                "m.annotations FROM manifests m JOIN repositories r ON r.id = m.repository_id "
                "WHERE r.name = :name AND m.subject_digest = :subject"
            )
            params: dict[str, Any] = {"name": repository, "subject": subject}
            if artifact_type is not None:
                sql += " AND m.artifact_type = :at"
                params["at"] = artifact_type
            out = []
            for media_type, digest, size, at, notes in tx.execute(
                sql + " ORDER BY m.created_at, m.digest", params
            ):
                d: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
                if at:
                    d["artifactType"] = at
                if notes:
                    d["annotations"] = json.loads(notes)
                out.append(d)
            return out

        return await self.db.read(fn)
