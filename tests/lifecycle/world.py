"""A registry assembled in-process for the lifecycle tests: a real metadata database (SQLite
or PostgreSQL), a real blob store (filesystem or S3 on SeaweedFS), the registry services, and
the lifecycle pieces, all on one injected clock. Helpers push blobs and images through the
registry service and look at the result through side doors (plain SQL, the store's listing).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from appliance.lifecycle.gc import Collector, CollectResult, GcSettings
from appliance.lifecycle.policies import Policies
from appliance.lifecycle.rules import Rules
from appliance.metadata.db import Database
from appliance.metadata.store import MetadataStore
from appliance.registry import Registry
from appliance.registry.effects import write_effects
from appliance.storage.base import BlobStore
from tests.metadata.suite import descriptor, encode, sha
from tests.metadata.suite import image as image_manifest
from tests.metadata.suite import index as index_manifest

__all__ = ["descriptor", "encode", "image_manifest", "index_manifest", "sha"]

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


@dataclass
class World:
    db: Database
    store: BlobStore
    clock: Clock
    meta: MetadataStore
    registry: Registry
    rules: Rules
    settings: GcSettings

    @property
    def collector(self) -> Collector:
        return Collector(self.db, self.store, self.clock, self.settings)

    @property
    def policies(self) -> Policies:
        return Policies(
            self.db,
            self.rules,
            self.clock,
            delay=self.settings.delay,
            referrers=self.settings.referrers,
        )

    async def blob(self, repo: str, data: bytes) -> str:
        record = await self.registry.upload_monolithic(repo, sha(data), one(data))
        return record.digest

    async def put(self, repo: str, payload: bytes, tag: str | None = None) -> str:
        reference = tag if tag is not None else sha(payload)
        content_type = json.loads(payload)["mediaType"]
        result = await self.registry.put_manifest(repo, reference, payload, content_type)
        return result.digest

    async def image(
        self, repo: str, layers: list[bytes], tag: str | None = None, config: bytes = b"{}"
    ) -> bytes:
        """Push the blobs and the manifest; return the manifest's bytes."""
        for data in [config, *layers]:
            await self.blob(repo, data)
        payload = image_manifest(config, layers)
        await self.put(repo, payload, tag)
        return payload

    async def collect(self) -> CollectResult:
        return await self.collector.run()

    async def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        return await self.db.read(lambda tx: tx.execute(sql, params))

    async def blob_rows(self) -> dict[str, str]:
        return {r[0]: r[1] for r in await self.rows("SELECT digest, storage_key FROM blobs")}

    async def manifest_digests(self, repo: str | None = None) -> set[str]:
        sql = "SELECT m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id"
        if repo is None:
            return {r[0] for r in await self.rows(sql)}
        return {r[0] for r in await self.rows(sql + " WHERE r.name = :n", {"n": repo})}

    async def stored(self) -> set[str]:
        return {o.key async for o in self.store.list_objects("blobs/")}

    async def assert_consistent(self) -> None:
        """Every blob row has its bytes, every stored blob has its row, and every manifest's
        blobs are readable by its repository."""
        rows = await self.blob_rows()
        assert set(rows.values()) == await self.stored()
        dangling = await self.rows(
            "SELECT m.digest, ml.digest FROM manifest_layers ml "
            "JOIN manifests m ON m.id = ml.manifest_id WHERE NOT EXISTS (SELECT 1 FROM "
            "repository_blobs rb WHERE rb.repository_id = m.repository_id "
            "AND rb.digest = ml.digest)"
        )
        assert dangling == []


def build_world(db: Database, store: BlobStore, settings: GcSettings | None = None) -> World:
    clock = Clock()
    settings = settings or GcSettings(delay=100.0, batch=7, untagged_age=1000.0)
    rules = Rules(db, clock)
    meta = MetadataStore(db, clock, settings.delay, checks=rules, effects=write_effects())
    registry = Registry(meta, store, clock=clock)
    return World(db, store, clock, meta, registry, rules, settings)


# -- fixtures: the backends ---------------------------------------------------------------------


def s3_store(request: pytest.FixtureRequest) -> BlobStore:
    from appliance.storage.s3 import S3Settings, S3Store  # noqa: PLC0415

    weed = request.getfixturevalue("seaweedfs")
    bucket = request.getfixturevalue("lifecycle_bucket")
    return S3Store(
        S3Settings(
            bucket=bucket,
            endpoint=weed.endpoint,
            region=weed.region,
            prefix=f"lc-{uuid.uuid4().hex[:8]}/",
            access_key=weed.access_key,
            secret_key=weed.secret_key,
            max_attempts=2,
        )
    )


def azure_store(request: pytest.FixtureRequest) -> BlobStore:
    from appliance.storage.azure import AzureSettings, AzureStore  # noqa: PLC0415

    azurite = request.getfixturevalue("azurite")
    return AzureStore(
        AzureSettings(
            container=request.getfixturevalue("lifecycle_container"),
            account_name=azurite.account,
            account_key=azurite.key,
            endpoint=azurite.endpoint,
            prefix=f"lc-{uuid.uuid4().hex[:8]}/",
            max_attempts=2,
        )
    )


@pytest.fixture(scope="session")
def lifecycle_container(request: pytest.FixtureRequest) -> str:
    container: str = request.getfixturevalue("azurite").new_container("berth-lifecycle")
    return container


@pytest.fixture(scope="session")
def lifecycle_bucket(request: pytest.FixtureRequest) -> str:
    bucket: str = request.getfixturevalue("seaweedfs").new_bucket("berth-lifecycle")
    return bucket


StoreFactory = Callable[[], BlobStore]
