"""Blob stores: where content-addressed bytes and in-progress uploads live.

Backends are registered in an explicit name → factory map (static imports survive freezing into
one executable; entry-point discovery does not).
"""

from __future__ import annotations

from collections.abc import Callable

from appliance.config import Config
from appliance.errors import ConfigError
from appliance.storage.base import BlobStore
from appliance.storage.filesystem import FilesystemStore

BACKENDS: dict[str, Callable[[Config], BlobStore]] = {
    "filesystem": lambda config: FilesystemStore(config.storage_root),
}


def open_store(config: Config) -> BlobStore:
    factory = BACKENDS.get(config["storage.backend"])
    if factory is None:
        raise ConfigError(f"unknown storage backend {config['storage.backend']!r}")
    return factory(config)
