"""The console's Access tokens page lists refresh tokens (what made each, whether it works) and
revokes them; an admin does the same for another user with `?user=NAME`, and nobody else may."""

from __future__ import annotations

import re

import httpx

from appliance.auth import accounts, passwords
from appliance.server import Services
from tests.api.conftest import (  # noqa: F401 (fixtures)
    ADMIN,
    ADMIN_PASSWORD,
    cheap_password_hashing,
    clock,
    data_dir,
)
from tests.console.test_sessions import client, services, sign_in  # noqa: F401 (fixtures)

BOB_PASSWORD = "bob-test-password"


async def _refresh_token(client: httpx.AsyncClient, user: str, password: str) -> str:  # noqa: F811
    r = await client.get(
        "/token",
        params={"service": "berth", "offline_token": "true", "scope": "repository:x/y:pull"},
        auth=(user, password),
    )
    assert r.status_code == 200, r.text
    return str(r.json()["refresh_token"])


async def _cookie(client: httpx.AsyncClient, *credentials: str) -> dict[str, str]:  # noqa: F811
    response = await sign_in(client, *credentials)
    return {"cookie": f"berth_session={response.cookies['berth_session']}"}


async def _page(client: httpx.AsyncClient, cookie: dict[str, str], path: str) -> tuple[str, str]:  # noqa: F811
    page = await client.get(path, headers=cookie)
    assert page.status_code == 200, page.text[:300]
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    return page.text, token.group(1)


async def test_refresh_tokens_are_listed_and_revoked_in_the_console(
    client: httpx.AsyncClient,  # noqa: F811
    services: Services,  # noqa: F811
) -> None:
    digest = passwords.hash_password(BOB_PASSWORD)
    await services.access.change(lambda tx: accounts.add_user(tx, "t", "bob", digest, 0.0))
    refresh = await _refresh_token(client, "bob", BOB_PASSWORD)
    bob = await _cookie(client, "bob", BOB_PASSWORD)
    text, _ = await _page(client, bob, "/tokens")
    rows = re.findall(r'<table id="refresh-tokens">.*?</table>', text, re.S)
    assert rows
    assert "password sign-in" in rows[0]
    assert "active" in rows[0]
    token_id = re.search(r'name="id" value="(\d+)"', rows[0])
    assert token_id is not None

    # Another user may not look at bob's tokens, nor revoke them.
    digest2 = passwords.hash_password("eve-test-password")
    await services.access.change(lambda tx: accounts.add_user(tx, "t", "eve", digest2, 0.0))
    eve = await _cookie(client, "eve", "eve-test-password")
    assert (await client.get("/tokens?user=bob", headers=eve)).status_code == 403
    _, eve_csrf = await _page(client, eve, "/tokens")
    r = await client.post(
        "/tokens",
        data={"csrf_token": eve_csrf, "action": "revoke", "id": token_id.group(1)},
        headers=eve,
    )
    assert r.status_code == 404, "not eve's token"

    # The admin sees bob's and revokes it.
    admin = await _cookie(client)
    text, admin_csrf = await _page(client, admin, "/tokens?user=bob")
    assert "Tokens of bob" in text
    r = await client.post(
        "/tokens",
        data={"csrf_token": admin_csrf, "action": "revoke", "user": "bob", "id": token_id.group(1)},
        headers=admin,
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/tokens?user=bob"
    r = await client.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh})
    assert r.status_code == 401
    text, _ = await _page(client, bob, "/tokens")
    assert "revoked" in re.findall(r'<table id="refresh-tokens">.*?</table>', text, re.S)[0]
