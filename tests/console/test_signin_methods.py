"""Local, LDAP and SAML sign-in enabled at once on one Berth, each driven through the console
in a real browser: LDAP against a real slapd, SAML against a real SimpleSAMLphp IdP. A SAML
user gets an account and namespace roles from their groups at first sign-in, makes a personal
access token and pushes with it; a replayed or tampered SAML response signs no one in."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import console_signin, screenshot
from tests.support.clients import Skopeo
from tests.support.images import ImageCache
from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server, require_binary, start_berth
from tests.support.simplesamlphp import SAML_USERS, SimpleSamlPhp
from tests.support.slapd import Slapd

SALLY = SAML_USERS[0]


@pytest.fixture(scope="module")
def berth(
    tmp_path_factory: pytest.TempPathFactory, slapd: Slapd, simplesamlphp: SimpleSamlPhp
) -> Iterator[Server]:
    env = {
        "BERTH_" + key.replace(".", "_").upper(): value
        for key, value in slapd.settings(**{"ldap.group_roles": "web-devs=web:developer"}).items()
    }
    env.update(
        {
            "BERTH_SAML_IDP_METADATA_URL": simplesamlphp.metadata_url,
            "BERTH_SAML_GROUP_ROLES": "registry-devs=devs:developer",
        }
    )
    server = start_berth(tmp_path_factory.mktemp("signin-methods") / "data", env=env)
    try:
        simplesamlphp.trust_sp_from(server.url + "/saml/metadata")
        yield server
    finally:
        server.stop()


def saml_signin(page, berth: Server) -> None:
    page.goto(berth.url + "/signin")
    page.click("#saml-signin")
    page.wait_for_selector("input[name=username]")
    screenshot(page, "saml-idp-login")
    page.fill("input[name=username]", SALLY.username)
    page.fill("input[name=password]", SALLY.password)
    page.click("button[type=submit], input[type=submit] >> nth=0")
    page.wait_for_url(berth.url + "/**")
    page.wait_for_load_state()


def test_local_and_ldap_users_sign_in_on_the_same_form(page, berth: Server, slapd: Slapd):
    dn = slapd.add_user("lena", "lena-ldap-password", "lena@example.org")
    slapd.set_group("web-devs", [dn])
    console_signin(page, berth, "lena", "lena-ldap-password")
    assert "lena" in page.inner_text("header .who")
    page.goto(berth.url + "/namespaces")
    assert "web" in page.inner_text("#namespaces")  # from the LDAP group mapping
    screenshot(page, "ldap-namespaces")

    page.context.clear_cookies()
    console_signin(page, berth, ADMIN, ADMIN_PASSWORD)
    page.goto(berth.url + "/users")
    users = page.inner_text("#users")
    assert "lena" in users
    assert "ldap" in users


def test_saml_signin_creates_the_account_and_its_token_pushes(
    page, berth: Server, simplesamlphp: SimpleSamlPhp, tmp_path: Path
):
    require_binary("busybox", "busybox-static")
    page.goto(berth.url + "/signin")
    screenshot(page, "signin-all-methods")
    saml_signin(page, berth)
    assert SALLY.username in page.inner_text("header .who")
    screenshot(page, "saml-overview")

    page.goto(berth.url + "/namespaces")
    assert "devs" in page.inner_text("#namespaces")
    page.goto(berth.url + "/push")
    assert "personal access token" in page.inner_text("main")

    page.goto(berth.url + "/tokens")
    page.fill("input[name=name]", "laptop")
    page.click("#create-token")
    secret = page.inner_text("#secret").strip()
    skopeo = Skopeo(tmp_path / "skopeo")
    images = ImageCache(tmp_path / "images")
    digest = skopeo.push(
        images.busybox(),
        f"docker://{berth.host}/devs/app:1",
        creds=f"{SALLY.username}:{secret}",
    )
    page.goto(berth.url + "/r/devs/app")
    rows = page.inner_text("#tags")
    assert digest[:19] in rows
    assert SALLY.username in rows  # pushed by

    page.context.clear_cookies()
    console_signin(page, berth, ADMIN, ADMIN_PASSWORD)
    page.goto(berth.url + "/users")
    assert "saml" in page.inner_text("#users")
    page.goto(berth.url + "/audit?actor=sally")
    assert "token.create" in page.inner_text("#audit")


def test_a_replayed_or_altered_saml_response_is_refused(page, berth: Server):
    posted: list[str] = []

    def remember(request) -> None:
        if request.url.endswith("/saml/acs") and request.method == "POST":
            posted.append(request.post_data or "")

    page.on("request", remember)
    saml_signin(page, berth)
    assert SALLY.username in page.inner_text("header .who")
    assert posted
    form = dict(pair.split("=", 1) for pair in posted[0].split("&"))

    from urllib.parse import unquote_plus  # noqa: PLC0415

    response_b64 = unquote_plus(form["SAMLResponse"])
    fresh = page.context.browser.new_context()
    try:
        replay = fresh.request.post(berth.url + "/saml/acs", form={"SAMLResponse": response_b64})
        assert replay.status == 401
        assert "no pending sign-in" in replay.text()
        xml = base64.b64decode(response_b64).decode()
        forged = xml.replace(SALLY.username, "mallory").replace(SALLY.mail, "mallory@example.org")
        assert forged != xml
        altered = fresh.request.post(
            berth.url + "/saml/acs",
            form={"SAMLResponse": base64.b64encode(forged.encode()).decode()},
        )
        assert altered.status == 401
        assert "not valid" in altered.text()  # the signature no longer matches
        assert "berth_session" not in {c["name"] for c in fresh.cookies()}
    finally:
        fresh.close()


def test_a_hostile_relay_state_lands_on_the_root(page, berth: Server):
    """Issue 21, item 5: the RelayState the IdP posts back to the assertion consumer is as
    hostile as any `next`; rewritten in flight to `/<TAB>/evil.example/`, the signed-in browser
    still lands on this console's root."""
    from urllib.parse import parse_qs, urlencode  # noqa: PLC0415

    tampered: list[str] = []

    def tamper(route) -> None:
        form = parse_qs(route.request.post_data or "", keep_blank_values=True)
        form["RelayState"] = ["/\t/evil.example/"]
        tampered.append(form["RelayState"][0])
        route.continue_(post_data=urlencode(form, doseq=True))

    page.route("**/saml/acs", tamper)
    page.goto(berth.url + "/saml/login?next=" + "/%09/evil.example/")
    page.wait_for_selector("input[name=username]")
    page.fill("input[name=username]", SALLY.username)
    page.fill("input[name=password]", SALLY.password)
    page.click("button[type=submit], input[type=submit] >> nth=0")
    page.wait_for_url(berth.url + "/**")
    page.wait_for_load_state()
    assert tampered, "the assertion consumer was posted to"
    assert page.url == berth.url + "/"
    assert SALLY.username in page.inner_text("header .who")
