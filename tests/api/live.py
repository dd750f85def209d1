"""Helpers for the protocol tests that need a real server and real sockets: raw HTTP/1.1
requests that can stop half-way, polling with a deadline (never a fixed sleep), and side-door
looks at the storage tree."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from tests.support.servers import Server

T = TypeVar("T")


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)

    def error_code(self) -> str:
        assert self.headers["content-type"].startswith("application/json"), self.headers
        doc = json.loads(self.body)
        return str(doc["errors"][0]["code"])


def address(server: Server) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(address(server), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request_head(
    server: Server, method: str, target: str, headers: dict[str, str] | None = None
) -> bytes:
    host, port = address(server)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
    headers = dict(headers or {})
    if server.credentials and not any(k.lower() == "authorization" for k in headers):
        user, password = server.credentials
        headers["Authorization"] = (
            "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        )
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_response(sock: socket.socket, method: str = "GET") -> RawResponse:
    resp = http.client.HTTPResponse(sock, method=method)
    try:
        resp.begin()
        body = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        assert b"Traceback" not in body
        return RawResponse(resp.status, headers, body)
    finally:
        resp.close()


def raw_request(
    server: Server,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: Iterable[bytes] = (),
) -> RawResponse:
    """Send a request whose body may be refused early: the body goes from a thread that stops
    quietly when the server closes the connection, and the response is read meanwhile."""
    with connect(server) as sock:
        sock.sendall(request_head(server, method, target, headers))

        def send_body() -> None:
            with contextlib.suppress(OSError):
                for part in body:
                    sock.sendall(part)

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        try:
            return read_response(sock, method)
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sender.join(30)


def pieces(data: bytes, size: int = 256 * 1024) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 20, interval: float = 0.02
) -> T:
    """Poll `probe` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def log_count(server: Server, text: str) -> int:
    return server.log().count(text)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def upload_ids(storage_root: Path) -> set[str]:
    uploads = storage_root / "uploads"
    return {p.name for p in uploads.iterdir()} if uploads.exists() else set()


def blob_copies(storage_root: Path, digest: str) -> list[Path]:
    """The committed copies of `digest` in the filesystem store."""
    algorithm, _, hexpart = digest.partition(":")
    return files_under(storage_root / "blobs" / algorithm / hexpart[:2] / hexpart)
