"""The console's CSRF guard, in process, over every form route the app registers (issue 21):
a signed-in POST with no token, or with another session's token, is refused with 403 before
the page runs; the right token gets past the guard. A new form route is covered by being
registered; one that opts out of the guard must be added to `OPTED_OUT` with its reason."""

from __future__ import annotations

import re

import httpx
import pytest

from appliance.console.framework import PAGES, UNSAFE
from tests.api.conftest import (  # noqa: F401 (fixtures)
    ADMIN,
    ADMIN_PASSWORD,
    cheap_password_hashing,
    clock,
    data_dir,
)
from tests.console.test_sessions import client, services, sign_in  # noqa: F401 (fixtures)

REFUSED = "the form&#39;s CSRF token is missing or wrong"
# Posted to by design without the session's token, each authenticated some other way.
OPTED_OUT = {
    "/signin": "no session yet: a double-submit cookie of its own (tested below)",
    "/saml/acs": "posted by the IdP's page: the signed SAML response answers our request",
}


def _fill(path: str) -> str:
    """A concrete URL for a route: the guard runs before the page, so any value serves."""
    path = re.sub(r"<int:[^>]+>", "1", path)
    path = re.sub(r"<path:[^>]+>", "team/app", path)
    return re.sub(r"<[^>]+>", "team", path)


def _form_routes() -> list[tuple[str, str]]:
    import appliance.app  # noqa: F401, PLC0415 (registers every page module)
    from appliance.console import PAGE_MODULES  # noqa: PLC0415

    assert PAGE_MODULES
    return sorted(
        (method, page.path)
        for page in PAGES
        for method in page.methods
        if method in UNSAFE and page.csrf
    )


def test_only_the_known_routes_opt_out_of_the_guard() -> None:
    import appliance.app  # noqa: F401, PLC0415

    opted_out = {page.path for page in PAGES if not page.csrf}
    assert opted_out == set(OPTED_OUT), "a form without CSRF protection was added"


async def _session(client: httpx.AsyncClient) -> tuple[dict[str, str], str]:  # noqa: F811
    response = await sign_in(client)
    cookie = {"cookie": f"berth_session={response.cookies['berth_session']}"}
    page = await client.get("/tokens", headers=cookie)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    return cookie, token.group(1)


@pytest.mark.parametrize(("method", "path"), _form_routes())
async def test_a_signed_in_post_without_the_sessions_token_is_refused(
    client: httpx.AsyncClient,  # noqa: F811
    method: str,
    path: str,
) -> None:
    mine, my_token = await _session(client)
    _, their_token = await _session(client)
    assert my_token != their_token
    url = _fill(path)
    for form in ({}, {"csrf_token": ""}, {"csrf_token": their_token}):
        r = await client.request(method, url, data={**form, "action": "x"}, headers=mine)
        assert r.status_code == 403, f"{method} {url} with {form or 'no token'}: {r.status_code}"
        assert REFUSED in r.text
    r = await client.request(
        method, url, data={"action": "x"}, headers={**mine, "x-csrf-token": their_token}
    )
    assert r.status_code == 403
    # The session's own token gets past the guard (the page may then refuse the form).
    r = await client.request(
        method, url, data={"csrf_token": my_token, "action": "x"}, headers=mine
    )
    assert REFUSED not in r.text, f"{method} {url}: the right token was refused"


async def test_the_signin_form_needs_its_double_submit_cookie(
    client: httpx.AsyncClient,  # noqa: F811
) -> None:
    form = await client.get("/signin")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    credentials = {"username": ADMIN, "password": ADMIN_PASSWORD}
    for data, cookie in (
        ({**credentials}, form.cookies["berth_signin_csrf"]),
        ({**credentials, "csrf_token": token.group(1)}, ""),
        ({**credentials, "csrf_token": token.group(1)}, "someone-elses-cookie"),
    ):
        headers = {"cookie": f"berth_signin_csrf={cookie}"} if cookie else {}
        r = await client.post("/signin", data=data, headers=headers)
        assert r.status_code == 403
        assert "berth_session=" not in r.headers.get("set-cookie", "")
