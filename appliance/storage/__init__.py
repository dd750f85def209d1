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


def _open_s3(config: Config) -> BlobStore:
    # Imported here: boto3 takes a third of a second to import, which a filesystem install
    # need not pay. Still a plain import statement, which freezing tools follow.
    from appliance.storage.s3 import S3Settings, S3Store  # noqa: PLC0415

    return S3Store(S3Settings.from_config(config))


def _open_azure(config: Config) -> BlobStore:
    # Imported here for the same reason: the Azure SDK is only paid for by those who use it.
    from appliance.storage.azure import AzureSettings, AzureStore  # noqa: PLC0415

    return AzureStore(AzureSettings.from_config(config))


BACKENDS: dict[str, Callable[[Config], BlobStore]] = {
    "filesystem": lambda config: FilesystemStore(config.storage_root),
    "s3": _open_s3,
    "azure": _open_azure,
}


def open_store(config: Config) -> BlobStore:
    factory = BACKENDS.get(config["storage.backend"])
    if factory is None:
        raise ConfigError(f"unknown storage backend {config['storage.backend']!r}")
    return factory(config)
