"""Berth on Azure Blob Storage, as a real `berth serve` process against Azurite: start-up checks,
Azurite stopped in the middle of an upload (503, then the upload resumes), Berth killed in the
middle of chunked uploads, keys from files, and SAS download redirects."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.storage.test_s3_service import (
    assert_one_line_failure,
    client_of,
    digest_of,
    held_any,
    serve_once,
)
from tests.support.azurite import Azurite, start_azurite
from tests.support.servers import Server, start_berth

MIB = 1 << 20


@pytest.fixture(scope="module")
def container(azurite: Azurite) -> str:
    return azurite.new_container("berth-service")


def test_wrong_key_stops_start_up(tmp_path: Path, azurite: Azurite, container: str) -> None:
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    env = azurite.env(container) | {"BERTH_STORAGE_AZURE_ACCOUNT_KEY": wrong}
    result = serve_once(tmp_path, env)
    assert_one_line_failure(result, "refused access", container, "account_key")


def test_missing_container_stops_start_up(tmp_path: Path, azurite: Azurite) -> None:
    result = serve_once(tmp_path, azurite.env("berth-no-such-container"))
    assert_one_line_failure(result, "does not exist", "create_container")


def test_create_container_with_the_key_from_a_file(tmp_path: Path, azurite: Azurite) -> None:
    name = f"berth-created-{os.getpid()}"
    (tmp_path / "key").write_text(azurite.key + "\n")
    env = azurite.env(name)
    del env["BERTH_STORAGE_AZURE_ACCOUNT_KEY"]
    env |= {
        "BERTH_STORAGE_AZURE_ACCOUNT_KEY_FILE": str(tmp_path / "key"),
        "BERTH_STORAGE_AZURE_CREATE_CONTAINER": "true",
    }
    server = start_berth(tmp_path / "data", env=env)
    try:
        assert azurite.container(name).exists()
        with client_of(server) as c:
            blob = b"made in a new container"
            r = c.post(
                "/v2/made/here/blobs/uploads/", params={"digest": digest_of(blob)}, content=blob
            )
            assert r.status_code == 201, r.text
            assert c.get(f"/v2/made/here/blobs/{digest_of(blob)}").content == blob
    finally:
        assert server.stop() == 0


@pytest.fixture
def own_azurite(tmp_path: Path) -> Iterator[Azurite]:
    """An Azurite of this test's own, to stop and start again."""
    server = start_azurite(tmp_path / "azurite")
    try:
        yield server
    finally:
        server.stop()


def test_azurite_stopped_mid_upload_is_503_and_the_upload_resumes(
    tmp_path: Path, own_azurite: Azurite
) -> None:
    azurite = own_azurite
    env = azurite.env(azurite.new_container("faults"), prefix="faults/") | {
        "BERTH_STORAGE_AZURE_MAX_ATTEMPTS": "2",
        "BERTH_STORAGE_AZURE_BLOCK_SIZE": str(MIB),
    }
    server = start_berth(tmp_path / "data", env=env)
    try:
        with client_of(server) as c:
            small = b"committed before the outage"
            r = c.post(
                "/v2/az/faults/blobs/uploads/", params={"digest": digest_of(small)}, content=small
            )
            assert r.status_code == 201, r.text
            data = os.urandom(9 * MIB + 321)
            first = 3 * MIB + 17
            location = c.post("/v2/az/faults/blobs/uploads/").headers["location"]
            r = c.patch(location, content=data[:first], headers={"content-range": f"0-{first - 1}"})
            assert r.status_code == 202, r.text

            azurite.stop()
            r = c.patch(
                location,
                content=data[first:],
                headers={"content-range": f"{first}-{len(data) - 1}"},
            )
            assert r.status_code == 503, r.text
            assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
            r = c.get(f"/v2/az/faults/blobs/{digest_of(small)}")
            assert r.status_code == 503, r.text
            assert r.json()["errors"][0]["code"] == "UNAVAILABLE"

            azurite.restart()
            status = c.get(location)
            assert status.status_code == 204
            held = int(status.headers["range"].split("-")[1]) + 1
            assert held == first
            r = c.patch(
                location,
                content=data[held:],
                headers={"content-range": f"{held}-{len(data) - 1}"},
            )
            assert r.status_code == 202, r.text
            r = c.put(location, params={"digest": digest_of(data)})
            assert r.status_code == 201, r.text
            assert c.get(f"/v2/az/faults/blobs/{digest_of(data)}").content == data
            assert c.get(f"/v2/az/faults/blobs/{digest_of(small)}").content == small
    finally:
        assert server.stop() == 0


def test_redirect_to_sas_urls(tmp_path: Path, azurite: Azurite, container: str) -> None:
    env = azurite.env(container, prefix="redirect/") | {"BERTH_STORAGE_AZURE_REDIRECT": "true"}
    server = start_berth(tmp_path / "data", env=env)
    try:
        with client_of(server) as c, httpx.Client(timeout=60) as anonymous:
            data = os.urandom(3 * MIB + 5)
            url = f"/v2/az/redirect/blobs/{digest_of(data)}"
            r = c.post(
                "/v2/az/redirect/blobs/uploads/", params={"digest": digest_of(data)}, content=data
            )
            assert r.status_code == 201, r.text
            head = c.head(url)
            assert head.status_code == 200
            assert head.headers["content-length"] == str(len(data))
            r = c.get(url)
            assert r.status_code == 307
            assert r.headers["docker-content-digest"] == digest_of(data)
            location = r.headers["location"]
            assert location.startswith(f"{azurite.endpoint}/{container}/redirect/blobs/")
            assert "sp=r" in location  # read only
            assert anonymous.get(location).content == data
            part = anonymous.get(location, headers={"range": "bytes=10-19"})
            assert part.status_code == 206
            assert part.content == data[10:20]
            # The signature covers this blob only, for reading only.
            other = location.replace("/redirect/blobs/", "/redirect/uploads/", 1)
            assert anonymous.get(other).status_code == 403
            assert anonymous.delete(location).status_code == 403
            assert anonymous.get(location.split("?")[0]).status_code in (403, 404)
    finally:
        assert server.stop() == 0


def test_upload_survives_kills_in_the_middle_of_chunks(
    tmp_path: Path, azurite: Azurite, container: str
) -> None:
    """SIGKILL while a PATCH is streaming: the store may hold more than the database recorded
    (blocks of the killed request); the client resumes from the reported offset and the blob
    is exact. The running hash is lost with the process, so the commit reads the bytes back."""
    env = azurite.env(container, prefix="kills/") | {"BERTH_STORAGE_AZURE_BLOCK_SIZE": str(MIB)}
    data = os.urandom(12 * MIB + 99)
    server = start_berth(tmp_path / "data", env=env)
    try:
        with client_of(server) as c:
            location = c.post("/v2/az/kills/blobs/uploads/").headers["location"]
        state_key = f"kills/uploads/{location.rstrip('/').rsplit('/', 1)[1]}/state"
        ahead = []  # rounds where the store held more than the database had recorded
        for kill_after in (5 * MIB, 1 * MIB):
            with client_of(server) as c:
                status = c.get(location)
                held = int(status.headers["range"].split("-")[1]) + 1 if held_any(status) else 0
                before = stored_state(azurite, container, state_key)
                ahead.append(stored_size(azurite, container, state_key) > held)

                def recorded(start: int, before: bytes) -> bool:
                    """Whether the store holds bytes of this request: what an earlier round
                    left ahead of the database does not count (this request cuts it back
                    first, and its blocks have ids of their own, so its state is never the
                    earlier one)."""
                    state = stored_state(azurite, container, state_key)
                    return state != before and stored_size(azurite, container, state_key) > start

                def body(
                    start: int, kill_after: int, victim: Server, before: bytes
                ) -> Iterator[bytes]:
                    """Send `kill_after` bytes, and more until the store has recorded some of
                    this request's, then kill the server in the middle of the request (its
                    last piece is never sent)."""
                    sent = 0
                    killed = False
                    for i in range(start, len(data), MIB):
                        if sent >= kill_after and not killed:
                            last = i + MIB >= len(data)
                            deadline = time.monotonic() + 120
                            while last and not recorded(start, before):
                                assert time.monotonic() < deadline, "nothing was recorded"
                                time.sleep(0.05)
                            if last or recorded(start, before):
                                victim.kill()
                                killed = True
                        sent += MIB
                        yield data[i : i + MIB]

                with pytest.raises(httpx.TransportError):
                    c.patch(
                        location,
                        content=body(held, kill_after, server, before),
                        headers={"content-range": f"{held}-{len(data) - 1}"},
                    )
            server = start_berth(tmp_path / "data", env=env)
        with client_of(server) as c:
            status = c.get(location)
            held = int(status.headers["range"].split("-")[1]) + 1 if held_any(status) else 0
            ahead.append(stored_size(azurite, container, state_key) > held)
            assert ahead[1:] == [True] * 2, "a killed request did not leave the store ahead"
            r = c.patch(
                location, content=data[held:], headers={"content-range": f"{held}-{len(data) - 1}"}
            )
            assert r.status_code == 202, r.text
            r = c.put(location, params={"digest": digest_of(data)})
            assert r.status_code == 201, r.text
            assert c.get(f"/v2/az/kills/blobs/{digest_of(data)}").content == data
        assert azurite.listing(container, "kills/uploads/") == []
    finally:
        # A graceful stop, however busy the machine: storage calls in flight finish before the
        # process exits, so allow more than the server's own 30 s for requests.
        assert server.stop(timeout=120) == 0


def stored_state(azurite: Azurite, container: str, state_key: str) -> bytes:
    """The store's state blob of the upload, as stored (b"" before there is one)."""
    blob = azurite.container(container).get_blob_client(state_key)
    if not blob.exists():
        return b""
    data: bytes = blob.download_blob().readall()
    return data


def stored_size(azurite: Azurite, container: str, state_key: str) -> int:
    """What the store's state blob says the upload holds."""
    blob = azurite.container(container).get_blob_client(state_key)
    state = json.loads(blob.download_blob().readall())
    return sum(size for _, size in state["blocks"])


def test_azurite_stopped_in_the_middle_of_a_patch(tmp_path: Path, own_azurite: Azurite) -> None:
    """Azurite stops while a PATCH body is still arriving: the request ends with 503, the
    blocks recorded before the stop stay, and the client resumes from the offset the upload's
    status reports once Azurite is back."""
    azurite = own_azurite
    container = azurite.new_container("midway")
    env = azurite.env(container) | {
        "BERTH_STORAGE_AZURE_MAX_ATTEMPTS": "2",
        "BERTH_STORAGE_AZURE_BLOCK_SIZE": str(MIB),
    }
    data = os.urandom(6 * MIB + 321)
    server = start_berth(tmp_path / "data", env=env)
    try:
        with client_of(server) as c:
            location = c.post("/v2/az/midway/blobs/uploads/").headers["location"]
            state_key = f"uploads/{location.rstrip('/').rsplit('/', 1)[1]}/state"

            def body() -> Iterator[bytes]:
                for i in range(0, len(data), MIB):
                    if i == 4 * MIB:  # some blocks recorded, the rest still to come
                        deadline = time.monotonic() + 60
                        while stored_size(azurite, container, state_key) == 0:
                            assert time.monotonic() < deadline, "nothing was recorded"
                            time.sleep(0.02)
                        azurite.stop()
                    yield data[i : i + MIB]

            r = c.patch(location, content=body(), headers={"content-range": f"0-{len(data) - 1}"})
            assert r.status_code == 503, r.text
            assert r.json()["errors"][0]["code"] == "UNAVAILABLE"

            azurite.restart()
            status = c.get(location)
            assert status.status_code == 204
            held = int(status.headers["range"].split("-")[1]) + 1
            assert 0 < held <= 4 * MIB
            r = c.patch(
                location, content=data[held:], headers={"content-range": f"{held}-{len(data) - 1}"}
            )
            assert r.status_code == 202, r.text
            r = c.put(location, params={"digest": digest_of(data)})
            assert r.status_code == 201, r.text
            assert c.get(f"/v2/az/midway/blobs/{digest_of(data)}").content == data
    finally:
        assert server.stop() == 0
