"""Slow and idle clients against a real `berth serve` (issue 21, item 10), written as the
attacks: headers trickled, a connection left idle, a body that stalls or trickles below the
minimum rate are all cut after their timeout; connections beyond `server.max_connections`
are answered 503 and closed; and an upload that is slow but keeps sending still completes.

The timeouts are set to one second so the attacks take seconds; the trickling is the attack
itself (a client pausing between bytes), so these tests pause on purpose.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server, start_berth

AUTH = "Basic " + base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode()).decode()
CUT_WITHIN = 8.0  # seconds a test waits for the server to act on a 1 s timeout (busy machines)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_berth(
        tmp_path_factory.mktemp("slow") / "data",
        env={
            "BERTH_SERVER_IDLE_TIMEOUT": "1",
            "BERTH_SERVER_READ_TIMEOUT": "1",
            "BERTH_SERVER_MIN_BODY_RATE": "200",
        },
    )
    try:
        yield server
    finally:
        server.stop()


def _connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=CUT_WITHIN + 5)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the wait runs out)."""
    out = b""
    deadline = time.monotonic() + CUT_WITHIN
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return out
        if not data:
            return out
        out += data
    raise AssertionError(f"the server kept the connection open; it sent {out[:200]!r}")


def _upload(server: Server) -> str:
    r = httpx.post(
        server.url + "/v2/slow/app/blobs/uploads/", headers={"authorization": AUTH}, timeout=30
    )
    assert r.status_code == 202, r.text
    location = str(r.headers["location"])
    return location if location.startswith("http") else server.url + location


def _patch_head(server: Server, location: str, length: int) -> bytes:
    path = location.removeprefix(server.url)
    return (
        f"PATCH {path} HTTP/1.1\r\nHost: berth\r\nAuthorization: {AUTH}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_an_idle_connection_is_closed(slow_server: Server) -> None:
    with _connect(slow_server) as sock:
        started = time.monotonic()
        assert _read_all(sock) == b""
        assert time.monotonic() - started >= 0.9


def test_trickled_headers_are_cut_off(slow_server: Server) -> None:
    with _connect(slow_server) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n")
        started = time.monotonic()
        closed = False
        for i in range(int(CUT_WITHIN / 0.3)):
            try:
                sock.sendall(f"X-Slow-{i}: a\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sock.settimeout(0.3)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
                break
        assert closed, "headers trickled for as long as we liked"
        assert time.monotonic() - started < CUT_WITHIN


def test_a_stalled_body_is_cut_off_with_408(slow_server: Server) -> None:
    location = _upload(slow_server)
    with _connect(slow_server) as sock:
        sock.sendall(_patch_head(slow_server, location, 1000) + b"x" * 10)
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code": "BLOB_UPLOAD_INVALID"' in answer
    assert b"no byte of the request body" in answer
    # What arrived before the stall is kept: the client may resume from there.
    status = httpx.get(location, headers={"authorization": AUTH}, timeout=30)
    assert status.headers["range"] == "0-9"


def test_a_body_trickled_below_the_minimum_rate_is_cut_off(slow_server: Server) -> None:
    location = _upload(slow_server)
    with _connect(slow_server) as sock:
        sock.sendall(_patch_head(slow_server, location, 10_000))
        started = time.monotonic()
        answer = b""
        while time.monotonic() - started < CUT_WITHIN:
            try:
                sock.sendall(b"x")  # one byte every 0.4 s: within the read timeout, too slow
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.4)
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            if answer:
                answer += _read_all(sock)
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"slower than 200 bytes a second" in answer


def test_a_slow_upload_that_keeps_sending_completes(slow_server: Server) -> None:
    """About 1,000 bytes a second for 3.5 s: longer than the read timeout and several rate
    windows, well above the minimum rate."""
    data = bytes(range(256)) * 14  # 3,584 bytes
    location = _upload(slow_server)
    with _connect(slow_server) as sock:
        sock.sendall(_patch_head(slow_server, location, len(data)))
        for i in range(0, len(data), 256):
            sock.sendall(data[i : i + 256])
            time.sleep(0.25)
        sock.settimeout(CUT_WITHIN)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.put(location, params={"digest": digest}, headers={"authorization": AUTH}, timeout=30)
    assert r.status_code == 201, r.text


@pytest.fixture
def limited_server(tmp_path: Path) -> Iterator[Server]:
    server = start_berth(  # the limit is per serving process: one process, to count on it
        tmp_path / "data",
        args=("--workers", "1"),
        env={"BERTH_SERVER_MAX_CONNECTIONS": "3", "BERTH_SERVER_IDLE_TIMEOUT": "30"},
    )
    try:
        yield server
    finally:
        server.stop()


def _request(sock: socket.socket) -> bytes:
    """One request on a kept-alive connection and its whole answer (headers and body: an
    answer read in part would leave the connection mid-answer, not idle)."""
    sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n")
    sock.settimeout(CUT_WITHIN)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            return answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_connections_beyond_the_limit_get_503_and_are_closed(limited_server: Server) -> None:
    held = [_connect(limited_server) for _ in range(3)]
    try:
        for sock in held:  # each holds its place: a kept-alive connection
            assert _request(sock).startswith(b"HTTP/1.1 401")
        with _connect(limited_server) as extra:
            answer = _read_all(extra)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b'"code": "UNAVAILABLE"' in answer
        assert b"retry-after: 1" in answer.lower()
        held.pop().close()
        deadline = time.monotonic() + CUT_WITHIN
        while True:  # the place is freed once the server has seen the close
            with _connect(limited_server) as again:
                answer = _request(again)
            if answer.startswith(b"HTTP/1.1 401") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    finally:
        for sock in held:
            sock.close()


def _push_blob(server: Server, data: bytes) -> str:
    location = _upload(server)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.put(
        location,
        params={"digest": digest},
        content=data,
        headers={"authorization": AUTH, "content-type": "application/octet-stream"},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    return digest


def _place_is_freed(server: Server) -> bytes:
    """A new connection's answer once the server has had CUT_WITHIN to free a place."""
    deadline = time.monotonic() + CUT_WITHIN
    while True:
        with _connect(server) as again:
            answer = _request(again)
        if answer.startswith(b"HTTP/1.1 401") or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def _hold_every_place(server: Server, places: int) -> list[socket.socket]:
    """`places` kept-alive connections, each answered once. Connections the test closed just
    before (its uploads) free their places once the server has seen them close: until then,
    try again."""
    deadline = time.monotonic() + CUT_WITHIN
    while True:
        held = [_connect(server) for _ in range(places)]
        answers = [_request(sock) for sock in held]
        if all(a.startswith(b"HTTP/1.1 401") for a in answers):
            return held
        for sock in held:
            sock.close()
        assert time.monotonic() < deadline, answers
        time.sleep(0.05)


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
@pytest.mark.parametrize("answer", ["small", "blob"])
def test_a_connection_closed_with_its_answer_unread_frees_its_place(
    limited_server: Server, answer: str, reset: bool
) -> None:
    """A kept-alive client that goes away in the middle of an answer (a small one already in
    the socket buffers, or a blob larger than they hold, still being sent), with a close or a
    reset (SO_LINGER 0), gives its place back once the server sees it go."""
    request = b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n"
    if answer == "blob":
        digest = _push_blob(limited_server, bytes(range(256)) * (64 * 1024))  # 16 MiB
        request = (
            f"GET /v2/slow/app/blobs/{digest} HTTP/1.1\r\nHost: berth\r\n"
            f"Authorization: {AUTH}\r\n\r\n"
        ).encode()
    held = _hold_every_place(limited_server, 3)
    try:
        leaving = held[0]  # kept alive after its first answer; now asks again
        leaving.sendall(request)
        assert leaving.recv(12).startswith(b"HTTP/1.1 200" if answer == "blob" else b"HTTP/1.1")
        with _connect(limited_server) as extra:  # all places are taken
            assert _read_all(extra).startswith(b"HTTP/1.1 503")
        if reset:
            leaving.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        held.pop(0).close()  # the rest of the answer unread
        answer_now = _place_is_freed(limited_server)
        assert answer_now.startswith(b"HTTP/1.1 401"), answer_now[:200]
    finally:
        for sock in held:
            sock.close()
