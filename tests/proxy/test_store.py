"""The proxy's records on both metadata dialects: namespace claims, cached tags, staged
manifests and the status listing."""

from __future__ import annotations

import time

import pytest

from appliance.errors import ConfigError
from appliance.metadata import audit
from appliance.metadata.db import Database, Tx
from appliance.proxy.records import ProxyStore


async def test_records_round_trip(db: Database) -> None:
    store = ProxyStore(db, time.time)
    await store.register({"hub": "https://registry-1.docker.io"})
    await store.register({"hub": "https://registry-1.docker.io"})  # again: nothing changes
    events = await db.read(lambda tx: audit.events(tx, action="proxy.namespace.configure"))
    assert len(events) == 1

    repo = "hub/library/alpine"
    assert await store.tag(repo, "3") is None
    await store.set_tag(repo, "3", "sha256:" + "a" * 64, 100.0)
    await store.set_tag(repo, "3", "sha256:" + "b" * 64, 200.0)
    cached = await store.tag(repo, "3")
    assert cached is not None
    assert (cached.digest, cached.validated_at) == ("sha256:" + "b" * 64, 200.0)
    assert await store.tags_of(repo, "sha256:" + "b" * 64) == ["3"]

    payload = b'{"schemaVersion":2}'
    await store.stage(
        repo, "sha256:" + "b" * 64, "application/vnd.oci.image.index.v1+json", payload
    )
    staged = await store.staged(repo)
    assert [(m.digest, m.payload) for m in staged] == [("sha256:" + "b" * 64, payload)]
    status = await store.status("hub")
    assert [(s.name, s.staged, s.last_validated) for s in status] == [(repo, 1, 200.0)]
    await store.unstage(repo, "sha256:" + "b" * 64)
    assert await store.staged(repo) == []
    assert await store.status("hu") == []  # a prefix of a namespace is another namespace


async def test_a_namespace_with_pushed_repositories_is_not_taken_over(db: Database) -> None:
    def pushed(tx: Tx) -> None:
        tx.execute("INSERT INTO repositories (name, created_at) VALUES ('team/app', 1.0)", {})

    await db.write(pushed)
    with pytest.raises(ConfigError) as e:
        await ProxyStore(db, time.time).register({"team": "https://quay.io"})
    assert "already holds repositories" in e.value.message
