"""The console in a real browser (Chromium through Playwright) against a real Berth, with
images pushed and checked by skopeo. Every page visited is saved as a screenshot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.browser import console_signin, screenshot
from tests.support.clients import Oras, Skopeo, ToolError
from tests.support.images import (
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    ImageCache,
    LayoutWriter,
    _busybox_layers,
)
from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server, require_binary

SCRIPT = "<script>window.__pwned = 1</script>"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageCache:
    require_binary("busybox", "busybox-static")
    return ImageCache(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    return Skopeo(tmp_path_factory.mktemp("skopeo"))


@pytest.fixture(scope="module")
def pushed(console_berth: Server, images: ImageCache, skopeo: Skopeo) -> dict[str, str]:
    """busybox pushed by skopeo as browse/app:1, :2 and :keep; the multi-arch index as :multi."""
    creds = f"{ADMIN}:{ADMIN_PASSWORD}"
    base = f"docker://{console_berth.host}/browse/app"
    digest = ""
    for tag in ("1", "2", "keep"):
        digest = skopeo.push(images.busybox(), f"{base}:{tag}", creds=creds)
    multi = skopeo.push(images.multi_arch(), f"{base}:multi", creds=creds)
    return {"digest": digest, "multi": multi}


def signed_in(page, server: Server) -> None:
    console_signin(page, server, ADMIN, ADMIN_PASSWORD)


def test_local_signin_sets_a_safe_rotated_session_cookie(page, console_berth: Server):
    page.goto(console_berth.url + "/")
    assert "/signin" in page.url  # not signed in: sent to the sign-in page
    screenshot(page, "signin")
    page.fill("input[name=username]", ADMIN)
    page.fill("input[name=password]", "wrong-password")
    page.click("form[action='/signin'] button[type=submit]")
    assert "Incorrect user name or password" in page.inner_text(".error")

    signed_in(page, console_berth)
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["berth_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"
    assert session["secure"] is False  # plain HTTP on loopback; see test_secure_cookie_*
    first = session["value"]

    # Signing in again rotates the id, and the old one stops working.
    signed_in(page, console_berth)
    second = {c["name"]: c for c in page.context.cookies()}["berth_session"]["value"]
    assert second != first
    response = page.request.get(
        console_berth.url + "/tokens",
        headers={"cookie": f"berth_session={first}"},
        max_redirects=0,
    )
    assert response.status == 303
    assert response.headers["location"].startswith("/signin")

    # Signing out ends the session on the server too.
    page.goto(console_berth.url + "/")
    csp = page.request.get(console_berth.url + "/").headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    page.click("header form.signout button")
    assert "/signin" in page.url
    response = page.request.get(
        console_berth.url + "/", headers={"cookie": f"berth_session={second}"}, max_redirects=0
    )
    assert response.status == 303


def test_browse_to_an_image_pushed_by_skopeo(page, console_berth: Server, pushed):
    signed_in(page, console_berth)
    page.goto(console_berth.url + "/")
    assert "browse" in page.inner_text("table.chart")
    assert "browse/app" in page.inner_text("main")
    assert f"docker push {console_berth.host}/admin/NAME:TAG" in page.inner_text("section.push")
    screenshot(page, "overview")

    page.goto(console_berth.url + "/repositories")
    page.click("#repositories >> text=browse/app")
    assert page.url.endswith("/r/browse/app")
    rows = page.inner_text("#tags")
    for tag in ("1", "2", "keep", "multi"):
        assert re.search(rf"^\s*{tag}\b", rows, re.M), rows
    assert "linux/" in rows  # platform from the image config / the index
    assert ADMIN in rows  # pushed by
    assert pushed["digest"][:19] in rows
    screenshot(page, "repository")

    page.click(f"#tags a[href$='{pushed['digest']}'] >> nth=0")
    text = page.inner_text("main")
    assert pushed["digest"] in text
    assert "berth-e2e-busybox" in page.inner_text("#labels")
    assert "jinja" not in page.inner_text("main")
    assert len(page.locator("#layers tbody tr").all()) == 2
    assert "/bin/busybox" in text
    screenshot(page, "manifest")

    page.goto(f"{console_berth.url}/r/browse/app/-/manifest/{pushed['multi']}")
    platforms = page.inner_text("#platforms")
    assert "linux/amd64" in platforms
    assert "linux/arm64" in platforms
    screenshot(page, "manifest-index")

    page.goto(console_berth.url + "/push")
    lines = page.inner_text("#docker-lines")
    assert f"docker login {console_berth.host} -u {ADMIN}" in lines
    assert f"docker push {console_berth.host}/" in lines
    screenshot(page, "push-here")


def test_delete_tags_with_confirmation(page, console_berth: Server, pushed, skopeo: Skopeo):
    creds = f"{ADMIN}:{ADMIN_PASSWORD}"
    ref = f"docker://{console_berth.host}/browse/app"
    assert {"1", "2"} <= set(skopeo.list_tags(ref, creds=creds))
    signed_in(page, console_berth)
    page.goto(console_berth.url + "/r/browse/app")
    page.check("input[name=tag][value='1']")
    page.check("input[name=tag][value='2']")
    page.click("#delete-selected")
    assert "Delete 2 tag(s)" in page.inner_text("h1")
    screenshot(page, "confirm-delete")
    page.click("#confirm-delete")
    assert "Deleted 2 tag(s)" in page.inner_text(".notice")
    tags = set(skopeo.list_tags(ref, creds=creds))
    assert "1" not in tags
    assert "2" not in tags
    assert "keep" in tags

    page.goto(console_berth.url + "/audit?action=tag.delete")
    assert "browse/app:1" in page.inner_text("#audit")
    screenshot(page, "audit")


def test_create_a_token_and_push_with_it(
    page, console_berth: Server, images: ImageCache, skopeo: Skopeo
):
    signed_in(page, console_berth)
    page.goto(console_berth.url + "/tokens")
    page.fill("input[name=name]", "ci pipeline")
    page.click("#create-token")
    secret = page.inner_text("#secret").strip()
    assert secret.startswith("berth_pat_")
    screenshot(page, "token-created")

    digest = skopeo.push(
        images.busybox(),
        f"docker://{console_berth.host}/admin/with-token:1",
        creds=f"{ADMIN}:{secret}",
    )
    assert digest.startswith("sha256:")

    page.goto(console_berth.url + "/tokens")
    assert "ci pipeline" in page.inner_text("#tokens")
    assert secret not in page.content()  # shown once, never again
    screenshot(page, "tokens")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#tokens button:has-text('Revoke')")
    assert "Token revoked" in page.inner_text(".notice")
    with pytest.raises(ToolError):
        skopeo.push(
            images.busybox(),
            f"docker://{console_berth.host}/admin/with-token:2",
            creds=f"{ADMIN}:{secret}",
        )


def test_script_in_labels_and_search_renders_as_text(
    page, console_berth: Server, skopeo: Skopeo, tmp_path: Path
):
    require_binary("busybox", "busybox-static")
    layout = tmp_path / "hostile"
    writer = LayoutWriter(layout)
    config = {"Labels": {"evil": SCRIPT, SCRIPT: "key"}, "Cmd": [SCRIPT]}
    desc, _ = writer.add_image(_busybox_layers(writer, OCI_LAYER_GZIP), config)
    writer.tag(desc, "hostile")
    skopeo.copy(
        f"oci:{layout}:hostile",
        f"docker://{console_berth.host}/browse/hostile:x",
        creds=f"{ADMIN}:{ADMIN_PASSWORD}",
    )
    signed_in(page, console_berth)
    page.goto(f"{console_berth.url}/r/browse/hostile/-/manifest/{desc.digest}")
    assert SCRIPT in page.inner_text("#labels")
    assert page.evaluate("window.__pwned") is None
    screenshot(page, "manifest-hostile-labels")

    page.goto(console_berth.url + "/repositories?q=" + SCRIPT.replace(" ", "%20"))
    assert page.evaluate("window.__pwned") is None
    assert page.input_value("input[name=q]") == SCRIPT


def test_a_form_posted_without_its_csrf_token_is_refused(page, console_berth: Server):
    signed_in(page, console_berth)
    url = console_berth.url + "/tokens"
    refused = page.request.post(url, form={"name": "sneaky", "scope": "read_registry"})
    assert refused.status == 403
    wrong = page.request.post(url, form={"name": "sneaky", "csrf_token": "x" * 43})
    assert wrong.status == 403
    page.goto(url)
    assert "sneaky" not in page.inner_text("main")

    # The sign-in form has its own token (no session exists yet).
    fresh = page.context.browser.new_context()
    try:
        response = fresh.request.post(
            console_berth.url + "/signin", form={"username": ADMIN, "password": ADMIN_PASSWORD}
        )
        assert response.status == 403
        assert "berth_session" not in {c["name"] for c in fresh.cookies()}
    finally:
        fresh.close()


def test_namespaces_members_users_and_audit(page, console_berth: Server):
    signed_in(page, console_berth)
    page.goto(console_berth.url + "/users")
    page.fill("form:has(input[value=create]) input[name=name]", "carol")
    page.fill("form:has(input[value=create]) input[name=password]", "carol-long-password-1")
    page.click("form:has(input[value=create]) button[type=submit]")
    assert "User carol created" in page.inner_text(".notice")
    assert "carol" in page.inner_text("#users")
    screenshot(page, "users")

    page.goto(console_berth.url + "/namespaces")
    page.fill("input[name=name]", "team-web")
    page.click("form[action='/namespaces'] button[type=submit]")
    assert page.url.endswith("/namespaces/team-web")
    page.fill("form:has(input[value=member]) input[name=user]", "carol")
    page.select_option("form:has(input[value=member]) select[name=role]", "developer")
    page.click("form:has(input[value=member]) button[type=submit]")
    assert "carol" in page.inner_text("#members")
    page.check("form:has(input[value=visibility]) input[name=public]")
    page.click("form:has(input[value=visibility]) button[type=submit]")
    assert "team-web is now public" in page.inner_text(".notice")
    page.fill("form:has(input[value=robot]) input[name=name]", "ci")
    page.click("form:has(input[value=robot]) button[type=submit]")
    assert page.inner_text("#secret").startswith("berth_robot_")
    page.goto(console_berth.url + "/namespaces/team-web")
    assert "team-web+ci" in page.inner_text("#robots")
    screenshot(page, "namespace")
    page.goto(console_berth.url + "/namespaces")
    screenshot(page, "namespaces")

    page.goto(console_berth.url + "/audit")
    page.fill("input[name=actor]", ADMIN)
    page.fill("input[name=action]", "member.")
    page.click("form.filters button")
    events = page.inner_text("#audit")
    assert "team-web/carol" in events
    assert "namespace.create" not in events

    # carol (developer in team-web, not an admin) sees no Users page.
    other = page.context.browser.new_context()
    try:
        tab = other.new_page()
        console_signin(tab, console_berth, "carol", "carol-long-password-1")
        assert "Users" not in tab.inner_text("header nav")
        tab.goto(console_berth.url + "/users")
        assert "only instance admins" in tab.inner_text("main")
    finally:
        other.close()


def test_manifest_page_lists_signatures_and_sboms(
    page, console_berth: Server, pushed, skopeo: Skopeo, tmp_path: Path
):
    ref = f"docker://{console_berth.host}/browse/app@{pushed['digest']}"
    raw = skopeo.inspect_raw(ref, creds=f"{ADMIN}:{ADMIN_PASSWORD}")
    subject = Descriptor(OCI_MANIFEST, pushed["digest"], len(raw))
    sbom = tmp_path / "sbom.spdx.json"
    sbom.write_text('{"spdxVersion": "SPDX-2.3", "name": "busybox"}')
    with Oras(console_berth.host, (ADMIN, ADMIN_PASSWORD)) as oras_client:
        sbom_digest, _ = oras_client.push_artifact(
            "browse/app",
            "sbom",
            [(sbom, "application/spdx+json")],
            artifact_type="application/spdx+json",
            subject=subject,
        )
    signed_in(page, console_berth)
    page.goto(f"{console_berth.url}/r/browse/app/-/manifest/{pushed['digest']}")
    referrers = page.inner_text("#referrers")
    assert "SBOM (SPDX)" in referrers
    assert sbom_digest[:19] in referrers
    screenshot(page, "manifest-referrers")
