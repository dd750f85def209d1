"""What an import writes to, opened without a server: the services of `open_services` without
the serving parts (the metadata database, migrated as `metadata.auto_migrate` says, the blob
store, and the registry with the rules every write must pass: quotas, immutable tags). No
background jobs, no proxy registration: a dry run writes nothing."""

from __future__ import annotations

import os

from appliance.config import Config
from appliance.errors import ConfigError
from appliance.services import Services, open_services


async def open_target(config: Config) -> Services:
    """Open them; ConfigError or Unavailable (one clear line) when they cannot be used. The
    caller closes them."""
    _check_owner(config)
    return await open_services(config, serving=False)


def _check_owner(config: Config) -> None:
    """Refuse to run as root over a data directory another user owns: files and folders made
    by root there would be ones the server (running as that user) cannot write or read."""
    data = config.data_dir
    if os.geteuid() == 0 and data.exists() and data.stat().st_uid != 0:
        raise ConfigError(
            f"{data} belongs to another user, who runs the server: run the import as that "
            f"user (e.g. sudo -u berth berth import ...), so that what it writes stays theirs"
        )
