"""How a Berth is put together: the one assembly of its services, for `berth serve` and for
every command that needs them.

Three depths, each built on the one before, so a command opens no more than it uses:

- `open_storage`: the metadata database (migrated as `metadata.auto_migrate` says) and the
  blob store, both checked (backups);
- `open_services(serving=False)`: also the registry, with the rules every write must pass
  (immutable tags, quotas) and the lifecycle (gc, cleanup policies): what `berth gc` or
  `berth import` writes through. Nothing is registered or started: no accounts or keys made,
  no proxy namespaces claimed, no host record, no jobs;
- `open_services()`: also access control, the proxy, operations (metrics, webhooks, the host
  record), the scanner and backups: what `berth serve` runs (and `berth mirror sync` and
  `berth scan`, which work as the server does).

The parts beyond storage are imported when asked for, so a command pays at start-up only for
what it opens; the web application (routes, the HTTP server) is not among them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from appliance.config import Config

if TYPE_CHECKING:  # imported when opened (see above)
    from appliance.auth.service import AccessControl
    from appliance.backup.service import BackupService
    from appliance.lifecycle import Lifecycle
    from appliance.metadata.db import Database
    from appliance.operations import Operations
    from appliance.proxy.service import PullThrough
    from appliance.registry import Registry
    from appliance.scan.service import Scanner
    from appliance.storage.base import BlobStore


@dataclass
class Services:
    """What a running Berth is made of; closed by `close()` (and `aclose()`, which also
    closes the proxy's connections). The parts after `lifecycle` are None unless serving."""

    db: Database
    store: BlobStore
    registry: Registry
    lifecycle: Lifecycle  # gc, cleanup policies, immutable tags, quotas
    access: AccessControl | None = None  # accounts, tokens, sign-in (auth/service.py)
    proxy: PullThrough | None = None  # proxy namespaces' pull-through cache (proxy.upstreams)
    ops: Operations | None = None  # metrics, health, rate limits, webhooks (operations.py)
    scanner: Scanner | None = None  # SBOMs, advisories, the pull policy (scan/service.py)
    backups: BackupService | None = None  # backups: schedule, API (backup/service.py)

    def close(self) -> None:
        self.db.close()

    async def aclose(self) -> None:
        """Close the proxy's upstream connections (shielded from cancellation), then the
        database."""
        try:
            if self.proxy is not None:
                with trio.CancelScope(shield=True):
                    await self.proxy.aclose()
        finally:
            self.close()


async def open_storage(
    config: Config, *, migrate: bool | None = None
) -> tuple[Database, BlobStore]:
    """Open the metadata database (`migrate` None: as `metadata.auto_migrate` says) and the
    blob store, and check both. Raises BerthError (ConfigError, Unavailable, ...); the caller
    closes the database."""
    from appliance.metadata.db import open_metadata  # noqa: PLC0415
    from appliance.storage import open_store  # noqa: PLC0415

    db = await trio.to_thread.run_sync(functools.partial(open_metadata, config, migrate=migrate))
    try:
        store = open_store(config)
        await store.check()
    except BaseException:
        db.close()
        raise
    return db, store


async def open_services(
    config: Config,
    clock: Callable[[], float] = time.time,
    *,
    serving: bool = True,
    actor: str = "system",
    pace: float = 0.5,
) -> Services:
    """Open the services of `config` (see the module docstring for `serving`). `actor` is who
    the lifecycle's changes are audited as, `pace` the share of its time the collector may
    work (Lifecycle.open). Raises BerthError; the caller closes the services."""
    from appliance.lifecycle import Lifecycle  # noqa: PLC0415
    from appliance.metadata.store import MetadataStore  # noqa: PLC0415
    from appliance.registry import Registry  # noqa: PLC0415
    from appliance.registry.effects import write_effects  # noqa: PLC0415

    db, store = await open_storage(config)
    try:
        meta = MetadataStore(db, clock, config["gc.delay"], effects=write_effects())
        lifecycle = Lifecycle.open(config, db, store, clock, actor=actor, pace=pace)
        meta.checks = lifecycle.rules  # immutable tags and quotas, inside each write
        registry = Registry(
            meta,
            store,
            clock=clock,
            max_manifest_size=config["manifests.max_size"],
            upload_expiry=config["uploads.expiry"],
            max_open_uploads=config["uploads.max_open_per_account"],
        )
        services = Services(db, store, registry, lifecycle)
        if serving:
            await _open_serving_parts(config, services, clock)
    except BaseException:
        db.close()
        raise
    return services


async def _open_serving_parts(
    config: Config, services: Services, clock: Callable[[], float]
) -> None:
    """Access control, the proxy, operations, the scanner and backups, on `services`."""
    from appliance.auth.service import open_access_control  # noqa: PLC0415
    from appliance.backup.service import BackupService  # noqa: PLC0415
    from appliance.operations import Operations  # noqa: PLC0415
    from appliance.proxy.service import open_proxy  # noqa: PLC0415
    from appliance.scan.service import open_scanner  # noqa: PLC0415

    db, store, registry = services.db, services.store, services.registry
    services.access = await open_access_control(db, config, clock)
    services.proxy = await open_proxy(config, db, registry, clock)
    services.ops = Operations(config, db, store, access=services.access)
    await services.ops.start()
    services.scanner = open_scanner(config, db, registry, clock)
    services.backups = BackupService(config, db, store, clock)
    registry.on_tag_resolved = services.lifecycle.pulls.seen
