"""What `berth --version` says about the build: version, commit, date, Python, glibc baseline.

The single executable carries a `buildinfo.json` written when it was built (packaging/berth.spec);
a source checkout has none and reports its git commit instead (appliance/version.py).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from appliance.version import identity

BUILDINFO = "buildinfo.json"


def _bundle_dir() -> Path | None:
    base = getattr(sys, "_MEIPASS", None)  # set by PyInstaller's bootloader
    return Path(base) if base else None


def build_info() -> dict[str, Any]:
    """The build's facts; for a source checkout, the running interpreter's."""
    bundle = _bundle_dir()
    if bundle is not None and (bundle / BUILDINFO).is_file():
        info: dict[str, Any] = json.loads((bundle / BUILDINFO).read_text())
        info["frozen"] = True
        return info
    version, commit = identity()
    return {
        "version": version,
        "commit": commit,
        "date": "",
        "python": platform.python_version(),
        "glibc": glibc_version(),
        "frozen": False,
    }


def glibc_version() -> str:
    """The C library this process runs on (`2.36`), or '' when it is not glibc."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return ""
    return text.removeprefix("glibc ").strip()


def version_text() -> str:
    """`berth --version`: the version on the first line, then the build, one fact a line."""
    info = build_info()
    lines = [f"berth {info['version']}"]
    if info["frozen"]:
        lines.append(f"commit: {info['commit']}")
        lines.append(f"built: {info['date']}")
        lines.append(f"python: {info['python']} (bundled)")
        lines.append(f"glibc: needs {info['glibc']} or newer (running on {glibc_version()})")
    else:
        lines.append(f"build: source checkout, commit {info['commit']}")
        lines.append(f"python: {info['python']} ({sys.executable})")
    return "\n".join(lines)
