"""Protocol behaviour that needs a real server and real sockets: clients that vanish mid-body,
SIGTERM during an upload, uploads resumed across a restart, a full disk, upload expiry on the
server's own schedule, concurrent pushes, and raw paths through hypercorn.

Nothing here sleeps for a fixed time: the tests poll (with a deadline) for a log line, a status
or a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.live import (
    RawResponse,
    address,
    blob_copies,
    connect,
    files_under,
    log_count,
    pieces,
    raw_request,
    read_response,
    request_head,
    upload_ids,
    wait_for,
)
from tests.api.oci import OCI_MANIFEST, blob_data, digest, image_manifest
from tests.support.servers import Server, start_berth, unavailable

MIB = 1 << 20
DISCONNECTED = "client disconnected"


def offset_of(resp: httpx.Response | RawResponse) -> int:
    """The upload offset a `Range: 0-<last>` header reports. "0-0" is read as empty: the
    uploads in these tests grow in whole MiB batches, so a single stored byte cannot occur."""
    last = int(resp.headers["range"].split("-", 1)[1])
    return 0 if last == 0 else last + 1


def client_for(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, auth=server.credentials)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that do not stop or reconfigure it."""
    server = start_berth(tmp_path_factory.mktemp("shared") / "data")
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    # Disconnects and refusals are expected; nothing here may surprise the server.
    assert "unexpected error" not in server.log()
    assert "Traceback" not in server.log()


@pytest.fixture
def http(shared: Server) -> Iterator[httpx.Client]:
    with client_for(shared) as client:
        yield client


def storage_of(server: Server) -> Path:
    assert server.data_dir is not None
    return server.data_dir / "storage"


def push(client: httpx.Client, name: str, data: bytes) -> str:
    d = digest(data)
    resp = client.post(f"/v2/{name}/blobs/uploads/", params={"digest": d}, content=data)
    assert resp.status_code == 201, resp.text
    return d


# -- blob downloads: the server sends the file itself (zero-copy) -------------------------


def test_blob_downloads_over_a_real_socket_are_exact(shared: Server, http: httpx.Client) -> None:
    """Over plain TCP the server hands a blob's bytes to the kernel (sendfile): whole blobs
    larger than one send, ranges, and a reader slower than the sender all get the exact
    bytes; the connection stays usable for the next request; the access log counts them."""
    data = os.urandom(9 * MIB + 12345)  # more than one sendfile piece (8 MiB)
    d = push(http, "zerocopy/app", data)
    target = f"/v2/zerocopy/app/blobs/{d}"
    whole = http.get(target)
    assert whole.status_code == 200
    assert whole.headers["content-length"] == str(len(data))
    assert whole.content == data
    part = http.get(target, headers={"range": "bytes=1000-8389607"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 1000-8389607/{len(data)}"
    assert part.content == data[1000:8389608]
    tail = http.get(target, headers={"range": "bytes=-77"})
    assert (tail.status_code, tail.content) == (206, data[-77:])
    # A reader with a small buffer that takes its time: the server waits for the socket.
    with contextlib.closing(socket.socket()) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(30)
        sock.connect(address(shared))
        for _ in range(2):  # twice on one connection: the first answer ended cleanly
            sock.sendall(request_head(shared, "GET", target))
            resp = read_response(sock)
            assert resp.status == 200
            assert resp.body == data
    wait_for(
        "three access-log lines", lambda: log_count(shared, f"GET {target} 200 {len(data)} ") >= 3
    )


def test_a_blob_whose_file_vanished_is_an_error_over_a_real_socket(
    shared: Server, http: httpx.Client
) -> None:
    data = os.urandom(4096)
    d = push(http, "zerocopy/gone", data)
    for path in blob_copies(storage_of(shared), d):
        path.unlink()
    resp = http.get(f"/v2/zerocopy/gone/blobs/{d}")
    assert resp.status_code == 404, resp.text
    assert resp.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


# -- clients that disconnect -------------------------------------------------------------


def test_disconnect_mid_patch_leaves_no_blob_and_a_resumable_upload(
    shared: Server, http: httpx.Client
) -> None:
    name = "live/disconnect-patch"
    data = blob_data(name, 3 * MIB + 1234)
    d = digest(data)
    location = http.post(f"/v2/{name}/blobs/uploads/").headers["location"]
    before = log_count(shared, DISCONNECTED)
    with connect(shared) as sock:
        head = {"Content-Length": str(len(data)), "Content-Type": "application/octet-stream"}
        sock.sendall(request_head(shared, "PATCH", location, head))
        sock.sendall(data[: MIB + MIB // 2])
    wait_for("the disconnect", lambda: log_count(shared, DISCONNECTED) > before)

    assert http.head(f"/v2/{name}/blobs/{d}").status_code == 404
    status = http.get(location)
    assert status.status_code == 204
    offset = offset_of(status)
    assert offset <= MIB + MIB // 2
    # The status and the stored bytes agree (side door: the upload's file).
    stored = (storage_of(shared) / "uploads" / location.rsplit("/", 1)[1] / "data").read_bytes()
    assert stored[:offset] == data[:offset]

    resp = http.patch(
        location,
        content=data[offset:],
        headers={"content-range": f"{offset}-{len(data) - 1}"},
    )
    assert resp.status_code == 202, resp.text
    assert offset_of(resp) == len(data)
    resp = http.put(resp.headers["location"], params={"digest": d})
    assert resp.status_code == 201, resp.text
    got = http.get(f"/v2/{name}/blobs/{d}")
    assert got.content == data


def test_disconnect_mid_monolithic_post_leaves_nothing(shared: Server, http: httpx.Client) -> None:
    name = "live/disconnect-post"
    data = blob_data(name, 3 * MIB)
    d = digest(data)
    http.get("/v2/")
    before_uploads = upload_ids(storage_of(shared))
    before = log_count(shared, DISCONNECTED)
    with connect(shared) as sock:
        head = {"Content-Length": str(len(data)), "Content-Type": "application/octet-stream"}
        sock.sendall(request_head(shared, "POST", f"/v2/{name}/blobs/uploads/?digest={d}", head))
        sock.sendall(data[: 2 * MIB])
    wait_for("the disconnect", lambda: log_count(shared, DISCONNECTED) > before)

    assert http.head(f"/v2/{name}/blobs/{d}").status_code == 404
    assert blob_copies(storage_of(shared), d) == []
    assert upload_ids(storage_of(shared)) == before_uploads


def test_disconnect_mid_final_put_leaves_no_blob(shared: Server, http: httpx.Client) -> None:
    name = "live/disconnect-put"
    data = blob_data(name, 4 * MIB)
    d = digest(data)
    location = http.post(f"/v2/{name}/blobs/uploads/").headers["location"]
    resp = http.patch(location, content=data[:MIB], headers={"content-range": f"0-{MIB - 1}"})
    assert resp.status_code == 202
    before = log_count(shared, DISCONNECTED)
    with connect(shared) as sock:
        rest = len(data) - MIB
        head = {"Content-Length": str(rest), "Content-Range": f"{MIB}-{len(data) - 1}"}
        sock.sendall(request_head(shared, "PUT", f"{location}?digest={d}", head))
        sock.sendall(data[MIB : 2 * MIB + MIB // 2])
    wait_for("the disconnect", lambda: log_count(shared, DISCONNECTED) > before)

    assert http.head(f"/v2/{name}/blobs/{d}").status_code == 404
    assert blob_copies(storage_of(shared), d) == []
    status = http.get(location)
    assert status.status_code == 204
    offset = offset_of(status)
    assert MIB <= offset <= 2 * MIB + MIB // 2
    resp = http.put(
        location,
        params={"digest": d},
        content=data[offset:],
        headers={"content-range": f"{offset}-{len(data) - 1}"},
    )
    assert resp.status_code == 201, resp.text
    assert http.get(f"/v2/{name}/blobs/{d}").content == data


# -- raw paths through hypercorn ---------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/v2/../etc/tags/list",
        "/v2/a/../b/tags/list",
        "/v2/a/%2e%2e/b/tags/list",
        "/v2/%2E%2E/%2E%2E/etc/tags/list",
        "/v2/a%2Fb/tags/list",
        "/v2/a%2F..%2F..%2Fetc/blobs/uploads/",
        "/v2/a//b/tags/list",
        "/v2//a/tags/list",
        "/v2/UPPER/tags/list",
        "/v2/" + "a" * 256 + "/tags/list",
    ],
)
def test_bad_names_over_a_real_socket(shared: Server, target: str) -> None:
    method = "POST" if target.endswith("/uploads/") else "GET"
    resp = raw_request(shared, method, target, {"Content-Length": "0"})
    assert resp.status == 400, (resp.status, resp.body[:300])
    assert resp.error_code() == "NAME_INVALID"


# -- concurrent pushes -------------------------------------------------------------------


Together = Callable[[int, Callable[[int, httpx.Client], Any]], list[Any]]


def run_together(
    url: str,
    count: int,
    work: Callable[[int, httpx.Client], Any],
    auth: tuple[str, str] | None = None,
) -> list[Any]:
    """Run `work(i, client)` in `count` threads, each with a connection of its own, all
    released at the same moment; return their results in order."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int, client: httpx.Client) -> None:
        try:
            barrier.wait(30)
            results[i] = work(i, client)
        except BaseException as e:
            errors.append(e)

    clients = [httpx.Client(base_url=url, timeout=60, auth=auth) for _ in range(count)]
    try:
        threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        for c in clients:
            c.close()
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def together(shared: Server) -> Together:
    return lambda count, work: run_together(shared.url, count, work, shared.credentials)


def test_two_clients_push_the_same_blob_at_once(
    shared: Server, http: httpx.Client, together: Together
) -> None:
    name = "live/same-blob"
    data = blob_data(name, 2 * MIB + 77)
    d = digest(data)

    def chunked(i: int, client: httpx.Client) -> int:
        location = client.post(f"/v2/{name}/blobs/uploads/").headers["location"]
        resp = client.patch(location, content=data[:MIB], headers={"content-range": f"0-{MIB - 1}"})
        assert resp.status_code == 202
        resp = client.put(
            location,
            params={"digest": d},
            content=data[MIB:],
            headers={"content-range": f"{MIB}-{len(data) - 1}"},
        )
        return resp.status_code

    def monolithic(i: int, client: httpx.Client) -> int:
        resp = client.post(f"/v2/{name}/blobs/uploads/", params={"digest": d}, content=data)
        return resp.status_code

    for _ in range(3):
        assert together(2, chunked) == [201, 201]
        assert together(4, monolithic) == [201] * 4
        got = http.get(f"/v2/{name}/blobs/{d}")
        assert got.status_code == 200
        assert got.content == data
        assert got.headers["docker-content-digest"] == d
        # One copy of the bytes is kept; the losers' copies were removed.
        assert len(blob_copies(storage_of(shared), d)) == 1


def test_two_clients_push_the_same_tag_at_once(
    shared: Server, http: httpx.Client, together: Together
) -> None:
    name = "live/same-tag"
    config = b'{"os": "linux"}'
    layers = [blob_data(f"{name}-{i}", 1000 + i) for i in range(4)]
    for blob in (config, *layers):
        push(http, name, blob)
    payloads = [image_manifest(config, [layer]) for layer in layers]

    def put(i: int, client: httpx.Client) -> tuple[int, str]:
        resp = client.put(
            f"/v2/{name}/manifests/latest",
            content=payloads[i],
            headers={"content-type": OCI_MANIFEST},
        )
        return resp.status_code, resp.headers.get("docker-content-digest", "")

    for _ in range(5):
        results = together(len(payloads), put)
        assert [status for status, _ in results] == [201] * len(payloads)
        assert {d for _, d in results} == {digest(p) for p in payloads}
        got = http.get(f"/v2/{name}/manifests/latest")
        assert got.status_code == 200
        assert got.content in payloads
        assert got.headers["docker-content-digest"] == digest(got.content)
        assert http.get(f"/v2/{name}/tags/list").json()["tags"] == ["latest"]
        for payload in payloads:
            assert http.get(f"/v2/{name}/manifests/{digest(payload)}").content == payload

    # The same manifest and tag from several clients at once.
    same = together(3, lambda i, client: put(0, client))
    assert same == [(201, digest(payloads[0]))] * 3
    assert http.get(f"/v2/{name}/manifests/latest").content == payloads[0]


# -- SIGTERM, restarts ---------------------------------------------------------------------


def test_sigterm_lets_an_in_flight_upload_finish(tmp_path: Path) -> None:
    data = blob_data("sigterm", 3 * MIB)
    d = digest(data)
    name = "live/sigterm"
    server = start_berth(tmp_path / "data")
    try:
        with client_for(server) as client:
            location = client.post(f"/v2/{name}/blobs/uploads/").headers["location"]
        upload_file = storage_of(server) / "uploads" / location.rsplit("/", 1)[1] / "data"
        with connect(server) as sock:
            head = {"Content-Length": str(len(data)), "Content-Range": f"0-{len(data) - 1}"}
            sock.sendall(request_head(server, "PATCH", location, head))
            sock.sendall(data[: MIB + MIB // 2])
            # The handler is running once the first batch reaches the upload's file.
            wait_for("the first batch on disk", lambda: upload_file.stat().st_size >= MIB)
            server.proc.send_signal(signal.SIGTERM)
            wait_for("SIGTERM to be seen", lambda: "received SIGTERM" in server.log())
            sock.sendall(data[MIB + MIB // 2 :])
            resp = read_response(sock, "PATCH")
        assert resp.status == 202, resp.body[:300]
        assert offset_of(resp) == len(data)
        assert server.proc.wait(30) == 0, server.log()[-3000:]
    finally:
        server.stop()

    # The upload outlived the server; a new one finishes it.
    server = start_berth(tmp_path / "data")
    try:
        with client_for(server) as client:
            status = client.get(location)
            assert status.status_code == 204
            assert offset_of(status) == len(data)
            assert client.put(location, params={"digest": d}).status_code == 201
            assert client.get(f"/v2/{name}/blobs/{d}").content == data
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_upload_resumes_after_a_restart(tmp_path: Path, sig: signal.Signals) -> None:
    data = blob_data(f"restart-{sig.name}", 3 * MIB + 5)
    d = digest(data)
    name = "live/restart"
    first_part = MIB + 12345
    server = start_berth(tmp_path / "data")
    try:
        with client_for(server) as client:
            location = client.post(f"/v2/{name}/blobs/uploads/").headers["location"]
            resp = client.patch(
                location,
                content=data[:first_part],
                headers={"content-range": f"0-{first_part - 1}"},
            )
            assert resp.status_code == 202
    finally:
        code = server.stop(sig)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL)

    server = start_berth(tmp_path / "data")
    try:
        with client_for(server) as client:
            status = client.get(location)
            assert status.status_code == 204
            assert offset_of(status) == first_part
            # A chunk that does not continue the upload is refused with where it stands.
            resp = client.patch(location, content=data[:10], headers={"content-range": "0-9"})
            assert resp.status_code == 416
            assert offset_of(resp) == first_part
            resp = client.patch(
                location,
                content=data[first_part : 2 * MIB],
                headers={"content-range": f"{first_part}-{2 * MIB - 1}"},
            )
            assert resp.status_code == 202
            resp = client.put(
                location,
                params={"digest": d},
                content=data[2 * MIB :],
                headers={"content-range": f"{2 * MIB}-{len(data) - 1}"},
            )
            assert resp.status_code == 201, resp.text
            got = client.get(f"/v2/{name}/blobs/{d}")
            assert got.content == data
            assert got.headers["docker-content-digest"] == d
    finally:
        assert server.stop() == 0


# -- expiry --------------------------------------------------------------------------------


def test_idle_uploads_expire_on_the_servers_schedule(tmp_path: Path) -> None:
    env = {"BERTH_UPLOADS_EXPIRY": "1", "BERTH_UPLOADS_PURGE_INTERVAL": "0.1"}
    server = start_berth(tmp_path / "data", env=env)
    try:
        with client_for(server) as client:
            location = client.post("/v2/live/expiry/blobs/uploads/").headers["location"]
            assert client.patch(location, content=b"x" * 1000).status_code == 202
            upload = location.rsplit("/", 1)[1]
            assert upload in upload_ids(storage_of(server))
            wait_for("the upload to expire", lambda: client.get(location).status_code == 404)
            resp = client.put(location, params={"digest": digest(b"x" * 1000)})
            assert resp.status_code == 404
            assert resp.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
            assert upload not in upload_ids(storage_of(server))
            # Expiry does not stop the server from taking new uploads.
            assert push(client, "live/expiry", b"fresh") == digest(b"fresh")
    finally:
        assert server.stop() == 0


# -- a full disk ---------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path`; skipped where mounting is not allowed."""
    path.mkdir(parents=True)
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        unavailable("mounting a small tmpfs needs root")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def error_of(resp: RawResponse | httpx.Response) -> dict[str, Any]:
    body = resp.body if isinstance(resp, RawResponse) else resp.content
    assert b"Traceback" not in body
    doc = json.loads(body)
    entry: dict[str, Any] = doc["errors"][0]
    return entry


@pytest.mark.parametrize("where", ["storage-root", "data-dir"])
def test_full_disk_is_a_clear_5xx_leaves_nothing_and_the_server_keeps_serving(
    tmp_path: Path, where: str
) -> None:
    """The small filesystem holds the blob store, or the whole data directory (the metadata
    database too)."""
    with small_tmpfs(tmp_path / "small", "8m") as mounted:
        if where == "storage-root":
            root = mounted
            server = start_berth(tmp_path / "data", env={"BERTH_STORAGE_ROOT": str(root)})
        else:
            root = mounted / "storage"
            server = start_berth(mounted)
        try:
            name = "live/full"
            big = blob_data("too big", 12 * MIB)
            d = digest(big)

            # Monolithic: refused, and the partial upload is gone.
            resp = raw_request(
                server,
                "POST",
                f"/v2/{name}/blobs/uploads/?digest={d}",
                {"Content-Length": str(len(big)), "Content-Type": "application/octet-stream"},
                pieces(big),
            )
            assert 500 <= resp.status < 600, (resp.status, resp.body[:300])
            assert error_of(resp)["code"] in {"UNKNOWN", "UNAVAILABLE"}
            assert "full" in error_of(resp)["message"].lower()
            assert files_under(root / "blobs") == []
            assert files_under(root / "uploads") == []

            with client_for(server) as client:
                assert client.head(f"/v2/{name}/blobs/{d}").status_code == 404
                # Chunked: refused, and the session is cut back to what it held.
                location = client.post(f"/v2/{name}/blobs/uploads/").headers["location"]
                assert client.patch(location, content=big[:MIB]).status_code == 202
                resp = raw_request(
                    server,
                    "PATCH",
                    location,
                    {
                        "Content-Length": str(len(big) - MIB),
                        "Content-Range": f"{MIB}-{len(big) - 1}",
                    },
                    pieces(big[MIB:]),
                )
                assert 500 <= resp.status < 600, (resp.status, resp.body[:300])
                assert error_of(resp)["code"] in {"UNKNOWN", "UNAVAILABLE"}
                status = client.get(location)
                assert status.status_code == 204
                assert offset_of(status) == MIB
                upload_file = root / "uploads" / location.rsplit("/", 1)[1] / "data"
                assert upload_file.stat().st_size == MIB
                assert client.delete(location).status_code == 204
                assert files_under(root) == []
                assert shutil.disk_usage(root).used < 2 * MIB

                # Still serving: small pushes and reads work.
                assert client.get("/v2/").status_code == 200
                small = blob_data("small", 4096)
                assert push(client, name, small) == digest(small)
                assert client.get(f"/v2/{name}/blobs/{digest(small)}").content == small
                fits = blob_data("fits", 5 * MIB)
                assert push(client, name, fits) == digest(fits)
                assert client.get(f"/v2/{name}/blobs/{digest(fits)}").content == fits
        finally:
            assert server.stop() == 0, server.log()[-3000:]
        assert "Traceback" not in server.log()
