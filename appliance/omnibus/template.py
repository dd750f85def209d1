"""The default `berth.toml` of an install, generated from the SETTINGS table.

Every setting appears, commented out with its default, its help and its environment variable;
the few that an install sets (`INSTALL_VALUES`) appear uncommented. `omnibus/berth.toml` is this
output (`python -m appliance.omnibus.template > omnibus/berth.toml`), and a test keeps the two
equal, so the file the packages install always covers every key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from appliance.config import NAME_SLOT, SETTINGS

# What a .deb/.rpm install changes from the embedded defaults.
INSTALL_VALUES: dict[str, Any] = {
    "server.listen": "127.0.0.1:5000",
    "server.data_dir": "/var/opt/berth",
    "log.dir": "/var/log/berth",
}

# Settings repeated per named instance are shown once, for an instance named `example`.
EXAMPLE_INSTANCE = "example"
TEMPLATED_INTRO = {
    "oidc": "OpenID Connect sign-in: one table per provider, [oidc.NAME] (NAME: lowercase "
    "letters and digits).",
}

HEADER = """\
# Berth configuration (/etc/berth/berth.toml).
#
# Every setting is listed with its default, commented out: uncomment a line to change it, then
# run `berth ctl reconfigure` (it validates this file, migrates the database, renders the
# systemd unit and the nginx front, and restarts what changed). Any key may also be set with
# the environment variable named next to it. `berth config check FILE` validates a file.
"""


def toml_value(value: Any) -> str:
    """A TOML literal for a setting's value (bool, int, float or string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a TOML basic string is a JSON string for what settings hold


def render(values: Mapping[str, Any] = INSTALL_VALUES) -> str:
    """The commented config file; keys in `values` are set (uncommented) to those values."""
    out = [HEADER]
    section = None
    for setting in SETTINGS:
        head, _, key = setting.key.rpartition(".")
        if setting.templated:
            # One table per named instance: shown as a commented example (`# [oidc.example]`).
            head = head.replace(NAME_SLOT, EXAMPLE_INSTANCE)
            if head != section:
                out.append(f"\n# {TEMPLATED_INTRO.get(head.partition('.')[0], '')}".rstrip())
                out.append(f"# [{head}]")
                section = head
            out.append(f"# {setting.help} (env {setting.env})")
            out.append(f"# {key} = {toml_value(setting.default)}")
            continue
        if head != section:
            out.append(f"\n[{head}]")
            section = head
        out.append(f"# {setting.help} (env {setting.env})")
        if setting.key in values:
            out.append(f"{key} = {toml_value(values[setting.key])}")
        else:
            out.append(f"# {key} = {toml_value(setting.default)}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
