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
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable

import h11
import hypercorn.trio.run
import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from appliance.api.asgi import ASGIApp, Message, Receive, Scope, Send
from appliance.api.codes import error_body
from appliance.app import create_app
from appliance.auth.service import AccessControl
from appliance.config import Config
from appliance.metadata.leader import leader_lock
from appliance.ops.jobs import Job, Scheduler, run_jobs
from appliance.services import Services, open_services

log = logging.getLogger("berth")

# Hypercorn reads 64 KiB per receive; 1 MiB lets blob uploads run at disk speed (DESIGN.md).
hypercorn.trio.tcp_server.MAX_RECV = 1 << 20

_BUSY = error_body("UNAVAILABLE", "too many connections to this server; try again shortly")
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
    + str(len(_BUSY)).encode()
    + b"\r\n\r\n"
    + _BUSY
)


class LimitedTCPServer(hypercorn.trio.tcp_server.TCPServer):
    """hypercorn's per-connection handler, holding one of `server.max_connections` places
    (`config.berth_connections`, a CapacityLimiter) while the connection lives. Hypercorn has
    no such limit, and builds this class by name in `hypercorn.trio.run`, hence the swap."""

    async def run(self) -> None:
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

    async def _read_data(self) -> None:
        await super()._read_data()
        # The client closed (or timed out): hypercorn would keep this connection's task, and
        # so its place, until the keep-alive timer runs out; stop the timer instead.
        await self.idle_task.stop()

    async def _idle_timeout(self) -> None:
        # hypercorn closes a connection that is idle when the worker starts draining. But its
        # timer may wake (drain began) just as a request arrives on the kept-alive connection:
        # the request's start cancels the timer too late, and hypercorn closed the connection
        # under the answer being sent (a client saw a response cut mid-body while a worker was
        # replaced). So the state is checked where nothing can interleave: between here and
        # the close there is no checkpoint. A request in flight is left to finish; hypercorn
        # closes the connection after its answer (the worker is draining).
        with trio.move_on_after(self.config.keep_alive_timeout):
            await self.context.terminated.wait()
        if not _between_requests(self.protocol):
            return
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

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


def _between_requests(protocol: object) -> bool:
    """Whether an HTTP/1.1 connection has no request in flight (h11 idle on both sides).
    Other protocols (HTTP/2 has its own shutdown) count as idle, as hypercorn treats them."""
    connection = getattr(getattr(protocol, "protocol", None), "connection", None)
    if not isinstance(connection, h11.Connection):
        return True
    return connection.our_state is h11.IDLE and connection.their_state is h11.IDLE


async def background_jobs(
    config: Config, services: Services, *, task_status: trio.TaskStatus[None]
) -> None:
    """Campaign for the jobs leadership; while leading, run the background jobs (ops/jobs.py)."""
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
                    draining.wrap(app),  # type: ignore[arg-type]
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
