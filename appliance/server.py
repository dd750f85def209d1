"""Run Berth: open the stores, start background work, serve HTTP until told to stop.

`serve(config, task_status=...)` reports the bound URLs through `task_status` once listening,
so tests and supervisors never guess. SIGTERM and SIGINT stop accepting connections, let
in-flight requests finish (up to `server.shutdown_timeout`), and return.

Slow and idle clients are bounded: a connection that sends no complete request for
`server.idle_timeout` seconds is closed (hypercorn's keep-alive timer also runs while a
request's headers arrive), request bodies are paced by `api/asgi.py` (`server.read_timeout`,
`server.min_body_rate`), and a process holds at most `server.max_connections` connections: one
more is answered `503` with the OCI error JSON and closed at once, rather than queued, so a
flood cannot hold memory and clients retry with back-off.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import h11
import hypercorn.protocol
import hypercorn.protocol.h11
import hypercorn.trio.run
import hypercorn.trio.task_group
import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.trio import serve as hypercorn_serve

from appliance import libc
from appliance.api.asgi import ASGIApp, ClientDisconnected, Message, Receive, Scope, Send
from appliance.api.codes import error_body
from appliance.app import create_app
from appliance.auth.service import AccessControl
from appliance.config import Config
from appliance.metadata.leader import leader_lock
from appliance.runtime.jobs import Job, Scheduler, run_jobs
from appliance.services import Services, open_services

log = logging.getLogger("berth")

# Hypercorn reads 64 KiB per receive; 1 MiB lets blob uploads run at disk speed (DESIGN.md).
hypercorn.trio.tcp_server.MAX_RECV = 1 << 20

# A zero-copy send hands the kernel this much of a file per call (fewer calls, each in a worker
# thread, as a read from storage may wait on the disk); the socket takes what its buffer holds.
SENDFILE_PIECE = 8 << 20
SEND_TURN = 256 << 20  # at most this much per thread hop: a shutdown waits for one turn
COALESCE = 64 << 10  # a body up to this size leaves with the response's head, in one send
INLINE_SEND = 256 << 10  # up to this much is sent from the event loop's thread (page cache)
SEND_PATIENCE_MS = 20  # a full socket is waited on in the thread this long, then in trio
ZERO_COPY = "http.response.zerocopysend"  # ASGI's extension (appliance/api/v2.py uses it)
_SENDFILE = "berth.sendfile"  # the connection's sendfile, handed to `zero_copy` in the scope

_BUSY = error_body("UNAVAILABLE", "too many connections to this server; try again shortly")
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
    + str(len(_BUSY)).encode()
    + b"\r\n\r\n"
    + _BUSY
)


class PeerGone(ClientDisconnected, OSError):
    """A send on a connection whose client has gone (it reset the connection, or closed it
    with part of an answer unread): nothing more can reach it. An OSError, as ASGI asks of a
    send on a closed connection, so hypercorn's connection task ends quietly when it meets it
    outside the application."""


class LimitedTCPServer(hypercorn.trio.tcp_server.TCPServer):
    """hypercorn's per-connection handler, holding one of `server.max_connections` places
    (`config.berth_connections`, a CapacityLimiter) while the connection lives. Hypercorn has
    no such limit, and builds this class by name in `hypercorn.trio.run`, hence the swap.

    It also lets a connection end as soon as its client has gone. hypercorn swallows a failed
    send and lets the application stream the rest of its answer into nothing (a blob read to
    its end from storage), then starts the keep-alive timer for a next request that cannot
    come: the connection, and its place, outlived the client by `server.idle_timeout`."""

    _peer_gone = False  # a send failed: the client reset or closed the connection
    _read_closed = False  # the client closed its side (or reset): no next request can come
    _idle_deadline = math.inf  # when the keep-alive timer closes the connection (idle only)
    _idle_scope: trio.CancelScope | None = None  # the timer's wait (see `_idle_timeout`)

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData) and _h11_connection(self.protocol) is not None:
            if self._peer_gone:
                raise PeerGone("the client has gone")
            if not event.data:  # the end of a Content-Length body: nothing to send
                return
            # The lock without its two checkpoints when it is free, as it nearly always is
            # (one answer at a time on HTTP/1.1): each is a pass through trio's scheduler.
            try:
                self.send_lock.acquire_nowait()
            except trio.WouldBlock:
                await self.send_lock.acquire()
            try:
                with trio.CancelScope(shield=True):
                    await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._peer_gone = True
            finally:
                self.send_lock.release()
            if self._peer_gone:
                await self.protocol.handle(Closed())
                # The application's send raises: a streamed answer stops here (api/v2.py
                # takes it as the client disconnecting).
                raise PeerGone("the client has gone")
            return
        if isinstance(event, Updated):
            if event.idle and self._read_closed:
                return  # an answer ended after the client closed: close now, not after a timeout
            self._set_idle(event.idle)
            return
        await super().protocol_send(event)

    def _set_idle(self, idle: bool) -> None:
        """Start the keep-alive timer (the connection waits for a request) or stop it (one
        arrived). hypercorn cancels its timer task and starts another at every request (a
        lock, a task started and one cancelled: a seventh of a manifest GET's CPU); here one
        task per connection waits in a cancel scope whose deadline is moved."""
        self._idle_deadline = (
            trio.current_time() + self.config.keep_alive_timeout if idle else math.inf
        )
        if self._idle_scope is not None:
            self._idle_scope.deadline = self._idle_deadline

    async def run(self) -> None:
        if isinstance(self.stream, trio.SocketStream):  # plain TCP: the kernel may send files
            # hypercorn copies this dict into each request's scope["state"] (`zero_copy`
            # takes it out again); a new dict, as the given one is shared by every connection.
            self.state = {**self.state, _SENDFILE: self._sendfile}
        places: trio.CapacityLimiter | None = getattr(self.config, "berth_connections", None)
        if places is None:
            await super().run()
            return
        try:
            places.acquire_nowait()
        except trio.WouldBlock:
            await self._refuse()
            return
        try:
            await super().run()
        finally:
            places.release()

    async def _sendfile(self, fd: int, offset: int, count: int) -> None:
        """Send `count` bytes of the file `fd` from `offset` as response body, with sendfile(2):
        from the page cache to the socket, never through this process. h11 is told of the
        bytes (it checks them against the Content-Length) without being given them."""
        connection = _h11_connection(self.protocol)
        if connection is None:
            raise TypeError("a zero-copy send needs an HTTP/1.1 connection")
        head_first = getattr(self.protocol, "protocol", None)
        if isinstance(head_first, HeadFirstH11Protocol):
            await head_first.flush_head()
        connection.send_with_data_passthrough(h11.Data(data=_Span(count)))  # type: ignore[arg-type]
        if self._peer_gone:
            raise PeerGone("the client has gone")
        sock = self.stream.socket
        async with self.send_lock:
            if count <= INLINE_SEND:  # a small layer or config: likely one call, no thread hop
                try:
                    sent = os.sendfile(sock.fileno(), fd, offset, count)
                except BlockingIOError:
                    sent = 0
                except (BrokenPipeError, ConnectionResetError):
                    self._peer_gone = True
                    count = sent = 0
                if count and not sent:
                    await trio.lowlevel.wait_writable(sock)
                offset += sent
                count -= sent
            while count > 0:
                part = partial(_send_file_part, sock.fileno(), fd, offset, min(count, SEND_TURN))
                try:
                    sent = await trio.to_thread.run_sync(part)
                except (BrokenPipeError, ConnectionResetError):
                    self._peer_gone = True
                    break
                offset += sent
                count -= sent
                if sent == 0:  # the client reads slowly: wait here, where it can be cancelled
                    await trio.lowlevel.wait_writable(sock)
        if self._peer_gone:
            await self.protocol.handle(Closed())
            raise PeerGone("the client has gone")

    async def _read_data(self) -> None:
        # hypercorn's loop, without its `fail_after(read_timeout)` around every receive:
        # Berth sets no read_timeout (the keep-alive timer bounds an idle connection, the
        # body's Pace a slow request), and each scope costs a request a little.
        while True:
            try:
                data = await self.stream.receive_some(hypercorn.trio.tcp_server.MAX_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            await self.protocol.handle(RawData(bytes(data)))  # no copy when it is bytes
            if not data:
                break
        await self.protocol.handle(Closed())
        # The client closed (or timed out): hypercorn would keep this connection's task, and
        # so its place, until the keep-alive timer runs out; stop the timer instead, and keep
        # an answer still being sent from starting it again when it ends (protocol_send).
        self._read_closed = True
        await self.idle_task.stop()

    async def _idle_timeout(self) -> None:
        # hypercorn starts this task once, when the connection opens (idle: no request yet),
        # and cancels it when the client closes (`_read_data`). It wakes when the keep-alive
        # deadline passes (moved by `_set_idle` as requests come and go) or the worker starts
        # draining. hypercorn closes a connection that is idle when the worker drains; but
        # the timer may run out (or the drain begin) just as a request arrives on the
        # kept-alive connection, and a close then would cut the answer being sent (a client
        # saw a response cut mid-body while a worker was replaced). So the state is checked
        # where nothing can interleave: between here and the close there is no checkpoint. A
        # request in flight is left to finish; hypercorn closes the connection after its
        # answer when the worker is draining, and the timer watches the next idle time.
        self._set_idle(True)
        while True:
            with trio.CancelScope(deadline=self._idle_deadline) as scope:
                self._idle_scope = scope
                await self.context.terminated.wait()
            self._idle_scope = None
            if _between_requests(self.protocol):
                with trio.CancelScope(shield=True):
                    await self._initiate_server_close()
                return
            if self.context.terminated.is_set():
                return

    async def _refuse(self) -> None:
        with trio.move_on_after(1):
            try:
                if not hasattr(self.stream, "do_handshake"):  # TLS: no time for a handshake
                    await self.stream.send_all(BUSY_RESPONSE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


hypercorn.trio.run.TCPServer = LimitedTCPServer  # type: ignore[attr-defined]


class HeadFirstH11Protocol(hypercorn.protocol.h11.H11Protocol):
    """hypercorn's HTTP/1.1 protocol, sending the status line and headers of a small answer
    (a Content-Length of at most COALESCE: a manifest, a token, an error) with its body: one
    send (a lock, a system call, passes through trio's scheduler) instead of two. A larger or
    streamed answer's head still leaves at once, so a client waiting on a slow body (a blob
    fetched upstream) has its headers meanwhile."""

    _head: bytes | None = None

    async def _send_h11_event(self, event: Any) -> None:
        if isinstance(event, h11.Response) and _small(event.headers):
            try:
                self._head = self.connection.send(event)
            except h11.LocalProtocolError:
                if self.connection.their_state != h11.ERROR:
                    raise
            return
        if self._head is None:
            await super()._send_h11_event(event)
            return
        head, self._head = self._head, None
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            await self.send(RawData(data=head))
            if self.connection.their_state != h11.ERROR:
                raise
            return
        await self.send(RawData(data=head + data))

    async def _close_stream(self) -> None:
        # The answer is complete: what the application has not read of the request's body
        # (it answered without reading it, a part or all of it queued) must not hold up the
        # disconnect (see AppQueue).
        if self.stream is not None and self.connection.our_state in (h11.DONE, h11.MUST_CLOSE):
            put = getattr(self.stream, "app_put", None)
            if isinstance(put, AppQueue):
                put.abandon()
        await super()._close_stream()

    async def flush_head(self) -> None:
        """Send a held head now (before bytes that bypass the protocol: sendfile)."""
        if self._head is not None:
            head, self._head = self._head, None
            await self.send(RawData(data=head))


hypercorn.protocol.H11Protocol = HeadFirstH11Protocol  # type: ignore[attr-defined]


class AppQueue:
    """What a connection hands one request's application: body chunks, then a disconnect;
    bounded like hypercorn's (`max_app_queue_size`), so a client sending faster than the
    application reads waits on its socket.

    hypercorn's queue has a hole: an application that answers before it has read the body (a
    404 for an unknown upload, a 401, a 503 when storage is down) never reads it, so the
    queue stays full; the connection's reader waits on it forever, hypercorn's "disconnect"
    for the finished request waits behind it inside the application's last send, and the
    client, still sending its body into a connection nobody reads, hangs until its own
    timeout. The same when the whole body arrived but fills the queue unread: the disconnect
    waits, and the request never ends. `abandon` (called once the answer is complete) drops
    what is queued and every later chunk, so the disconnect gets through and the connection
    closes (or serves its next request) after the answer, as hypercorn means it to."""

    def __init__(self, size: int) -> None:
        self._send, self.receive = trio.open_memory_channel[Message](size)
        self.abandoned = False

    async def __call__(self, message: Message) -> None:
        """Hand the application `message` (hypercorn's `app_put`)."""
        if self.abandoned and message["type"] == "http.request":
            return
        await self._send.send(message)

    def abandon(self) -> None:
        self.abandoned = True
        with contextlib.suppress(trio.WouldBlock):
            while True:  # a reader waiting to put a chunk moves it in as one leaves: drop it too
                self.receive.receive_nowait()


class AppTaskGroup(hypercorn.trio.task_group.TaskGroup):
    """hypercorn's per-connection task group, starting each request's application with an
    AppQueue (hypercorn builds this class by name in its connection handler, hence the swap)."""

    async def spawn_app(  # type: ignore[override]
        self, app: Any, config: HypercornConfig, scope: Any, send: Any
    ) -> AppQueue:
        queue = AppQueue(config.max_app_queue_size)
        assert self._nursery is not None
        handle: Any = hypercorn.trio.task_group._handle
        self._nursery.start_soon(
            handle,
            app,
            config,
            scope,
            queue.receive.receive,
            send,
            trio.to_thread.run_sync,
            trio.from_thread.run,
        )
        return queue


hypercorn.trio.tcp_server.TaskGroup = AppTaskGroup  # type: ignore[attr-defined]


def _small(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a response's headers (h11's: names in lower case) declare a body of at most
    COALESCE bytes."""
    for name, value in headers:
        if name == b"content-length":
            return value.isdigit() and int(value) <= COALESCE
    return False


def _send_file_part(sock: int, fd: int, offset: int, count: int) -> int:
    """In a worker thread: sendfile(2) `count` bytes of `fd` from `offset` to the (non-blocking)
    socket, waiting for room in it up to SEND_PATIENCE at a time; returns the bytes sent, fewer
    once the client stops reading for that long (the event loop then waits for it). One
    thread hop for many sends, where a hop per send would cost as much as the send."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(sock, fd, offset + sent, min(count - sent, SENDFILE_PIECE))
        except BlockingIOError:
            if not poller.poll(SEND_PATIENCE_MS):
                break
            continue
        if n == 0:  # the file is shorter than it was when opened
            raise OSError(errno.EIO, "blob file ended early")
        sent += n
    return sent


class _Span:
    """What h11 is given for bytes sent past it: only their number (Content-Length framing
    passes the data object through untouched)."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


def zero_copy(app: ASGIApp) -> ASGIApp:
    """Offer ASGI's zero-copy send (`http.response.zerocopysend`: a file, an offset and a
    count) on connections that can do it (plain TCP, HTTP/1.x), and carry it out with the
    connection's sendfile."""

    async def zero_copy_app(scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state")
        sendfile = state.pop(_SENDFILE, None) if isinstance(state, dict) else None
        if sendfile is None or scope["type"] != "http" or scope.get("http_version") == "2":
            await app(scope, receive, send)
            return
        scope.setdefault("extensions", {})[ZERO_COPY] = {}

        async def sending(message: Message) -> None:
            if message["type"] != ZERO_COPY:
                await send(message)
                return
            file = message["file"]
            await sendfile(file.fileno(), message.get("offset", 0), message["count"])
            if not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b""})

        await app(scope, receive, sending)

    return zero_copy_app


def _h11_connection(protocol: object) -> h11.Connection | None:
    """The h11 state of a connection hypercorn serves as HTTP/1.1; None for other protocols."""
    connection = getattr(getattr(protocol, "protocol", None), "connection", None)
    return connection if isinstance(connection, h11.Connection) else None


def _between_requests(protocol: object) -> bool:
    """Whether an HTTP/1.1 connection has no request in flight (h11 idle on both sides).
    Other protocols (HTTP/2 has its own shutdown) count as idle, as hypercorn treats them."""
    connection = _h11_connection(protocol)
    if connection is None:
        return True
    return connection.our_state is h11.IDLE and connection.their_state is h11.IDLE


async def background_jobs(
    config: Config, services: Services, *, task_status: trio.TaskStatus[None]
) -> None:
    """Campaign for the jobs leadership; while leading, run the background jobs
    (runtime/jobs.py)."""
    lock = leader_lock(services.db, "jobs", ttl=config["jobs.lease"], clock=time.time)
    scheduler = Scheduler(
        [
            Job(
                "upload-purge",
                config["uploads.purge_interval"],
                services.registry.purge_expired_uploads,
            ),
            *ldap_jobs(config, services.access),
            *(services.ops.jobs() if services.ops is not None else []),
            *(services.lifecycle.jobs() if services.lifecycle is not None else []),
            *(services.scanner.jobs() if services.scanner is not None else []),
            *(services.backups.jobs() if services.backups is not None else []),
        ]
    )
    keep = max(0.05, min(5.0, config["jobs.lease"] / 3))
    await run_jobs(
        lock, scheduler.run, keep_interval=keep, retry_interval=keep, task_status=task_status
    )


def ldap_jobs(config: Config, access: AccessControl | None) -> list[Job]:
    """Re-read LDAP users' groups on a schedule (a user removed from a group loses the role)."""
    interval = config["ldap.sync_interval"]
    if access is None or access.ldap is None or interval <= 0:
        return []

    async def sync(fence: object) -> None:
        await access.sync_ldap()

    return [Job("ldap-sync", interval, sync, delay=interval)]


class Draining:
    """Once the shutdown trigger fires, every response says `Connection: close`.

    hypercorn closes a keep-alive connection after the request in flight on it when it shuts
    down; without the header a client may already be sending its next request on it, which
    then fails. Told, clients open a new connection (to another worker, or after the restart).
    """

    def __init__(self, trigger: Callable[[], Awaitable[None]]) -> None:
        self.trigger = trigger
        self.draining = False

    async def wait(self) -> None:
        await self.trigger()
        self.draining = True

    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def draining_app(scope: Scope, receive: Receive, send: Send) -> None:
            if not self.draining or scope["type"] != "http":
                await app(scope, receive, send)
                return

            async def closing(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
                await send(message)

            await app(scope, receive, closing)

        return draining_app


TRIM_INTERVAL = 10.0  # seconds between returns of the C allocator's free memory


# glibc's malloc_trim, or None where the C library has none (musl, macOS).
_MALLOC_TRIM: Callable[[int], int] | None = libc.function("malloc_trim")


def trim_memory() -> bool:
    """Give the C allocator's free memory back to the system; False where it cannot.

    A burst (1 MiB request bodies read by several threads, argon2 password checks, thousands
    of small responses) leaves glibc's heaps holding freed memory it keeps for reuse: a
    serving process stayed 25-30 MiB above its idle size after the bench's loads."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


async def trim_memory_regularly(*, task_status: trio.TaskStatus[None]) -> None:
    """Trim every TRIM_INTERVAL, in a worker thread (it walks the heaps: about a millisecond)."""
    task_status.started()
    if _MALLOC_TRIM is None:
        return
    while True:
        await trio.sleep(TRIM_INTERVAL)
        await trio.to_thread.run_sync(trim_memory)


def tell_ready(fd: int) -> None:
    """Tell the supervisor this worker answers requests (it may be waiting to say so)."""
    _tell(fd, b"R")


def tell_failed(fd: int, message: str) -> None:
    """Tell the supervisor why this worker could not start (it prints it, once for all)."""
    _tell(fd, b"F" + message.encode()[:4000])


def _tell(fd: int, what: bytes) -> None:
    with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
        os.write(fd, what)
    with contextlib.suppress(OSError):
        os.close(fd)


def _signal_trigger(stack: contextlib.ExitStack) -> Callable[[], Awaitable[None]]:
    """A shutdown trigger for SIGTERM/SIGINT whose handlers are installed now, not when
    hypercorn gets round to starting it (after it reports listening): a signal that arrives
    during start-up is then a graceful stop too, not a kill."""
    signals = stack.enter_context(trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT))

    async def wait() -> None:
        async for signum in signals:
            log.info("received %s: finishing in-flight requests", signal.Signals(signum).name)
            return

    return wait


def hypercorn_config(config: Config, listen_fd: int | None = None) -> HypercornConfig:
    host, port = config.listen
    hc = HypercornConfig()
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if listen_fd is not None:  # a worker of `--workers N`: the supervisor's socket
        hc.bind = [f"fd://{listen_fd}"]
    hc.graceful_timeout = config["server.shutdown_timeout"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("berth.http")
    hc.keep_alive_timeout = config["server.idle_timeout"]
    hc.read_timeout = None  # LimitedTCPServer._read_data relies on it (it sets no timer)
    # hypercorn closes a connection after 1,000 requests by default; under load, clients that
    # keep connections open met those closes as dropped connections. No limit, like the
    # reference registry.
    hc.keep_alive_max_requests = 1 << 62
    hc.backlog = 1024  # a lone process binds itself; a supervisor's socket has the same
    hc.h11_max_incomplete_size = 64 * 1024
    hc.include_server_header = False
    return hc


async def serve(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    listen_fd: int | None = None,
    ready_fd: int | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the registry until a signal (or `shutdown_trigger`) says stop.

    `listen_fd` serves on an inherited listening socket instead of binding `server.listen`;
    `ready_fd` (a pipe from the supervisor) gets one byte and is closed once requests are
    being answered.
    """
    stack = contextlib.ExitStack()
    draining = Draining(shutdown_trigger or _signal_trigger(stack))
    try:
        services = await open_services(config)
    except BaseException:
        stack.close()
        raise
    try:
        assert services.access is not None  # opened when serving
        app = create_app(
            services.registry,
            config["server.public_url"],
            access=services.access,
            proxy=services.proxy,
            ops=services.ops,
            config=config,
            lifecycle=services.lifecycle,
            backups=services.backups,
        )
        async with trio.open_nursery() as nursery:
            # Other hosts' writes reach this process's caches (metadata/changes.py).
            await nursery.start(services.db.watch_changes)
            await nursery.start(background_jobs, config, services)
            await nursery.start(trim_memory_regularly)
            if services.ops is not None:
                await nursery.start(services.ops.run)
            if services.lifecycle is not None:
                await nursery.start(services.lifecycle.pulls.run)
            if services.backups is not None:
                await nursery.start(services.backups.run)

            async def http(task_status: trio.TaskStatus[list[str]]) -> None:
                hc = hypercorn_config(config, listen_fd)
                if config["server.max_connections"] > 0:
                    hc.berth_connections = trio.CapacityLimiter(config["server.max_connections"])  # type: ignore[attr-defined]
                await hypercorn_serve(
                    zero_copy(draining.wrap(app)),  # type: ignore[arg-type]
                    hc,
                    shutdown_trigger=draining.wait,
                    task_status=task_status,
                )
                # Shut down: background work stops with the server.
                nursery.cancel_scope.cancel()

            urls: list[str] = await nursery.start(http)
            for url in urls:
                if listen_fd is None:
                    log.info("listening on %s", url)
                else:  # a supervisor's worker: the supervisor says where it listens
                    log.info("worker serving on %s", url)
            if services.ops is not None and urls:
                services.ops.host.listening(urls[0])  # the bound port, for `berth ctl doctor`
            if ready_fd is not None:
                tell_ready(ready_fd)
            task_status.started(urls)
    finally:
        if services.proxy is not None:
            with trio.CancelScope(shield=True):
                await services.proxy.aclose()
        services.close()
        stack.close()
