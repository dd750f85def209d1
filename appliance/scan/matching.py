"""Match packages against advisories, comparing versions in each ecosystem's own order.

Versions are compared by `univers` (AboutCode's maintained implementations of dpkg, apk, rpm,
PEP 440, semver and Go ordering); nothing here compares version strings itself. Ranges follow
the OSV schema: sorted `introduced` / `fixed` / `last_affected` events, where a version is
affected when the last event at or below it is an introduction (`fixed` itself is not
affected; `last_affected` itself is).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from univers import versions as uv

log = logging.getLogger("berth.scan")

SEVERITIES = ("unknown", "low", "medium", "high", "critical")
RANK = {name: i for i, name in enumerate(SEVERITIES)}

# Package URL type → the univers class of its version order.
VERSION_CLASSES = {
    "deb": "DebianVersion",
    "apk": "AlpineLinuxVersion",
    "rpm": "RpmVersion",
    "pypi": "PypiVersion",
    "npm": "SemverVersion",
    "golang": "GolangVersion",
}


def severity_rank(name: str) -> int:
    """0 (unknown) to 4 (critical). Raises ValueError for a name that is not a severity."""
    try:
        return RANK[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown severity {name!r} (one of {', '.join(SEVERITIES[1:])})"
        ) from None


@functools.lru_cache(maxsize=100_000)
def parse_version(ecosystem: str, text: str) -> uv.Version | None:
    """`text` as a version of `ecosystem`, or None when it is not one (cached: parsing is
    most of the cost of matching, and the same versions recur in every image)."""
    name = VERSION_CLASSES.get(ecosystem)
    if name is None or not text:
        return None
    # Imported on first use: univers costs a noticeable part of start-up otherwise.
    from univers import versions  # noqa: PLC0415

    cls: type[uv.Version] = getattr(versions, name)
    if ecosystem == "golang" and not text.startswith("v"):
        text = "v" + text
    try:
        return cls(text)
    except Exception:  # univers raises several kinds for a malformed version
        return None


@dataclass(frozen=True)
class Affected:
    """One `affected` entry of an advisory, as stored."""

    source: str
    advisory_id: str
    ecosystem: str
    distro: str
    package: str
    ranges: list[dict[str, Any]]
    versions: list[str]
    severity: str
    summary: str


def affected_by(ecosystem: str, installed: str, entry: Affected) -> tuple[bool, str | None]:
    """Whether `installed` is affected by `entry`, and the version that fixes it if known."""
    if installed in entry.versions:
        return True, _first_fix(ecosystem, installed, entry)
    version = parse_version(ecosystem, installed)
    if version is None:
        return False, None
    for r in entry.ranges:
        if r.get("type") not in ("ECOSYSTEM", "SEMVER"):
            continue
        hit, fixed = _in_range(ecosystem, version, r.get("events", []))
        if hit:
            return True, fixed
    return False, None


def _first_fix(ecosystem: str, installed: str, entry: Affected) -> str | None:
    version = parse_version(ecosystem, installed)
    if version is None:
        return None
    for r in entry.ranges:
        _, fixed = _in_range(ecosystem, version, r.get("events", []))
        if fixed:
            return fixed
    return None


def _in_range(
    ecosystem: str, version: uv.Version, events: Iterable[dict[str, str]]
) -> tuple[bool, str | None]:
    points: list[tuple[int, uv.Version | None, str, str]] = []
    for event in events:
        for kind in ("introduced", "fixed", "last_affected"):
            value = event.get(kind)
            if value is None:
                continue
            if kind == "introduced" and value == "0":
                points.append((0, None, kind, value))
                continue
            parsed = parse_version(ecosystem, value)
            if parsed is None:
                log.debug("skipping a range with an unparseable %s version %r", ecosystem, value)
                return False, None
            points.append((1, parsed, kind, value))
    points.sort(key=_sort_key)
    affected = False
    for _, at, kind, _value in points:
        if kind == "introduced":
            if at is None or version >= at:
                affected = True
        elif kind == "fixed":
            if at is not None and version >= at:
                affected = False
        elif kind == "last_affected" and at is not None and version > at:
            affected = False
    if not affected:
        return False, None
    fixes = [
        (at, value)
        for _, at, kind, value in points
        if kind == "fixed" and at is not None and at > version
    ]
    return True, (min(fixes, key=lambda f: f[0])[1] if fixes else None)


def _sort_key(point: tuple[int, uv.Version | None, str, str]) -> Any:
    return _VersionKey(point[1])


class _VersionKey:
    def __init__(self, version: uv.Version | None) -> None:
        self.version = version

    def __lt__(self, other: _VersionKey) -> bool:
        if self.version is None:
            return other.version is not None
        if other.version is None:
            return False
        return bool(self.version < other.version)


def normalize_name(ecosystem: str, name: str) -> str:
    """A package name as advisories of `ecosystem` spell it (PEP 503 for PyPI)."""
    if ecosystem == "pypi":
        return re.sub(r"[-_.]+", "-", name).lower()
    return name


def distro_matches(advisory: str, image: tuple[str, ...]) -> bool:
    """An advisory for release `advisory` (empty: every release) applies to an image whose
    release is named by any of `image` (version id, codename): `3.19` matches `3.19.1`."""
    if not advisory:
        return True
    return any(value and (value == advisory or value.startswith(advisory + ".")) for value in image)
