"""Console sessions in process, with a clock that moves only when told to: idle and absolute
expiry, the Secure flag behind an https public URL, the stored id is a hash, and who pushed."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.app import create_app
from appliance.metadata import audit
from appliance.metadata.db import Tx
from appliance.server import Services, open_services
from tests.api.conftest import (  # noqa: F401 (fixtures shared with tests/api)
    ADMIN,
    ADMIN_PASSWORD,
    FakeClock,
    api_client,
    cheap_password_hashing,
    clock,
    data_dir,
    make_config,
)

IDLE = 600.0
LIFETIME = 3600.0


@pytest.fixture
async def services(data_dir: Path, clock: FakeClock) -> AsyncIterator[Services]:  # noqa: F811
    config = make_config(
        data_dir,
        **{
            "console.session_idle": IDLE,
            "console.session_lifetime": LIFETIME,
            "server.public_url": "https://registry.example",
        },
    )
    services = await open_services(config, clock)
    services.config = config  # type: ignore[attr-defined]
    try:
        yield services
    finally:
        services.close()


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    config = services.config  # type: ignore[attr-defined]
    app = create_app(
        services.registry, "https://registry.example", access=services.access, config=config
    )
    async with api_client(app, auth=None) as c:
        yield c


async def sign_in(
    client: httpx.AsyncClient, username: str = ADMIN, password: str = ADMIN_PASSWORD
) -> httpx.Response:
    form = await client.get("/signin")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    response = await client.post(
        "/signin",
        data={"csrf_token": token.group(1), "username": username, "password": password},
        headers={"cookie": f"berth_signin_csrf={form.cookies['berth_signin_csrf']}"},
    )
    assert response.status_code == 303, response.text
    return response


def session_cookie(response: httpx.Response) -> str:
    return next(h for h in response.headers.get_list("set-cookie") if "berth_session=" in h)


async def test_cookie_is_secure_behind_an_https_public_url(client: httpx.AsyncClient):
    header = session_cookie(await sign_in(client))
    assert "Secure" in header
    assert "HttpOnly" in header
    assert "SameSite=Lax" in header


async def test_only_a_hash_of_the_session_id_is_stored(
    client: httpx.AsyncClient, services: Services
):
    response = await sign_in(client)
    value = session_cookie(response).split(";", 1)[0].split("=", 1)[1]
    stored = await services.db.read(
        lambda tx: [r[0] for r in tx.execute("SELECT id_hash FROM console_sessions")]
    )
    assert stored
    assert value not in stored
    assert services.access.secret.digest(value) in stored


async def test_idle_sessions_expire(client: httpx.AsyncClient, clock: FakeClock):  # noqa: F811
    response = await sign_in(client)
    cookies = {"cookie": f"berth_session={response.cookies['berth_session']}"}
    assert (await client.get("/tokens", headers=cookies)).status_code == 200
    clock.advance(IDLE - 61)
    assert (await client.get("/tokens", headers=cookies)).status_code == 200  # touched
    clock.advance(IDLE - 61)
    assert (await client.get("/tokens", headers=cookies)).status_code == 200
    clock.advance(IDLE + 1)
    gone = await client.get("/tokens", headers=cookies)
    assert gone.status_code == 303
    assert gone.headers["location"].startswith("/signin")


async def test_busy_sessions_still_end_at_their_lifetime(
    client: httpx.AsyncClient,
    clock: FakeClock,  # noqa: F811
):
    response = await sign_in(client)
    cookies = {"cookie": f"berth_session={response.cookies['berth_session']}"}
    for _ in range(int(LIFETIME // 300) - 1):
        clock.advance(300)
        assert (await client.get("/", headers=cookies)).status_code == 200
    clock.advance(301)
    assert (await client.get("/", headers=cookies)).status_code == 303


async def test_a_disabled_user_is_signed_out(client: httpx.AsyncClient, services: Services):
    response = await sign_in(client)
    cookies = {"cookie": f"berth_session={response.cookies['berth_session']}"}

    def disable(tx: Tx) -> Any:
        return tx.execute("UPDATE users SET disabled = 1 WHERE name = :n", {"n": ADMIN})

    await services.db.write(disable)
    assert (await client.get("/", headers=cookies)).status_code == 303


async def test_a_push_records_who_pushed(services: Services, client: httpx.AsyncClient):
    config = b'{"architecture":"amd64","os":"linux"}'
    import hashlib  # noqa: PLC0415

    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    auth = httpx.BasicAuth(ADMIN, ADMIN_PASSWORD)
    started = await client.post(
        f"/v2/who/app/blobs/uploads/?digest={digest}", content=config, auth=auth
    )
    assert started.status_code == 201, started.text
    manifest = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        f'"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}",'
        f'"size":{len(config)}}},"layers":[]}}'
    )
    put = await client.put(
        "/v2/who/app/manifests/v1",
        content=manifest,
        headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
        auth=auth,
    )
    assert put.status_code == 201, put.text
    by = await services.db.read(
        lambda tx: tx.one(
            "SELECT t.pushed_by, m.pushed_by FROM tags t JOIN manifests m ON m.id = t.manifest_id"
        )
    )
    assert by == (ADMIN, ADMIN)


async def test_sign_out_ends_the_session_and_is_audited(
    client: httpx.AsyncClient, services: Services
):
    value = session_cookie(await sign_in(client)).split(";", 1)[0].split("=", 1)[1]
    cookie = {"cookie": f"berth_session={value}"}
    page = await client.get("/tokens", headers=cookie)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    out = await client.post("/signout", data={"csrf_token": token.group(1)}, headers=cookie)
    assert out.status_code == 303
    again = await client.get("/tokens", headers=cookie)
    assert again.status_code == 303
    assert again.headers["location"].startswith("/signin")
    events = await services.db.read(lambda tx: audit.events(tx, action="signout"))
    assert [(e["actor"], e["details"]["via"]) for e in events] == [(ADMIN, "password")]
    # A second sign-out with the ended cookie changes nothing and records nothing.
    await client.post("/signout", data={"csrf_token": token.group(1)}, headers=cookie)
    assert len(await services.db.read(lambda tx: audit.events(tx, action="signout"))) == 1


BOB_PASSWORD = "bob-test-password"


async def _bob_signed_in(client: httpx.AsyncClient, services: Services) -> dict[str, str]:
    """A second admin, `bob`, owner of namespace `team`, signed in to the console."""
    from appliance.auth import accounts, passwords  # noqa: PLC0415

    digest = passwords.hash_password(BOB_PASSWORD)

    def setup(tx: Tx) -> None:
        accounts.add_user(tx, "test", "bob", digest, 0.0, admin=True)
        accounts.create_namespace(tx, "test", "team", 0.0, owner="bob")

    if await services.db.read(lambda tx: tx.one("SELECT 1 FROM users WHERE name = 'bob'")) is None:
        await services.access.change(setup)
    response = await sign_in(client, "bob", BOB_PASSWORD)
    cookie = {"cookie": f"berth_session={response.cookies['berth_session']}"}
    assert (await client.get("/tokens", headers=cookie)).status_code == 200
    return cookie


def _signed_out(response: httpx.Response) -> bool:
    return response.status_code == 303 and response.headers["location"].startswith("/signin")


@pytest.mark.parametrize(
    ("change", "undo"),
    [
        ({"disabled": True}, {"disabled": False}),
        ({"password": "a-brand-new-password"}, None),
        ({"admin": False}, {"admin": True}),
    ],
    ids=["disabled", "password", "admin-removed"],
)
async def test_a_narrowing_change_ends_the_users_sessions(
    client: httpx.AsyncClient,
    services: Services,
    change: dict[str, Any],
    undo: dict[str, Any] | None,
):
    """Issue 21, item 11: the old cookie stops at once, and does not come back with the
    right (a re-enabled user signs in again)."""
    cookie = await _bob_signed_in(client, services)
    auth = httpx.BasicAuth(ADMIN, ADMIN_PASSWORD)
    r = await client.patch("/api/v1/users/bob", json=change, auth=auth)
    assert r.status_code == 200, r.text
    assert _signed_out(await client.get("/tokens", headers=cookie))
    if undo is not None:
        assert (await client.patch("/api/v1/users/bob", json=undo, auth=auth)).status_code == 200
        assert _signed_out(await client.get("/tokens", headers=cookie))
    rows = await services.db.read(
        lambda tx: tx.execute(
            "SELECT 1 FROM console_sessions s JOIN users u ON u.id = s.user_id WHERE u.name = 'bob'"
        )
    )
    assert rows == [], "deleted in the change's transaction, not merely refused"


async def test_a_lowered_role_ends_the_users_sessions(
    client: httpx.AsyncClient, services: Services
):
    cookie = await _bob_signed_in(client, services)
    auth = httpx.BasicAuth(ADMIN, ADMIN_PASSWORD)
    r = await client.put("/api/v1/namespaces/team/members/bob", json={"role": "owner"}, auth=auth)
    assert r.status_code == 200
    assert (await client.get("/tokens", headers=cookie)).status_code == 200, "no change: kept"
    r = await client.put(
        "/api/v1/namespaces/team/members/bob", json={"role": "developer"}, auth=auth
    )
    assert r.status_code == 200
    assert _signed_out(await client.get("/tokens", headers=cookie))
    cookie = await _bob_signed_in(client, services)
    r = await client.put(
        "/api/v1/namespaces/team/members/bob", json={"role": "maintainer"}, auth=auth
    )
    assert (await client.get("/tokens", headers=cookie)).status_code == 200, "raised: kept"
    assert (
        await client.delete("/api/v1/namespaces/team/members/bob", auth=auth)
    ).status_code == 200
    assert _signed_out(await client.get("/tokens", headers=cookie))


async def test_disabling_in_the_console_ends_the_sessions_in_the_same_transaction(
    client: httpx.AsyncClient, services: Services
):
    bob = await _bob_signed_in(client, services)
    admin = {"cookie": f"berth_session={(await sign_in(client)).cookies['berth_session']}"}
    page = await client.get("/users", headers=admin)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    r = await client.post(
        "/users",
        data={"csrf_token": token.group(1), "action": "disable", "name": "bob"},
        headers=admin,
    )
    assert r.status_code == 303
    r = await client.post(
        "/users",
        data={"csrf_token": token.group(1), "action": "enable", "name": "bob"},
        headers=admin,
    )
    assert r.status_code == 303
    assert _signed_out(await client.get("/tokens", headers=bob))
