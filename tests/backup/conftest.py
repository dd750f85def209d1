"""Fixtures for the backup tests: a registry in-process (as tests/api) with images pushed
through the protocol, and helpers to back it up and to look inside a restored one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.app import create_app
from appliance.backup.target import DirTarget
from appliance.server import Services, open_services
from tests.api.conftest import (  # noqa: F401 (fixtures)
    ADMIN,
    ADMIN_PASSWORD,
    FakeClock,
    api_client,
    cheap_password_hashing,
    clock,
    data_dir,
    make_config,
)
from tests.api.oci import digest, push_image

__all__ = ["ADMIN", "ADMIN_PASSWORD", "FakeClock", "make_config"]


@asynccontextmanager
async def registry_at(
    where: Path, wall: FakeClock, **settings: Any
) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    """A registry with its data in `where` and a client signed in as its admin."""
    services = await open_services(make_config(where, **settings), wall)
    try:
        app = create_app(services.registry, access=services.access, backups=services.backups)
        async with api_client(app) as client:
            yield services, client
    finally:
        services.close()


async def push_images(client: httpx.AsyncClient, count: int, prefix: str = "img") -> dict[str, str]:
    """Push `count` images to team/<prefix>-N:1; return tag reference -> manifest digest."""
    out = {}
    for i in range(count):
        name = f"team/{prefix}-{i}"
        d, _ = await push_image(client, name, "1", seed=f"{prefix}-{i}", layers=2)
        out[f"{name}:1"] = d
    return out


async def pull_all(client: httpx.AsyncClient, refs: dict[str, str]) -> dict[str, bytes]:
    """Every manifest and blob of `refs`, by digest, pulled through the protocol; checks that
    each is what its digest says."""
    got: dict[str, bytes] = {}
    for ref, manifest_digest in refs.items():
        name, _, tag = ref.rpartition(":")
        resp = await client.get(
            f"/v2/{name}/manifests/{tag}",
            headers={"accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert resp.status_code == 200, (ref, resp.text)
        assert digest(resp.content) == manifest_digest
        got[manifest_digest] = resp.content
        doc = resp.json()
        for desc in [doc["config"], *doc["layers"]]:
            blob = await client.get(f"/v2/{name}/blobs/{desc['digest']}")
            assert blob.status_code == 200, (ref, desc, blob.text)
            assert digest(blob.content) == desc["digest"]
            got[desc["digest"]] = blob.content
    return got


@pytest.fixture
def target(tmp_path: Path) -> DirTarget:
    return DirTarget(tmp_path / "backups")
