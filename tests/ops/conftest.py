"""Fixtures for the operations tests: an in-process Berth with its operations layer on (the
ASGI app wrapped in the middleware, as `berth serve` builds it), and a small HTTP receiver
that stands in for a webhook endpoint."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.app import create_app
from appliance.server import Services, open_services
from tests.api.conftest import (  # noqa: F401 (fixtures)
    ADMIN,
    ADMIN_PASSWORD,
    FakeClock,
    api_client,
    cheap_password_hashing,
    data_dir,
    make_config,
)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock that starts at the real time: rows stamped by the wall clock (events,
    audit rows) and times computed on this clock must agree, as they do in production."""
    return FakeClock(time.time())


@asynccontextmanager
async def operations(
    root: Path, clock: FakeClock, **overrides: Any
) -> AsyncIterator[tuple[Services, Any]]:
    """Services on data directory `root` and the whole ASGI app (operations middleware
    included)."""
    config = make_config(root, **overrides)
    services = await open_services(config, clock)
    try:
        assert services.ops is not None
        services.ops.limiter.clock = clock
        services.ops.deliverer.clock = clock
        app = create_app(services.registry, access=services.access, ops=services.ops, config=config)
        yield services, app
    finally:
        services.close()


async def add_user(admin: httpx.AsyncClient, name: str, password: str) -> None:
    resp = await admin.post("/api/v1/users", json={"name": name, "password": password})
    assert resp.status_code == 201, resp.text


@dataclass
class Receiver:
    """A webhook endpoint on loopback that records what it gets; `failing` answers 503,
    `answer` another status (with `location`, a redirect), after `delay` seconds."""

    url: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # the request path of each of `requests`
    failing: bool = False
    answer: int = 200
    location: str | None = None
    delay: float = 0.0

    def events(self) -> list[dict[str, Any]]:
        return [e for _, body in self.requests for e in json.loads(body)["events"]]


@contextmanager
def start_receiver() -> Iterator[Receiver]:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            target = holder[0]
            time.sleep(target.delay)
            if target.failing:
                self.send_response(503)
                self.end_headers()
                return
            target.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            target.paths.append(self.path)
            self.send_response(target.answer)
            if target.location is not None:
                self.send_header("location", target.location)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with start_receiver() as started:
        yield started
