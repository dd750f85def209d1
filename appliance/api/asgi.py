"""Minimal raw-ASGI request and response plumbing for the hot registry routes.

Blob bytes and the small hot requests go through here rather than Quart's wrappers: request
bodies are streamed in batches of about 1 MiB (one thread hop per batch for writing and
hashing), and responses are sent without buffering.

A body is read at a `Pace`: a client that sends no byte for `read_timeout` seconds, or less
than `min_rate` bytes a second on average over any such window, is cut off with TooSlow (the
route answers 408 and closes the connection). A slow upload that keeps sending is never cut,
however long it takes: there is no total timeout. (Slow headers and idle connections are the
server's: `server.idle_timeout`.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import trio

from appliance.errors import SizeInvalid, TooSlow

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BATCH = 1 << 20


def client_address(scope: Mapping[str, object]) -> str | None:
    """The client a request comes from, as every layer (sign-in, audit, rate limits, logs) must
    name it: the peer, or the client named in `X-Forwarded-For` when the peer is a trusted proxy.
    The operations middleware decides that once per request (`api/middleware.py`,
    `forwarded_client`, with `server.trusted_proxies`) and puts the answer in the scope; read it
    only here."""
    client = scope.get("client")
    return str(client[0]) if isinstance(client, (tuple, list)) and client else None


class ClientDisconnected(Exception):
    """The client went away before sending its whole request body."""


@dataclass(frozen=True)
class Pace:
    """How slowly a request body may arrive (`server.read_timeout`, `server.min_body_rate`)."""

    read_timeout: float = 60.0
    min_rate: float = 0.0


class Request:
    """What a handler needs of an ASGI HTTP request."""

    __slots__ = (
        "_body_done",
        "_headers",
        "_query",
        "_window",
        "method",
        "pace",
        "receive",
        "scope",
    )

    def __init__(self, scope: Scope, receive: Receive, pace: Pace | None = None) -> None:
        self.scope = scope
        self.receive = receive
        self.pace = pace
        self.method: str = scope["method"]
        self._headers: dict[str, str] | None = None
        self._query: dict[str, list[str]] | None = None
        self._body_done = False
        self._window: tuple[float, int] | None = None  # (started, bytes) of the rate window

    async def _next(self) -> Message:
        """The next body message, within the pace. Raises TooSlow."""
        pace = self.pace
        if pace is None:
            return await self.receive()
        message: Message | None = None
        with trio.move_on_after(pace.read_timeout):
            message = await self.receive()
        if message is None:
            raise TooSlow(f"no byte of the request body for {pace.read_timeout:g} s")
        now = trio.current_time()
        started, seen = self._window or (now, 0)
        seen += len(message.get("body", b""))
        if now - started >= pace.read_timeout:
            if seen < pace.min_rate * (now - started):
                raise TooSlow(
                    f"the request body arrives slower than {pace.min_rate:g} bytes a second"
                )
            started, seen = now, 0
        self._window = (started, seen)
        return message

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self.scope["headers"]
            }
        return self._headers

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            raw = self.scope.get("query_string", b"").decode("latin-1")
            self._query = parse_qs(raw, keep_blank_values=True)
        return self._query

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    async def chunks(
        self, batch: int = BATCH, exact_length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The body in pieces of about `batch` bytes. Raises ClientDisconnected.

        With `exact_length` (a length the client declared some other way than Content-Length,
        such as a Content-Range on a chunked body), a body that turns out longer or shorter
        raises SizeInvalid; what came before the excess has been yielded.
        """
        parts: list[bytes] = []
        held = 0
        total = 0
        while not self._body_done:
            try:
                message = await self._next()
            except TooSlow:
                if held:  # what arrived is kept: the client may resume from there
                    yield b"".join(parts)
                raise
            if message["type"] == "http.disconnect":
                raise ClientDisconnected("client disconnected during the request body")
            data = message.get("body", b"")
            self._body_done = not message.get("more_body", False)
            if data:
                if exact_length is not None and total + len(data) > exact_length:
                    data = data[: exact_length - total]
                    self._body_done = True
                    if data:
                        parts.append(data)
                    yield b"".join(parts)
                    raise SizeInvalid(f"the body is longer than the declared {exact_length} bytes")
                parts.append(data)
                held += len(data)
                total += len(data)
            if held >= batch or (self._body_done and held):
                yield parts[0] if len(parts) == 1 else b"".join(parts)
                parts = []
                held = 0
        if exact_length is not None and total != exact_length:
            raise SizeInvalid(f"the body is {total} bytes, not the declared {exact_length}")

    async def read(self, limit: int) -> bytes:
        """The whole body if it is at most `limit` bytes. A longer body is read only as far as
        `limit + 1` bytes, which are returned so that the caller can refuse it."""
        parts: list[bytes] = []
        held = 0
        while not self._body_done and held <= limit:
            message = await self._next()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected("client disconnected during the request body")
            data = message.get("body", b"")
            parts.append(data)
            held += len(data)
            self._body_done = not message.get("more_body", False)
        return b"".join(parts)[: limit + 1]


Headers = list[tuple[bytes, bytes]]


def header_list(headers: dict[str, str]) -> Headers:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def respond(
    send: Send, status: int, headers: dict[str, str], body: bytes = b"", *, head: bool = False
) -> None:
    """Send a whole response. `head` sends the headers (with the real length) and no body."""
    headers.setdefault("content-length", str(len(body)))
    await send({"type": "http.response.start", "status": status, "headers": header_list(headers)})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def respond_stream(
    send: Send, status: int, headers: dict[str, str], body: AsyncIterator[bytes]
) -> None:
    """Send a response whose body arrives in pieces.

    The first piece is read before the headers go out, so a body that fails at once (bytes
    missing from the store) can still be answered with an error instead of a cut connection.
    """
    first = await anext(body, None)
    await send({"type": "http.response.start", "status": status, "headers": header_list(headers)})
    if first is not None:
        await send({"type": "http.response.body", "body": first, "more_body": True})
        async for data in body:
            await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
