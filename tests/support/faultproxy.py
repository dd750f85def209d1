"""A fault-injecting HTTP proxy for tests: put it between Berth and its S3 server.

It forwards every request to `upstream` unchanged (bodies streamed, keep-alive kept) unless told
otherwise:

- `fail(n, status, code)`: the next `n` requests get an S3-style XML error instead (503 SlowDown,
  500 InternalError, ...), without reaching the upstream;
- `down = True`: every connection is closed at once without an answer, as a crashed or
  unreachable S3 looks to a client; `down = False` brings it back;
- `drop(n)`: the next `n` requests are answered by closing the connection;
- `cut(after)`: the next response body is cut off after `after` bytes (connection closed).

`requests` records (method, path, Range or x-ms-range header) of every request that arrived,
answered or not. Runs in daemon threads of the test process, on a free loopback port;
`close()` stops it.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


def _range(headers: Any) -> str:
    """The request's byte range: `Range`, or Azure's `x-ms-range`."""
    return str(headers.get("range") or headers.get("x-ms-range") or "")


_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class FaultProxy:
    def __init__(self, upstream: str, *, tls: ssl.SSLContext | None = None) -> None:
        """`tls`: serve HTTPS with this server context (the upstream stays plain HTTP)."""
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.down = False
        self.requests: list[tuple[str, str, str]] = []
        self._failures: list[tuple[int, str]] = []
        self._drops = 0
        self._cuts: list[int] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def handle_one_request(self) -> None:
                if proxy.down:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                super().handle_one_request()

            def _any(self) -> None:
                with proxy._lock:
                    proxy.requests.append((self.command, self.path, _range(self.headers)))
                    failure = proxy._failures.pop(0) if proxy._failures else None
                    dropped = proxy._drops > 0
                    proxy._drops -= int(dropped)
                    cut = proxy._cuts.pop(0) if proxy._cuts and self.command == "GET" else None
                length = int(self.headers.get("content-length") or 0)
                if proxy.down or dropped:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if failure is not None:
                    self.rfile.read(length)
                    status, code = failure
                    body = (
                        '<?xml version="1.0" encoding="UTF-8"?>\n'
                        f"<Error><Code>{code}</Code><Message>injected {code}</Message>"
                        "<RequestId>fault-proxy</RequestId></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("content-type", "application/xml")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=120
                )
                try:
                    upstream.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in self.headers.items():
                        if name.lower() not in _HOP:
                            upstream.putheader(name, value)
                    upstream.endheaders()
                    remaining = length
                    while remaining > 0:
                        data = self.rfile.read(min(1 << 20, remaining))
                        if not data:
                            break
                        upstream.send(data)
                        remaining -= len(data)
                    response = upstream.getresponse()
                    self.send_response_only(response.status, response.reason)
                    for name, value in response.getheaders():
                        if name.lower() not in _HOP:
                            self.send_header(name, value)
                    body_length = response.getheader("content-length")
                    bodiless = self.command == "HEAD" or response.status in (204, 304)
                    if body_length is None and not bodiless:
                        # The body ends when the connection does: say so, so that the client
                        # does not reuse a connection this proxy is about to close.
                        self.close_connection = True
                        self.send_header("connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        sent = 0
                        while data := response.read(1 << 20):
                            if cut is not None and sent + len(data) > cut:
                                self.wfile.write(data[: cut - sent])
                                self.wfile.flush()
                                self.close_connection = True
                                self.connection.shutdown(socket.SHUT_RDWR)
                                return
                            self.wfile.write(data)
                            sent += len(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def fail(self, n: int, status: int = 503, code: str = "SlowDown") -> None:
        """Answer the next `n` requests with an S3 error of `status` and `code`."""
        with self._lock:
            self._failures.extend([(status, code)] * n)

    def drop(self, n: int) -> None:
        """Close the connection of the next `n` requests without answering."""
        with self._lock:
            self._drops += n

    def cut(self, after: int) -> None:
        """Cut the body of the next GET response off after `after` bytes."""
        with self._lock:
            self._cuts.append(after)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
