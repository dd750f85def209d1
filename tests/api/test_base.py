"""The API root, routing of unknown endpoints and methods, and headers every response carries."""

from __future__ import annotations

import httpx
import pytest

from tests.api.oci import API_VERSION_HEADER, assert_error, digest, push_image


async def test_base_answers_200_with_the_api_version_header(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v2/")
    assert resp.status_code == 200
    assert resp.headers[API_VERSION_HEADER] == "registry/2.0"
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {}


async def test_base_without_the_trailing_slash(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v2")
    assert resp.status_code == 200
    assert resp.headers[API_VERSION_HEADER] == "registry/2.0"


async def test_head_of_base_has_no_body(client: httpx.AsyncClient) -> None:
    resp = await client.head("/v2/")
    assert resp.status_code == 200
    assert resp.content == b""
    assert resp.headers[API_VERSION_HEADER] == "registry/2.0"


async def test_errors_carry_the_api_version_and_a_request_id(client: httpx.AsyncClient) -> None:
    resp = await client.get(f"/v2/nothing/blobs/{digest(b'x')}")
    assert_error(resp, 404, "BLOB_UNKNOWN")
    assert resp.headers[API_VERSION_HEADER] == "registry/2.0"
    assert resp.headers["x-request-id"]


async def test_request_ids_differ_between_requests(client: httpx.AsyncClient) -> None:
    first = await client.get("/v2/")
    second = await client.get("/v2/")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize(
    "path",
    ["/v2/repo", "/v2/repo/unknown/thing", "/v2/repo/manifests/", "/v2/_catalog/extra"],
)
async def test_unknown_endpoints_are_404_with_error_json(
    client: httpx.AsyncClient, path: str
) -> None:
    resp = await client.get(path)
    assert resp.status_code == 404
    assert resp.json()["errors"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/"),
        ("DELETE", "/v2/"),
        ("POST", "/v2/_catalog"),
        ("PUT", "/v2/repo/tags/list"),
        ("DELETE", "/v2/repo/tags/list"),
        ("PATCH", "/v2/repo/manifests/latest"),
        ("POST", "/v2/repo/manifests/latest"),
        ("PUT", f"/v2/repo/blobs/{digest(b'x')}"),
        ("POST", f"/v2/repo/blobs/{digest(b'x')}"),
        ("GET", "/v2/repo/blobs/uploads/"),
        ("PUT", "/v2/repo/blobs/uploads/"),
        ("POST", "/v2/repo/blobs/uploads/0123456789abcdef0123456789abcdef"),
        ("PUT", f"/v2/repo/referrers/{digest(b'x')}"),
    ],
)
async def test_wrong_method_is_405(client: httpx.AsyncClient, method: str, path: str) -> None:
    resp = await client.request(method, path)
    assert_error(resp, 405, "UNSUPPORTED")
    # RFC 9110: a 405 names the methods the resource does support.
    allowed = {m.strip() for m in resp.headers["allow"].split(",")}
    assert allowed
    assert method not in allowed
    assert allowed <= {"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"}


async def test_wrong_method_leaves_content_alone(client: httpx.AsyncClient) -> None:
    manifest_digest, _ = await push_image(client, "repo", "v1")
    resp = await client.post(f"/v2/repo/manifests/{manifest_digest}", content=b"{}")
    assert_error(resp, 405, "UNSUPPORTED")
    assert (await client.get("/v2/repo/manifests/v1")).status_code == 200


def test_request_ids_are_unique_in_a_forked_child_and_another_process() -> None:
    """Ids are a per-process random prefix and a counter: a forked child draws its own prefix
    (else parent and child would hand out the same ids), and so does another process."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from appliance import context  # noqa: PLC0415

    mine = [context.new_request_id() for _ in range(3)]
    assert len(set(mine)) == 3
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in mine)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write, context.new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    other = subprocess.run(
        [sys.executable, "-c", "from appliance import context; print(context.new_request_id())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ids = {*mine, child, other, context.new_request_id()}
    assert len(ids) == 6
    assert child[:16] != mine[0][:16]
    assert other[:16] != mine[0][:16]
