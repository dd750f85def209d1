"""Log lines: secrets scrubbed from every message, the request id on every record, JSON lines
that parse."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from appliance import context
from appliance.runtime import logs

SECRETS = [
    (
        "Authorization: Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyOmFsaWNlIn0.c2lnbmF0dXJl",
        "eyJhbGci",
    ),
    ("got Basic YWxpY2U6c2VjcmV0LXBhc3N3b3Jk from client", "YWxpY2U6"),
    ("token berth_pat_Q2hhbmdlTWVQbGVhc2VUaGlzSXNBVGVzdFRva2Vu", "Q2hhbmdlTWVQ"),
    ("GET /token?account=a&password=hunter22&scope=x", "hunter22"),
    ("url=https://s3/b?X-Amz-Signature=abcdef0123456789&X-Amz-Credential=AKIAX", "abcdef0123"),
    ('{"refresh_token": "berth_refresh_abcdefghijklmnopqrstuvwxyz0123"}', "abcdefghijkl"),
    ("secret_key=wJalrXUtnFEMI/K7MDENG", "wJalrXUtn"),
]


@pytest.mark.parametrize(("text", "secret"), SECRETS)
def test_scrub_removes_credentials(text: str, secret: str) -> None:
    clean = logs.scrub(text)
    assert secret not in clean
    assert "redacted" in clean


def test_scrub_keeps_ordinary_text() -> None:
    text = "pushed team/app@sha256:0123abcd (tag v1) in 12.5ms from 10.0.0.7"
    assert logs.scrub(text) == text


def test_json_lines_carry_the_request_id_and_no_secret() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(logs.JSONFormatter())
    logger = logging.getLogger("berth.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        token = context.begin("req-123", "10.1.2.3")
        try:
            logger.warning("sign-in with %s failed", "Basic YWxpY2U6c2VjcmV0LXBhc3N3b3Jk")
        finally:
            context.end(token)
        logger.warning("outside any request")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "req-123"
    assert "YWxpY2U6" not in first["message"]
    assert first["level"] == "warning"
    assert second["request_id"] == "-"


def test_format_follows_the_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logs.resolve_format("auto", Tty()) == "text"
    assert logs.resolve_format("auto", io.StringIO()) == "json"
    assert logs.resolve_format("JSON") == "json"


class _BlockedStream(io.StringIO):
    """A stream whose writes wait until released: stderr read by a slow journald or pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        assert self.release.wait(30), "never released"
        return super().write(text)


def test_a_slow_stderr_does_not_hold_up_the_thread_that_logs() -> None:
    """The access log is written from the event loop: a blocked stderr must not block it.
    Every record still comes out, in order, with its request id and its traceback."""
    stream = _BlockedStream()
    handler = logs.QueuedHandler(stream, logs.JSONFormatter())
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("berth.test-queued")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        token = context.begin("req-9", None)
        try:
            for i in range(100):
                logger.info("line %d", i)  # would wait for `release` if written here
            try:
                raise ValueError("password=hunter22 went wrong")
            except ValueError:
                logger.exception("failed")
        finally:
            context.end(token)
        assert stream.getvalue() == ""  # nothing written yet: the writer waits on the stream
        stream.release.set()
    finally:
        logger.removeHandler(handler)
        handler.close()  # writes what is queued
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines[:100]] == [f"line {i}" for i in range(100)]
    assert {line["request_id"] for line in lines} == {"req-9"}
    assert "ValueError" in lines[100]["exception"]
    assert "hunter22" not in lines[100]["exception"]


def test_queued_lines_are_written_before_the_process_exits(tmp_path: Path) -> None:
    code = (
        "import logging\n"
        "from appliance.runtime import logs\n"
        "logs.setup('info', 'text')\n"
        "for i in range(2000):\n"
        "    logging.getLogger('berth').info('line %d', i)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    lines = done.stderr.splitlines()
    assert len(lines) == 2000
    assert lines[-1].endswith("line 1999")


# Text a client controls (a request path and query string, a user agent) that made the old
# patterns backtrack: cubic in the length for key=value pairs (a 3 KB query string held the
# process for 35 s), quadratic for JWT-like runs.
ATTACKS = [
    "GET /v2/?" + "token." * 20_000 + " HTTP/1.1",
    "eyJ" * 20_000,
    "x-token-" * 20_000 + "=1",
    "Bearer " * 20_000,
    "berth_" * 20_000,
]
GENEROUS = 10.0  # seconds for one line of 160 KB or less (a few milliseconds is usual)


@pytest.mark.parametrize("text", ATTACKS, ids=lambda t: t[:12])
def test_scrub_is_linear_on_hostile_text(text: str) -> None:
    started = time.perf_counter()
    clean = logs.scrub(text)
    assert time.perf_counter() - started < GENEROUS
    assert len(clean) <= len(text) + 20


def test_scrub_still_finds_a_secret_after_a_long_near_miss() -> None:
    text = "GET /v2/x?" + "token." * 5_000 + "&password=hunter22&x=" + "eyJ" * 5_000
    clean = logs.scrub(text)
    assert "hunter22" not in clean
    assert "password=[redacted]" in clean
    assert clean.startswith("GET /v2/x?token.token.")
