"""Blob uploads: sessions, streamed and chunked PATCH, PUT (with and without a final chunk),
monolithic POST, status, cancel, cross-repository mount, resume on a fresh process, expiry."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from appliance.app import create_app
from appliance.server import Services
from tests.api.conftest import FakeClock, api_client, running_registry, storage_files
from tests.api.oci import assert_error, blob_data, call_asgi, digest, push_blob

NAME = "team/app"
DATA = blob_data("upload", 3000)
UNKNOWN_UPLOAD = "0123456789abcdef0123456789abcdef"


async def start(client: httpx.AsyncClient, name: str = NAME) -> str:
    """POST a new session; return its Location."""
    resp = await client.post(f"/v2/{name}/blobs/uploads/")
    assert resp.status_code == 202, resp.text
    return resp.headers["location"]


async def patch(
    client: httpx.AsyncClient, location: str, data: bytes, start: int | None = None
) -> httpx.Response:
    headers = {"content-type": "application/octet-stream"}
    if start is not None:
        headers["content-range"] = f"{start}-{start + len(data) - 1}"
    return await client.patch(location, content=data, headers=headers)


def blob_files(storage_root: Path) -> list[str]:
    return storage_files(storage_root, "blobs")


def upload_files(storage_root: Path) -> list[str]:
    return storage_files(storage_root, "uploads")


# -- sessions ----------------------------------------------------------------------------


async def test_post_starts_a_session(client: httpx.AsyncClient) -> None:
    resp = await client.post(f"/v2/{NAME}/blobs/uploads/")
    assert resp.status_code == 202
    location = resp.headers["location"]
    uuid = resp.headers["docker-upload-uuid"]
    assert uuid
    assert location.endswith(f"/v2/{NAME}/blobs/uploads/{uuid}")
    assert resp.headers["range"] == "0-0"
    assert resp.headers["content-length"] == "0"


async def test_post_without_the_trailing_slash(client: httpx.AsyncClient) -> None:
    resp = await client.post(f"/v2/{NAME}/blobs/uploads")
    assert resp.status_code == 202
    assert resp.headers["location"]


async def test_sessions_are_distinct(client: httpx.AsyncClient) -> None:
    assert await start(client) != await start(client)


async def test_status_of_a_fresh_session(client: httpx.AsyncClient) -> None:
    location = await start(client)
    resp = await client.get(location)
    assert resp.status_code == 204
    assert resp.content == b""
    assert resp.headers["range"] == "0-0"
    assert resp.headers["location"].endswith(location.rsplit("/v2/", 1)[1])
    assert resp.headers["docker-upload-uuid"] == location.rsplit("/", 1)[1]


# -- streamed and chunked PATCH, PUT -----------------------------------------------------


async def test_streamed_patch_then_put_without_body(client: httpx.AsyncClient) -> None:
    location = await start(client)
    resp = await patch(client, location, DATA[:1000])
    assert resp.status_code == 202
    assert resp.headers["range"] == "0-999"
    assert resp.headers["docker-upload-uuid"]
    location = resp.headers["location"]

    status = await client.get(location)
    assert status.status_code == 204
    assert status.headers["range"] == "0-999"

    resp = await patch(client, location, DATA[1000:])
    assert resp.status_code == 202
    assert resp.headers["range"] == f"0-{len(DATA) - 1}"

    d = digest(DATA)
    resp = await client.put(resp.headers["location"], params={"digest": d})
    assert resp.status_code == 201
    assert resp.headers["docker-content-digest"] == d
    assert resp.headers["location"].endswith(f"/v2/{NAME}/blobs/{d}")
    blob = await client.get(f"/v2/{NAME}/blobs/{d}")
    assert blob.content == DATA


async def test_streamed_patch_as_chunked_transfer(client: httpx.AsyncClient) -> None:
    """A PATCH body with no Content-Length (Transfer-Encoding: chunked)."""

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(DATA), 700):
            yield DATA[i : i + 700]

    location = await start(client)
    resp = await client.patch(location, content=body())
    assert resp.status_code == 202
    assert resp.headers["range"] == f"0-{len(DATA) - 1}"
    d = digest(DATA)
    resp = await client.put(resp.headers["location"], params={"digest": d})
    assert resp.status_code == 201
    assert (await client.get(f"/v2/{NAME}/blobs/{d}")).content == DATA


async def test_chunked_patch_with_content_range(client: httpx.AsyncClient) -> None:
    location = await start(client)
    offset = 0
    for size in (1, 999, 1000):
        resp = await patch(client, location, DATA[offset : offset + size], offset)
        assert resp.status_code == 202, resp.text
        offset += size
        assert resp.headers["range"] == f"0-{offset - 1}"
        location = resp.headers["location"]
    d = digest(DATA)
    resp = await client.put(
        location,
        params={"digest": d},
        content=DATA[offset:],
        headers={"content-range": f"{offset}-{len(DATA) - 1}"},
    )
    assert resp.status_code == 201, resp.text
    assert (await client.get(f"/v2/{NAME}/blobs/{d}")).content == DATA


async def test_content_range_with_bytes_prefix_is_accepted(client: httpx.AsyncClient) -> None:
    location = await start(client)
    resp = await client.patch(location, content=DATA[:10], headers={"content-range": "bytes 0-9"})
    assert resp.status_code == 202
    assert resp.headers["range"] == "0-9"


async def test_put_with_the_whole_body_and_no_patch(client: httpx.AsyncClient) -> None:
    location = await start(client)
    d = digest(DATA)
    resp = await client.put(location, params={"digest": d}, content=DATA)
    assert resp.status_code == 201
    assert (await client.get(f"/v2/{NAME}/blobs/{d}")).content == DATA


async def test_put_with_a_final_chunk_without_content_range(client: httpx.AsyncClient) -> None:
    location = await start(client)
    resp = await patch(client, location, DATA[:100])
    d = digest(DATA)
    resp = await client.put(resp.headers["location"], params={"digest": d}, content=DATA[100:])
    assert resp.status_code == 201
    assert (await client.get(f"/v2/{NAME}/blobs/{d}")).content == DATA


async def test_session_is_gone_after_commit(client: httpx.AsyncClient, storage_root: Path) -> None:
    location = await start(client)
    d = digest(DATA)
    assert (await client.put(location, params={"digest": d}, content=DATA)).status_code == 201
    assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await patch(client, location, b"more"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert upload_files(storage_root) == []
    assert len(blob_files(storage_root)) == 1


async def test_empty_blob(client: httpx.AsyncClient) -> None:
    location = await start(client)
    d = digest(b"")
    resp = await client.put(location, params={"digest": d})
    assert resp.status_code == 201
    blob = await client.get(f"/v2/{NAME}/blobs/{d}")
    assert blob.status_code == 200
    assert blob.content == b""
    assert blob.headers["content-length"] == "0"


async def test_empty_patch_changes_nothing(client: httpx.AsyncClient) -> None:
    location = await start(client)
    resp = await patch(client, location, DATA[:10])
    resp = await client.patch(resp.headers["location"], content=b"")
    assert resp.status_code == 202
    assert resp.headers["range"] == "0-9"
    d = digest(DATA[:10])
    assert (await client.put(location, params={"digest": d})).status_code == 201


# -- out of order, mismatches, wrong digests ----------------------------------------------


async def test_out_of_order_chunk_is_416_with_range_and_location(
    client: httpx.AsyncClient,
) -> None:
    location = await start(client)
    resp = await patch(client, location, DATA[100:200], 100)
    assert_error(resp, 416, "RANGE_INVALID")
    assert resp.headers["range"] == "0-0"
    assert resp.headers["location"].endswith(location.rsplit("/v2/", 1)[1])
    # Nothing was taken; the session continues from where it was.
    assert (await client.get(location)).headers["range"] == "0-0"
    assert (await patch(client, location, DATA[:100], 0)).status_code == 202
    assert (await patch(client, location, DATA[100:], 100)).status_code == 202
    d = digest(DATA)
    assert (await client.put(location, params={"digest": d})).status_code == 201
    assert (await client.get(f"/v2/{NAME}/blobs/{d}")).content == DATA


async def test_repeated_chunk_is_416(client: httpx.AsyncClient) -> None:
    location = await start(client)
    assert (await patch(client, location, DATA[:100], 0)).status_code == 202
    resp = await patch(client, location, DATA[:100], 0)
    assert_error(resp, 416, "RANGE_INVALID")
    assert resp.headers["range"] == "0-99"
    resp = await patch(client, location, DATA[50:150], 50)
    assert_error(resp, 416, "RANGE_INVALID")
    assert (await client.get(location)).headers["range"] == "0-99"


async def test_out_of_order_final_chunk_is_416(client: httpx.AsyncClient) -> None:
    location = await start(client)
    assert (await patch(client, location, DATA[:100], 0)).status_code == 202
    resp = await client.put(
        location,
        params={"digest": digest(DATA)},
        content=DATA[200:],
        headers={"content-range": f"200-{len(DATA) - 1}"},
    )
    assert_error(resp, 416, "RANGE_INVALID")
    assert (await client.get(location)).headers["range"] == "0-99"
    assert_error(await client.get(f"/v2/{NAME}/blobs/{digest(DATA)}"), 404, "BLOB_UNKNOWN")


@pytest.mark.parametrize("header", ["0-", "abc", "10-5", "-5", "0-x"])
async def test_malformed_content_range_is_refused(client: httpx.AsyncClient, header: str) -> None:
    location = await start(client)
    resp = await client.patch(location, content=DATA[:10], headers={"content-range": header})
    assert resp.status_code in {400, 416}
    assert resp.json()["errors"][0]["code"] in {"RANGE_INVALID", "BLOB_UPLOAD_INVALID"}
    assert (await client.get(location)).headers["range"] == "0-0"


async def test_content_range_and_length_mismatch_is_400_size_invalid(
    client: httpx.AsyncClient,
) -> None:
    location = await start(client)
    resp = await client.patch(location, content=DATA[:10], headers={"content-range": "0-19"})
    assert_error(resp, 400, "SIZE_INVALID")
    assert (await client.get(location)).headers["range"] == "0-0"


async def test_final_chunk_range_and_length_mismatch_is_400_size_invalid(
    client: httpx.AsyncClient,
) -> None:
    location = await start(client)
    resp = await client.put(
        location,
        params={"digest": digest(DATA[:10])},
        content=DATA[:10],
        headers={"content-range": "0-4"},
    )
    assert_error(resp, 400, "SIZE_INVALID")
    assert_error(await client.get(f"/v2/{NAME}/blobs/{digest(DATA[:10])}"), 404, "BLOB_UNKNOWN")


async def test_wrong_digest_is_400_and_stores_nothing(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    location = await start(client)
    resp = await patch(client, location, DATA)
    wrong = digest(b"something else")
    resp = await client.put(resp.headers["location"], params={"digest": wrong})
    assert_error(resp, 400, "DIGEST_INVALID")
    assert_error(await client.get(f"/v2/{NAME}/blobs/{wrong}"), 404, "BLOB_UNKNOWN")
    assert_error(await client.head(f"/v2/{NAME}/blobs/{digest(DATA)}"), 404, "BLOB_UNKNOWN")
    assert blob_files(storage_root) == []
    assert upload_files(storage_root) == []
    assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


async def test_wrong_digest_with_final_chunk_stores_nothing(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    location = await start(client)
    resp = await client.put(location, params={"digest": digest(b"other")}, content=DATA)
    assert_error(resp, 400, "DIGEST_INVALID")
    assert blob_files(storage_root) == []
    assert upload_files(storage_root) == []


async def test_wrong_sha512_digest_stores_nothing(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    location = await start(client)
    resp = await client.put(location, params={"digest": digest(b"other", "sha512")}, content=DATA)
    assert_error(resp, 400, "DIGEST_INVALID")
    assert blob_files(storage_root) == []


async def test_put_without_digest_is_400(client: httpx.AsyncClient) -> None:
    location = await start(client)
    assert_error(await client.put(location, content=DATA), 400, "DIGEST_INVALID")


@pytest.mark.parametrize("bad", ["sha256:abc", "nope", "sha999:" + "a" * 64, ""])
async def test_put_with_malformed_digest_is_400(client: httpx.AsyncClient, bad: str) -> None:
    location = await start(client)
    resp = await client.put(location, params={"digest": bad}, content=DATA)
    assert_error(resp, 400, "DIGEST_INVALID")


async def test_sha512_chunked_upload(client: httpx.AsyncClient) -> None:
    location = await start(client)
    assert (await patch(client, location, DATA[:1500], 0)).status_code == 202
    d = digest(DATA, "sha512")
    resp = await client.put(
        location,
        params={"digest": d},
        content=DATA[1500:],
        headers={"content-range": f"1500-{len(DATA) - 1}"},
    )
    assert resp.status_code == 201
    assert resp.headers["docker-content-digest"] == d
    assert (await client.get(f"/v2/{NAME}/blobs/{d}")).content == DATA


# -- monolithic --------------------------------------------------------------------------


async def test_monolithic_post(client: httpx.AsyncClient, storage_root: Path) -> None:
    d = digest(DATA)
    resp = await client.post(
        f"/v2/{NAME}/blobs/uploads/",
        params={"digest": d},
        content=DATA,
        headers={"content-type": "application/octet-stream"},
    )
    assert resp.status_code == 201
    assert resp.headers["location"].endswith(f"/v2/{NAME}/blobs/{d}")
    assert resp.headers["docker-content-digest"] == d
    assert (await client.get(f"/v2/{NAME}/blobs/{d}")).content == DATA
    assert upload_files(storage_root) == []


async def test_monolithic_post_sha512(client: httpx.AsyncClient) -> None:
    d = digest(DATA, "sha512")
    resp = await client.post(f"/v2/{NAME}/blobs/uploads/", params={"digest": d}, content=DATA)
    assert resp.status_code == 201
    assert (await client.get(f"/v2/{NAME}/blobs/{d}")).content == DATA


async def test_monolithic_post_with_wrong_digest_stores_nothing(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    wrong = digest(b"not this")
    resp = await client.post(f"/v2/{NAME}/blobs/uploads/", params={"digest": wrong}, content=DATA)
    assert_error(resp, 400, "DIGEST_INVALID")
    assert_error(await client.get(f"/v2/{NAME}/blobs/{wrong}"), 404, "BLOB_UNKNOWN")
    assert_error(await client.get(f"/v2/{NAME}/blobs/{digest(DATA)}"), 404, "BLOB_UNKNOWN")
    assert blob_files(storage_root) == []
    assert upload_files(storage_root) == []


async def test_monolithic_post_with_malformed_digest(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        f"/v2/{NAME}/blobs/uploads/", params={"digest": "sha256:xyz"}, content=DATA
    )
    assert_error(resp, 400, "DIGEST_INVALID")


async def test_same_blob_pushed_twice_is_fine(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    first = await push_blob(client, NAME, DATA)
    second = await push_blob(client, NAME, DATA)
    assert first == second
    assert (await client.get(f"/v2/{NAME}/blobs/{first}")).content == DATA
    # The second commit's bytes were redundant and are not kept.
    assert len(blob_files(storage_root)) == 1


# -- cancel and unknown uploads ----------------------------------------------------------


async def test_cancel_then_404(client: httpx.AsyncClient, storage_root: Path) -> None:
    location = await start(client)
    assert (await patch(client, location, DATA)).status_code == 202
    resp = await client.delete(location)
    assert resp.status_code == 204
    assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await patch(client, location, DATA), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(
        await client.put(location, params={"digest": digest(DATA)}), 404, "BLOB_UPLOAD_UNKNOWN"
    )
    assert_error(await client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert upload_files(storage_root) == []
    assert blob_files(storage_root) == []


@pytest.mark.parametrize(
    "upload", [UNKNOWN_UPLOAD, UNKNOWN_UPLOAD.upper(), "not-a-uuid", "a" * 300]
)
async def test_unknown_upload_is_404(client: httpx.AsyncClient, upload: str) -> None:
    await start(client)
    location = f"/v2/{NAME}/blobs/uploads/{upload}"
    assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await patch(client, location, b"data"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await patch(client, location, b"data", 0), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(
        await client.put(location, params={"digest": digest(b"data")}, content=b"data"),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    assert_error(await client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")


async def test_unknown_upload_in_unknown_repository_is_404(client: httpx.AsyncClient) -> None:
    resp = await client.get(f"/v2/never/pushed/blobs/uploads/{UNKNOWN_UPLOAD}")
    assert_error(resp, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_session_belongs_to_its_repository(client: httpx.AsyncClient) -> None:
    location = await start(client)
    await start(client, "team/other")
    upload = location.rsplit("/", 1)[1]
    elsewhere = f"/v2/team/other/blobs/uploads/{upload}"
    assert_error(await client.get(elsewhere), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await patch(client, elsewhere, DATA), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await client.delete(elsewhere), 404, "BLOB_UPLOAD_UNKNOWN")
    # The session itself is untouched.
    assert (await client.get(location)).status_code == 204


# -- mount -------------------------------------------------------------------------------


async def test_mount_from_a_repository_holding_the_blob_is_201(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    d = await push_blob(client, "team/source", DATA)
    resp = await client.post(
        "/v2/team/target/blobs/uploads/", params={"mount": d, "from": "team/source"}
    )
    assert resp.status_code == 201
    assert resp.headers["location"].endswith(f"/v2/team/target/blobs/{d}")
    assert resp.headers["docker-content-digest"] == d
    blob = await client.get(f"/v2/team/target/blobs/{d}")
    assert blob.status_code == 200
    assert blob.content == DATA
    # Mounting links; it does not copy.
    assert len(blob_files(storage_root)) == 1
    assert upload_files(storage_root) == []


async def test_mount_from_a_repository_without_the_blob_starts_a_session(
    client: httpx.AsyncClient,
) -> None:
    d = await push_blob(client, "team/holder", DATA)
    await push_blob(client, "team/source", b"another blob")
    resp = await client.post(
        "/v2/team/target/blobs/uploads/", params={"mount": d, "from": "team/source"}
    )
    assert resp.status_code == 202
    assert resp.headers["docker-upload-uuid"]
    assert_error(await client.get(f"/v2/team/target/blobs/{d}"), 404, "BLOB_UNKNOWN")
    # The session is real: the client uploads the blob through it.
    location = resp.headers["location"]
    resp = await client.put(location, params={"digest": d}, content=DATA)
    assert resp.status_code == 201
    assert (await client.get(f"/v2/team/target/blobs/{d}")).content == DATA


async def test_mount_from_an_unknown_repository_starts_a_session(
    client: httpx.AsyncClient,
) -> None:
    d = await push_blob(client, "team/holder", DATA)
    resp = await client.post(
        "/v2/team/target/blobs/uploads/", params={"mount": d, "from": "no/such/repo"}
    )
    assert resp.status_code == 202
    assert resp.headers["location"]


async def test_mount_without_from_starts_a_session(client: httpx.AsyncClient) -> None:
    d = await push_blob(client, "team/holder", DATA)
    resp = await client.post("/v2/team/target/blobs/uploads/", params={"mount": d})
    assert resp.status_code in {201, 202}
    if resp.status_code == 202:
        assert_error(await client.get(f"/v2/team/target/blobs/{d}"), 404, "BLOB_UNKNOWN")


async def test_mounted_blob_is_not_readable_from_a_repository_that_never_had_it(
    client: httpx.AsyncClient,
) -> None:
    d = await push_blob(client, "team/source", DATA)
    resp = await client.post(
        "/v2/team/target/blobs/uploads/", params={"mount": d, "from": "team/source"}
    )
    assert resp.status_code == 201
    await push_blob(client, "team/bystander", b"unrelated")
    assert_error(await client.get(f"/v2/team/bystander/blobs/{d}"), 404, "BLOB_UNKNOWN")
    assert_error(await client.head(f"/v2/team/bystander/blobs/{d}"), 404, "BLOB_UNKNOWN")


async def test_mount_after_the_source_deleted_the_blob_starts_a_session(
    client: httpx.AsyncClient,
) -> None:
    d = await push_blob(client, "team/source", DATA)
    assert (await client.delete(f"/v2/team/source/blobs/{d}")).status_code == 202
    resp = await client.post(
        "/v2/team/target/blobs/uploads/", params={"mount": d, "from": "team/source"}
    )
    assert resp.status_code == 202


@pytest.mark.parametrize("source", ["Team/Source", "team/source\n", "../team/source", "a//b"])
async def test_mount_with_an_invalid_source_name_is_400(
    client: httpx.AsyncClient, source: str
) -> None:
    d = await push_blob(client, "team/source", DATA)
    resp = await client.post("/v2/team/target/blobs/uploads/", params={"mount": d, "from": source})
    assert_error(resp, 400, "NAME_INVALID")


async def test_mount_with_an_invalid_digest_is_400(client: httpx.AsyncClient) -> None:
    await push_blob(client, "team/source", DATA)
    resp = await client.post(
        "/v2/team/target/blobs/uploads/", params={"mount": "sha256:nope", "from": "team/source"}
    )
    assert_error(resp, 400, "DIGEST_INVALID")


# -- resume on a fresh process, expiry ---------------------------------------------------


async def test_upload_resumes_in_a_fresh_registry_on_the_same_data(
    data_dir: Path, clock: FakeClock
) -> None:
    """A new process has no running digest: it must hash the stored bytes at commit."""
    async with (
        running_registry(data_dir, clock) as first,
        api_client(create_app(first.registry, access=first.access)) as client,
    ):
        location = await start(client)
        assert (await patch(client, location, DATA[:1234], 0)).status_code == 202

    async with (
        running_registry(data_dir, clock) as second,
        api_client(create_app(second.registry, access=second.access)) as client,
    ):
        status = await client.get(location)
        assert status.status_code == 204
        assert status.headers["range"] == "0-1233"
        assert (await patch(client, location, DATA[1234:2000], 1234)).status_code == 202
        d = digest(DATA)
        resp = await client.put(
            location,
            params={"digest": d},
            content=DATA[2000:],
            headers={"content-range": f"2000-{len(DATA) - 1}"},
        )
        assert resp.status_code == 201, resp.text
        assert (await client.get(f"/v2/{NAME}/blobs/{d}")).content == DATA


async def test_wrong_digest_is_caught_in_a_fresh_registry(data_dir: Path, clock: FakeClock) -> None:
    async with (
        running_registry(data_dir, clock) as first,
        api_client(create_app(first.registry, access=first.access)) as client,
    ):
        location = await start(client)
        assert (await patch(client, location, DATA, 0)).status_code == 202

    async with (
        running_registry(data_dir, clock) as second,
        api_client(create_app(second.registry, access=second.access)) as client,
    ):
        resp = await client.put(location, params={"digest": digest(DATA[:-1])})
        assert_error(resp, 400, "DIGEST_INVALID")
        assert blob_files(data_dir / "storage") == []


async def test_an_upload_spread_over_two_processes_is_verified_and_hashed_once(
    data_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's requests land on whichever serving process took their connection: the
    process that starts an upload, the ones that append and the one that completes it may all
    differ. The digest is carried where the chunks go, the bytes are hashed again only when
    the completing process did not append the last chunk, and a process keeps no digest state
    for uploads others finish beyond its bound."""
    async with (
        running_registry(data_dir, clock) as a,
        running_registry(data_dir, clock) as b,
        api_client(create_app(a.registry, access=a.access)) as on_a,
        api_client(create_app(b.registry, access=b.access)) as on_b,
    ):
        rehashed: list[str] = []
        for side in (a, b):
            real = side.registry.store.hash_upload

            async def counting(upload_id: str, *args: Any, real: Any = real) -> Any:
                rehashed.append(upload_id)
                return await real(upload_id, *args)

            monkeypatch.setattr(side.registry.store, "hash_upload", counting)

        # started on A, all of it appended and completed on B: B's running digest serves
        location = await start(on_a)
        assert (await patch(on_b, location, DATA, 0)).status_code == 202
        d = digest(DATA)
        assert (await on_b.put(location, params={"digest": d})).status_code == 201
        assert rehashed == []
        assert (await on_a.get(f"/v2/{NAME}/blobs/{d}")).content == DATA

        # chunks on both, completed on A, which did not append the last one: hashed again
        other = blob_data("upload-2", 3000)
        location = await start(on_b)
        assert (await patch(on_a, location, other[:1000], 0)).status_code == 202
        assert (await patch(on_b, location, other[1000:], 1000)).status_code == 202
        resp = await on_a.put(location, params={"digest": digest(other[:-1])})
        assert_error(resp, 400, "DIGEST_INVALID")
        assert len(rehashed) == 1

        location = await start(on_b)
        assert (await patch(on_a, location, other[:1000], 0)).status_code == 202
        assert (await patch(on_b, location, other[1000:], 1000)).status_code == 202
        assert (await on_a.put(location, params={"digest": digest(other)})).status_code == 201
        assert len(rehashed) == 2
        assert (await on_b.get(f"/v2/{NAME}/blobs/{digest(other)}")).content == other

        # A appends the chunks of uploads B completes: A's states are bounded
        a.registry._hashes.size = 3
        for i in range(6):
            data = blob_data(f"bounded-{i}", 500)
            location = await start(on_b)
            assert (await patch(on_a, location, data, 0)).status_code == 202
            assert (await on_b.put(location, params={"digest": digest(data)})).status_code == 201
        assert len(a.registry._hashes) == 3
        assert len(b.registry._hashes) == 0


async def test_idle_upload_expires_with_its_bytes(
    client: httpx.AsyncClient, services: Services, clock: FakeClock, storage_root: Path
) -> None:
    expiry = services.registry.upload_expiry
    assert expiry == 24 * 3600  # the default idle time
    idle = await start(client)
    assert (await patch(client, idle, DATA[:500])).status_code == 202
    busy = await start(client)
    assert (await patch(client, busy, DATA[:500])).status_code == 202
    assert len(upload_files(storage_root)) == 2

    clock.advance(expiry - 60)
    assert (await patch(client, busy, DATA[500:1000])).status_code == 202
    assert await services.registry.purge_expired_uploads() == 0
    clock.advance(120)
    assert await services.registry.purge_expired_uploads() == 1

    assert_error(await client.get(idle), 404, "BLOB_UPLOAD_UNKNOWN")
    assert_error(await patch(client, idle, DATA[500:]), 404, "BLOB_UPLOAD_UNKNOWN")
    busy_id = busy.rsplit("/", 1)[1]
    assert [f.split("/")[1] for f in upload_files(storage_root)] == [busy_id]
    status = await client.get(busy)
    assert status.status_code == 204
    assert status.headers["range"] == "0-999"
    d = digest(DATA)
    assert (await client.put(busy, params={"digest": d}, content=DATA[1000:])).status_code == 201


async def test_expired_empty_session_is_removed(
    client: httpx.AsyncClient, services: Services, clock: FakeClock, storage_root: Path
) -> None:
    location = await start(client)
    clock.advance(services.registry.upload_expiry + 1)
    assert await services.registry.purge_expired_uploads() == 1
    assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    assert upload_files(storage_root) == []


# -- concurrent requests on one session ----------------------------------------------------


async def test_two_chunks_racing_for_the_same_offset(client: httpx.AsyncClient) -> None:
    """Both claim bytes 0-999: one is taken, the other is refused with where the upload
    stands, and the session stays consistent."""
    location = await start(client)
    results: list[httpx.Response] = []
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        results.append(await patch(client, location, data, 0))
        sent.append(data)  # in the order the answers came, which need not be the start order

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, DATA[:1000])
        nursery.start_soon(send, blob_data("other", 1000))
    assert sorted(r.status_code for r in results) == [202, 416]
    refused = next(r for r in results if r.status_code == 416)
    assert_error(refused, 416, "RANGE_INVALID")
    assert refused.headers["range"] == "0-999"
    status = await client.get(location)
    assert status.headers["range"] == "0-999"
    taken = sent[0] if results[0].status_code == 202 else sent[1]
    d = digest(taken)
    assert (await client.put(location, params={"digest": d})).status_code == 201
    assert (await client.get(f"/v2/{NAME}/blobs/{d}")).content == taken


async def test_streamed_chunks_on_one_session_are_serialised(
    client: httpx.AsyncClient, storage_root: Path
) -> None:
    """Chunks without Content-Range sent at once land whole, one after another, never
    interleaved."""
    location = await start(client)
    parts = [blob_data(f"part-{i}", 700 + i) for i in range(6)]

    async def send(data: bytes) -> None:
        assert (await patch(client, location, data)).status_code == 202

    async with trio.open_nursery() as nursery:
        for part in parts:
            nursery.start_soon(send, part)
    total = sum(len(p) for p in parts)
    assert offset_of_range((await client.get(location)).headers["range"]) == total
    stored = (storage_root / "uploads" / location.rsplit("/", 1)[1] / "data").read_bytes()
    rest, remaining = stored, list(parts)
    while rest:
        head = next(p for p in remaining if rest.startswith(p))
        remaining.remove(head)
        rest = rest[len(head) :]
    assert remaining == []
    resp = await client.put(location, params={"digest": digest(stored)})
    assert resp.status_code == 201, resp.text
    assert (await client.get(f"/v2/{NAME}/blobs/{digest(stored)}")).content == stored


def offset_of_range(header: str) -> int:
    return int(header.split("-", 1)[1]) + 1


async def test_chunked_patch_longer_than_its_content_range_is_400_size_invalid(
    client: httpx.AsyncClient, app: Any
) -> None:
    """A chunked body (no Content-Length) is held to the length its Content-Range declares."""
    location = await start(client)
    status, _, body = await call_asgi(
        app,
        "PATCH",
        location.encode(),
        body=[DATA[:8], DATA[8:20]],
        headers=[(b"content-range", b"0-9")],
    )
    assert status == 400
    assert json.loads(body)["errors"][0]["code"] == "SIZE_INVALID"
    resp = await client.get(location)
    assert resp.headers["range"] in ("0-0", "0-9")  # never more than was declared


async def test_chunked_patch_shorter_than_its_content_range_is_400_size_invalid(
    client: httpx.AsyncClient, app: Any
) -> None:
    location = await start(client)
    status, _, body = await call_asgi(
        app,
        "PATCH",
        location.encode(),
        body=[DATA[:3], DATA[3:5]],
        headers=[(b"content-range", b"0-9")],
    )
    assert status == 400
    assert json.loads(body)["errors"][0]["code"] == "SIZE_INVALID"
