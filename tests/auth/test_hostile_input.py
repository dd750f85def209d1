"""Hostile bodies and ids on the management API (`/api/v1`), written as the attacks: each used to
be a 500 (or a 400 carrying Python's own words) and is now a 400, 404, 413 or 415 with the
API's `{"error": ...}` body, in Berth's words, and changes nothing.

In-process, against every route that reads a body (taken from the OpenAPI document, so a new
route is attacked too)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from appliance.api.inputs import MAX_BODY, MAX_DEPTH
from appliance.server import Services
from tests.api.conftest import api_client
from tests.auth.conftest import Cast

# Words of Python exceptions that once reached clients.
PYTHON_WORDS = (
    "Traceback",
    "invalid literal",
    "could not convert",
    "Expecting value",
    "object has no attribute",
    "argument must be",
    "not JSON serializable",
    "int too large",
    "RecursionError",
    "TypeError",
    "ValueError",
)
PW = "long-enough-password-1"
NESTED = b"[" * 100_000 + b"]" * 100_000
TOO_DEEP = json.dumps(json.loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))).encode()


def api_error(r: httpx.Response, status: int) -> str:
    """The error message of an /api/v1 answer of `status`, checked for Python's words."""
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json"), r.headers
    message = r.json()["error"]
    assert isinstance(message, str)
    assert message
    for words in PYTHON_WORDS:
        assert words not in message, message
    return message


def body_routes() -> list[tuple[str, str]]:
    """(method, path) of every management route that documents a JSON body, with its path
    parameters filled in with things that exist once `seeded` ran."""
    from appliance.api.manage import OPENAPI  # noqa: PLC0415

    values = {
        "{ns}": "team",
        "{name}": "other",
        "{user}": "other",
        "{policy_id}": "1",
        "{advisory}": "CVE-2024-0001",
    }
    out = []
    for path, ops in OPENAPI["paths"].items():
        for method, op in ops.items():
            if "requestBody" in op:
                filled = path
                for key, value in values.items():
                    filled = filled.replace(key, value)
                out.append((method.upper(), "/api/v1" + filled))
    return sorted(out)


@pytest.fixture
async def admin(app: Any, cast: Cast, services: Services) -> Any:
    """The admin's client, with cleanup policy 1 in `team` (so /policies/1 exists)."""
    async with api_client(app) as client:
        r = await client.post("/api/v1/namespaces/team/policies", json={"keep_recent": 3})
        assert r.status_code == 201, r.text
        yield client


async def test_every_body_route_is_attacked(app: Any, cast: Cast) -> None:
    """The list of routes below is not empty and covers the known ones (so the attacks run)."""
    async with api_client(app):
        routes = body_routes()
    paths = {p for _, p in routes}
    for path in ("/api/v1/users", "/api/v1/tokens", "/api/v1/namespaces/team/policies"):
        assert path in paths


async def test_deeply_nested_json_is_400_on_every_route(admin: httpx.AsyncClient) -> None:
    for method, path in body_routes():
        for body in (NESTED, TOO_DEEP):
            r = await admin.request(
                method, path, content=body, headers={"content-type": "application/json"}
            )
            message = api_error(r, 400)
            assert "nests deeper" in message, (method, path, message)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"{", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"a": NaN}', "not a JSON number"),
        (b'{"a": -Infinity}', "not a JSON number"),
        (b'{"a": 1e999}', "too large"),
        (b'{"a": ' + b"9" * 5000 + b"}", "too long"),
        (b"   ", "empty"),
    ],
)
async def test_malformed_bodies_are_400_in_our_words(
    admin: httpx.AsyncClient, body: bytes, said: str
) -> None:
    r = await admin.post(
        "/api/v1/namespaces", content=body, headers={"content-type": "application/json"}
    )
    assert said in api_error(r, 400)


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/api/v1/tokens", {"name": "t", "expires_at": [1]}, "expires_at"),
        ("POST", "/api/v1/tokens", {"name": "t", "scopes": "api"}, "scopes"),
        ("POST", "/api/v1/namespaces/team/robots", {"name": "r", "expires_at": {}}, "expires_at"),
        ("POST", "/api/v1/users", {"name": "u", "password": ["x"]}, "password"),
        (
            "POST",
            "/api/v1/users",
            {"name": "u", "password": "long-enough-1", "admin": "false"},
            "admin",
        ),
        ("PATCH", "/api/v1/users/other", {"disabled": "false"}, "disabled"),
        ("PATCH", "/api/v1/users/other", {"admin": 1}, "admin"),
        ("POST", "/api/v1/namespaces", {"name": "n", "public": "yes"}, "public"),
        ("PUT", "/api/v1/namespaces/team/members/other", {"role": 7}, "role"),
        ("PUT", "/api/v1/namespaces/team/quota", {"limit_bytes": 2**64}, "limit_bytes"),
        ("PUT", "/api/v1/namespaces/team/quota", {"limit_bytes": 1.5}, "limit_bytes"),
        ("POST", "/api/v1/namespaces/team/immutable-rules", {"pattern": ["v1"]}, "pattern"),
        (
            "POST",
            "/api/v1/namespaces/team/policies",
            {"keep_recent": 1, "enabled": "no"},
            "enabled",
        ),
        ("PATCH", "/api/v1/policies/1", {"enabled": []}, "enabled"),
        ("PUT", "/api/v1/namespaces/team/scan-policy", {"block_severity": 4}, "block_severity"),
        (
            "PUT",
            "/api/v1/namespaces/team/scan-policy/exceptions/CVE-1",
            {"expires_at": [1]},
            "expires_at",
        ),
        ("POST", "/api/v1/namespaces/team/webhooks", {"url": 5}, "url"),
        ("POST", "/api/v1/backups/prune", {"dry_run": "true"}, "dry_run"),
        ("POST", "/api/v1/namespaces/team/ci-trust", {"issuer": ["https://x"]}, "issuer"),
        (
            "POST",
            "/api/v1/namespaces/team/ci-trust",
            {"audience": "a", "claims": {"project_path": 5}, "access": "push"},
            "claims",
        ),
        ("POST", "/api/v1/namespaces/team/ci-trust", {"claims": ["a=b"]}, "claims"),
        ("POST", "/api/v1/namespaces/team/ci-trust", {"jwks": "{}"}, "jwks"),
        ("POST", "/api/v1/namespaces/team/ci-trust", {"access": True}, "access"),
        ("POST", "/api/v1/namespaces/team/ci-trust/test", {"token": 5}, "token"),
    ],
)
async def test_a_field_of_the_wrong_type_is_400_naming_it(
    admin: httpx.AsyncClient, services: Services, method: str, path: str, body: Any, field: str
) -> None:
    audit_before = await services.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM audit_events"))
    message = api_error(await admin.request(method, path, json=body), 400)
    assert field in message
    after = await services.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM audit_events"))
    assert after == audit_before  # nothing changed, nothing was recorded


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/api/v1/policies/99999999999999999999999999"),
        ("GET", "/api/v1/policies/9223372036854775808"),  # 2**63: one past a BIGINT
        ("POST", "/api/v1/policies/99999999999999999999999999/preview"),
        ("GET", "/api/v1/policies/²"),  # str.isdigit() says yes, int() says no
        ("DELETE", "/api/v1/tokens/99999999999999999999999999"),
        ("DELETE", "/api/v1/namespaces/team/immutable-rules/99999999999999999999999"),
        ("DELETE", "/api/v1/namespaces/team/webhooks/99999999999999999999999"),
        ("GET", "/api/v1/namespaces/team/webhooks/١٢/deliveries"),  # Arabic-Indic digits
        ("DELETE", "/api/v1/namespaces/team/ci-trust/99999999999999999999999"),
        ("DELETE", "/api/v1/namespaces/team/ci-trust/²"),
    ],
)
async def test_ids_beyond_64_bits_name_nothing(
    admin: httpx.AsyncClient, method: str, path: str
) -> None:
    kwargs = {"json": {"keep_recent": 1}} if method == "PATCH" else {}
    api_error(await admin.request(method, path, **kwargs), 404)


async def test_audit_paging_values_are_checked(admin: httpx.AsyncClient) -> None:
    assert "limit" in api_error(await admin.get("/api/v1/audit", params={"limit": "ten"}), 400)
    assert "not a time" in api_error(
        await admin.get("/api/v1/audit", params={"since": "1e999"}), 400
    )
    r = await admin.get("/api/v1/audit", params={"before": "9" * 40, "limit": "5"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ],
)
async def test_json_not_sent_as_json_is_415(
    admin: httpx.AsyncClient, services: Services, content_type: str | None
) -> None:
    """A browser sends these cross-site without asking first; /api/v1 reads none of them."""
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps({"name": "sneaky"}).encode()
    r = await admin.post("/api/v1/namespaces", content=body, headers=headers)
    assert "application/json" in api_error(r, 415)
    assert (await admin.get("/api/v1/namespaces/sneaky")).status_code == 404
    # An empty form POST to a route that takes no body: refused too (a cross-site form).
    r = await admin.post(
        "/api/v1/policies/1/preview",
        content=b"",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    api_error(r, 415)


async def test_json_with_a_charset_and_bodyless_posts_are_fine(admin: httpx.AsyncClient) -> None:
    r = await admin.post(
        "/api/v1/namespaces",
        content=json.dumps({"name": "fine"}).encode(),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 201, r.text
    assert (await admin.post("/api/v1/policies/1/preview")).status_code == 200


async def test_a_body_over_the_limit_is_413(admin: httpx.AsyncClient) -> None:
    big = json.dumps({"name": "x", "pad": "y" * MAX_BODY}).encode()
    r = await admin.post(
        "/api/v1/namespaces", content=big, headers={"content-type": "application/json"}
    )
    assert str(MAX_BODY) in api_error(r, 413)

    async def chunks() -> Any:  # no Content-Length: the limit holds while reading
        for _ in range(3):
            yield b" " * (MAX_BODY // 2)

    r = await admin.post(
        "/api/v1/namespaces", content=chunks(), headers={"content-type": "application/json"}
    )
    api_error(r, 413)
