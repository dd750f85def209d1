"""What an import writes to, opened without a server: the metadata database (migrated as
`metadata.auto_migrate` says), the blob store, and the rules every write must pass (quotas,
immutable tags). No background jobs, no proxy registration: a dry run writes nothing."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import trio

from appliance.config import Config
from appliance.errors import ConfigError
from appliance.lifecycle.rules import Rules
from appliance.metadata.db import Database, open_metadata
from appliance.metadata.store import MetadataStore
from appliance.registry import Registry
from appliance.registry.effects import write_effects
from appliance.storage import open_store


@dataclass
class Target:
    db: Database
    registry: Registry


async def open_target(config: Config) -> Target:
    """Open them; ConfigError or Unavailable (one clear line) when they cannot be used."""
    _check_owner(config)
    db = await trio.to_thread.run_sync(open_metadata, config)
    try:
        store = open_store(config)
        await store.check()
        meta = MetadataStore(db, time.time, config["gc.delay"], effects=write_effects())
        meta.checks = Rules(db, time.time)
        registry = Registry(
            meta,
            store,
            clock=time.time,
            max_manifest_size=config["manifests.max_size"],
            upload_expiry=config["uploads.expiry"],
        )
    except BaseException:
        db.close()
        raise
    return Target(db, registry)


def _check_owner(config: Config) -> None:
    """Refuse to run as root over a data directory another user owns: files and folders made
    by root there would be ones the server (running as that user) cannot write or read."""
    data = config.data_dir
    if os.geteuid() == 0 and data.exists() and data.stat().st_uid != 0:
        raise ConfigError(
            f"{data} belongs to another user, who runs the server: run the import as that "
            f"user (e.g. sudo -u berth berth import ...), so that what it writes stays theirs"
        )
