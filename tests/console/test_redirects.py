"""Open redirects after sign-in (issue 21, item 5), written as the attack: every spelling of
"somewhere else" in `?next=` (or a SAML RelayState) lands on `/`, and none is a 500."""

from __future__ import annotations

import re

import httpx
import pytest

from appliance.console.redirects import after_sign_in, same_origin_path
from tests.api.conftest import (  # noqa: F401 (fixtures)
    ADMIN,
    ADMIN_PASSWORD,
    cheap_password_hashing,
    clock,
    data_dir,
)
from tests.console.test_sessions import client, services  # noqa: F401 (fixtures)

HOSTILE = [
    "/\t/evil.example/",
    "/\n/evil.example/",
    "/\r\n/evil.example/",
    "/\x0b/x",
    "/\x00/evil.example",
    "/ /evil.example",
    "\t//evil.example",
    "//evil.example",
    "///evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "\\/evil.example",
    "/%09/evil.example/",
    "/%0a/evil.example/",
    "/%2F/evil.example",
    "/%2f%2fevil.example",
    "%2F%2Fevil.example",
    "/%5Cevil.example",
    "/%5c%5cevil.example",
    "https://evil.example/",
    "HTTPS://evil.example",
    "http:/evil.example",
    "http:evil.example",
    "//evil.example@berth.test/",
    "javascript:alert(1)",
    " javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "evil.example",
    "/\u3000/evil.example",
    "/\u200b/evil.example",
    "/é/evil.example",
    "",
    "/" + "a" * 3000,
]


@pytest.mark.parametrize("target", HOSTILE, ids=repr)
def test_every_form_of_elsewhere_falls_back_to_the_root(target: str) -> None:
    assert same_origin_path(target) == "/"
    assert after_sign_in(target) == "/"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", "/"),
        ("/r/team/app", "/r/team/app"),
        ("/r/team/app/", "/r/team/app/"),
        ("/repositories?q=app&page=2", "/repositories?q=app&page=2"),
        ("/r/team//app", "/r/team/app"),
        ("/a/./b/../c", "/a/c"),
        ("/..//evil.example", "/evil.example"),
        ("/r/team/app#tags", "/r/team/app"),
        ("/a%2Fb", "/a%2Fb"),
    ],
)
def test_paths_of_this_console_are_kept_normalised(target: str, expected: str) -> None:
    assert same_origin_path(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        "/signin",
        "/signin?next=/x",
        "/signout",
        "/saml/login",
        "/oidc/corp/login",
        "/oidc/corp/callback?state=x&code=y",
        "/oidc",
    ],
)
def test_never_back_to_a_sign_in_page(target: str) -> None:
    assert same_origin_path(target) == target
    assert after_sign_in(target) == "/"


async def _signin_form(client: httpx.AsyncClient, target: str) -> tuple[str, str, str]:  # noqa: F811
    form = await client.get("/signin", params={"next": target})
    assert form.status_code == 200, form.text[:500]
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    shown = re.search(r'name="next" value="([^"]*)"', form.text)
    assert token is not None
    assert shown is not None
    return token.group(1), form.cookies["berth_signin_csrf"], shown.group(1)


@pytest.mark.parametrize(
    "target",
    ["/\t/evil.example/", "/\x0b/x", "//evil.example", "/\\evil.example", "https://evil.example"],
    ids=repr,
)
async def test_signing_in_with_a_hostile_next_lands_on_the_root(
    client: httpx.AsyncClient,  # noqa: F811
    target: str,
) -> None:
    token, cookie, shown = await _signin_form(client, target)
    assert shown == "/", "the form never carries the hostile target"
    # The attacker's own form posts the target directly.
    response = await client.post(
        "/signin",
        data={
            "csrf_token": token,
            "username": ADMIN,
            "password": ADMIN_PASSWORD,
            "next": target,
        },
        headers={"cookie": f"berth_signin_csrf={cookie}"},
    )
    assert response.status_code == 303, response.text[:500]
    assert response.headers["location"] == "/"


async def test_a_path_of_this_console_is_followed_after_sign_in(
    client: httpx.AsyncClient,  # noqa: F811
) -> None:
    token, cookie, shown = await _signin_form(client, "/r/team/app?x=1")
    assert shown == "/r/team/app?x=1"
    response = await client.post(
        "/signin",
        data={"csrf_token": token, "username": ADMIN, "password": ADMIN_PASSWORD, "next": shown},
        headers={"cookie": f"berth_signin_csrf={cookie}"},
    )
    assert response.headers["location"] == "/r/team/app?x=1"
