"""The metadata conformance suite, written once and run over every dialect.

A dialect's test file subclasses `MetadataSuite` and pins its `dialect` fixture; the suite takes
`database` (a fresh, migrated, empty `Database`: the shared `db` of tests/support/dialects.py)
and `make_database` (another connection to that same database, for tests that need two
processes' worth of pools) from it. Everything else is here:
repositories, blobs, manifests, tags, referrers, uploads, pagination, deletes, leadership, and
the rules that must hold under concurrency. Each test also looks through a side door (plain SQL)
to check that nothing inconsistent was left behind.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import trio

from appliance.errors import (
    BlobInUse,
    Conflict,
    ManifestBlobUnknown,
    ManifestNotFound,
    RangeInvalid,
    RepositoryNotFound,
    UploadNotFound,
)
from appliance.metadata.db import Database, Tx, open_database
from appliance.metadata.leader import Fence, LeaderLock, LeadershipLost, check_fence, leader_lock
from appliance.metadata.store import MetadataStore, Pushed, WriteEffects, ensure_repository
from appliance.oci import manifest as manifests
from appliance.oci import mediatypes as mt
from appliance.oci.digest import Digest

REPO = "team/app"
ARTIFACT = "application/vnd.example.sbom+json"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha(data), "size": len(data), **extra}


def image(config: bytes, layers: list[bytes], **extra: Any) -> bytes:
    return encode(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", x) for x in layers],
            **extra,
        }
    )


def index(children: list[bytes]) -> bytes:
    return encode(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [descriptor(mt.OCI_MANIFEST, c) for c in children],
        }
    )


class MetadataSuite:
    """Subclass and define the `dialect` fixture (tests/support/dialects.py)."""

    @pytest.fixture
    def database(self, db: Database) -> Database:
        return db

    @pytest.fixture
    def make_database(self, database_url: str) -> Callable[[], Database]:
        return lambda: open_database(database_url)

    @pytest.fixture
    def clock(self) -> Clock:
        return Clock()

    @pytest.fixture
    def meta(self, database: Database, clock: Clock) -> MetadataStore:
        return MetadataStore(database, clock, gc_delay=100.0)

    # -- helpers -------------------------------------------------------------------------

    async def push_blob(self, meta: MetadataStore, repo: str, data: bytes) -> str:
        upload = uuid.uuid4().hex
        await meta.create_upload(repo, upload)
        record = await meta.commit_blob(repo, upload, sha(data), len(data), f"key-{upload}")
        return record.digest

    async def put(
        self, meta: MetadataStore, repo: str, payload: bytes, tag: str | None = None
    ) -> str:
        content_type = json.loads(payload)["mediaType"]
        parsed = manifests.parse(payload, content_type)
        result = await meta.put_manifest(repo, Digest.parse(sha(payload)), parsed, payload, tag)
        return result.digest

    async def push_image(
        self, meta: MetadataStore, repo: str, config: bytes, layers: list[bytes], tag: str | None
    ) -> str:
        for data in [config, *layers]:
            await self.push_blob(meta, repo, data)
        return await self.put(meta, repo, image(config, layers), tag)

    @staticmethod
    async def rows(db: Database, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        return await db.read(lambda tx: tx.execute(sql, params))

    async def assert_consistent(self, db: Database) -> None:
        """The invariants, checked through the side door."""
        unlinked = await self.rows(
            db,
            "SELECT m.digest, ml.digest FROM manifest_layers ml "
            "JOIN manifests m ON m.id = ml.manifest_id WHERE NOT EXISTS (SELECT 1 FROM "
            "repository_blobs rb WHERE rb.repository_id = m.repository_id "
            "AND rb.digest = ml.digest)",
        )
        assert unlinked == [], "manifests pointing at blobs their repository cannot read"
        crossing = await self.rows(
            db,
            "SELECT p.digest FROM manifest_references mr JOIN manifests p ON p.id = mr.parent_id "
            "JOIN manifests c ON c.id = mr.child_id WHERE p.repository_id <> c.repository_id",
        )
        assert crossing == []
        blobless = await self.rows(
            db,
            "SELECT rb.digest FROM repository_blobs rb WHERE NOT EXISTS "
            "(SELECT 1 FROM blobs b WHERE b.digest = rb.digest)",
        )
        assert blobless == []

    # -- repositories and the catalog ----------------------------------------------------

    async def test_a_repository_appears_in_the_catalog_once_it_has_a_manifest(
        self, meta: MetadataStore, database: Database
    ) -> None:
        await self.push_blob(meta, REPO, b"lonely blob")
        assert await meta.catalog(None, None) == []
        await self.push_image(meta, REPO, b"{}", [b"layer"], "v1")
        assert await meta.catalog(None, None) == [REPO]
        await self.assert_consistent(database)

    async def test_catalog_is_in_byte_order_and_paginates(self, meta: MetadataStore) -> None:
        names = ["a-b", "ab", "a.b", "a/b", "a", "b/c", "a_b", "zz", "a0"]
        for name in names:
            await self.push_image(meta, name, b"{}", [b"l"], "v1")
        expected = sorted(names, key=lambda n: n.encode())
        assert await meta.catalog(None, None) == expected
        assert await meta.catalog(0, None) == []
        assert await meta.catalog(3, None) == expected[:3]
        assert await meta.catalog(3, expected[2]) == expected[3:6]
        assert await meta.catalog(100, expected[-1]) == []
        assert await meta.catalog(None, "a.zzz") == [n for n in expected if n > "a.zzz"]
        pages: list[str] = []
        last = None
        while page := await meta.catalog(2, last):
            pages += page
            last = page[-1]
        assert pages == expected

    # -- blobs ---------------------------------------------------------------------------

    async def test_a_committed_blob_is_readable_by_its_repository_only(
        self, meta: MetadataStore, database: Database
    ) -> None:
        digest = await self.push_blob(meta, REPO, b"data")
        record = await meta.blob(REPO, digest)
        assert record is not None
        assert (record.digest, record.size) == (digest, 4)
        assert record.review_after is not None  # queued: nothing references it yet
        assert await meta.blob("team/other", digest) is None
        assert await self.rows(database, "SELECT id FROM uploads") == []

    async def test_a_second_commit_of_the_same_digest_keeps_the_first_key(
        self, meta: MetadataStore
    ) -> None:
        for repo in (REPO, "team/other"):
            await meta.create_upload(repo, f"u-{repo}")
        first = await meta.commit_blob(REPO, f"u-{REPO}", sha(b"x"), 1, "first")
        second = await meta.commit_blob("team/other", "u-team/other", sha(b"x"), 1, "second")
        assert first.storage_key == second.storage_key == "first"
        assert await meta.blob("team/other", sha(b"x")) is not None

    async def test_mount_links_a_blob_the_source_can_read(self, meta: MetadataStore) -> None:
        digest = await self.push_blob(meta, "team/source", b"shared")
        assert await meta.mount_blob("team/target", "team/bystander", digest) is None
        mounted = await meta.mount_blob("team/target", "team/source", digest)
        assert mounted is not None
        assert mounted.digest == digest
        assert await meta.blob("team/target", digest) is not None

    async def test_an_import_adopts_blobs_stored_for_any_repository(
        self, meta: MetadataStore, database: Database, clock: Clock
    ) -> None:
        stored = await self.push_blob(meta, "team/source", b"stored once")
        never = sha(b"never stored")
        assert await meta.adopt_blobs("other/target", [never]) == []
        assert (
            await self.rows(database, "SELECT name FROM repositories WHERE name = 'other/target'")
            == []
        )
        clock.now += 50
        adopted = await meta.adopt_blobs("other/target", [never, stored, stored])
        assert [b.digest for b in adopted] == [stored]
        assert adopted[0].storage_key.startswith("key-")
        assert await meta.blob("other/target", stored) is not None
        assert await meta.blob("other/target", never) is None
        # Adopting gives a manifest that follows the whole delay, as a mount does.
        queued = await self.rows(database, "SELECT review_after FROM gc_blob_queue")
        assert queued == [(clock.now + 100,)]
        await self.assert_consistent(database)

    async def test_blobs_placed_without_an_upload_are_recorded_together(
        self, meta: MetadataStore, database: Database
    ) -> None:
        first = await self.push_blob(meta, "team/source", b"one")
        await meta.create_upload(REPO, "import-1")
        records = await meta.record_blobs(
            REPO, [(sha(b"two"), 3, "key-two"), (first, 3, "key-another-one")], upload_id="import-1"
        )
        assert await self.rows(database, "SELECT id FROM uploads") == []  # ended with it
        assert [(r.digest, r.storage_key) for r in records] == [
            (sha(b"two"), "key-two"),
            (first, records[1].storage_key),
        ]
        assert records[1].storage_key != "key-another-one"  # the first copy serves
        assert await meta.blob(REPO, first) is not None
        assert await meta.blob(REPO, sha(b"two")) is not None
        queued = {r[0] for r in await self.rows(database, "SELECT digest FROM gc_blob_queue")}
        assert {first, sha(b"two")} <= queued
        await self.assert_consistent(database)

    async def test_unlink_and_its_queue_entry(
        self, meta: MetadataStore, database: Database, clock: Clock
    ) -> None:
        digest = await self.push_blob(meta, REPO, b"gone soon")
        clock.now += 50
        assert await meta.unlink_blob(REPO, digest) is True
        assert await meta.blob(REPO, digest) is None
        assert await meta.unlink_blob(REPO, digest) is False
        assert await meta.unlink_blob("team/never", digest) is False
        queued = await self.rows(database, "SELECT digest, review_after FROM gc_blob_queue")
        assert queued == [(digest, clock.now + 100)]

    async def test_a_blob_a_manifest_needs_cannot_be_unlinked(
        self, meta: MetadataStore, database: Database
    ) -> None:
        manifest = await self.push_image(meta, REPO, b"{}", [b"needed"], "v1")
        with pytest.raises(BlobInUse) as refused:
            await meta.unlink_blob(REPO, sha(b"needed"))
        assert manifest in refused.value.message
        assert refused.value.detail == {"manifest": manifest}
        await meta.delete_manifest(REPO, manifest)
        assert await meta.unlink_blob(REPO, sha(b"needed")) is True
        await self.assert_consistent(database)

    async def test_review_times_only_move_later(
        self, meta: MetadataStore, database: Database, clock: Clock
    ) -> None:
        digest = await self.push_blob(meta, REPO, b"b")
        start = clock.now + 100

        async def review() -> float:
            return float(
                (await self.rows(database, "SELECT review_after FROM gc_blob_queue"))[0][0]
            )

        assert await review() == start
        clock.now += 30
        await meta.touch_blob_review(digest)
        assert await review() == start + 30
        clock.now -= 20
        await meta.touch_blob_review(digest)
        await meta.mount_blob("team/x", REPO, digest)
        assert await review() == start + 30
        clock.now += 40
        await meta.mount_blob("team/y", REPO, digest)
        assert await review() == start + 50

    # -- manifests and tags --------------------------------------------------------------

    async def test_manifest_round_trip_by_tag_and_digest(self, meta: MetadataStore) -> None:
        payload = image(b"{}", [b"one", b"two"])
        for data in (b"{}", b"one", b"two"):
            await self.push_blob(meta, REPO, data)
        digest = await self.put(meta, REPO, payload, "v1")
        by_tag = await meta.manifest(REPO, "v1", by_digest=False)
        by_digest = await meta.manifest(REPO, digest, by_digest=True)
        assert by_tag == by_digest
        assert by_tag.payload == payload
        assert isinstance(by_tag.payload, bytes)
        assert by_tag.media_type == mt.OCI_MANIFEST
        with pytest.raises(ManifestNotFound):
            await meta.manifest(REPO, "v2", by_digest=False)
        with pytest.raises(ManifestNotFound):
            await meta.manifest("team/other", digest, by_digest=True)

    async def test_putting_the_same_manifest_twice_is_idempotent(
        self, meta: MetadataStore, database: Database
    ) -> None:
        await self.push_blob(meta, REPO, b"{}")
        parsed = manifests.parse(image(b"{}", []), mt.OCI_MANIFEST)
        d = Digest.parse(sha(image(b"{}", [])))
        first = await meta.put_manifest(REPO, d, parsed, image(b"{}", []), "a")
        second = await meta.put_manifest(REPO, d, parsed, image(b"{}", []), "b")
        assert (first.created, second.created) == (True, False)
        assert await meta.tags(REPO, None, None) == ["a", "b"]
        assert len(await self.rows(database, "SELECT id FROM manifests")) == 1

    async def test_missing_or_mis_sized_blobs_are_manifest_blob_unknown(
        self, meta: MetadataStore, database: Database
    ) -> None:
        await self.push_blob(meta, REPO, b"{}")
        with pytest.raises(ManifestBlobUnknown):
            await self.put(meta, REPO, image(b"{}", [b"absent"]), "v1")
        await self.push_blob(meta, "team/elsewhere", b"absent")
        with pytest.raises(ManifestBlobUnknown):
            await self.put(meta, REPO, image(b"{}", [b"absent"]), "v1")
        await self.push_blob(meta, REPO, b"sized")
        wrong = encode(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": descriptor("application/vnd.oci.image.config.v1+json", b"{}"),
                "layers": [{"mediaType": "x/y", "digest": sha(b"sized"), "size": 99}],
            }
        )
        with pytest.raises(ManifestBlobUnknown):
            await self.put(meta, REPO, wrong, "v1")
        assert await self.rows(database, "SELECT id FROM manifests") == []
        assert await self.rows(database, "SELECT name FROM tags") == []

    async def test_an_index_needs_its_children_in_the_same_repository(
        self, meta: MetadataStore, database: Database
    ) -> None:
        child = image(b"{}", [b"amd64"])
        await self.push_image(meta, REPO, b"{}", [b"amd64"], None)
        with pytest.raises(ManifestBlobUnknown):
            await self.put(meta, "team/other", index([child]), "multi")
        parent = await self.put(meta, REPO, index([child]), "multi")
        # A child listed by an index cannot be deleted before the index.
        with pytest.raises(Conflict):
            await meta.delete_manifest(REPO, sha(child))
        await meta.delete_manifest(REPO, parent)
        await meta.delete_manifest(REPO, sha(child))
        assert await self.rows(database, "SELECT id FROM manifests") == []
        await self.assert_consistent(database)

    async def test_tags_are_in_byte_order_and_paginate(self, meta: MetadataStore) -> None:
        await self.push_image(meta, REPO, b"{}", [b"l"], None)
        payload = image(b"{}", [b"l"])
        names = ["B", "a", "_z", "Z", "0", "a-b", "a.b", "ab", "A", "v1.0", "v1.0-rc.1", "v1_0"]
        for name in names:
            await self.put(meta, REPO, payload, name)
        expected = sorted(names, key=lambda n: n.encode())
        assert await meta.tags(REPO, None, None) == expected
        assert await meta.tags(REPO, 0, None) == []
        assert await meta.tags(REPO, 4, None) == expected[:4]
        assert await meta.tags(REPO, 4, expected[3]) == expected[4:8]
        assert await meta.tags(REPO, 4, "zzz") == []
        with pytest.raises(RepositoryNotFound):
            await meta.tags("team/none", None, None)

    async def test_a_tag_that_must_not_move_is_a_conflict_and_changes_nothing(
        self, meta: MetadataStore, database: Database
    ) -> None:
        first = await self.push_image(meta, REPO, b"{}", [b"one"], "v1")
        for data in (b"{}", b"two"):
            await self.push_blob(meta, REPO, data)
        payload = image(b"{}", [b"two"])
        parsed = manifests.parse(payload, mt.OCI_MANIFEST)
        digest = Digest.parse(sha(payload))
        with pytest.raises(Conflict) as refused:
            await meta.put_manifest(REPO, digest, parsed, payload, "v1", move_tag=False)
        assert first in refused.value.message
        assert (await meta.manifest(REPO, "v1", False)).digest == first
        with pytest.raises(ManifestNotFound):  # the whole put rolled back, manifest too
            await meta.manifest(REPO, str(digest), True)
        # The same manifest again, or a new tag, is no move.
        again = await meta.put_manifest(
            REPO,
            Digest.parse(first),
            manifests.parse(image(b"{}", [b"one"]), None),
            image(b"{}", [b"one"]),
            "v1",
            move_tag=False,
        )
        assert again.digest == first
        await meta.put_manifest(REPO, digest, parsed, payload, "v2", move_tag=False)
        assert (await meta.manifest(REPO, "v2", False)).digest == str(digest)
        await self.assert_consistent(database)

    async def test_retagging_queues_the_previous_manifest(
        self, meta: MetadataStore, database: Database, clock: Clock
    ) -> None:
        first = await self.push_image(meta, REPO, b"{}", [b"1"], "latest")
        second = await self.push_image(meta, REPO, b"{}", [b"2"], "latest")
        assert (await meta.manifest(REPO, "latest", by_digest=False)).digest == second
        queued = await self.rows(
            database,
            "SELECT m.digest FROM gc_manifest_queue q JOIN manifests m ON m.id = q.manifest_id",
        )
        assert queued == [(first,)]

    async def test_delete_tag_keeps_the_manifest(
        self, meta: MetadataStore, database: Database
    ) -> None:
        digest = await self.push_image(meta, REPO, b"{}", [b"l"], "v1")
        await meta.delete_tag(REPO, "v1")
        with pytest.raises(ManifestNotFound):
            await meta.delete_tag(REPO, "v1")
        assert (await meta.manifest(REPO, digest, by_digest=True)).digest == digest
        assert await meta.tags(REPO, None, None) == []

    async def test_delete_manifest_removes_its_tags_and_queues_its_blobs(
        self, meta: MetadataStore, database: Database, clock: Clock
    ) -> None:
        digest = await self.push_image(meta, REPO, b"{}", [b"l1", b"l2"], "v1")
        await self.put(meta, REPO, image(b"{}", [b"l1", b"l2"]), "v2")
        clock.now += 1000
        await meta.delete_manifest(REPO, digest)
        with pytest.raises(ManifestNotFound):
            await meta.delete_manifest(REPO, digest)
        assert await meta.tags(REPO, None, None) == []
        assert await meta.catalog(None, None) == []
        queued = await self.rows(
            database,
            "SELECT digest FROM gc_blob_queue WHERE review_after = :t",
            {"t": clock.now + 100},
        )
        assert sorted(r[0] for r in queued) == sorted([sha(b"{}"), sha(b"l1"), sha(b"l2")])
        assert await self.rows(database, "SELECT manifest_id FROM manifest_layers") == []

    # -- the write hook ------------------------------------------------------------------

    async def test_write_effects_run_in_the_change_s_transaction(
        self, database: Database, clock: Clock
    ) -> None:
        """Registered effects hear of each push and delete, in order, inside its transaction
        (they see its rows); an effect that raises undoes the change; a refused change sets
        nothing off."""
        seen: list[tuple[Any, ...]] = []

        class Recording(WriteEffects):
            def manifest_pushed(self, tx: Tx, push: Pushed) -> None:
                visible = tx.scalar(
                    "SELECT digest FROM manifests WHERE id = :id", {"id": push.manifest_id}
                )
                seen.append(("push", push.digest, push.tag, push.moved_from, push.created))
                assert visible == push.digest
                if push.tag == "explode":
                    raise RuntimeError("refused by the effect")

            def tag_deleted(
                self, tx: Tx, repository: str, tag: str, digest: str, *, audited: bool
            ) -> None:
                seen.append(("untag", tag, digest, audited))

            def manifest_deleted(
                self, tx: Tx, repository: str, digest: str, tags: list[str]
            ) -> None:
                seen.append(("delete", digest, tags))

            def blob_deleted(self, tx: Tx, repository: str, digest: str) -> None:
                seen.append(("unlink", digest))

        meta = MetadataStore(database, clock, gc_delay=100.0, effects=[Recording()])
        first = await self.push_image(meta, REPO, b"{}", [b"1"], "v1")
        second = await self.push_image(meta, REPO, b"{}", [b"2"], "v1")
        await self.put(meta, REPO, image(b"{}", [b"2"]), "v2")
        assert seen == [
            ("push", first, "v1", None, True),
            ("push", second, "v1", first, True),
            ("push", second, "v2", None, False),
        ]
        seen.clear()
        with pytest.raises(RuntimeError, match="refused by the effect"):
            await self.push_image(meta, REPO, b"{}", [b"3"], "explode")
        with pytest.raises(ManifestNotFound):  # the push rolled back with its effect
            await meta.manifest(REPO, "explode", by_digest=False)
        payload = image(b"{}", [b"3"])
        with pytest.raises(Conflict):
            await meta.put_manifest(
                REPO,
                Digest.parse(sha(payload)),
                manifests.parse(payload, mt.OCI_MANIFEST),
                payload,
                "v2",
                move_tag=False,
            )
        assert [s[0] for s in seen] == ["push"]  # the exploded one only; the conflict: none
        seen.clear()
        await meta.delete_tag(REPO, "v2")
        await meta.delete_manifest(REPO, first)
        await meta.unlink_blob(REPO, sha(b"1"))
        assert seen == [
            ("untag", "v2", second, False),
            ("delete", first, []),
            ("unlink", sha(b"1")),
        ]
        # Without registered effects the store writes no feature's records.
        assert await self.rows(database, "SELECT COUNT(*) FROM scan_queue") == [(0,)]
        assert await self.rows(database, "SELECT COUNT(*) FROM audit_events") == [(0,)]

    # -- referrers -----------------------------------------------------------------------

    async def test_referrers_with_artifact_type_filter(self, meta: MetadataStore) -> None:
        subject = await self.push_image(meta, REPO, b"{}", [b"base"], "v1")
        subject_desc = descriptor(mt.OCI_MANIFEST, image(b"{}", [b"base"]))
        await self.push_blob(meta, REPO, b"sbom")
        sbom = image(
            b"{}",
            [b"sbom"],
            artifactType=ARTIFACT,
            subject=subject_desc,
            annotations={"org.example": "yes"},
        )
        sig = image(
            b"{}", [b"base"], artifactType="application/vnd.example.sig", subject=subject_desc
        )
        sbom_digest = await self.put(meta, REPO, sbom)
        await self.put(meta, REPO, sig)
        found = await meta.referrers(REPO, subject, None)
        assert {d["artifactType"] for d in found} == {ARTIFACT, "application/vnd.example.sig"}
        only = await meta.referrers(REPO, subject, ARTIFACT)
        assert only == [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": sbom_digest,
                "size": len(sbom),
                "artifactType": ARTIFACT,
                "annotations": {"org.example": "yes"},
            }
        ]
        assert await meta.referrers("team/other", subject, None) == []
        assert await meta.referrers(REPO, sha(b"nothing"), None) == []

    async def test_berths_own_referrers_go_with_their_subject(
        self, meta: MetadataStore, database: Database
    ) -> None:
        """The scanner's SBOMs (marked `GENERATED_BY`) leave with the image they describe, in
        the delete's own transaction, so the blobs they held are free at once; a client's
        referrers are only queued for the collector, as before."""
        subject = await self.push_image(meta, REPO, b"{}", [b"base"], "v1")
        subject_desc = descriptor(mt.OCI_MANIFEST, image(b"{}", [b"base"]))
        await self.push_blob(meta, REPO, b"generated sbom")
        await self.push_blob(meta, REPO, b"client sbom")
        ours = await self.put(
            meta,
            REPO,
            image(
                b"{}",
                [b"generated sbom"],
                artifactType=ARTIFACT,
                subject=subject_desc,
                annotations={mt.GENERATED_BY: "berth"},
            ),
        )
        theirs = await self.put(
            meta,
            REPO,
            image(b"{}", [b"client sbom"], artifactType=ARTIFACT, subject=subject_desc),
        )
        await meta.delete_manifest(REPO, subject)
        left = [r[0] for r in await self.rows(database, "SELECT digest FROM manifests")]
        assert left == [theirs]
        assert ours not in left
        # Nothing the generated artifact held stops the blob from leaving the repository.
        assert await meta.unlink_blob(REPO, sha(b"generated sbom")) is True
        queued = [
            r[0] for r in await self.rows(database, "SELECT manifest_id FROM gc_manifest_queue")
        ]
        assert len(queued) == 1  # the client's referrer waits for the collector
        await self.assert_consistent(database)

    async def test_a_generated_artifact_needs_its_subject(
        self, meta: MetadataStore, database: Database
    ) -> None:
        """Stored only in a transaction that sees its subject: an image deleted while it was
        being scanned never gets an orphan SBOM."""
        await self.push_blob(meta, REPO, b"{}")
        await self.push_blob(meta, REPO, b"generated sbom")
        gone = descriptor(mt.OCI_MANIFEST, image(b"{}", [b"deleted meanwhile"]))
        payload = image(
            b"{}",
            [b"generated sbom"],
            artifactType=ARTIFACT,
            subject=gone,
            annotations={mt.GENERATED_BY: "berth"},
        )
        with pytest.raises(ManifestBlobUnknown) as refused:
            await self.put(meta, REPO, payload)
        assert refused.value.detail == {"digest": gone["digest"]}
        assert await self.rows(database, "SELECT digest FROM manifests") == []
        # A client's referrer to a subject not pushed (yet) is accepted, as the spec says.
        await self.put(meta, REPO, image(b"{}", [b"generated sbom"], subject=gone))

    async def test_work_from_plain_threads_and_from_trio_never_shares_a_transaction(
        self, database: Database
    ) -> None:
        """Background jobs run units of work from plain threads (`run_sync_write`,
        `run_sync_read`: the scanner's re-matching, backups) while requests run theirs through
        `write`: each is its own transaction, whoever runs at the same time."""

        def insert(name: str) -> Callable[[Tx], None]:
            return lambda tx: tx.execute(
                "INSERT INTO repositories (name, created_at) VALUES (:n, 0)", {"n": name}
            )

        def count(tx: Tx) -> int:
            return int(tx.scalar("SELECT COUNT(*) FROM repositories") or 0)

        def from_thread(worker: int) -> None:
            for i in range(25):
                database.run_sync_write(insert(f"thread/w{worker}-{i}"))
                assert database.run_sync_read(count) >= 1

        async def from_trio(worker: int) -> None:
            for i in range(25):
                await database.write(insert(f"trio/w{worker}-{i}"))

        async with trio.open_nursery() as nursery:
            for worker in range(3):
                nursery.start_soon(trio.to_thread.run_sync, from_thread, worker)
                nursery.start_soon(from_trio, worker)
        assert await database.read(count) == 150

    async def test_a_lookup_sees_every_committed_write_and_raises_what_its_work_raises(
        self, database: Database
    ) -> None:
        """`lookup`, the request path's point read, is a read like any other: it sees what
        was committed before it (from trio or from a plain thread), never what is still
        being written, and what its unit of work raises reaches the caller as itself."""

        def names(tx: Tx) -> list[str]:
            return [r[0] for r in tx.execute("SELECT name FROM repositories ORDER BY name")]

        assert await database.lookup(names) == []
        await database.write(
            lambda tx: tx.execute("INSERT INTO repositories (name, created_at) VALUES ('a', 0)")
        )
        assert await database.lookup(names) == ["a"]
        await trio.to_thread.run_sync(
            database.run_sync_write,
            lambda tx: tx.execute("INSERT INTO repositories (name, created_at) VALUES ('b', 0)"),
        )
        assert await database.lookup(names) == ["a", "b"]

        seen: list[list[str]] = []
        inside, finish = trio.Event(), threading.Event()

        def slow_insert(tx: Tx) -> None:
            tx.execute("INSERT INTO repositories (name, created_at) VALUES ('c', 0)")
            trio.from_thread.run_sync(inside.set)
            finish.wait(10)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(database.write, slow_insert)
            await inside.wait()
            seen.append(await database.lookup(names))  # the write has not committed yet
            finish.set()
        assert seen == [["a", "b"]]
        assert await database.lookup(names) == ["a", "b", "c"]

        def missing(tx: Tx) -> None:
            raise UploadNotFound("upload unknown")

        with pytest.raises(UploadNotFound):
            await database.lookup(missing)
        assert await database.lookup(names) == ["a", "b", "c"], "usable after a failure"

    # -- uploads -------------------------------------------------------------------------

    async def test_upload_life_cycle(
        self, meta: MetadataStore, database: Database, clock: Clock
    ) -> None:
        created = await meta.create_upload(REPO, "u1")
        assert (created.size, created.repository) == (0, REPO)
        clock.now += 5
        await meta.set_upload_size("u1", 10, expected=0)
        record = await meta.upload(REPO, "u1")
        assert (record.size, record.updated_at) == (10, clock.now)
        with pytest.raises(UploadNotFound):
            await meta.upload("team/other", "u1")
        with pytest.raises(UploadNotFound):
            await meta.set_upload_size("nope", 1, expected=0)
        assert await meta.delete_upload("u1") is True
        assert await meta.delete_upload("u1") is False
        with pytest.raises(UploadNotFound):
            await meta.upload(REPO, "u1")

    async def test_a_write_that_need_not_wait_for_the_disk_commits_and_the_next_one_waits(
        self, database: Database
    ) -> None:
        """`durable=False` (an upload session, its progress) commits without waiting for the
        disk; the writes after it, failed or not, wait again as configured (an acknowledged
        push is on disk when it is answered: SQLite's `synchronous` is FULL)."""

        def setting(tx: Tx) -> str:  # what this transaction's commit waits for
            if database.dialect == "sqlite":
                return str(tx.scalar("PRAGMA synchronous"))  # 2: FULL, 1: NORMAL
            return str(tx.scalar("SHOW synchronous_commit"))

        def soft(tx: Tx) -> str:
            ensure_repository(tx, "soft/one", 1.0)
            return setting(tx)

        configured = await database.write(setting)
        skipped = "1" if database.dialect == "sqlite" else "off"
        if database.dialect == "sqlite":
            assert configured == "2"
        assert await database.write(soft, durable=False) == skipped
        assert await database.write(setting) == configured
        assert database.run_sync_write(soft, durable=False) == skipped
        assert database.run_sync_write(setting) == configured

        def fails(tx: Tx) -> None:
            ensure_repository(tx, "soft/two", 1.0)
            raise Conflict("no")

        with pytest.raises(Conflict):
            await database.write(fails, durable=False)
        assert await database.write(setting) == configured
        names = await database.read(
            lambda tx: [r[0] for r in tx.execute("SELECT name FROM repositories ORDER BY name")]
        )
        assert "soft/one" in names
        assert "soft/two" not in names

    async def test_upload_size_is_a_compare_and_set(self, meta: MetadataStore) -> None:
        await meta.create_upload(REPO, "u1")
        await meta.set_upload_size("u1", 10, expected=0)
        with pytest.raises(RangeInvalid) as lost:
            await meta.set_upload_size("u1", 7, expected=0)
        assert lost.value.size == 10
        assert (await meta.upload(REPO, "u1")).size == 10

    async def test_expired_uploads(self, meta: MetadataStore, clock: Clock) -> None:
        await meta.create_upload(REPO, "old")
        clock.now += 100
        await meta.create_upload(REPO, "new")
        assert await meta.expired_uploads(clock.now - 50) == ["old"]
        assert await meta.expired_uploads(clock.now + 1) == ["old", "new"]
        assert await meta.expired_uploads(clock.now + 1, limit=1) == ["old"]
        await meta.set_upload_size("old", 3, expected=0)  # touched: no longer idle
        assert await meta.expire_upload("old", clock.now - 50) is False
        assert await meta.expire_upload("new", clock.now + 1) is True
        assert await meta.expired_uploads(clock.now + 1) == ["old"]

    # -- leadership and fencing ----------------------------------------------------------

    async def lose(self, lock: LeaderLock, clock: Clock) -> None:
        """Make `lock`'s holder lose leadership as a crashed process would."""
        raise NotImplementedError

    async def test_one_leader_at_a_time_and_a_stale_fence_cannot_delete(
        self,
        meta: MetadataStore,
        database: Database,
        make_database: Callable[[], Database],
        clock: Clock,
    ) -> None:
        other_db = make_database()
        try:
            first = leader_lock(database, "jobs", ttl=30, clock=clock)
            second = leader_lock(other_db, "jobs", ttl=30, clock=clock)
            fence = await first.acquire()
            assert fence is not None
            assert await second.acquire() is None
            assert await first.keep() is True
            await meta.create_upload(REPO, "idle")
            await self.lose(first, clock)
            new_fence = await second.acquire()
            assert new_fence is not None
            assert new_fence.generation > fence.generation
            # The former leader wakes up and tries to delete: refused in the same transaction.
            with pytest.raises(LeadershipLost):
                await meta.expire_upload("idle", clock.now + 1, fence)
            assert (await meta.upload(REPO, "idle")).id == "idle"
            assert await meta.expire_upload("idle", clock.now + 1, new_fence) is True
            assert await first.keep() is False
            await second.release()
            third = await first.acquire()
            assert third is not None
            assert third.generation == new_fence.generation + 1
            await first.release()
        finally:
            other_db.close()

    async def test_check_fence_without_a_lease_refuses(self, database: Database) -> None:
        def fn(tx: Tx) -> None:
            check_fence(tx, Fence("nobody", 1))

        with pytest.raises(LeadershipLost):
            await database.write(fn)

    # -- concurrency ---------------------------------------------------------------------

    async def test_two_writers_on_one_tag(
        self,
        database: Database,
        make_database: Callable[[], Database],
        clock: Clock,
    ) -> None:
        """Both PUTs succeed; the tag ends on one manifest and the other is queued for review,
        whichever commits first. Two databases: two processes' worth of connections."""
        other_db = make_database()
        try:
            a = MetadataStore(database, clock, gc_delay=100.0)
            b = MetadataStore(other_db, clock, gc_delay=100.0)
            for layer in (b"A", b"B"):
                await self.push_blob(a, REPO, layer)
            await self.push_blob(a, REPO, b"{}")
            payloads = [image(b"{}", [b"A"]), image(b"{}", [b"B"])]
            for round_ in range(10):
                tag = f"t{round_}"
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.put, a, REPO, payloads[0], tag)
                    nursery.start_soon(self.put, b, REPO, payloads[1], tag)
                final = (await a.manifest(REPO, tag, by_digest=False)).digest
                (loser,) = {sha(p) for p in payloads} - {final}
                queued = await self.rows(
                    database,
                    "SELECT m.digest FROM gc_manifest_queue q "
                    "JOIN manifests m ON m.id = q.manifest_id",
                )
                assert (loser,) in queued
            await self.assert_consistent(database)
        finally:
            other_db.close()

    async def test_a_manifest_put_racing_a_blob_delete(
        self,
        database: Database,
        make_database: Callable[[], Database],
        clock: Clock,
    ) -> None:
        """Exactly one wins: either the PUT fails with MANIFEST_BLOB_UNKNOWN, or the delete
        fails with Conflict and the blob stays linked. Never a manifest pointing at a blob its
        repository cannot read."""
        other_db = make_database()
        outcomes: list[tuple[str, str]] = []
        try:
            a = MetadataStore(database, clock, gc_delay=100.0)
            b = MetadataStore(other_db, clock, gc_delay=100.0)
            await self.push_blob(a, REPO, b"{}")
            for round_ in range(16):
                layer = f"layer {round_}".encode()
                await self.push_blob(a, REPO, layer)
                result: dict[str, str] = {}

                async def put(
                    layer: bytes = layer, result: dict[str, str] = result, tag: str = f"r{round_}"
                ) -> None:
                    try:
                        await self.put(a, REPO, image(b"{}", [layer]), tag)
                        result["put"] = "ok"
                    except ManifestBlobUnknown:
                        result["put"] = "blob unknown"

                async def unlink(layer: bytes = layer, result: dict[str, str] = result) -> None:
                    try:
                        assert await b.unlink_blob(REPO, sha(layer)) is True
                        result["delete"] = "ok"
                    except BlobInUse:
                        result["delete"] = "conflict"

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(put)
                    nursery.start_soon(unlink)
                outcomes.append((result["put"], result["delete"]))
                await self.assert_consistent(database)
            assert set(outcomes) <= {("ok", "conflict"), ("blob unknown", "ok")}, outcomes
        finally:
            other_db.close()

    async def test_two_appenders_on_one_upload(
        self,
        database: Database,
        make_database: Callable[[], Database],
        clock: Clock,
    ) -> None:
        other_db = make_database()
        try:
            a = MetadataStore(database, clock)
            b = MetadataStore(other_db, clock)
            for round_ in range(10):
                upload = f"u{round_}"
                await a.create_upload(REPO, upload)
                results: list[object] = []

                async def append(
                    store: MetadataStore,
                    size: int,
                    upload: str = upload,
                    out: list[object] = results,
                ) -> None:
                    try:
                        await store.set_upload_size(upload, size, expected=0)
                        out.append(size)
                    except RangeInvalid as e:
                        out.append(("lost", e.size))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(append, a, 10)
                    nursery.start_soon(append, b, 20)
                winners = [r for r in results if isinstance(r, int)]
                assert len(winners) == 1, results
                assert ("lost", winners[0]) in results
                assert (await a.upload(REPO, upload)).size == winners[0]
        finally:
            other_db.close()
