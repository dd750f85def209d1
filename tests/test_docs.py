"""The documentation covers what the code declares: every setting (its row in the settings
table of docs/configuration.md) and every command (somewhere in README.md or docs/)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from appliance.cli import main
from appliance.config import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_TABLE = (ROOT / "docs" / "configuration.md").read_text()
MANUAL = "\n".join(
    path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_every_setting_is_documented(setting):
    row = next(
        (line for line in SETTINGS_TABLE.splitlines() if f"| `{setting.key}` |" in line), None
    )
    assert row is not None, (
        f"{setting.key} is missing from the settings table (docs/configuration.md)"
    )
    assert f"`{setting.env}`" in row
    assert setting.help in row
    if setting.choices:  # the words the table allows, as the table has them
        allowed = "Allowed: " + ", ".join(f"`{word}`" for word in setting.choices) + "."
        assert allowed in row, (
            f"{setting.key}: its row in docs/configuration.md should say {allowed}"
        )


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
    assert command in MANUAL, f"`{command}` is in neither README.md nor docs/"


def _anchors(markdown: str) -> set[str]:
    """The anchors a Markdown renderer gives the headings (lower case, punctuation dropped,
    spaces as hyphens), outside code blocks."""
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


MANUAL_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", MANUAL_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_between_the_pages_leads_somewhere(page):
    """A relative link names a file that exists and, with `#anchor`, a heading it has: the
    manual moved from README.md to docs/, and links are what breaks when text moves."""
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        checks_anchor = bool(anchor) and file.suffix == ".md"
        if not file.exists() or (checks_anchor and anchor not in _anchors(file.read_text())):
            broken.append(target)
    assert broken == [], f"{page.name}: links leading nowhere: {broken}"
