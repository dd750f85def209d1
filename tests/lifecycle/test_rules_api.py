"""Immutable tags, quotas and usage through the wire: `/v2` refusals with DENIED naming the rule
or the limit, and the management API (`/api/v1`) with its role checks and its audit trail.
In-process (the ASGI app, no socket), on SQLite."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.app import create_app
from appliance.auth import accounts
from appliance.auth.passwords import hash_password
from appliance.metadata import audit
from appliance.metadata.db import Tx
from appliance.oci import mediatypes as mt
from appliance.server import Services, open_services
from tests.api.conftest import (
    ADMIN,
    ADMIN_PASSWORD,
    FakeClock,
    api_client,
    cheap_password_hashing,
    data_dir,
    make_config,
)
from tests.lifecycle.world import image_manifest, sha

__all__ = ["cheap_password_hashing", "data_dir"]

PASSWORD = "a-long-test-password-1"


@pytest.fixture
async def services(data_dir: Path) -> AsyncIterator[Services]:
    s = await open_services(make_config(data_dir), FakeClock())
    try:
        now = 1_800_000_000.0

        def people(tx: Tx) -> None:
            accounts.create_namespace(tx, "test", "team", now)
            for name, role in (("dev", "developer"), ("maint", "maintainer"), ("read", "reader")):
                accounts.add_user(tx, "test", name, hash_password(PASSWORD), now)
                accounts.set_member(tx, "test", "team", name, role, now)

        await s.db.write(people)
        yield s
    finally:
        s.close()


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services.registry, access=services.access, lifecycle=services.lifecycle)
    async with api_client(app) as c:
        yield c


def as_user(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    password = ADMIN_PASSWORD if name == ADMIN else PASSWORD
    return {"auth": (name, password)}


async def push_blob(client: httpx.AsyncClient, repo: str, data: bytes) -> httpx.Response:
    return await client.post(f"/v2/{repo}/blobs/uploads/?digest={sha(data)}", content=data)


async def push_image(
    client: httpx.AsyncClient, repo: str, tag: str, layers: list[bytes]
) -> httpx.Response:
    for data in [b"{}", *layers]:
        r = await push_blob(client, repo, data)
        assert r.status_code == 201, r.text
    return await client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=image_manifest(b"{}", layers),
        headers={"content-type": mt.OCI_MANIFEST},
    )


def denied(r: httpx.Response) -> str:
    assert r.status_code == 403, r.text
    error = r.json()["errors"][0]
    assert error["code"] == "DENIED"
    return str(error["message"])


async def test_immutable_tags_cannot_move_or_go(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/namespaces/team/immutable-rules", json={"pattern": r"v\d+\.\d+"})
    assert r.status_code == 201, r.text
    rule = r.json()
    assert (await push_image(client, "team/app", "v1.0", [b"one"])).status_code == 201
    # Pushing the same manifest again is not a change: allowed (docker re-pushes do this).
    assert (await push_image(client, "team/app", "v1.0", [b"one"])).status_code == 201
    message = denied(await push_image(client, "team/app", "v1.0", [b"two"]))
    assert f"rule {rule['id']}" in message
    assert "v1.0" in message
    assert "overwritten" in message
    assert "deleted" in denied(await client.delete("/v2/team/app/manifests/v1.0"))
    digest = sha(image_manifest(b"{}", [b"one"]))
    denied(await client.delete(f"/v2/team/app/manifests/{digest}"))
    # Tags the rule does not match move freely; other namespaces are not affected.
    assert (await push_image(client, "team/app", "latest", [b"one"])).status_code == 201
    assert (await push_image(client, "team/app", "latest", [b"two"])).status_code == 201
    assert (await push_image(client, "other/app", "v1.0", [b"one"])).status_code == 201
    assert (await push_image(client, "other/app", "v1.0", [b"two"])).status_code == 201
    # Once the rule is removed, the tag moves.
    r = await client.delete(f"/api/v1/namespaces/team/immutable-rules/{rule['id']}")
    assert r.status_code == 200
    assert (await push_image(client, "team/app", "v1.0", [b"two"])).status_code == 201


async def test_immutable_rules_need_maintainers_and_a_valid_pattern(
    client: httpx.AsyncClient, services: Services
) -> None:
    body = {"pattern": "release-.*"}
    for user, status in (("read", 403), ("dev", 403), ("maint", 201)):
        r = await client.post(
            "/api/v1/namespaces/team/immutable-rules", json=body, **as_user(client, user)
        )
        assert r.status_code == status, (user, r.text)
    r = await client.get("/api/v1/namespaces/team/immutable-rules", **as_user(client, "read"))
    assert [x["pattern"] for x in r.json()] == ["release-.*"]
    r = await client.post("/api/v1/namespaces/team/immutable-rules", json={"pattern": "(*"})
    assert r.status_code == 400
    assert "regular expression" in r.json()["error"]
    for pattern, said in ((r"(\d)\1", "backreferences"), (r"(?!latest).*", "lookahead")):
        r = await client.post("/api/v1/namespaces/team/immutable-rules", json={"pattern": pattern})
        assert r.status_code == 400
        assert said in r.json()["error"]
    r = await client.post("/api/v1/namespaces/team/immutable-rules", json={"pattern": "x" * 257})
    assert r.status_code == 400
    assert "longer than 256 characters" in r.json()["error"]
    events = await services.db.read(lambda tx: audit.events(tx, action="immutable_rule.create"))
    assert [(e["actor"], e["target"]) for e in events] == [("maint", "team")]


async def test_a_push_past_the_quota_is_denied_with_usage_and_limit(
    client: httpx.AsyncClient, services: Services
) -> None:
    layer = b"x" * 1000
    assert (await push_image(client, "team/app", "v1", [layer])).status_code == 201
    r = await client.put("/api/v1/namespaces/team/quota", json={"limit_bytes": 1500})
    assert r.status_code == 200, r.text
    # A blob the namespace already holds costs nothing, even from another repository.
    assert (await push_image(client, "team/copy", "v1", [layer])).status_code == 201
    message = denied(await push_blob(client, "team/app", b"y" * 600))
    assert "1002 bytes" in message
    assert "1500 bytes" in message
    assert "team" in message
    assert (await push_blob(client, "team/app", b"y" * 400)).status_code == 201
    # The refused upload left nothing behind.
    assert await services.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM uploads")) == 0
    # Other namespaces have no quota.
    assert (await push_blob(client, "other/app", b"z" * 5000)).status_code == 201
    r = await client.get("/api/v1/namespaces/team/usage")
    usage = r.json()
    assert usage["total_bytes"] == 1402
    assert usage["quota_bytes"] == 1500
    assert (await client.delete("/api/v1/namespaces/team/quota")).status_code == 200
    assert (await push_blob(client, "team/app", b"y" * 600)).status_code == 201


async def test_quotas_are_for_admins(client: httpx.AsyncClient) -> None:
    for user in ("maint", "dev", "read"):
        r = await client.put(
            "/api/v1/namespaces/team/quota", json={"limit_bytes": 10}, **as_user(client, user)
        )
        assert r.status_code == 403, user
    r = await client.put("/api/v1/namespaces/team/quota", json={"limit_bytes": "ten"})
    assert r.status_code == 400
    r = await client.put("/api/v1/namespaces/team/quota", json={"limit_bytes": 10})
    assert r.status_code == 200
    assert [q["namespace"] for q in (await client.get("/api/v1/quotas")).json()] == ["team"]
    r = await client.get("/api/v1/namespaces/team/usage", **as_user(client, "read"))
    assert r.status_code == 200
    assert r.json()["quota_bytes"] == 10


async def test_usage_separates_shared_and_unique_bytes(client: httpx.AsyncClient) -> None:
    shared, own, elsewhere = b"s" * 100, b"o" * 10, b"e" * 1000
    assert (await push_image(client, "team/a", "v1", [shared, own])).status_code == 201
    assert (await push_image(client, "team/b", "v1", [shared])).status_code == 201
    assert (await push_image(client, "other/c", "v1", [shared, elsewhere])).status_code == 201
    found = {u["name"]: u for u in (await client.get("/api/v1/usage")).json()}
    team = found["team"]
    # distinct blobs of team: {}, shared, own
    assert (team["blobs"], team["total_bytes"]) == (3, 112)
    assert (team["shared_bytes"], team["unique_bytes"]) == (102, 10)  # {} and s also in other/
    repos = {r["name"]: r for r in team["repositories"]}
    assert (repos["team/a"]["total_bytes"], repos["team/a"]["unique_bytes"]) == (112, 10)
    assert (repos["team/b"]["total_bytes"], repos["team/b"]["unique_bytes"]) == (102, 0)
    # A reader of team sees team only.
    visible = (await client.get("/api/v1/usage", **as_user(client, "read"))).json()
    assert [u["name"] for u in visible] == ["team"]


async def test_the_openapi_document_lists_the_lifecycle_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/api/v1/openapi.json")).json()["paths"]
    for path in (
        "/usage",
        "/namespaces/{ns}/quota",
        "/namespaces/{ns}/immutable-rules",
        "/namespaces/{ns}/policies",
        "/policies/{policy_id}/preview",
        "/gc",
    ):
        assert path in paths, path


async def test_policies_through_the_api_need_a_preview_first(
    client: httpx.AsyncClient, services: Services
) -> None:
    for tag in ("a", "b", "c"):
        assert (await push_image(client, "team/app", tag, [tag.encode() * 50])).status_code == 201
        services.lifecycle.collector.clock.advance(10)  # type: ignore[union-attr,attr-defined]
    body = {"repository": "team/app", "keep_recent": 1}
    r = await client.post("/api/v1/namespaces/team/policies", json=body, **as_user(client, "dev"))
    assert r.status_code == 403
    r = await client.post("/api/v1/namespaces/team/policies", json={"keep_regex": "x"})
    assert r.status_code == 400
    assert "keep_recent or older_than_days" in r.json()["error"]
    r = await client.post("/api/v1/namespaces/team/policies", json=body, **as_user(client, "maint"))
    assert r.status_code == 201, r.text
    policy = r.json()
    run = f"/api/v1/policies/{policy['id']}/run"
    r = await client.post(run, **as_user(client, "maint"))
    assert r.status_code == 409
    assert "preview" in r.json()["error"]
    r = await client.post(f"/api/v1/policies/{policy['id']}/preview", **as_user(client, "maint"))
    preview = r.json()
    assert sorted(t["tag"] for t in preview["tags"]) == ["a", "b"]
    assert preview["unique_bytes"] == 100
    tags = (await client.get("/v2/team/app/tags/list")).json()["tags"]
    assert tags == ["a", "b", "c"]  # a preview changes nothing
    r = await client.post(run, **as_user(client, "maint"))
    assert r.status_code == 200, r.text
    assert json.dumps(r.json()["tags"], sort_keys=True) == json.dumps(
        preview["tags"], sort_keys=True
    )
    assert (await client.get("/v2/team/app/tags/list")).json()["tags"] == ["c"]
    # A change of settings needs a new preview.
    r = await client.patch(f"/api/v1/policies/{policy['id']}", json={"keep_recent": 0})
    assert r.json()["previewed_at"] is None
    assert (await client.post(run)).status_code == 409
    listed = (
        await client.get("/api/v1/namespaces/team/policies", **as_user(client, "read"))
    ).json()
    assert [p["id"] for p in listed] == [policy["id"]]


async def test_a_stored_pattern_re2_refuses_protects_nothing_and_is_reported(
    client: httpx.AsyncClient, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """A rule and a policy saved by an older Berth (Python's re took lookarounds) keep the
    server serving: the rule protects no tag, the policy removes nothing, and both say why."""
    now = 1_800_000_000.0

    def older_berth(tx: Tx) -> None:
        tx.execute(
            "INSERT INTO immutable_tag_rules (namespace, pattern, created_by, created_at) "
            "VALUES ('team', '(?!latest).*', 'old', :now)",
            {"now": now},
        )
        settings = {"keep_recent": 0, "keep_regex": "(?=v).*", "time_basis": "push"}
        tx.execute(
            "INSERT INTO cleanup_policies (scope, settings, enabled, created_by, created_at, "
            "updated_at) VALUES ('team', :s, 1, 'old', :now, :now)",
            {"s": json.dumps(settings), "now": now},
        )

    await services.db.write(older_berth)
    services.lifecycle.rules.invalidate()
    with caplog.at_level("WARNING", logger="berth.lifecycle"):
        assert (await push_image(client, "team/app", "v1", [b"one"])).status_code == 201
        assert (await push_image(client, "team/app", "v1", [b"two"])).status_code == 201
    assert any("protects no tag" in r.getMessage() for r in caplog.records)
    (rule,) = (await client.get("/api/v1/namespaces/team/immutable-rules")).json()
    assert "lookahead" in rule["problem"]
    (policy,) = (await client.get("/api/v1/namespaces/team/policies")).json()
    assert "lookahead" in policy["problem"]
    r = await client.post(f"/api/v1/policies/{policy['id']}/preview")
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == []
    assert "removes nothing" in r.json()["problem"]
    r = await client.post(f"/api/v1/policies/{policy['id']}/run")
    assert r.status_code == 200, r.text
    assert r.json()["tags"] == []
    assert (await client.get("/v2/team/app/tags/list")).json()["tags"] == ["v1"]
