"""A small closed-loop HTTP/1.1 load generator, for the requests wrk cannot make.

wrk 4.1 (Debian) cannot benchmark HEAD: its HTTP parser is never told that a response to HEAD
has no body, so it waits for `Content-Length` bytes that never come and counts 0 requests
(wrk issue #198; h2load's HTTP/1 client has the same flaw). This tool keeps N keep-alive
connections busy from one thread with non-blocking sockets and `selectors`, exactly like wrk's
model (each connection sends its next request as soon as the previous response is complete),
and skips the body of HEAD responses.

Run alone: `python -m bench.load URL --method HEAD -c 32 -d 10 -H 'Accept: ...'`.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import time
import urllib.parse
from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    statuses: dict[int, int]
    errors: int  # connections closed in the middle of a request
    latency_ms: dict[str, float] = field(default_factory=dict)
    closes: int = 0  # connections the server closed after announcing it (Connection: close)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def non_2xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 400)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["rps"] = self.rps
        return data


class _Conn:
    __slots__ = ("buf", "sent_at", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.sent_at = 0.0


def _response_length(buf: bytearray, head: bool) -> tuple[int, int, bool] | None:
    """(status, total length of the first response in `buf`, whether the server closes the
    connection after it), or None while incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    header = bytes(buf[:end]).decode("latin-1")
    lines = header.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    chunked = False
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and "close" in value.lower():
            close = True
    body_start = end + 4
    if head or status in (204, 304) or 100 <= status < 200:
        return status, body_start, close
    if chunked:
        term = buf.find(b"0\r\n\r\n", body_start)
        if term < 0:
            return None
        return status, term + 5, close
    if len(buf) < body_start + length:
        return None
    return status, body_start + length, close


def run(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    connections: int = 32,
    duration: float = 10.0,
) -> LoadResult:
    """Keep `connections` keep-alive connections busy for `duration` seconds."""
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or 80
    target = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parsed.netloc}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    head = method.upper() == "HEAD"

    sel = selectors.DefaultSelector()
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    errors = 0
    closes = 0

    def open_conn() -> _Conn:
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = _Conn(sock)
        sel.register(sock, selectors.EVENT_READ, conn)
        return conn

    def send(conn: _Conn) -> None:
        conn.sent_at = time.perf_counter()
        conn.sock.sendall(request)  # a few hundred bytes into an empty socket buffer

    start = time.perf_counter()
    deadline = start + duration
    for _ in range(connections):
        send(open_conn())
    completed = 0
    while True:
        now = time.perf_counter()
        if now >= deadline:
            break
        for key, _ in sel.select(timeout=deadline - now):
            conn: _Conn = key.data
            try:
                chunk = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                chunk = b""
            if not chunk:  # closed without a word in the middle of a request: an error
                errors += 1
                sel.unregister(conn.sock)
                conn.sock.close()
                if time.perf_counter() < deadline:
                    send(open_conn())
                continue
            conn.buf += chunk
            parsed_resp = _response_length(conn.buf, head)
            if parsed_resp is None:
                continue
            status, consumed, close = parsed_resp
            done_at = time.perf_counter()
            del conn.buf[:consumed]
            if done_at <= deadline:
                completed += 1
                statuses[status] += 1
                latencies.append(done_at - conn.sent_at)
                if close:  # announced: not an error; carry on over a new connection
                    closes += 1
                    sel.unregister(conn.sock)
                    conn.sock.close()
                    conn = open_conn()
                send(conn)
    elapsed = time.perf_counter() - start
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    latency_ms: dict[str, float] = {}
    if latencies:
        latencies.sort()
        for p in (50, 90, 99):
            latency_ms[f"p{p}"] = (
                latencies[min(len(latencies) - 1, len(latencies) * p // 100)] * 1e3
            )
        latency_ms["mean"] = statistics.fmean(latencies) * 1e3
    return LoadResult(completed, elapsed, dict(statuses), errors, latency_ms, closes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("-H", "--header", action="append", default=[])
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    result = run(
        args.url,
        method=args.method,
        headers=headers,
        connections=args.connections,
        duration=args.duration,
    )
    print(json.dumps(result.to_json(), indent=2))


if __name__ == "__main__":
    main()
