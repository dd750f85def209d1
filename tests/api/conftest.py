"""Fixtures for the in-process protocol tests: a registry on a temporary data directory, its
ASGI app, and an httpx client that drives the app without a socket.

Time is a `FakeClock` injected into `open_services`, so upload expiry is tested by moving the
clock, never by sleeping. Every response is checked for a leaked traceback.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from appliance import config as settings
from appliance.app import create_app
from appliance.auth import passwords
from appliance.server import Services, open_services

# Sign-in is always on: the in-process client signs in as the first admin with HTTP Basic
# (accepted on /v2 directly; see appliance/api/guard.py).
ADMIN = "admin"
ADMIN_PASSWORD = "admin-test-password"

SHM = Path("/dev/shm")


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(data_dir: Path, **overrides: Any) -> settings.Config:
    return settings.load(
        None,
        environ={},
        overrides={
            "server.data_dir": str(data_dir),
            "admin.password": ADMIN_PASSWORD,
            **overrides,
        },
    )


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id at its real cost (~0.15 s a hash) would dominate the in-process suite, which
    tests the protocol; the real-server tests keep the real cost."""
    monkeypatch.setattr(
        passwords, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )


async def _no_traceback(response: httpx.Response) -> None:
    await response.aread()
    assert b"Traceback" not in response.content, response.text[:2000]


@asynccontextmanager
async def api_client(
    app: Any, auth: tuple[str, str] | None = (ADMIN, ADMIN_PASSWORD)
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client bound to an ASGI app (no network), signed in as the admin unless
    `auth` is None (anonymous)."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        auth=auth,
        base_url="http://berth.test",
        event_hooks={"response": [_no_traceback]},
        timeout=30,
    ) as client:
        yield client


@asynccontextmanager
async def running_registry(data_dir: Path, clock: FakeClock) -> AsyncIterator[Services]:
    services = await open_services(make_config(data_dir), clock)
    try:
        yield services
    finally:
        services.close()


def storage_files(root: Path, under: str = "") -> list[str]:
    """Files (not directories) below `root/under`, relative to `root`, sorted."""
    base = root / under if under else root
    if not base.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh data directory, on tmpfs when there is one: the registry fsyncs every commit,
    which on a disk costs most of the in-process suite's time and tests nothing here (the
    real-server tests run on disk)."""
    if not SHM.is_dir() or not os.access(SHM, os.W_OK):
        yield request.getfixturevalue("tmp_path") / "data"
        return
    root = Path(tempfile.mkdtemp(prefix="berth-api-", dir=SHM))
    try:
        yield root / "data"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def storage_root(data_dir: Path) -> Path:
    return data_dir / "storage"


@pytest.fixture
async def services(data_dir: Path, clock: FakeClock) -> AsyncIterator[Services]:
    async with running_registry(data_dir, clock) as s:
        yield s


@pytest.fixture
def app(services: Services) -> Any:
    return create_app(services.registry, access=services.access)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(app) as c:
        yield c
