"""This host among the hosts of one registry: who it is, its row in `hosts`, its host agent.

Several hosts may serve one registry (one PostgreSQL, one bucket, one shared secret). Each says
who it is in the `hosts` table every `HEARTBEAT` seconds: its name (`server.host_name`), the
Berth version, the fingerprint of its server secret (a one-way value), the schema version it
runs, the blob store it writes to and its address. `berth ctl doctor` reads the table and
checks that the hosts seen lately agree (omnibus/checks.py); a disagreement (another secret,
another bucket) means tokens or blobs made on one host fail on another.

A few chores are the host's, not each worker's: the heartbeat, and applying what other hosts'
rate limits counted (runtime/limitsync.py) to the buckets the host's workers share. The worker that
holds an exclusive lock on `<data_dir>/run/host-agent` does them (`HostAgent`); when it dies the
kernel drops the lock and another worker takes it at its next look.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import trio
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from appliance import __version__
from appliance.config import Config
from appliance.errors import BerthError
from appliance.metadata.db import Database
from appliance.metadata.hosts import HostRecord, visit

log = logging.getLogger("berth.ops")

HEARTBEAT = 10.0  # seconds between a host's visits to its row


def storage_of(config: Config) -> str:
    """The blob store this host writes to, as hosts compare it (no credentials)."""
    backend = config["storage.backend"]
    if backend == "s3":
        endpoint = config["storage.s3.endpoint"] or "aws"
        where = f"{endpoint} bucket {config['storage.s3.bucket']}"
        return f"s3 {where} prefix {config['storage.s3.prefix'] or '-'}"
    if backend == "azure":
        account = config["storage.azure.endpoint"] or config["storage.azure.account_name"]
        where = f"{account} container {config['storage.azure.container']}"
        return f"azure {where} prefix {config['storage.azure.prefix'] or '-'}"
    return f"filesystem {config.storage_root}"


def instance_id(data_dir: Path) -> str:
    """A random id of this host's data directory, made once (`<data_dir>/run/host-id`)."""
    path = data_dir / "run" / "host-id"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):  # another worker made it first
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(8).encode())
        finally:
            os.close(fd)
    for _ in range(100):  # a worker that made the file may not have written it yet
        text = path.read_text().strip()
        if text:
            return text
        time.sleep(0.01)
    raise BerthError(f"{path} stays empty: remove it and start again")


class HostAgent:
    """Whether this process is the one that does the host's chores: it holds an exclusive
    `flock` on `path` (None: a process alone, always the agent)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()  # asked from the listener's thread too

    def held(self) -> bool:
        """Hold the lock, taking it when free; whether this process does the chores."""
        if self.path is None or self._fd is not None:
            return True
        with self._lock:
            if self._fd is not None:
                return True
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            self._fd = fd
            return True

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # releases the lock
                self._fd = None


class ThisHost:
    """This host's identity and its heartbeat (run by every worker; written by the agent)."""

    def __init__(
        self,
        config: Config,
        db: Database,
        *,
        secret_fingerprint: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.clock = clock
        self.name = config.host_name
        self.storage = storage_of(config)
        self.secret_fingerprint = secret_fingerprint
        self.address = config["server.listen"]  # until the server says where it listens
        self._listening = trio.Event()
        shared = db.changes.path is not None  # a process of a served host, not a test's
        run = config.data_dir / "run"
        self.instance = instance_id(config.data_dir) if shared else secrets.token_hex(8)
        self.agent = HostAgent(run / "host-agent" if shared else None)
        self.started_at = clock()

    def listening(self, url: str) -> None:
        """The server answers at `url` (what the host's row names)."""
        self.address = url
        self._listening.set()

    def record(self, schema_version: int) -> HostRecord:
        return HostRecord(
            self.name,
            self.instance,
            __version__,
            self.secret_fingerprint,
            schema_version,
            self.storage,
            self.address,
            self.started_at,
            self.clock(),
        )

    async def visit(self) -> None:
        """Write this host's row now (raises Unavailable)."""
        status = await trio.to_thread.run_sync(self.db.schema_status)
        clash = await self.db.write(lambda tx: visit(tx, self.record(status.current)))
        if clash is not None:
            log.warning(
                "another host (at %s) registers as %r too: give each host its own server.host_name",
                clash.address,
                self.name,
            )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Visit the row every `HEARTBEAT` seconds while this process is the host agent,
        from when the server listens."""
        task_status.started()
        with trio.move_on_after(60):
            await self._listening.wait()
        try:
            while True:
                if self.agent.held():
                    try:
                        await self.visit()
                    except BerthError as e:
                        log.warning("cannot register this host: %s", e.message)
                await trio.sleep(HEARTBEAT)
        finally:
            self.agent.close()


class HostInfoCollector(Collector):
    """`berth_host_info{host, version}` 1: which host answered a scrape (join on it)."""

    def __init__(self, host: ThisHost) -> None:
        self.host = host

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "berth_host_info",
            "The host that answered this scrape (server.host_name) and its Berth version.",
            labels=["host", "version"],
        )
        family.add_metric([self.host.name, __version__], 1.0)
        yield family
