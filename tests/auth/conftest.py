"""In-process fixtures for access control: a registry with sign-in, a cast of callers, and a
clock that moves only when told to."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from appliance.app import create_app
from appliance.auth import accounts, passwords
from appliance.server import Services
from tests.api.conftest import (  # noqa: F401 (fixtures shared with tests/api)
    ADMIN,
    ADMIN_PASSWORD,
    FakeClock,
    api_client,
    cheap_password_hashing,
    clock,
    data_dir,
    running_registry,
)

PASSWORD = "a-long-test-password"


@dataclass
class Cast:
    """Who is who in namespace `team` (private) and `pub` (public)."""

    creds: dict[str, tuple[str, str] | None]


async def add_user(services: Services, name: str, clock: FakeClock, admin: bool = False) -> None:  # noqa: F811 (fixtures from tests/api)
    digest = passwords.hash_password(PASSWORD)
    await services.access.change(
        lambda tx: accounts.add_user(tx, "test", name, digest, clock(), admin=admin)
    )


@pytest.fixture
async def services(data_dir: Any, clock: FakeClock) -> AsyncIterator[Services]:  # noqa: F811 (fixtures from tests/api)
    async with running_registry(data_dir, clock) as s:
        yield s


@pytest.fixture
def app(services: Services) -> Any:
    return create_app(
        services.registry,
        access=services.access,
        backups=services.backups,
        lifecycle=services.lifecycle,
    )


@pytest.fixture
async def anon(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(app, auth=None) as c:
        yield c


@pytest.fixture
async def cast(services: Services, clock: FakeClock) -> Cast:  # noqa: F811 (fixtures from tests/api)
    """reader, developer, maintainer, owner of `team`; `other` with no role; a robot
    (developer) of `team`; PATs of the developer with each scope; namespace `pub` public."""
    now = clock()
    for name in ("reader", "developer", "maintainer", "owner", "other"):
        await add_user(services, name, clock)
    access = services.access

    def setup(tx: Any) -> dict[str, str]:
        accounts.create_namespace(tx, "test", "team", now)
        accounts.create_namespace(tx, "test", "pub", now, public=True)
        for role in ("reader", "developer", "maintainer", "owner"):
            accounts.set_member(tx, "test", "team", role, role, now)
            accounts.set_member(tx, "test", "pub", role, role, now)
        _, robot = accounts.create_robot(tx, "test", access.secret, "team", "ci", "developer", now)
        tokens = {"robot": robot}
        for scope in ("read_registry", "write_registry", "api"):
            _, tokens[scope] = accounts.create_pat(
                tx, "test", access.secret, "developer", scope, (scope,), now
            )
        return tokens

    tokens = await access.change(setup)
    creds: dict[str, tuple[str, str] | None] = {
        "anonymous": None,
        "other": ("other", PASSWORD),
        "reader": ("reader", PASSWORD),
        "developer": ("developer", PASSWORD),
        "maintainer": ("maintainer", PASSWORD),
        "owner": ("owner", PASSWORD),
        "admin": (ADMIN, ADMIN_PASSWORD),
        "robot": ("team+ci", tokens["robot"]),
        "pat-read": ("developer", tokens["read_registry"]),
        "pat-write": ("developer", tokens["write_registry"]),
        "pat-api": ("developer", tokens["api"]),
    }
    return Cast(creds)


@pytest.fixture
def password_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The passwords argon2 is asked to verify, in order (each check still runs)."""
    checks: list[str] = []
    real = passwords.verify_password

    def counting(stored: str, password: str) -> bool:
        checks.append(password)
        return real(stored, password)

    monkeypatch.setattr(passwords, "verify_password", counting)
    return checks
