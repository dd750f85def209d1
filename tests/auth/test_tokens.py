"""Registry bearer tokens: the token endpoint, forged and stale tokens, refresh, rotation."""

from __future__ import annotations

import base64
import hmac
import json
from pathlib import Path
from typing import Any

import httpx
import jwt
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.auth import accounts, passwords
from appliance.auth.tokens import PUBLISH_DELAY, KeyRing, _kid, stored_keys
from appliance.server import Services
from tests.api.conftest import FakeClock, api_client
from tests.auth.conftest import PASSWORD, Cast

SCOPE = "repository:team/app:pull,push"


async def token_for(
    client: httpx.AsyncClient, auth: Any, *scopes: str, **params: str
) -> dict[str, Any]:
    r = await client.get(
        "/token", params={"service": "berth", "scope": list(scopes), **params}, auth=auth
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def push_image(client: httpx.AsyncClient, repo: str) -> None:
    """A one-blob image tagged 1 (the matrix's seed, pushed to `repo`)."""
    from tests.auth.test_matrix import LAYER, LAYER_DIGEST  # noqa: PLC0415

    r = await client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": LAYER_DIGEST}, content=LAYER
    )
    assert r.status_code == 201, r.text
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": LAYER_DIGEST,
            "size": len(LAYER),
        },
        "layers": [],
    }
    r = await client.put(
        f"/v2/{repo}/manifests/1",
        content=json.dumps(manifest).encode(),
        headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 201, r.text


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


async def test_token_grants_the_intersection_of_request_and_rights(
    anon: httpx.AsyncClient, cast: Cast
) -> None:
    body = await token_for(
        anon, cast.creds["reader"], SCOPE, "repository:other/x:pull", "registry:catalog:*"
    )
    assert set(body) >= {"token", "access_token", "expires_in", "issued_at"}
    c = claims(body["token"])
    assert jwt.get_unverified_header(body["token"])["alg"] == "ES256"
    assert jwt.get_unverified_header(body["token"])["kid"]
    assert {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"} <= set(c)
    assert c["sub"] == "user:reader"
    assert sorted((a["type"], a["name"], tuple(a["actions"])) for a in c["access"]) == [
        ("registry", "catalog", ("*",)),
        ("repository", "team/app", ("pull",)),
    ]


async def test_bearer_flow_and_scope_upgrade(anon: httpx.AsyncClient, cast: Cast) -> None:
    r = await anon.post("/v2/team/app/blobs/uploads/")
    assert r.status_code == 401
    assert 'scope="repository:team/app:pull,push"' in r.headers["www-authenticate"]
    pull_only = (await token_for(anon, cast.creds["developer"], "repository:team/app:pull"))[
        "token"
    ]
    r = await anon.post(
        "/v2/team/app/blobs/uploads/", headers={"authorization": f"Bearer {pull_only}"}
    )
    assert r.status_code == 401, "a token lacking a scope the caller may have: ask for it"
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    reader = (await token_for(anon, cast.creds["reader"], SCOPE))["token"]
    r = await anon.post(
        "/v2/team/app/blobs/uploads/", headers={"authorization": f"Bearer {reader}"}
    )
    assert r.status_code == 403, "signed in but never allowed: denied"
    assert r.json()["errors"][0]["code"] == "DENIED"
    full = (await token_for(anon, cast.creds["developer"], SCOPE))["token"]
    r = await anon.post("/v2/team/app/blobs/uploads/", headers={"authorization": f"Bearer {full}"})
    assert r.status_code == 202


async def test_wrong_password_does_not_reveal_whether_the_user_exists(
    anon: httpx.AsyncClient, cast: Cast
) -> None:
    known = await anon.get("/token", auth=("reader", "wrong-password"))
    unknown = await anon.get("/token", auth=("nobody-here", "wrong-password"))
    assert known.status_code == unknown.status_code == 401
    assert known.content == unknown.content
    for creds in (("reader", ""), ("", PASSWORD), ("team+ci", PASSWORD)):
        assert (await anon.get("/token", auth=creds)).status_code == 401


async def test_failed_sign_ins_slow_down_then_lock(
    services: Services, anon: httpx.AsyncClient, cast: Cast, clock: FakeClock
) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    services.access.sleep = fake_sleep
    for _ in range(10):
        assert (await anon.get("/token", auth=("reader", "wrong-password"))).status_code == 401
    assert slept, "failures beyond the first few are answered late"
    assert slept == sorted(slept), "later failures wait longer"
    locked = await anon.get("/token", auth=("reader", PASSWORD))
    assert locked.status_code == 429, "locked: even the right password waits"
    assert int(locked.headers["retry-after"]) > 0
    clock.advance(901)
    assert (await anon.get("/token", auth=("reader", PASSWORD))).status_code == 200


async def test_a_token_sign_in_is_remembered_until_the_password_changes(
    services: Services, anon: httpx.AsyncClient, cast: Cast, password_checks: list[str]
) -> None:
    """Clients ask for a token before every pull and push: the password is hashed once per
    credentials (GET with Basic, the OAuth2 password form), and a new password ends it."""
    checks = password_checks
    form = {"grant_type": "password", "username": "reader", "password": PASSWORD}
    for _ in range(3):
        await token_for(anon, cast.creds["reader"], SCOPE)
        assert (await anon.post("/token", data=form)).status_code == 200
    assert checks == [PASSWORD, PASSWORD], "one check for the header, one for the form"

    new_hash = passwords.hash_password("a-new-password-1")
    await services.access.change(
        lambda tx: accounts.set_password(tx, "test", "reader", new_hash, 0.0)
    )
    assert (await anon.get("/token", auth=("reader", PASSWORD))).status_code == 401
    assert (await anon.post("/token", data=form)).status_code == 401
    await token_for(anon, ("reader", "a-new-password-1"), SCOPE)


async def test_a_remembered_password_does_not_answer_a_locked_out_guesser(
    services: Services, anon: httpx.AsyncClient, cast: Cast
) -> None:
    """Once the lockout holds, the right password is refused like any other guess, even where
    its owner's earlier sign-in is remembered: the guesser must not learn that it is right."""

    async def no_wait(seconds: float) -> None:
        pass

    services.access.sleep = no_wait
    await token_for(anon, cast.creds["reader"], SCOPE)  # remembered (token endpoint)
    assert (await anon.get("/v2/", auth=cast.creds["reader"])).status_code == 200  # and /v2
    form = {"grant_type": "password", "username": "reader", "password": PASSWORD}
    assert (await anon.post("/token", data=form)).status_code == 200
    for _ in range(10):
        assert (await anon.get("/token", auth=("reader", "wrong-password"))).status_code == 401
    for r in (
        await anon.get("/token", auth=cast.creds["reader"]),
        await anon.post("/token", data=form),
        await anon.get("/v2/", auth=cast.creds["reader"]),
    ):
        assert r.status_code == 429, r.text


async def test_expired_token_gets_a_fresh_challenge(
    anon: httpx.AsyncClient, cast: Cast, clock: FakeClock
) -> None:
    token = (await token_for(anon, cast.creds["reader"], SCOPE))["token"]
    headers = {"authorization": f"Bearer {token}"}
    assert (await anon.get("/v2/team/app/tags/list", headers=headers)).status_code == 404
    clock.advance(301)
    r = await anon.get("/v2/team/app/tags/list", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith('Bearer realm="http://berth.test/token"')
    assert 'scope="repository:team/app:pull"' in r.headers["www-authenticate"]


def _forge(claims_: dict[str, Any], key: Any, alg: str = "ES256", kid: str = "x") -> str:
    return jwt.encode(claims_, key, algorithm=alg, headers={"kid": kid})


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_forged_tokens_are_rejected(
    services: Services, anon: httpx.AsyncClient, cast: Cast, clock: FakeClock, tmp_path: Path
) -> None:
    good = (await token_for(anon, cast.creds["reader"], "repository:team/app:pull"))["token"]
    header = jwt.get_unverified_header(good)
    base = claims(good)
    key = services.access.keys.active
    now = int(clock())
    public_pem = key.public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other_key = ec.generate_private_key(ec.SECP256R1())  # another install's signing key
    other_kid = _kid(other_key)
    push = [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    head, payload, signature = good.split(".")
    hs_head = _b64({"alg": "HS256", "typ": "JWT", "kid": header["kid"]})
    hs_mac = hmac.new(public_pem, f"{hs_head}.{payload}".encode(), "sha256").digest()
    forged = {
        "alg none": _b64({"alg": "none", "typ": "JWT", "kid": header["kid"]}) + "." + payload + ".",
        "HS256 signed with the public key": (
            f"{hs_head}.{payload}." + base64.urlsafe_b64encode(hs_mac).rstrip(b"=").decode()
        ),
        "expired": _forge({**base, "exp": now - 1, "nbf": now - 100}, key.private, kid=key.kid),
        "not yet valid": _forge(
            {**base, "nbf": now + 3600, "exp": now + 7200}, key.private, kid=key.kid
        ),
        "wrong audience": _forge({**base, "aud": "another-registry"}, key.private, kid=key.kid),
        "wrong issuer": _forge({**base, "iss": "someone-else"}, key.private, kid=key.kid),
        "tampered access claim": head + "." + _b64({**base, "access": push}) + "." + signature,
        "key from another install": _forge({**base, "access": push}, other_key, kid=other_kid),
        "another install's key under our kid": _forge(
            {**base, "access": push}, other_key, kid=key.kid
        ),
        "garbage": "not.a.token",
        "random EC key": _forge({**base}, ec.generate_private_key(ec.SECP256R1()), kid=key.kid),
    }
    assert (
        await anon.get("/v2/team/app/tags/list", headers={"authorization": f"Bearer {good}"})
    ).status_code == 404
    for name, token in forged.items():
        for method, path in (
            ("GET", "/v2/team/app/tags/list"),
            ("POST", "/v2/team/app/blobs/uploads/"),
        ):
            r = await anon.request(method, path, headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 401, f"{name}: {method} {path} → {r.status_code}"
            assert "invalid_token" in r.headers["www-authenticate"], name


async def test_refresh_token_get_and_oauth_post(anon: httpx.AsyncClient, cast: Cast) -> None:
    body = await token_for(
        anon, cast.creds["developer"], SCOPE, offline_token="true", client_id="test"
    )
    refresh = body["refresh_token"]
    r = await anon.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "scope": SCOPE,
            "service": "berth",
            "client_id": "test",
        },
    )
    assert r.status_code == 200, r.text
    assert claims(r.json()["access_token"])["access"][0]["actions"] == ["pull", "push"]
    r = await anon.post(
        "/token",
        data={
            "grant_type": "password",
            "username": "developer",
            "password": PASSWORD,
            "scope": SCOPE,
            "access_type": "offline",
        },
    )
    assert r.status_code == 200
    assert r.json()["refresh_token"].startswith("berth_refresh_")
    r = await anon.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": "berth_refresh_" + "x" * 43}
    )
    assert r.status_code == 401


async def test_pat_and_robot_tokens_sign_in_and_are_checked(
    anon: httpx.AsyncClient, cast: Cast, app: Any
) -> None:
    _, robot = cast.creds["robot"] or ("", "")
    body = await token_for(anon, ("team+ci", robot), SCOPE, "repository:pub/app:push")
    assert [(a["name"], a["actions"]) for a in claims(body["token"])["access"]] == [
        ("team/app", ["pull", "push"])
    ]
    assert (await anon.get("/token", auth=("someone-else", robot))).status_code == 401
    _, pat = cast.creds["pat-read"] or ("", "")
    c = claims((await token_for(anon, ("developer", pat), SCOPE))["token"])
    assert c["access"][0]["actions"] == ["pull"]
    assert c["scp"] == ["read_registry"]
    # revoke through the API: the PAT stops working at once
    async with api_client(app, auth=cast.creds["developer"]) as dev:
        listed = (await dev.get("/api/v1/tokens")).json()
        target = next(t for t in listed if t["scopes"] == ["read_registry"])
        assert target["last_used_at"] is not None
        assert (await dev.delete(f"/api/v1/tokens/{target['id']}")).status_code == 200
    assert (await anon.get("/token", auth=("developer", pat))).status_code == 401


async def test_rotation_keeps_old_tokens_valid_until_they_expire(
    services: Services, anon: httpx.AsyncClient, cast: Cast, clock: FakeClock
) -> None:
    old = (await token_for(anon, cast.creds["reader"], "repository:team/app:pull"))["token"]
    # Rotated elsewhere (another host, `berth keys rotate`): a key ring of its own.
    access = services.access
    ring = KeyRing(services.db, access.secret, clock, overlap=access.token_ttl + 60)
    new_key = await trio.to_thread.run_sync(ring.rotate_sync)
    # Until every host has heard of it, the new key does not sign.
    during = (await token_for(anon, cast.creds["reader"], "repository:team/app:pull"))["token"]
    assert jwt.get_unverified_header(during)["kid"] == jwt.get_unverified_header(old)["kid"]
    clock.advance(PUBLISH_DELAY + 1)
    new = (await token_for(anon, cast.creds["reader"], "repository:team/app:pull"))["token"]
    assert (
        jwt.get_unverified_header(new)["kid"]
        == new_key.kid
        != jwt.get_unverified_header(old)["kid"]
    )
    for token in (old, new):
        r = await anon.get("/v2/team/app/tags/list", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 404
    clock.advance(400)
    await trio.to_thread.run_sync(ring.rotate_sync)
    assert len(ring.keys) == 2, "the first key is gone once its overlap has passed"
    stored = await services.db.read(stored_keys)
    assert [kid for kid, _, _ in stored] == [k.kid for k in ring.keys]


async def test_catalog_lists_only_what_the_caller_may_see(app: Any, cast: Cast) -> None:
    async with api_client(app) as admin:
        for repo in ("team/a", "pub/b", "elsewhere/c", "other/d"):
            await push_image(admin, repo)
        everything = (await admin.get("/v2/_catalog")).json()["repositories"]
    async with api_client(app, auth=cast.creds["other"]) as other:
        mine = (await other.get("/v2/_catalog")).json()["repositories"]
        paged = (await other.get("/v2/_catalog", params={"n": 1})).json()["repositories"]
    async with api_client(app, auth=cast.creds["reader"]) as reader:
        token = (await token_for(reader, cast.creds["reader"], "registry:catalog:*"))["token"]
        seen = (
            await reader.get("/v2/_catalog", headers={"authorization": f"Bearer {token}"})
        ).json()["repositories"]
    assert set(everything) >= {"team/a", "pub/b", "elsewhere/c", "other/d"}
    assert mine == ["other/d", "pub/b"]
    assert paged == ["other/d"]
    assert seen == ["pub/b", "team/a"]


async def test_signing_key_and_secret_are_private(services: Services) -> None:
    data = services.access.data_dir
    for path in [data / "secret", *sorted((data / "keys").glob("*.pem"))]:
        assert path.stat().st_mode & 0o777 == 0o600, path
