"""Credentials bound to what minted them, written as the attacks they stop (issue 21, items 2,
7 and 8): a refresh token outliving its PAT or password, a token granting more than its
creator, and a registry JWT or a Basic credential working after a revocation or a demotion."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.app import create_app
from appliance.auth import accounts
from appliance.server import Services, open_services
from tests.api.conftest import FakeClock, api_client, make_config
from tests.auth.conftest import PASSWORD, Cast
from tests.auth.test_tokens import claims, token_for

PUSH = "repository:team/app:pull,push"
PULL = "repository:team/app:pull"
DAY = 86400.0


async def refresh_grant(
    client: httpx.AsyncClient, refresh: str, scope: str = PUSH
) -> httpx.Response:
    return await client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh, "scope": scope},
    )


async def new_pat(
    client: httpx.AsyncClient, scopes: list[str], expires_at: float | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "t", "scopes": scopes}
    if expires_at is not None:
        body["expires_at"] = expires_at
    r = await client.post("/api/v1/tokens", json=body)
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# -- item 2: refresh tokens die with the credential that minted them ---------------------------


async def test_a_refresh_token_minted_with_a_pat_dies_when_the_pat_is_revoked(
    anon: httpx.AsyncClient, app: Any, cast: Cast
) -> None:
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        pat = await new_pat(dev, ["write_registry"])
    creds = ("developer", pat["token"])
    refresh = (await token_for(anon, creds, PUSH, offline_token="true"))["refresh_token"]
    assert (await refresh_grant(anon, refresh)).status_code == 200
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        assert (await dev.delete(f"/api/v1/tokens/{pat['id']}")).status_code == 200
    r = await refresh_grant(anon, refresh)
    assert r.status_code == 401, "the PAT is revoked: what it minted is too"
    assert r.json()["error"] == "invalid_grant"


async def test_a_refresh_token_never_outlives_the_pat_that_minted_it(
    anon: httpx.AsyncClient, app: Any, cast: Cast, clock: FakeClock
) -> None:
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        pat = await new_pat(dev, ["read_registry"], expires_at=clock() + 3600)
    refresh = (await token_for(anon, ("developer", pat["token"]), PULL, offline_token="true"))[
        "refresh_token"
    ]
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        listed = (await dev.get("/api/v1/tokens", params={"kind": "refresh"})).json()
    assert len(listed) == 1
    assert listed[0]["expires_at"] <= pat["expires_at"], "capped at the PAT's expiry"
    assert listed[0]["minted_by"] == {"kind": "token", "id": pat["id"]}
    assert listed[0]["scopes"] == ["read_registry"], "never more than the PAT's scopes"
    r = await refresh_grant(anon, refresh, PUSH)
    assert claims(r.json()["token"])["access"][0]["actions"] == ["pull"]
    clock.advance(3601)
    assert (await refresh_grant(anon, refresh)).status_code == 401


async def test_a_refresh_token_minted_with_a_password_dies_when_the_password_is_reset(
    anon: httpx.AsyncClient, app: Any, cast: Cast
) -> None:
    refresh = (await token_for(anon, cast.creds["developer"], PUSH, offline_token="true"))[
        "refresh_token"
    ]
    assert (await refresh_grant(anon, refresh)).status_code == 200
    async with api_client(app) as admin:
        r = await admin.patch("/api/v1/users/developer", json={"password": "another-long-pw-1"})
        assert r.status_code == 200
    assert (await refresh_grant(anon, refresh)).status_code == 401


async def test_disabling_a_user_revokes_their_refresh_tokens_for_good(
    anon: httpx.AsyncClient, app: Any, cast: Cast
) -> None:
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        pat = await new_pat(dev, ["write_registry"])
    refresh = (await token_for(anon, ("developer", pat["token"]), PUSH, offline_token="true"))[
        "refresh_token"
    ]
    async with api_client(app) as admin:
        await admin.patch("/api/v1/users/developer", json={"disabled": True})
        assert (await refresh_grant(anon, refresh)).status_code == 401
        await admin.patch("/api/v1/users/developer", json={"disabled": False})
    assert (await refresh_grant(anon, refresh)).status_code == 401, "re-enabled: still revoked"
    assert (await anon.get("/token", auth=("developer", pat["token"]))).status_code == 200


async def test_refresh_tokens_are_listed_and_revoked_by_their_owner_and_admins(
    anon: httpx.AsyncClient, app: Any, cast: Cast
) -> None:
    first = (await token_for(anon, cast.creds["developer"], PUSH, offline_token="true"))[
        "refresh_token"
    ]
    second = (await token_for(anon, cast.creds["developer"], PUSH, offline_token="true"))[
        "refresh_token"
    ]
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        mine = (await dev.get("/api/v1/tokens", params={"kind": "refresh"})).json()
        assert [t["minted_by"] for t in mine] == [{"kind": "password"}] * 2
        assert all(t["usable"] for t in mine)
        assert "token" not in mine[0]
        assert "secret_hash" not in mine[0]
        assert (await dev.delete(f"/api/v1/tokens/{mine[0]['id']}")).status_code == 200
    async with api_client(app, auth=cast.creds["other"]) as other:
        assert (await other.delete(f"/api/v1/tokens/{mine[1]['id']}")).status_code == 404
    assert (await refresh_grant(anon, first)).status_code == 401
    assert (await refresh_grant(anon, second)).status_code == 200
    async with api_client(app) as admin:
        seen = (await admin.get("/api/v1/users/developer/tokens?kind=refresh")).json()
        assert [t["usable"] for t in seen] == [False, True]
        r = await admin.delete(f"/api/v1/users/developer/tokens/{mine[1]['id']}")
        assert r.status_code == 200
    assert (await refresh_grant(anon, second)).status_code == 401


async def test_a_refresh_token_is_not_a_password(anon: httpx.AsyncClient, cast: Cast) -> None:
    refresh = (await token_for(anon, cast.creds["developer"], PUSH, offline_token="true"))[
        "refresh_token"
    ]
    assert (await anon.get("/token", auth=("developer", refresh))).status_code == 401
    r = await anon.get("/v2/team/app/tags/list", auth=("developer", refresh))
    assert r.status_code == 401


# -- item 7: a token never grants more than the token that created it ------------------------


async def test_an_api_pat_cannot_mint_a_write_registry_pat(app: Any, cast: Cast) -> None:
    async with api_client(app, auth=cast.creds["pat-api"]) as api:
        r = await api.post("/api/v1/tokens", json={"name": "x", "scopes": ["write_registry"]})
        assert r.status_code == 403
        assert "lacks write_registry" in r.json()["error"]
        r = await api.post("/api/v1/tokens", json={"name": "x", "scopes": ["api"]})
        assert r.status_code == 201, "its own scopes it may pass on"


async def test_a_pat_minted_with_a_pat_gets_at_most_its_expiry_and_dies_with_it(
    anon: httpx.AsyncClient, app: Any, cast: Cast, clock: FakeClock
) -> None:
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        parent = await new_pat(dev, ["api", "write_registry"], expires_at=clock() + DAY)
    async with api_client(app, auth=("developer", parent["token"])) as with_pat:
        child = await new_pat(with_pat, ["write_registry"])  # asks for no expiry at all
        later = await new_pat(with_pat, ["write_registry"], expires_at=clock() + 30 * DAY)
    assert child["expires_at"] == parent["expires_at"]
    assert later["expires_at"] == parent["expires_at"]
    assert (await anon.get("/token", auth=("developer", child["token"]))).status_code == 200
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        assert (await dev.delete(f"/api/v1/tokens/{parent['id']}")).status_code == 200
        listed = {t["id"]: t for t in (await dev.get("/api/v1/tokens")).json()}
    assert listed[child["id"]]["usable"] is False
    assert listed[child["id"]]["minted_by"] == {"kind": "token", "id": parent["id"]}
    assert (await anon.get("/token", auth=("developer", child["token"]))).status_code == 401


async def test_a_pat_cannot_make_a_robot_that_does_more_than_itself(
    anon: httpx.AsyncClient, app: Any, services: Services, cast: Cast, clock: FakeClock
) -> None:
    async with api_client(app, auth=cast.creds["owner"]) as owner:
        pat = await new_pat(owner, ["api", "read_registry"], expires_at=clock() + DAY)
    async with api_client(app, auth=("owner", pat["token"])) as with_pat:
        r = await with_pat.post(
            "/api/v1/namespaces/team/robots", json={"name": "pusher", "role": "developer"}
        )
        assert r.status_code == 403, "pull-only token: no pushing robot"
        r = await with_pat.post(
            "/api/v1/namespaces/team/robots", json={"name": "puller", "role": "reader"}
        )
        assert r.status_code == 201
    robot = ("team+puller", r.json()["token"])
    assert (await anon.get("/token", auth=robot)).status_code == 200
    clock.advance(DAY + 1)
    assert (await anon.get("/token", auth=robot)).status_code == 401, "expired with the PAT"


async def test_a_registry_token_never_outlives_the_pat_it_was_minted_with(
    anon: httpx.AsyncClient, app: Any, cast: Cast, clock: FakeClock
) -> None:
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        pat = await new_pat(dev, ["write_registry"], expires_at=clock() + 60)
    body = await token_for(anon, ("developer", pat["token"]), PUSH)
    assert body["expires_in"] <= 60
    assert claims(body["token"])["exp"] <= pat["expires_at"]


# -- item 8: revocation and demotion on the next request -------------------------------------


async def test_a_registry_token_stops_when_its_pat_is_revoked(
    anon: httpx.AsyncClient, app: Any, cast: Cast
) -> None:
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        pat = await new_pat(dev, ["write_registry"])
    jwt = (await token_for(anon, ("developer", pat["token"]), PUSH))["token"]
    assert claims(jwt)["crd"] == f"token:{pat['id']}"
    r = await anon.get("/v2/team/app/tags/list", headers=bearer(jwt))
    assert r.status_code == 404
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        await dev.delete(f"/api/v1/tokens/{pat['id']}")
    r = await anon.get("/v2/team/app/tags/list", headers=bearer(jwt))
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


async def test_a_registry_token_stops_when_its_robot_is_deleted(
    anon: httpx.AsyncClient, app: Any, cast: Cast
) -> None:
    jwt = (await token_for(anon, cast.creds["robot"], PUSH))["token"]
    assert (await anon.post("/v2/team/app/blobs/uploads/", headers=bearer(jwt))).status_code == 202
    async with api_client(app) as admin:
        assert (await admin.delete("/api/v1/namespaces/team/robots/ci")).status_code == 200
    r = await anon.post("/v2/team/app/blobs/uploads/", headers=bearer(jwt))
    assert r.status_code == 401


async def test_a_registry_token_stops_when_its_user_is_disabled_or_changes_password(
    anon: httpx.AsyncClient, app: Any, cast: Cast
) -> None:
    by_password = (await token_for(anon, cast.creds["reader"], PULL))["token"]
    by_developer = (await token_for(anon, cast.creds["developer"], PULL))["token"]
    async with api_client(app) as admin:
        await admin.patch("/api/v1/users/reader", json={"disabled": True})
        await admin.patch("/api/v1/users/developer", json={"password": "a-brand-new-password"})
    for jwt in (by_password, by_developer):
        r = await anon.get("/v2/team/app/tags/list", headers=bearer(jwt))
        assert r.status_code == 401


async def test_a_demotion_counts_on_the_next_request(
    anon: httpx.AsyncClient, app: Any, cast: Cast
) -> None:
    dev = (await token_for(anon, cast.creds["developer"], PUSH))["token"]
    admin_jwt = (await token_for(anon, cast.creds["admin"], "repository:elsewhere/x:push"))["token"]
    async with api_client(app) as admin:
        await admin.post(
            "/api/v1/users", json={"name": "root2", "password": PASSWORD, "admin": True}
        )
    root2 = (await token_for(anon, ("root2", PASSWORD), "repository:elsewhere/x:pull,push"))[
        "token"
    ]
    assert (
        await anon.post("/v2/elsewhere/x/blobs/uploads/", headers=bearer(root2))
    ).status_code == 202
    assert (await anon.post("/v2/team/app/blobs/uploads/", headers=bearer(dev))).status_code == 202
    async with api_client(app) as admin:
        r = await admin.put("/api/v1/namespaces/team/members/developer", json={"role": "reader"})
        assert r.status_code == 200
        assert (await admin.patch("/api/v1/users/root2", json={"admin": False})).status_code == 200
    r = await anon.post("/v2/team/app/blobs/uploads/", headers=bearer(dev))
    assert r.status_code == 403, "a reader now: the token's push grant is gone"
    assert r.json()["errors"][0]["code"] == "DENIED"
    r = await anon.get("/v2/team/app/tags/list", headers=bearer(dev))
    assert r.status_code == 200, "a reader still pulls"
    r = await anon.post("/v2/elsewhere/x/blobs/uploads/", headers=bearer(root2))
    assert r.status_code == 403, "no longer an admin"
    assert admin_jwt  # the acting admin's own token is untouched
    assert (
        await anon.post("/v2/elsewhere/x/blobs/uploads/", headers=bearer(admin_jwt))
    ).status_code == 202


async def test_a_namespace_made_private_stops_anonymous_tokens(
    anon: httpx.AsyncClient, app: Any, cast: Cast
) -> None:
    jwt = (await token_for(anon, None, "repository:pub/app:pull"))["token"]
    assert claims(jwt)["access"]
    assert (await anon.get("/v2/pub/app/tags/list", headers=bearer(jwt))).status_code == 404
    async with api_client(app) as admin:
        await admin.patch("/api/v1/namespaces/pub", json={"public": False})
    r = await anon.get("/v2/pub/app/tags/list", headers=bearer(jwt))
    assert r.status_code == 401


async def test_basic_credentials_stop_on_the_next_request_after_a_revocation(
    anon: httpx.AsyncClient, app: Any, cast: Cast
) -> None:
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        pat = await new_pat(dev, ["write_registry"])
    creds = ("developer", pat["token"])
    assert (await anon.get("/v2/team/app/tags/list", auth=creds)).status_code == 404
    assert (await anon.get("/v2/team/app/tags/list", auth=creds)).status_code == 404  # cached
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        await dev.delete(f"/api/v1/tokens/{pat['id']}")
    assert (await anon.get("/v2/team/app/tags/list", auth=creds)).status_code == 401
    reader = cast.creds["reader"]
    assert (await anon.get("/v2/team/app/tags/list", auth=reader)).status_code == 404
    async with api_client(app) as admin:
        await admin.delete("/api/v1/namespaces/team/members/reader")
    assert (await anon.get("/v2/team/app/tags/list", auth=reader)).status_code == 403


async def test_sign_in_bookkeeping_does_not_empty_the_caches(
    anon: httpx.AsyncClient, services: Services, cast: Cast
) -> None:
    """`touch_token` and `last_login_at` run on every sign-in; touching the auth stamp there
    would make every process reload its caches after each one."""
    board = services.db.changes
    before = board.stamp("auth")
    await token_for(anon, cast.creds["pat-write"], PUSH)
    await token_for(anon, cast.creds["developer"], PUSH, offline_token="true")
    assert board.stamp("auth") == before


@pytest.fixture
async def second_worker(data_dir: Path, clock: FakeClock, services: Services) -> AsyncIterator[Any]:
    """Another process of the same host: its own caches, the same database and stamp file."""
    other = await open_services(make_config(data_dir), clock)
    try:
        yield create_app(other.registry, access=other.access)
    finally:
        other.close()


async def test_a_revocation_on_one_worker_is_seen_by_the_next_request_on_another(
    app: Any, second_worker: Any, cast: Cast
) -> None:
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        pat = await new_pat(dev, ["write_registry"])
    creds = ("developer", pat["token"])
    async with api_client(second_worker, auth=None) as there:
        jwt = (await token_for(there, creds, PUSH))["token"]
        assert (await there.get("/v2/team/app/tags/list", headers=bearer(jwt))).status_code == 404
        assert (await there.get("/v2/team/app/tags/list", auth=creds)).status_code == 404
        async with api_client(app, auth=cast.creds["developer"]) as dev:  # the first worker
            await dev.delete(f"/api/v1/tokens/{pat['id']}")
        assert (await there.get("/v2/team/app/tags/list", headers=bearer(jwt))).status_code == 401
        assert (await there.get("/v2/team/app/tags/list", auth=creds)).status_code == 401


async def test_a_cli_change_is_seen_by_the_next_request(
    anon: httpx.AsyncClient, services: Services, cast: Cast, clock: FakeClock
) -> None:
    """`berth user disable` writes through its own database handle, as another process."""
    jwt = (await token_for(anon, cast.creds["reader"], PULL))["token"]
    assert (await anon.get("/v2/team/app/tags/list", headers=bearer(jwt))).status_code == 404
    from appliance.metadata.sqlite import SqliteDatabase  # noqa: PLC0415

    path = services.access.data_dir / "berth.db"
    cli = SqliteDatabase(path)
    try:
        cli.run_sync_write(lambda tx: accounts.set_disabled(tx, "cli", "reader", True, clock()))
    finally:
        cli.close()
    assert (await anon.get("/v2/team/app/tags/list", headers=bearer(jwt))).status_code == 401
