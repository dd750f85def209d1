"""OpenID Connect sign-in against a real OpenID provider: `oidc-provider` from the npm registry
(an OpenID Certified implementation) on loopback, and a real Berth.

Chromium signs in through the provider's own pages: the account is created at the first
sign-in with namespace roles from its groups, the second sign-in reuses it, and signing out
offers the provider's end-session page. A replayed `state`, a sign-in finished in another
browser, and ID tokens with a wrong nonce, for another audience, expired or tampered with are
refused (the ID tokens are the provider's own, obtained over HTTP through its login pages).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio

from appliance import config as settings
from appliance.auth.oidc import OidcError, OidcProvider, providers_from_config
from tests.support.browser import console_signin, screenshot
from tests.support.oidcprovider import (
    OIDC_USERS,
    OidcClient,
    sign_in_without_browser,
    start_oidc_provider,
)
from tests.support.oidcprovider import OidcProvider as ProviderProcess
from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server, free_port, start_berth

OLIVIA, OSCAR = OIDC_USERS
SECRET = "berth-client-secret-for-tests"
OTHER_SECRET = "another-client-secret"


@dataclass
class World:
    berth: Server
    idp: ProviderProcess
    secret_file: Path

    @property
    def callback(self) -> str:
        return self.berth.url + "/oidc/corp/callback"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("oidc")
    port = free_port()  # Berth's, so that the provider knows its redirect URI up front
    base = f"http://127.0.0.1:{port}"
    clients = [
        OidcClient("berth", SECRET, (base + "/oidc/corp/callback",), (base + "/signin",)),
        OidcClient("other-app", OTHER_SECRET, ("http://127.0.0.1:9/cb",)),
    ]
    idp = start_oidc_provider(tmp / "idp", clients, OIDC_USERS)
    secret_file = tmp / "client-secret"
    secret_file.write_text(SECRET + "\n")
    env = {
        "BERTH_OIDC_CORP_ISSUER": idp.issuer,
        "BERTH_OIDC_CORP_CLIENT_ID": "berth",
        "BERTH_OIDC_CORP_CLIENT_SECRET_FILE": str(secret_file),
        "BERTH_OIDC_CORP_SCOPES": "openid profile email groups",
        "BERTH_OIDC_CORP_ALLOW_HTTP": "true",
        "BERTH_OIDC_CORP_LABEL": "Corp SSO",
        "BERTH_OIDC_CORP_GROUP_ROLES": "registry-devs=devs:developer; readers=docs:reader",
    }
    try:
        berth = start_berth(tmp / "data", env=env, listen=f"127.0.0.1:{port}")
    except BaseException:
        idp.stop()
        raise
    try:
        yield World(berth, idp, secret_file)
    finally:
        berth.stop()
        idp.stop()


def oidc_signin(page: Any, world: World, login: str) -> None:
    """Click the provider's button on Berth's sign-in page and get through its pages (its
    login page, unless it remembers the user, then its consent page) back to Berth."""
    page.goto(world.berth.url + "/signin")
    with page.expect_navigation(url=world.idp.issuer + "/**"):
        page.click("#oidc-signin-corp")
    for _ in range(4):
        if page.url.startswith(world.berth.url):
            break
        if page.locator("input[name=login]").count():
            screenshot(page, "oidc-provider-login")
            page.fill("input[name=login]", login)
            page.fill("input[name=password]", "any-password")
        with page.expect_navigation():
            page.click("button[type=submit]")  # sign in, or consent
    page.wait_for_url(world.berth.url + "/**")
    page.wait_for_load_state()


def test_sign_in_creates_the_account_with_group_roles_and_reuses_it(page: Any, world: World):
    page.goto(world.berth.url + "/signin")
    assert page.inner_text("#oidc-signin-corp") == "Sign in with Corp SSO"
    screenshot(page, "signin-with-oidc")
    callbacks: list[str] = []
    page.on(
        "request",
        lambda r: callbacks.append(r.url) if "/oidc/corp/callback" in r.url else None,
    )
    oidc_signin(page, world, OLIVIA.login)
    assert OLIVIA.login in page.inner_text("header .who")
    screenshot(page, "oidc-overview")
    page.goto(world.berth.url + "/namespaces")
    namespaces = page.inner_text("#namespaces")
    assert "devs" in namespaces
    assert "docs" in namespaces

    # A replayed callback (the same state and code) signs no one in, even in this browser.
    assert callbacks
    replay = page.context.request.get(callbacks[0], max_redirects=0)
    assert replay.status == 401
    assert "answers no pending request" in replay.text()

    # Sign out: the console session ends, and the provider's end-session page is offered.
    page.click("form.signout button[type=submit]")
    page.wait_for_load_state()
    assert page.inner_text("h1") == "Signed out of Berth"
    screenshot(page, "oidc-signed-out")
    page.click("#provider-signout")
    page.wait_for_url(world.idp.issuer + "/**")
    page.click("button[name=logout]")  # the provider asks whether to sign out there too
    page.wait_for_url(world.berth.url + "/signin**")
    page.goto(world.berth.url + "/")
    assert "/signin" in page.url, "signed out of the console"

    # The second sign-in (through the provider's login page again) reuses the account.
    oidc_signin(page, world, OLIVIA.login)
    assert OLIVIA.login in page.inner_text("header .who")
    page.context.clear_cookies()
    console_signin(page, world.berth, ADMIN, ADMIN_PASSWORD)
    page.goto(world.berth.url + "/users")
    rows = [r for r in page.inner_text("#users").splitlines() if r.startswith(OLIVIA.login)]
    assert len(rows) == 1, rows
    assert "oidc:corp" in rows[0]
    page.goto(world.berth.url + "/audit?actor=system&action=user.create")
    assert page.inner_text("#audit").count(OLIVIA.login) == 1, "created once"
    page.goto(world.berth.url + "/status")
    status = page.inner_text("#sign-in")
    assert "Corp SSO" in status
    assert world.idp.issuer in status
    cells = page.locator("#sign-in table.providers tbody tr td").all_inner_texts()
    assert cells[2] == "ok", cells  # the discovery document and keys were fetched
    assert cells[3].startswith("1, fetched"), cells  # oidc-provider's one signing key
    screenshot(page, "status-sign-in-providers")


def test_a_name_taken_by_a_local_account_is_refused_clearly(page: Any, world: World):
    with httpx.Client(base_url=world.berth.url, auth=(ADMIN, ADMIN_PASSWORD)) as admin:
        r = admin.post("/api/v1/users", json={"name": OSCAR.login, "password": "a-long-password"})
        assert r.status_code == 201, r.text
    oidc_signin(page, world, OSCAR.login)
    assert "/signin" in page.url or page.locator(".error").count()
    message = page.inner_text(".error")
    assert f"the account '{OSCAR.login}' exists and signs in with local" in message
    assert page.context.cookies()
    assert not any(c["name"] == "berth_session" for c in page.context.cookies())


def test_a_sign_in_cannot_be_finished_in_another_browser(world: World):
    """Login CSRF: a callback link with someone's code and state does not sign in a browser
    that did not start that sign-in."""
    with httpx.Client(base_url=world.berth.url, follow_redirects=False) as victim_to_be:
        started = victim_to_be.get("/oidc/corp/login")
        assert started.status_code == 303
        authorize = started.headers["location"]
    answer = sign_in_without_browser(authorize, OLIVIA.login)
    assert set(answer) >= {"code", "state"}
    with httpx.Client(base_url=world.berth.url, follow_redirects=False) as other:
        r = other.get("/oidc/corp/callback", params=answer)
    assert r.status_code == 401
    assert "started in another browser" in r.text
    assert "berth_session" not in r.cookies


# -- the ID token checks, with the provider's own tokens ------------------------------------


def provider_for(world: World, clock: Any = None) -> OidcProvider:
    config = settings.load(
        None,
        environ={
            "BERTH_OIDC_CORP_ISSUER": world.idp.issuer,
            "BERTH_OIDC_CORP_CLIENT_ID": "berth",
            "BERTH_OIDC_CORP_CLIENT_SECRET_FILE": str(world.secret_file),
            "BERTH_OIDC_CORP_SCOPES": "openid profile email groups",
            "BERTH_OIDC_CORP_ALLOW_HTTP": "true",
            "BERTH_OIDC_CORP_GROUP_ROLES": "registry-devs=devs:developer",
        },
    )
    providers = providers_from_config(config, clock) if clock else providers_from_config(config)
    return providers["corp"]


def id_token_for(world: World, client_id: str, secret: str, redirect_uri: str, nonce: str) -> str:
    """An ID token the provider issues to `client_id` (its login and consent pages over HTTP,
    then the token endpoint), as any relying party would get it."""
    import base64  # noqa: PLC0415
    import hashlib  # noqa: PLC0415
    import secrets  # noqa: PLC0415
    from urllib.parse import urlencode  # noqa: PLC0415

    discovery = httpx.get(world.idp.discovery_url).json()
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid",
            "state": "s",
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    answer = sign_in_without_browser(f"{discovery['authorization_endpoint']}?{query}", "olivia")
    r = httpx.post(
        discovery["token_endpoint"],
        auth=(client_id, secret),
        data={
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
    )
    assert r.status_code == 200, r.text
    token: str = r.json()["id_token"]
    return token


async def test_id_tokens_checked_for_nonce_audience_expiry_and_signature(world: World):
    provider = provider_for(world)
    good = await trio.to_thread.run_sync(
        id_token_for, world, "berth", SECRET, world.callback, "nonce-1"
    )
    claims = await provider.check_id_token(good, "nonce-1")
    assert claims["sub"] == OLIVIA.login
    assert claims["aud"] == "berth"

    with pytest.raises(OidcError, match="nonce"):
        await provider.check_id_token(good, "another-nonce")

    other = await trio.to_thread.run_sync(
        id_token_for, world, "other-app", OTHER_SECRET, "http://127.0.0.1:9/cb", "nonce-2"
    )
    with pytest.raises(OidcError, match="aud"):
        await provider.check_id_token(other, "nonce-2")

    expires = json.loads(_b64decode(good.split(".")[1]))["exp"]
    late = provider_for(world, clock=lambda: expires + 61.0)  # past exp and the 60 s skew
    with pytest.raises(OidcError, match="expired"):
        await late.check_id_token(good, "nonce-1")
    almost = provider_for(world, clock=lambda: expires + 30.0)  # within the skew: accepted
    assert (await almost.check_id_token(good, "nonce-1"))["sub"] == OLIVIA.login

    head, payload, signature = good.split(".")
    forged = json.loads(_b64decode(payload))
    forged["sub"] = "mallory"
    tampered = f"{head}.{_b64encode(json.dumps(forged).encode())}.{signature}"
    with pytest.raises(OidcError, match="signature"):
        await provider.check_id_token(tampered, "nonce-1")


async def test_the_whole_flow_reads_groups_from_userinfo(world: World):
    """The provider releases profile, email and groups only at userinfo (its ID tokens carry
    sub and nonce): Berth reads them there, with the same subject."""
    provider = provider_for(world)
    url, pending = await provider.begin(world.callback)
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["state"] == [pending.state]
    assert query["nonce"] == [pending.nonce]
    answer = await trio.to_thread.run_sync(sign_in_without_browser, url, OLIVIA.login)
    who = await provider.finish(world.callback, answer["code"], pending, answer.get("iss"))
    assert who.name == OLIVIA.login
    assert who.email == OLIVIA.email
    assert who.groups == frozenset(OLIVIA.groups)
    assert provider.roles_for(who) == ({"devs": "developer"}, False)
    # A code is good once: the provider refuses it the second time.
    with pytest.raises(OidcError, match="refused"):
        await provider.finish(world.callback, answer["code"], pending)


def _b64decode(text: str) -> bytes:
    import base64  # noqa: PLC0415

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64encode(data: bytes) -> str:
    import base64  # noqa: PLC0415

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
