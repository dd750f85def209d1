"""`berth db copy --from sqlite:///... --to postgresql://...`: afterwards the catalog, every
tag and every digest are identical, and the copy serves."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import trio

from appliance.metadata.db import Database, open_database
from appliance.metadata.store import MetadataStore
from tests.metadata.suite import Clock, MetadataSuite, image, index
from tests.support.dialects import open_migrated
from tests.support.servers import berth_command


async def _populate(db: Database) -> None:
    meta = MetadataStore(db, Clock())
    suite = MetadataSuite()
    for i in range(30):
        await suite.push_image(meta, f"team/app{i:02d}", b"{}", [f"layer {i}".encode()], "v1")
        await suite.put(meta, f"team/app{i:02d}", image(b"{}", [f"layer {i}".encode()]), "latest")
    children = [image(b"{}", [b"amd64"]), image(b"{}", [b"arm64"])]
    for data in (b"{}", b"amd64", b"arm64"):
        await suite.push_blob(meta, "team/multi", data)
    for child in children:
        await suite.put(meta, "team/multi", child)
    await suite.put(meta, "team/multi", index(children), "multi")
    await meta.create_upload("team/app00", "in-progress")
    await meta.set_upload_size("in-progress", 123, expected=0)


async def _snapshot(db: Database) -> dict[str, object]:
    meta = MetadataStore(db, Clock())
    catalog = await meta.catalog(None, None)
    out: dict[str, object] = {"catalog": catalog}
    for repo in catalog:
        tags = await meta.tags(repo, None, None)
        out[repo] = {tag: (await meta.manifest(repo, tag, by_digest=False)) for tag in tags}
    out["blobs"] = await db.read(
        lambda tx: tx.execute("SELECT digest, size, storage_key FROM blobs ORDER BY digest")
    )
    out["links"] = await db.read(
        lambda tx: tx.execute(
            "SELECT r.name, rb.digest FROM repository_blobs rb "
            "JOIN repositories r ON r.id = rb.repository_id ORDER BY r.name, rb.digest"
        )
    )
    out["upload"] = await meta.upload("team/app00", "in-progress")
    return out


def test_db_copy_from_sqlite_to_postgres(
    tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    source_url = f"sqlite:///{tmp_path / 'berth.db'}"
    target_url = postgres_database()
    source = open_migrated(source_url)
    try:
        trio.run(_populate, source)
        before = trio.run(_snapshot, source)
    finally:
        source.close()

    done = subprocess.run(
        [*berth_command(), "db", "copy", "--from", source_url, "--to", target_url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "manifests: 33 rows" in done.stdout

    target = open_database(target_url)
    try:
        after = trio.run(_snapshot, target)
        assert after == before

        # The copy is a working database: ids continue past the copied ones.
        async def more() -> None:
            meta = MetadataStore(target, Clock())
            suite = MetadataSuite()
            await suite.push_image(meta, "team/new", b"{}", [b"new"], "v1")
            assert "team/new" in await meta.catalog(None, None)

        trio.run(more)
    finally:
        target.close()

    again = subprocess.run(
        [*berth_command(), "db", "copy", "--from", source_url, "--to", target_url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode != 0
    assert "is not empty" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
