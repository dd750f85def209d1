"""The documentation covers what the code declares: every setting and every command."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from appliance.cli import main
from appliance.config import SETTINGS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_every_setting_is_documented(setting):
    row = next((line for line in README.splitlines() if f"| `{setting.key}` |" in line), None)
    assert row is not None, f"{setting.key} is missing from the README's settings table"
    assert f"`{setting.env}`" in row
    assert setting.help in row
    if setting.choices:  # the words the table allows, as the table has them
        allowed = "Allowed: " + ", ".join(f"`{word}`" for word in setting.choices) + "."
        assert allowed in row, f"{setting.key}: its README row should say {allowed}"


def _commands(group: click.Group, prefix: str = "berth") -> list[str]:
    """Every command below `group`, hidden ones too (the root group imports its commands'
    modules on first use, so they are asked for by name)."""
    ctx = click.Context(group, info_name=prefix)
    out = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        out.append(f"{prefix} {name}")
        if isinstance(command, click.Group):
            out.extend(_commands(command, f"{prefix} {name}"))
    return out


def test_every_command_is_listed():
    """The walk above sees the commands the root group maps, and more than the root group."""
    from appliance.cli import COMMANDS  # noqa: PLC0415

    found = _commands(main)
    assert {f"berth {name}" for name in COMMANDS} <= set(found)
    assert "berth user add" in found
    assert "berth ctl doctor" in found
    assert len(found) > len(COMMANDS)


@pytest.mark.parametrize("command", _commands(main))
def test_every_command_is_documented(command):
    assert command in README, f"`{command}` is not in the README"
