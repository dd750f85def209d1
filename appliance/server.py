"""Run Berth: open the stores, start background work, serve HTTP until told to stop.

`serve(config, task_status=...)` reports the bound URLs through `task_status` once listening,
so tests and supervisors never guess. SIGTERM and SIGINT stop accepting connections, let
in-flight requests finish (up to `server.shutdown_timeout`), and return.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from appliance.app import create_app
from appliance.config import Config
from appliance.errors import ConfigError
from appliance.metadata.db import Database
from appliance.metadata.store import MetadataStore
from appliance.registry import Registry
from appliance.storage import open_store

log = logging.getLogger("berth")

# Hypercorn reads 64 KiB per receive; 1 MiB lets blob uploads run at disk speed (DESIGN.md).
hypercorn.trio.tcp_server.MAX_RECV = 1 << 20


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Services:
    """What a running Berth is made of; closed by `close()`."""

    db: Database
    registry: Registry

    def close(self) -> None:
        self.db.close()


async def open_services(config: Config, clock: Callable[[], float] = time.time) -> Services:
    """Open the metadata database (migrating it) and the blob store, and check both."""
    db = await trio.to_thread.run_sync(
        lambda: Database.from_url(config.metadata_url, config["metadata.readers"])
    )
    try:
        store = open_store(config)
        await store.check()
        meta = MetadataStore(db, clock)
        registry = Registry(
            meta,
            store,
            clock=clock,
            max_manifest_size=config["manifests.max_size"],
            upload_expiry=config["uploads.expiry"],
        )
    except BaseException:
        db.close()
        raise
    return Services(db, registry)


async def purge_uploads(registry: Registry, interval: float) -> None:
    """Remove expired upload sessions every `interval` seconds, forever."""
    while True:
        try:
            await registry.purge_expired_uploads()
        except Exception:
            log.exception("upload purge failed; will retry")
        await trio.sleep(interval)


async def _wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s: finishing in-flight requests", signal.Signals(signum).name)
            return


def hypercorn_config(config: Config) -> HypercornConfig:
    host, port = config.listen
    hc = HypercornConfig()
    hc.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hc.graceful_timeout = config["server.shutdown_timeout"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("berth.http")
    hc.keep_alive_timeout = 75
    hc.h11_max_incomplete_size = 64 * 1024
    hc.include_server_header = False
    return hc


async def serve(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the registry until a signal (or `shutdown_trigger`) says stop."""
    host, _ = config.listen
    if not is_loopback(host) and not config["server.insecure_no_auth"]:
        raise ConfigError(
            f"refusing to listen on {host}: sign-in does not exist yet, so anyone who can reach "
            "this address could push; listen on 127.0.0.1 or pass --insecure-no-auth"
        )
    services = await open_services(config)
    try:
        app = create_app(services.registry, config["server.public_url"])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(purge_uploads, services.registry, config["uploads.purge_interval"])

            async def http(task_status: trio.TaskStatus[list[str]]) -> None:
                await hypercorn_serve(
                    app,  # type: ignore[arg-type]
                    hypercorn_config(config),
                    shutdown_trigger=shutdown_trigger or _wait_for_signal,
                    task_status=task_status,
                )
                # Shut down: background work stops with the server.
                nursery.cancel_scope.cancel()

            urls: list[str] = await nursery.start(http)
            for url in urls:
                log.info("listening on %s", url)
            task_status.started(urls)
    finally:
        services.close()
