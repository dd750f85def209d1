"""Typed settings: one table of keys, defaults and help, read from TOML and `BERTH_*` variables.

The table (`SETTINGS`) is the only place a setting is declared. The CLI, the documentation test
and the environment-variable mapping all read it. A key's environment variable is `BERTH_` plus
its dotted path with dots turned into underscores, upper-cased (`storage.root` →
`BERTH_STORAGE_ROOT`); variables are resolved against the table, so keys that contain
underscores stay unambiguous.

Precedence, lowest first: embedded defaults, the TOML file, `BERTH_*` variables, command-line
options.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError

ENV_PREFIX = "BERTH_"


@dataclass(frozen=True)
class Setting:
    """One configuration key: its dotted path, type, default and a line of help."""

    key: str
    type: type
    default: Any
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.replace(".", "_").upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("server.listen", str, "127.0.0.1:5000", "Address and port to listen on (HOST:PORT)."),
    Setting(
        "server.data_dir",
        str,
        "./berth-data",
        "Directory for the embedded database and the filesystem blob store.",
    ),
    Setting(
        "server.insecure_no_auth",
        bool,
        False,
        "Allow listening on a non-loopback address although sign-in does not exist yet.",
    ),
    Setting(
        "server.shutdown_timeout",
        float,
        30.0,
        "Seconds to let in-flight requests finish after SIGTERM/SIGINT.",
    ),
    Setting(
        "server.public_url",
        str,
        "",
        "External URL of the registry when behind a proxy (used in Location headers).",
    ),
    Setting(
        "storage.backend",
        str,
        "filesystem",
        "Blob store backend: 'filesystem'.",
    ),
    Setting(
        "storage.root",
        str,
        "",
        "Root directory of the filesystem blob store (default: <data_dir>/storage).",
    ),
    Setting(
        "metadata.url",
        str,
        "",
        "Metadata database URL (default: sqlite:///<data_dir>/berth.db).",
    ),
    Setting(
        "metadata.readers",
        int,
        4,
        "Number of read connections kept open to the metadata database.",
    ),
    Setting(
        "uploads.expiry",
        float,
        86400.0,
        "Seconds an upload session may stay idle before it and its bytes are removed.",
    ),
    Setting(
        "uploads.purge_interval",
        float,
        600.0,
        "Seconds between sweeps for expired upload sessions.",
    ),
    Setting(
        "manifests.max_size",
        int,
        4 * 1024 * 1024,
        "Largest manifest accepted, in bytes.",
    ),
    Setting("log.level", str, "info", "Log level: debug, info, warning, error."),
)

_BY_KEY = {s.key: s for s in SETTINGS}
_BY_ENV = {s.env: s for s in SETTINGS}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(setting: Setting, value: Any, source: str) -> Any:
    """Convert `value` to the setting's type, or raise ConfigError naming `source`."""
    kind = setting.type
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{source}: {setting.key} must be a {kind.__name__}, not {value!r}")


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and key not in _BY_KEY:
            out.update(_flatten(value, key + "."))
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class Config:
    """Resolved settings. Read values with `config["section.key"]` or the typed properties."""

    values: Mapping[str, Any]
    source: str = "defaults"

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def data_dir(self) -> Path:
        return Path(self.values["server.data_dir"]).expanduser().absolute()

    @property
    def storage_root(self) -> Path:
        root = self.values["storage.root"]
        return Path(root).expanduser().absolute() if root else self.data_dir / "storage"

    @property
    def metadata_url(self) -> str:
        url: str = self.values["metadata.url"]
        return url or f"sqlite:///{self.data_dir / 'berth.db'}"

    @property
    def listen(self) -> tuple[str, int]:
        return parse_listen(self.values["server.listen"])


def parse_listen(value: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 hosts in brackets) into host and port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address must be HOST:PORT, not {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def load(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Resolve the settings from defaults, an optional TOML file, the environment and overrides.

    Raises ConfigError with one clear line for an unknown key, a wrong type, an unreadable file
    or an unknown `BERTH_*` variable.
    """
    values = {s.key: s.default for s in SETTINGS}
    source = "defaults"
    if path is not None:
        try:
            with path.open("rb") as f:
                table = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from e
        for key, value in _flatten(table).items():
            setting = _BY_KEY.get(key)
            if setting is None:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(setting, value, str(path))
        source = str(path)
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        setting = _BY_ENV.get(name)
        if setting is None:
            raise ConfigError(f"unknown environment variable {name}")
        values[setting.key] = _coerce(setting, value, name)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(_BY_KEY[key], value, "command line")
    parse_listen(values["server.listen"])
    if values["storage.backend"] != "filesystem":
        raise ConfigError(f"storage.backend: unknown backend {values['storage.backend']!r}")
    return Config(values, source)
