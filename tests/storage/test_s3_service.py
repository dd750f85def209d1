"""Berth on S3, as a real `berth serve` process against SeaweedFS: start-up checks, S3 going away
in the middle of requests, secrets from files, and presigned download redirects."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.seaweedfs import SeaweedFS
from tests.support.servers import Server, berth_command, start_berth

MIB = 1 << 20


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.new_bucket("berth-service")


def serve_once(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `berth serve` expecting it to stop by itself (a start-up failure)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    full.update(env)
    cmd = [*berth_command(), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)]
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=60, check=False)


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("berth: ")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_wrong_credentials_stop_start_up(tmp_path: Path, seaweedfs: SeaweedFS, bucket: str) -> None:
    env = seaweedfs.env(bucket) | {"BERTH_STORAGE_S3_SECRET_KEY": "not-the-secret"}
    result = serve_once(tmp_path, env)
    assert_one_line_failure(result, "refused access", bucket, "access_key")


def test_missing_bucket_stops_start_up(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    result = serve_once(tmp_path, seaweedfs.env("berth-no-such-bucket"))
    assert_one_line_failure(result, "does not exist", "create_bucket")


def test_unreachable_s3_stops_start_up(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    proxy = FaultProxy(seaweedfs.endpoint)
    proxy.down = True
    try:
        env = seaweedfs.env("whatever") | {
            "BERTH_STORAGE_S3_ENDPOINT": proxy.url,
            "BERTH_STORAGE_S3_MAX_ATTEMPTS": "2",
        }
        result = serve_once(tmp_path, env)
    finally:
        proxy.close()
    assert_one_line_failure(result, "cannot reach S3")


def test_create_bucket_and_secrets_from_files(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    """`create_bucket = true` makes the bucket; keys come from files, not the environment."""
    name = f"berth-created-{os.getpid()}"
    (tmp_path / "access").write_text(seaweedfs.access_key + "\n")
    (tmp_path / "secret").write_text(seaweedfs.secret_key + "\n")
    env = seaweedfs.env(name)
    del env["BERTH_STORAGE_S3_ACCESS_KEY"], env["BERTH_STORAGE_S3_SECRET_KEY"]
    env |= {
        "BERTH_STORAGE_S3_ACCESS_KEY_FILE": str(tmp_path / "access"),
        "BERTH_STORAGE_S3_SECRET_KEY_FILE": str(tmp_path / "secret"),
        "BERTH_STORAGE_S3_CREATE_BUCKET": "true",
    }
    server = start_berth(tmp_path / "data", env=env)
    try:
        seaweedfs.client.head_bucket(Bucket=name)
        with client_of(server) as c:
            blob = b"made in a new bucket"
            r = c.post(
                "/v2/made/here/blobs/uploads/", params={"digest": digest_of(blob)}, content=blob
            )
            assert r.status_code == 201, r.text
    finally:
        assert server.stop() == 0


def client_of(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, auth=server.credentials, timeout=60)


@pytest.fixture
def proxy(seaweedfs: SeaweedFS) -> Iterator[FaultProxy]:
    p = FaultProxy(seaweedfs.endpoint)
    try:
        yield p
    finally:
        p.close()


def test_s3_down_mid_upload_is_503_and_the_upload_resumes(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str, proxy: FaultProxy
) -> None:
    env = seaweedfs.env(bucket, prefix="faults/") | {
        "BERTH_STORAGE_S3_ENDPOINT": proxy.url,
        "BERTH_STORAGE_S3_MAX_ATTEMPTS": "2",
        "BERTH_STORAGE_S3_PART_SIZE": str(5 * MIB),
    }
    server = start_berth(tmp_path / "data", env=env)
    try:
        with client_of(server) as c:
            small = b"committed before the outage"
            r = c.post(
                "/v2/s3/faults/blobs/uploads/", params={"digest": digest_of(small)}, content=small
            )
            assert r.status_code == 201, r.text
            data = os.urandom(14 * MIB + 321)
            first = 6 * MIB
            location = c.post("/v2/s3/faults/blobs/uploads/").headers["location"]
            r = c.patch(location, content=data[:first], headers={"content-range": f"0-{first - 1}"})
            assert r.status_code == 202, r.text

            # This PATCH's body arrives whole, unread, while S3 is tried: once it is answered
            # the request must end (the server's stop below waits for requests in flight).
            proxy.down = True
            r = c.patch(
                location,
                content=data[first:],
                headers={"content-range": f"{first}-{len(data) - 1}"},
            )
            assert r.status_code == 503, r.text
            assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
            r = c.get(f"/v2/s3/faults/blobs/{digest_of(small)}")
            assert r.status_code == 503, r.text
            assert r.json()["errors"][0]["code"] == "UNAVAILABLE"

            proxy.down = False
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
            r = c.get(f"/v2/s3/faults/blobs/{digest_of(data)}")
            assert r.status_code == 200
            assert r.content == data
            r = c.get(f"/v2/s3/faults/blobs/{digest_of(small)}")
            assert r.content == small
    finally:
        assert server.stop() == 0


def test_redirect_to_presigned_urls(tmp_path: Path, seaweedfs: SeaweedFS, bucket: str) -> None:
    env = seaweedfs.env(bucket, prefix="redirect/") | {"BERTH_STORAGE_S3_REDIRECT": "true"}
    server = start_berth(tmp_path / "data", env=env)
    try:
        with client_of(server) as c, httpx.Client(timeout=60) as anonymous:
            data = os.urandom(3 * MIB + 5)
            url = f"/v2/s3/redirect/blobs/{digest_of(data)}"
            r = c.post(
                "/v2/s3/redirect/blobs/uploads/", params={"digest": digest_of(data)}, content=data
            )
            assert r.status_code == 201, r.text
            head = c.head(url)
            assert head.status_code == 200
            assert head.headers["content-length"] == str(len(data))
            r = c.get(url)
            assert r.status_code == 307
            assert r.headers["docker-content-digest"] == digest_of(data)
            location = r.headers["location"]
            assert location.startswith(seaweedfs.endpoint)
            assert anonymous.get(location).content == data
            part = anonymous.get(location, headers={"range": "bytes=10-19"})
            assert part.status_code == 206
            assert part.content == data[10:20]
    finally:
        assert server.stop() == 0


def test_ranges_are_served_without_redirect(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str
) -> None:
    server = start_berth(tmp_path / "data", env=seaweedfs.env(bucket, prefix="ranges/"))
    try:
        with client_of(server) as c:
            data = os.urandom(2 * MIB + 7)
            url = f"/v2/s3/ranges/blobs/{digest_of(data)}"
            r = c.post(
                "/v2/s3/ranges/blobs/uploads/", params={"digest": digest_of(data)}, content=data
            )
            assert r.status_code == 201, r.text
            r = c.get(url, headers={"range": f"bytes={MIB - 1}-{MIB + 1}"})
            assert r.status_code == 206
            assert r.content == data[MIB - 1 : MIB + 2]
            assert r.headers["content-range"] == f"bytes {MIB - 1}-{MIB + 1}/{len(data)}"
            r = c.get(url, headers={"range": "bytes=-3"})
            assert r.content == data[-3:]
    finally:
        assert server.stop() == 0


def test_upload_survives_kills_in_the_middle_of_chunks(
    tmp_path: Path, seaweedfs: SeaweedFS, bucket: str
) -> None:
    """SIGKILL while a PATCH is streaming: the store may hold more than the database recorded
    (parts of the killed request); the client resumes from the reported offset and the blob
    is exact. The running hash is lost with the process, so the commit reads the bytes back."""
    env = seaweedfs.env(bucket, prefix="kills/") | {"BERTH_STORAGE_S3_PART_SIZE": str(5 * MIB)}
    data = os.urandom(40 * MIB + 99)
    server = start_berth(tmp_path / "data", env=env)
    try:
        with client_of(server) as c:
            location = c.post("/v2/s3/kills/blobs/uploads/").headers["location"]
        state_key = f"kills/uploads/{location.rstrip('/').rsplit('/', 1)[1]}/state"
        ahead = []  # rounds where the store held more than the database had recorded
        for kill_after in (12 * MIB, 7 * MIB, 1 * MIB):
            with client_of(server) as c:
                status = c.get(location)
                held = int(status.headers["range"].split("-")[1]) + 1 if held_any(status) else 0
                before = stored_state(seaweedfs, bucket, state_key)
                ahead.append(stored_size(seaweedfs, bucket, state_key) > held)

                def recorded(start: int, before: bytes) -> bool:
                    """Whether the store holds bytes of this request: what an earlier round
                    left ahead of the database does not count (this request cuts it back
                    first, and each request from offset 0 has a multipart upload of its
                    own, so its state is never the earlier one)."""
                    state = stored_state(seaweedfs, bucket, state_key)
                    return state != before and stored_size(seaweedfs, bucket, state_key) > start

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
                            deadline = time.monotonic() + 120  # SeaweedFS may be slow
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
            ahead.append(stored_size(seaweedfs, bucket, state_key) > held)
            assert ahead[1:] == [True] * 3, "a killed request did not leave the store ahead"
            r = c.patch(
                location, content=data[held:], headers={"content-range": f"{held}-{len(data) - 1}"}
            )
            assert r.status_code == 202, r.text
            r = c.put(location, params={"digest": digest_of(data)})
            assert r.status_code == 201, r.text
            assert c.get(f"/v2/s3/kills/blobs/{digest_of(data)}").content == data
    finally:
        # A graceful stop, however busy the machine: S3 calls in flight (SeaweedFS answers
        # slowly under load) finish before the process exits, so allow more than the
        # server's own 30 s for requests.
        assert server.stop(timeout=120) == 0


def stored_state(seaweedfs: SeaweedFS, bucket: str, state_key: str) -> bytes:
    """The store's state object of the upload, as stored."""
    body: bytes = seaweedfs.client.get_object(Bucket=bucket, Key=state_key)["Body"].read()
    return body


def stored_size(seaweedfs: SeaweedFS, bucket: str, state_key: str) -> int:
    """What the store's state object says the upload holds (parts and tail)."""
    state = json.loads(seaweedfs.client.get_object(Bucket=bucket, Key=state_key)["Body"].read())
    return sum(size for _, size in state["parts"]) + sum(size for _, size in state["tail"])


def held_any(status: httpx.Response) -> bool:
    """An empty upload reports `Range: 0-0`, as does one holding one byte; this test never
    stops at one byte, so 0-0 means nothing yet."""
    return status.headers["range"] != "0-0"
