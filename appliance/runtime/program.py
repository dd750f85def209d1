"""How this program starts itself again, for the processes it runs beside itself (serving
workers, scan workers)."""

from __future__ import annotations

import sys


def program_command() -> list[str]:
    """How this program starts itself again (a serving worker, a scan worker): the single
    executable is its own interpreter; otherwise this Python runs the package."""
    frozen = getattr(sys, "frozen", False)
    return [sys.executable] if frozen else [sys.executable, "-m", "appliance"]
