"""The console against what a pusher or a form can send it, in process: an image config nested
far too deep (its manifest page used to be a 500 every time) or of the wrong shape, a
manifest nested hundreds of levels deep, ids beyond 64 bits, a tag pattern RE2
refuses (a form error next to the form, with what was typed), and another namespace's digest
or policy named through a repository of one's own."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.app import create_app
from appliance.auth import accounts, passwords
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
from tests.api.oci import digest, image_manifest

PASSWORD = "a-long-test-password"
OCI = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
async def services(data_dir: Path, clock: FakeClock) -> AsyncIterator[Services]:  # noqa: F811
    opened = await open_services(make_config(data_dir), clock)
    now = clock()

    def people(tx: Any) -> None:
        accounts.create_namespace(tx, "test", "team", now)
        accounts.create_namespace(tx, "test", "secret", now)
        accounts.add_user(tx, "test", "maint", passwords.hash_password(PASSWORD), now)
        accounts.set_member(tx, "test", "team", "maint", "maintainer", now)

    try:
        await opened.access.change(people)
        yield opened
    finally:
        opened.close()


@pytest.fixture
async def admin(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services.registry, access=services.access, lifecycle=services.lifecycle)
    async with api_client(app) as client:
        yield client


@asynccontextmanager
async def console(services: Services, user: str, password: str) -> AsyncIterator[Any]:
    """A console client signed in as `user` (its cookie kept), with its CSRF token at
    `.csrf`."""
    app = create_app(services.registry, access=services.access, lifecycle=services.lifecycle)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://b.test"
    ) as client:
        form = await client.get("/signin")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        signed = await client.post(
            "/signin",
            data={"csrf_token": token.group(1), "username": user, "password": password},
        )
        assert signed.status_code == 303, signed.text
        page = await client.get("/tokens")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf is not None
        client.csrf = csrf.group(1)  # type: ignore[attr-defined]
        yield client


async def push(client: httpx.AsyncClient, repo: str, config: bytes, tag: str) -> str:
    r = await client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": digest(config)}, content=config
    )
    assert r.status_code == 201, r.text
    r = await client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=image_manifest(config, []),
        headers={"content-type": OCI},
    )
    assert r.status_code == 201, r.text
    return r.headers["docker-content-digest"]


@pytest.mark.parametrize(
    "config",
    [
        b"[" * 50_000 + b"]" * 50_000,  # beyond the decoder's stack: it raised RecursionError
        json.dumps({"config": {"Labels": {"x": json.loads("[" * 900 + "]" * 900)}}}).encode(),
        json.dumps({"config": {"Labels": ["not", "a", "map"], "Env": 5, "Cmd": {"a": 1}}}).encode(),
        json.dumps({"config": {"Entrypoint": "sh", "Labels": {"big": "x" * 100_000}}}).encode(),
    ],
    ids=["nested-beyond-the-stack", "nested-900", "wrong-shapes", "huge-label"],
)
async def test_a_hostile_image_config_does_not_break_its_manifest_page(
    services: Services, admin: httpx.AsyncClient, config: bytes
) -> None:
    manifest_digest = await push(admin, "team/app", config, "1")
    async with console(services, ADMIN, ADMIN_PASSWORD) as client:
        page = await client.get(f"/r/team/app/-/manifest/{manifest_digest}")
        assert page.status_code == 200, page.text[:500]
        assert manifest_digest in page.text
        assert len(page.text) < 200_000  # a huge label is cut, not copied whole
        tags = await client.get("/r/team/app")
        assert tags.status_code == 200


async def test_a_deeply_nested_manifest_is_shown_as_sent(
    services: Services, admin: httpx.AsyncClient
) -> None:
    config = b"{}"
    r = await admin.post(
        "/v2/team/app/blobs/uploads/", params={"digest": digest(config)}, content=config
    )
    assert r.status_code == 201
    deep = json.loads("[" * 800 + "]" * 800)
    payload = image_manifest(config, [], extra=deep)
    r = await admin.put(
        "/v2/team/app/manifests/deep", content=payload, headers={"content-type": OCI}
    )
    assert r.status_code == 201, r.text
    async with console(services, ADMIN, ADMIN_PASSWORD) as client:
        page = await client.get(f"/r/team/app/-/manifest/{r.headers['docker-content-digest']}")
    assert page.status_code == 200, page.text[:500]
    assert "&#34;extra&#34;: [" in page.text or '"extra": [' in page.text  # as pushed


async def test_a_pattern_re2_refuses_is_a_form_error_keeping_what_was_typed(
    services: Services,
) -> None:
    async with console(services, "maint", PASSWORD) as client:
        csrf = client.csrf  # type: ignore[attr-defined]
        r = await client.post(
            "/storage/team",
            data={"csrf_token": csrf, "action": "add-rule", "pattern": "(?!latest).*"},
        )
        assert r.status_code == 400
        assert 'id="rule-error"' in r.text
        assert "lookahead and lookbehind" in r.text
        assert 'value="(?!latest).*"' in r.text
        r = await client.post(
            "/storage/team",
            data={
                "csrf_token": csrf,
                "action": "add-policy",
                "keep_recent": "2",
                "keep_regex": r"(\d)\1",
            },
        )
        assert r.status_code == 400
        assert 'id="policy-error"' in r.text
        assert "backreferences" in r.text
        assert 'value="2"' in r.text
        listed = await client.get("/storage/team")
        assert "No rules" in listed.text
        assert "No cleanup policies" in listed.text


@pytest.mark.parametrize("bad", ["99999999999999999999999", "²", "-1", "1e3", ""])
async def test_ids_in_console_forms_are_bounded(services: Services, bad: str) -> None:
    async with console(services, "maint", PASSWORD) as client:
        csrf = client.csrf  # type: ignore[attr-defined]
        for path, data in (
            ("/storage/team", {"action": "preview", "id": bad}),
            ("/storage/team", {"action": "remove-rule", "id": bad}),
            ("/namespaces/team/webhooks", {"action": "remove", "id": bad}),
            ("/tokens", {"action": "revoke", "id": bad}),
            ("/namespaces/team/ci-trust", {"action": "remove", "rule": bad}),
        ):
            r = await client.post(path, data={"csrf_token": csrf, **data})
            assert r.status_code in (400, 404), (path, bad, r.status_code, r.text[:300])
            assert "Traceback" not in r.text
            assert "invalid literal" not in r.text


async def test_another_namespaces_digest_or_policy_is_not_shown_through_ones_own(
    services: Services, admin: httpx.AsyncClient
) -> None:
    """`maint` maintains `team` only: `secret`'s image, report and policy stay out of reach
    however they are named."""
    secret = await push(admin, "secret/app", b'{"architecture": "amd64"}', "1")
    await push(admin, "team/app", b"{}", "1")
    r = await admin.post("/api/v1/namespaces/secret/policies", json={"keep_recent": 1})
    assert r.status_code == 201, r.text
    policy = r.json()["id"]
    async with console(services, "maint", PASSWORD) as client:
        csrf = client.csrf  # type: ignore[attr-defined]
        for path in (
            f"/r/team/app/-/manifest/{secret}",
            f"/r/team/app/-/vulnerabilities/{secret}",
            f"/r/secret/app/-/manifest/{secret}",
        ):
            page = await client.get(path)
            assert page.status_code in (403, 404), (path, page.status_code)
            assert "amd64" not in page.text  # nothing of the image's config
        for action in ("preview", "run", "delete", "disable"):
            r = await client.post(
                "/storage/team", data={"csrf_token": csrf, "action": action, "id": str(policy)}
            )
            assert r.status_code == 404, (action, r.status_code)
    still = await admin.get(f"/api/v1/policies/{policy}")
    assert still.status_code == 200
    assert still.json()["previewed_at"] is None
