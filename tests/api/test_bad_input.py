"""Hostile and broken input: bad repository names on every route (including raw paths no
client would send), and unexpected failures, which must be answered as UNKNOWN with a request
id and never with a traceback."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from appliance.errors import StorageFull, Unavailable
from appliance.server import Services
from tests.api.oci import (
    API_VERSION_HEADER,
    assert_error,
    call_asgi,
    digest,
    error_code,
    image_manifest,
    push_blob,
)

D = digest(b"x")

# (method, path template): every route that takes a repository name.
ROUTES = [
    ("GET", "/v2/{}/tags/list"),
    ("GET", "/v2/{}/manifests/latest"),
    ("HEAD", "/v2/{}/manifests/latest"),
    ("PUT", "/v2/{}/manifests/latest"),
    ("DELETE", "/v2/{}/manifests/latest"),
    ("GET", f"/v2/{{}}/blobs/{D}"),
    ("HEAD", f"/v2/{{}}/blobs/{D}"),
    ("DELETE", f"/v2/{{}}/blobs/{D}"),
    ("POST", "/v2/{}/blobs/uploads/"),
    ("GET", "/v2/{}/blobs/uploads/0123456789abcdef0123456789abcdef"),
    ("PATCH", "/v2/{}/blobs/uploads/0123456789abcdef0123456789abcdef"),
    ("GET", f"/v2/{{}}/referrers/{D}"),
]

# Names a well-behaved client might send (httpx encodes what needs encoding).
BAD_NAMES = [
    "Upper/case",
    "UPPER",
    "team/App",
    "a" * 256,
    "team/" + "b" * 251,
    "-leading",
    "trailing-",
    ".hidden",
    "a..b",
    "a___b",
    "a/_b",
    "caf\u00e9",
    "with space",
    "semi;colon",
    "a:b",
]

# Raw names no client library would send unnormalised: dot segments, encoded traversal,
# encoded slashes, empty components, raw non-ASCII bytes.
RAW_BAD_NAMES = [
    b"..",
    b"../etc",
    b"a/../b",
    b"a/./b",
    b"a/..",
    b"../../../../etc",
    b"%2e%2e",
    b"a/%2e%2e/b",
    b"a/%2E%2E/%2E%2E",
    b"a%2Fb",
    b"a%2fb",
    b"a%2F..%2F..%2Fetc",
    b"%2e%2e%2f%2e%2e%2fetc",
    b"a//b",
    b"",
    b"/a",
    b"a/",
    b"a/%00",
    b"caf\xc3\xa9",
]


def check_name_invalid(
    status: int, headers: dict[str, str], body: bytes, method: str, raw_path: bytes
) -> None:
    assert status == 400, (raw_path, status, body[:300])
    assert b"Traceback" not in body
    assert headers[API_VERSION_HEADER] == "registry/2.0"
    if method != "HEAD":
        doc = json.loads(body)
        assert doc["errors"][0]["code"] == "NAME_INVALID", (raw_path, doc)


@pytest.mark.parametrize(("method", "template"), ROUTES)
async def test_bad_names_are_400_name_invalid(
    client: httpx.AsyncClient, method: str, template: str
) -> None:
    for name in BAD_NAMES:
        resp = await client.request(method, template.format(name), content=b"{}")
        assert resp.status_code == 400, (name, resp.status_code, resp.text[:300])
        assert_error(resp, 400, "NAME_INVALID")


@pytest.mark.parametrize(("method", "template"), ROUTES)
async def test_traversal_and_empty_components_are_400_name_invalid(
    app: Any, method: str, template: str
) -> None:
    for raw_name in RAW_BAD_NAMES:
        raw_path = template.encode().replace(b"{}", raw_name)
        status, headers, body = await call_asgi(app, method, raw_path, body=b"{}")
        check_name_invalid(status, headers, body, method, raw_path)


async def test_longest_valid_name_is_accepted(client: httpx.AsyncClient) -> None:
    name = "/".join(["a" * 50] * 4) + "/" + "b" * 51
    assert len(name) == 255
    d = await push_blob(client, name, b"data")
    assert (await client.get(f"/v2/{name}/blobs/{d}")).content == b"data"


@pytest.mark.parametrize("name", ["a", "a/b", "a.b/c_d/e__f/g-h/i--j", "0/1/2", "x" * 64])
async def test_valid_names(client: httpx.AsyncClient, name: str) -> None:
    resp = await client.post(f"/v2/{name}/blobs/uploads/")
    assert resp.status_code == 202


async def test_bad_name_with_a_large_body_is_refused_without_reading_it(
    client: httpx.AsyncClient,
) -> None:
    resp = await client.post(
        "/v2/BAD/blobs/uploads/", params={"digest": D}, content=b"x" * (3 << 20)
    )
    assert_error(resp, 400, "NAME_INVALID")


async def test_manifest_put_to_a_bad_name_stores_nothing(client: httpx.AsyncClient) -> None:
    payload = image_manifest(b"{}", [])
    resp = await client.put("/v2/Bad/manifests/v1", content=payload)
    assert_error(resp, 400, "NAME_INVALID")
    assert (await client.get("/v2/_catalog")).json() == {"repositories": []}


# -- unexpected failures -------------------------------------------------------------------


async def test_unexpected_error_is_unknown_with_request_id_and_logged(
    client: httpx.AsyncClient,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom(*args: object) -> list[str]:
        raise RuntimeError("secret internal detail")

    await push_blob(client, "team/app", b"x")
    monkeypatch.setattr(services.registry.meta, "tags", boom)
    with caplog.at_level(logging.ERROR):
        resp = await client.get("/v2/team/app/tags/list")
    assert_error(resp, 500, "UNKNOWN")
    request_id = resp.headers["x-request-id"]
    assert resp.json()["errors"][0]["detail"]["request_id"] == request_id
    assert b"secret internal detail" not in resp.content
    assert b"RuntimeError" not in resp.content
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged
    assert logged[0].exc_info is not None  # the traceback goes to the log, not the client


async def test_unexpected_error_on_head_has_no_body(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(*args: object) -> None:
        raise ValueError("nope")

    monkeypatch.setattr(services.registry.meta, "blob", boom)
    resp = await client.head(f"/v2/team/app/blobs/{D}")
    assert resp.status_code == 500
    assert resp.content == b""


async def test_storage_full_is_a_clear_5xx(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def full(*args: object, **kwargs: object) -> None:  # BlobStore.append takes digest=
        raise StorageFull("storage is full: no space left for an upload")

    monkeypatch.setattr(services.registry.store, "append", full)
    resp = await client.post("/v2/team/app/blobs/uploads/", params={"digest": D}, content=b"x")
    assert 500 <= resp.status_code < 600
    assert error_code(resp) in {"UNKNOWN", "UNAVAILABLE"}
    assert "full" in resp.json()["errors"][0]["message"]
    assert_error(await client.get(f"/v2/team/app/blobs/{D}"), 404, "BLOB_UNKNOWN")


async def test_unavailable_backend_is_503(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*args: object) -> None:
        raise Unavailable("metadata database: disk I/O error")

    monkeypatch.setattr(services.registry.meta, "catalog", down)
    assert_error(await client.get("/v2/_catalog"), 503, "UNAVAILABLE")
