"""An answer sent before the request's body was read (a 404 for an unknown upload, a 401
without credentials) ends the connection, so a client still sending a large body learns of
it at once instead of hanging with its body unread (hypercorn's queue for the body stayed
full, and its reader and the request's end waited on it until the process stopped)."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server, start_berth

AUTH = "Basic " + base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode()).decode()
DECLARED = 256 << 20  # far more than the socket buffers on both sides hold
STALLED = 20.0  # seconds a write may block before the client counts as hung


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_berth(tmp_path_factory.mktemp("early") / "data")
    try:
        yield server
    finally:
        server.stop()


def patch_until_refused(server: Server, path: str, headers: str) -> tuple[int, bytes]:
    """PATCH `path` declaring DECLARED bytes and send them; the status and body of the
    answer, read after the server stopped taking the body."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=STALLED) as sock:
        sock.sendall(
            f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\n{headers}"
            f"Content-Type: application/octet-stream\r\nContent-Length: {DECLARED}\r\n\r\n".encode()
        )
        chunk = bytes(1 << 20)
        sent = 0
        try:
            while sent < DECLARED:
                sock.sendall(chunk)
                sent += len(chunk)
        except TimeoutError:
            pytest.fail(f"the server neither read nor closed after {sent >> 20} MiB")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed after the answer, the body unread: as it should be
        assert sent < DECLARED, "the whole body was read although it was answered early"
        data = b""
        try:
            while part := sock.recv(65536):  # the answer, then the server's close
                data += part
        except ConnectionResetError:
            pass  # the close, with our unsent body in flight: the answer came before it
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_an_unknown_upload_is_answered_and_the_unread_body_ends_the_connection(
    server: Server,
) -> None:
    status, body = patch_until_refused(
        server, "/v2/team/app/blobs/uploads/" + "0" * 32, f"Authorization: {AUTH}\r\n"
    )
    assert status == 404
    assert json.loads(body)["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


def test_an_unauthenticated_upload_is_answered_and_the_unread_body_ends_the_connection(
    server: Server,
) -> None:
    status, body = patch_until_refused(server, "/v2/team/app/blobs/uploads/" + "0" * 32, "")
    assert status == 401
    assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    # and the server serves on, every connection's place given back
    with httpx.Client(base_url=server.url, auth=(ADMIN, ADMIN_PASSWORD), timeout=30) as c:
        for _ in range(4):
            assert c.get("/v2/").status_code == 200
