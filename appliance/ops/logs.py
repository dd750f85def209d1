"""Logging: text on a terminal, JSON lines otherwise; a request id on every line; no secrets.

`setup(level, format)` configures the root logger once per process. Every record gets the id
of the request it was written for (`ops/context.py`; `-` outside a request), and its message
is scrubbed of anything that looks like a credential (Authorization values, Berth tokens, JWTs,
password or token query parameters) before any handler sees it: a secret that slips into a
message by mistake never reaches a file.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from appliance.errors import ConfigError
from appliance.ops import context

FORMATS = ("auto", "text", "json")

# Every pattern here runs on text a client controls (request paths, query strings, user
# agents), so each must fail in linear time: quantifiers whose class cannot contain what
# follows are possessive (`++`, `{8,}+`), so a near miss is never retried by backtracking.
_SECRETS = [
    # Authorization header values and their like.
    (re.compile(r"(?i)\b(bearer|basic)\s++[A-Za-z0-9._~+/=-]{8,}+"), r"\1 [redacted]"),
    # Berth's own high-entropy tokens (PATs, robot and refresh tokens).
    (re.compile(r"berth_[a-z]++_[A-Za-z0-9_-]{20,}+"), "[redacted-token]"),
    # JWTs (registry bearer tokens).
    (
        re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]*+"),
        "[redacted-jwt]",
    ),
]
# key=value pairs whose key names a secret (query strings, form bodies, config dumps). A key is
# a whole run of word characters, dots and dashes (never a part of one, so each run is looked
# at once); whether it names a secret is decided in Python; the value after it is redacted.
_KEY = re.compile(r"(?<![\w.-])([\w.-]++)\s*+[=:]\s*+\"?")
_VALUE = re.compile(r"[^\s&\"',;]++")
_SECRET_KEYS = (
    "password", "passwd", "secret", "token", "signature", "credential", "authorization",
)  # fmt: skip


def _redact_pairs(text: str) -> str:
    out: list[str] = []
    done = 0  # text[:done] is copied (or redacted) already
    for key in _KEY.finditer(text):
        if key.start() < done or not any(w in key.group(1).lower() for w in _SECRET_KEYS):
            continue
        value = _VALUE.match(text, key.end())
        if value is not None:
            out += [text[done : key.end()], "[redacted]"]
            done = value.end()
    return "".join([*out, text[done:]])


# Words one of the patterns above needs: a line without any of them (most access-log lines)
# costs a few substring tests instead of four regular-expression passes.
_MAYBE = (
    "bearer", "basic", "berth_", "eyj", "passw", "secret", "token", "signature", "credential",
    "authorization",
)  # fmt: skip


def scrub(text: str) -> str:
    """`text` with credentials replaced by `[redacted]`."""
    lowered = text.lower()
    if not any(word in lowered for word in _MAYBE):
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return _redact_pairs(text)


class ContextFilter(logging.Filter):
    """Adds `request_id` to every record and scrubs secrets from its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = context.current()
        if not hasattr(record, "request_id"):
            record.request_id = request.request_id if request is not None else "-"
        message = record.getMessage()
        clean = scrub(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any `extra`
    fields the call passed under `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_text:
            out["exception"] = record.exc_text
        elif record.exc_info:
            out["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def resolve_format(value: str, stream: Any = None) -> str:
    """`auto` is text when `stream` (stderr) is a terminal, JSON otherwise."""
    v = value.strip().lower()
    if v not in FORMATS:
        raise ConfigError(f"log.format must be auto, text or json, not {value!r}")
    if v == "auto":
        stream = sys.stderr if stream is None else stream
        return "text" if getattr(stream, "isatty", lambda: False)() else "json"
    return v


def setup(level: str, fmt: str = "text") -> None:
    """Configure the root logger: one stderr handler with the context filter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if resolve_format(fmt) == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
