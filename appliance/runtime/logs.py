"""Logging: text on a terminal, JSON lines otherwise; a request id on every line; no secrets.

`setup(level, format)` configures the root logger once per process. Every record gets the id
of the request it was written for (`context.py`; `-` outside a request), and its message
is scrubbed of anything that looks like a credential (Authorization values, Berth tokens, JWTs,
password or token query parameters) before any handler sees it: a secret that slips into a
message by mistake never reaches a file.

Lines are written by a thread of their own: the thread that logs (the event loop, for the
access log) formats the line and queues it. Writing to stderr blocks whenever its reader
(journald, a pipe) is slower than the server, and a profile of manifest GETs showed a fifth of
the event loop's time in that write (bench/RESULTS.md). The writer writes whatever has queued
up in one call; what is queued is written before the process exits normally.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import re
import sys
import threading
import time
from typing import Any, TextIO

from appliance import context

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
    """One JSON object per line: time, level, logger, message, request_id, pid (which serving
    process wrote it) and any `extra` fields the call passed under `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "pid": record.process,
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
    v = value.strip().lower()  # auto, text or json: the settings table checked it
    if v == "auto":
        stream = sys.stderr if stream is None else stream
        return "text" if getattr(stream, "isatty", lambda: False)() else "json"
    return v


QUEUE_LIMIT = 100_000  # lines; past it, a caller writes itself (as it would with no queue)
WRITE_PAUSE = 0.005  # seconds the writer rests between writes, so lines go out in batches


class QueuedHandler(logging.Handler):
    """Formats a record in the calling thread and hands the line to a writer thread.

    Only the write happens elsewhere: a thread that formatted would hold the GIL for CPU
    work while the event loop waits to get it back after every socket call, which cost more
    than the write it saved. The writer spends its time in `write` (the GIL released) or
    resting, and writes whatever queued up meanwhile in one call.
    """

    def __init__(self, stream: TextIO, formatter: logging.Formatter) -> None:
        super().__init__()
        self.stream = stream
        self.formatter = formatter
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if self._lines.qsize() < QUEUE_LIMIT and self._writer.is_alive():
                self._lines.put(line)
            else:  # the writer is far behind (or gone): wait for the stream like it does
                self._write_lines([line])
        except Exception:  # logging must never break its caller
            self.handleError(record)

    def _write_lines(self, lines: list[str]) -> None:
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed: nowhere left to write to

    def _write(self) -> None:
        while True:
            line = self._lines.get()
            lines: list[str] = []
            while line is not None:
                lines.append(line)
                try:
                    line = self._lines.get_nowait()
                except queue.Empty:
                    break
            if lines:
                self._write_lines(lines)
            if line is None:
                return
            time.sleep(WRITE_PAUSE)

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        if self._writer.is_alive():
            self._lines.put(None)
            self._writer.join(timeout=10)
        super().close()


def setup(level: str, fmt: str = "text") -> None:
    """Configure the root logger: one queued stderr handler with the context filter."""
    formatter = JSONFormatter() if resolve_format(fmt) == "json" else logging.Formatter(TEXT_FORMAT)
    handler = QueuedHandler(sys.stderr, formatter)
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    atexit.register(handler.close)
