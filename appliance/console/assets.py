"""Where the console's templates and static files are, and the Jinja filters pages use.

`web/` is found, in order: inside the single executable (PyInstaller unpacks it to
`sys._MEIPASS/web`), inside the installed package (`appliance/web`, as the wheel and the
.deb/.rpm ship it), or next to `appliance/` in a checkout (`make run`, tests).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from quart import Response, send_from_directory

from appliance.errors import ConfigError


def web_root() -> Path:
    candidates = []
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen is not None:
        candidates.append(Path(frozen) / "web")
    package = Path(__file__).resolve().parents[1]
    candidates += [package / "web", package.parent / "web"]
    for path in candidates:
        if (path / "templates" / "base.html").is_file():
            return path
    raise ConfigError(f"the console's files (web/) are missing; looked in {candidates}")


def human_size(value: Any) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def when(value: Any) -> str:
    if value is None:
        return "never"
    return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M UTC")


def short_digest(value: Any) -> str:
    text = str(value or "")
    algorithm, _, hexpart = text.partition(":")
    return f"{algorithm}:{hexpart[:12]}" if hexpart else text


def install(web: Any) -> None:
    """Point the app's Jinja at web/templates, serve web/static at /static, add filters."""
    root = web_root()
    static = root / "static"
    web.jinja_loader = jinja2.FileSystemLoader(str(root / "templates"))
    env = web.jinja_env
    env.autoescape = True
    env.filters["size"] = human_size
    env.filters["when"] = when
    env.filters["short"] = short_digest

    async def static_file(filename: str) -> Response:
        response: Response = await send_from_directory(static, filename)
        response.headers["cache-control"] = "public, max-age=3600"
        response.headers["x-content-type-options"] = "nosniff"
        return response

    web.add_url_rule("/static/<path:filename>", "console.static", static_file, methods=["GET"])
