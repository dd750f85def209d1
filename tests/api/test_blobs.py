"""Blob reads and deletes: GET and HEAD (with Range), DELETE, and who may read what."""

from __future__ import annotations

import httpx
import pytest

from tests.api.oci import assert_error, blob_data, digest, push_blob

DATA = blob_data("blob", 1000)


@pytest.fixture
async def pushed(client: httpx.AsyncClient) -> str:
    return await push_blob(client, "team/app", DATA)


async def test_get_returns_the_exact_bytes(client: httpx.AsyncClient, pushed: str) -> None:
    resp = await client.get(f"/v2/team/app/blobs/{pushed}")
    assert resp.status_code == 200
    assert resp.content == DATA
    assert resp.headers["content-length"] == str(len(DATA))
    assert resp.headers["docker-content-digest"] == pushed
    assert resp.headers["content-type"] == "application/octet-stream"


async def test_head_has_the_length_and_no_body(client: httpx.AsyncClient, pushed: str) -> None:
    resp = await client.head(f"/v2/team/app/blobs/{pushed}")
    assert resp.status_code == 200
    assert resp.content == b""
    assert resp.headers["content-length"] == str(len(DATA))
    assert resp.headers["docker-content-digest"] == pushed


async def test_missing_blob_is_404_blob_unknown(client: httpx.AsyncClient, pushed: str) -> None:
    other = digest(b"never pushed")
    assert_error(await client.get(f"/v2/team/app/blobs/{other}"), 404, "BLOB_UNKNOWN")
    assert_error(await client.head(f"/v2/team/app/blobs/{other}"), 404, "BLOB_UNKNOWN")


async def test_blob_in_unknown_repository_is_404(client: httpx.AsyncClient, pushed: str) -> None:
    resp = await client.get(f"/v2/no/such/repo/blobs/{pushed}")
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] in {"BLOB_UNKNOWN", "NAME_UNKNOWN"}


async def test_blob_is_not_readable_from_another_repository(
    client: httpx.AsyncClient, pushed: str
) -> None:
    await push_blob(client, "team/other", b"something else")
    assert_error(await client.get(f"/v2/team/other/blobs/{pushed}"), 404, "BLOB_UNKNOWN")
    assert_error(await client.head(f"/v2/team/other/blobs/{pushed}"), 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize("reference", ["sha256:abc", "sha256:" + "G" * 64, "md5:" + "a" * 32, "x"])
async def test_malformed_digest_is_400_digest_invalid(
    client: httpx.AsyncClient, reference: str
) -> None:
    assert_error(await client.get(f"/v2/team/app/blobs/{reference}"), 400, "DIGEST_INVALID")


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 9),
        ("bytes=10-19", 10, 19),
        ("bytes=990-", 990, 999),
        ("bytes=-5", 995, 999),
        ("bytes=500-5000", 500, 999),
        ("bytes=999-999", 999, 999),
        ("bytes=-5000", 0, 999),
    ],
)
async def test_range_is_206_with_content_range(
    client: httpx.AsyncClient, pushed: str, header: str, start: int, end: int
) -> None:
    resp = await client.get(f"/v2/team/app/blobs/{pushed}", headers={"range": header})
    assert resp.status_code == 206
    assert resp.content == DATA[start : end + 1]
    assert resp.headers["content-range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert resp.headers["content-length"] == str(end - start + 1)


async def test_head_with_range_is_206_without_body(client: httpx.AsyncClient, pushed: str) -> None:
    resp = await client.head(f"/v2/team/app/blobs/{pushed}", headers={"range": "bytes=0-99"})
    assert resp.status_code == 206
    assert resp.content == b""
    assert resp.headers["content-length"] == "100"
    assert resp.headers["content-range"] == f"bytes 0-99/{len(DATA)}"


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=20-10"])
async def test_unsatisfiable_range_is_416(
    client: httpx.AsyncClient, pushed: str, header: str
) -> None:
    resp = await client.get(f"/v2/team/app/blobs/{pushed}", headers={"range": header})
    assert_error(resp, 416, "RANGE_INVALID")
    assert resp.headers["content-range"] == f"bytes */{len(DATA)}"


async def test_range_on_an_empty_blob_is_416(client: httpx.AsyncClient) -> None:
    empty = await push_blob(client, "team/app", b"")
    resp = await client.get(f"/v2/team/app/blobs/{empty}", headers={"range": "bytes=0-"})
    assert_error(resp, 416, "RANGE_INVALID")
    assert resp.headers["content-range"] == "bytes */0"
    whole = await client.get(f"/v2/team/app/blobs/{empty}")
    assert whole.status_code == 200
    assert whole.content == b""


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-1", "bytes=abc"])
async def test_unsupported_range_forms_serve_the_whole_blob(
    client: httpx.AsyncClient, pushed: str, header: str
) -> None:
    resp = await client.get(f"/v2/team/app/blobs/{pushed}", headers={"range": header})
    assert resp.status_code == 200
    assert resp.content == DATA


async def test_delete_then_404_blob_unknown(client: httpx.AsyncClient, pushed: str) -> None:
    resp = await client.delete(f"/v2/team/app/blobs/{pushed}")
    assert resp.status_code == 202
    assert_error(await client.get(f"/v2/team/app/blobs/{pushed}"), 404, "BLOB_UNKNOWN")
    assert_error(await client.head(f"/v2/team/app/blobs/{pushed}"), 404, "BLOB_UNKNOWN")
    assert_error(await client.delete(f"/v2/team/app/blobs/{pushed}"), 404, "BLOB_UNKNOWN")


async def test_delete_unknown_blob_is_404(client: httpx.AsyncClient) -> None:
    resp = await client.delete(f"/v2/team/app/blobs/{digest(b'nope')}")
    assert resp.status_code == 404
    assert resp.json()["errors"][0]["code"] in {"BLOB_UNKNOWN", "NAME_UNKNOWN"}


async def test_delete_in_one_repository_leaves_another_alone(
    client: httpx.AsyncClient, pushed: str
) -> None:
    await push_blob(client, "team/copy", DATA)
    assert (await client.delete(f"/v2/team/app/blobs/{pushed}")).status_code == 202
    resp = await client.get(f"/v2/team/copy/blobs/{pushed}")
    assert resp.status_code == 200
    assert resp.content == DATA


async def test_blob_can_be_pushed_again_after_delete(
    client: httpx.AsyncClient, pushed: str
) -> None:
    assert (await client.delete(f"/v2/team/app/blobs/{pushed}")).status_code == 202
    assert await push_blob(client, "team/app", DATA) == pushed
    assert (await client.get(f"/v2/team/app/blobs/{pushed}")).content == DATA


async def test_sha512_blob_round_trip(client: httpx.AsyncClient) -> None:
    data = blob_data("sha512", 3000)
    d = await push_blob(client, "team/app", data, "sha512")
    assert d.startswith("sha512:")
    resp = await client.get(f"/v2/team/app/blobs/{d}")
    assert resp.status_code == 200
    assert resp.content == data
    assert resp.headers["docker-content-digest"] == d
    head = await client.head(f"/v2/team/app/blobs/{d}")
    assert head.headers["content-length"] == str(len(data))
    assert_error(await client.get(f"/v2/team/app/blobs/{digest(data)}"), 404, "BLOB_UNKNOWN")


async def test_large_blob_round_trip_across_batches(client: httpx.AsyncClient) -> None:
    data = blob_data("large", 3 * (1 << 20) + 12345)
    d = await push_blob(client, "team/app", data)
    resp = await client.get(f"/v2/team/app/blobs/{d}")
    assert resp.content == data
    tail = await client.get(
        f"/v2/team/app/blobs/{d}", headers={"range": f"bytes={(1 << 20) - 3}-{(2 << 20) + 2}"}
    )
    assert tail.status_code == 206
    assert tail.content == data[(1 << 20) - 3 : (2 << 20) + 3]


async def test_blob_whose_bytes_vanished_is_an_error_response_not_a_cut_connection(
    client: httpx.AsyncClient, pushed: str, storage_root
) -> None:
    """The store is read before the headers go out, so a missing file still gets OCI JSON."""
    for path in (storage_root / "blobs").rglob("*"):
        if path.is_file():
            path.unlink()
    resp = await client.get(f"/v2/team/app/blobs/{pushed}")
    assert_error(resp, 404, "BLOB_UNKNOWN")
