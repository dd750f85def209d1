"""One build's figures for `python -m bench.auth --in-process`: the time the registry's guard
(`api/guard.py`, `Guard.check`: who is asking, may they) takes for a manifest GET, anonymous,
with a registry token and with HTTP Basic, once its caches are warm.

Run as a script (not a module) so that `PYTHONPATH` decides which Berth is imported: the
parent runs it once with the build under test and once with `--before SRC`. It uses only what
every Berth since the console landed has (`open_services`, `create_app`, `Guard`), and prints
one JSON line: CPU microseconds per check for each side, the median of `--blocks` timed blocks.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import statistics
import sys
import tempfile
import time
from typing import Any

import httpx
import trio

from appliance import config as settings
from appliance.api.asgi import Request
from appliance.api.guard import Guard
from appliance.app import create_app
from appliance.server import open_services

PASSWORD = "bench-admin-password"
ACCEPT = "application/vnd.oci.image.manifest.v1+json"


async def _seed(app: Any) -> str:
    """`pub/app:1` in a public namespace; returns a pull token for it."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bench", auth=("admin", PASSWORD)
    ) as c:
        (
            await c.post("/api/v1/namespaces", json={"name": "pub", "public": True})
        ).raise_for_status()
        config = b"{}"
        digest = "sha256:" + hashlib.sha256(config).hexdigest()
        r = await c.post("/v2/pub/app/blobs/uploads/", params={"digest": digest}, content=config)
        r.raise_for_status()
        manifest = {
            "schemaVersion": 2,
            "mediaType": ACCEPT,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest,
                "size": 2,
            },
            "layers": [],
        }
        r = await c.put(
            "/v2/pub/app/manifests/1",
            content=json.dumps(manifest),
            headers={"content-type": ACCEPT},
        )
        r.raise_for_status()
        r = await c.get("/token", params={"service": "berth", "scope": "repository:pub/app:pull"})
        r.raise_for_status()
        return str(r.json()["token"])


async def _time(guard: Guard, headers: list[tuple[bytes, bytes]], n: int) -> float:
    """CPU microseconds per guard check over `n` manifest GETs (the guard raises when
    refused). CPU time of this process, not wall time: on a machine busy with other work the
    time spent waiting for a core is not the guard's."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    started = time.process_time()
    for _ in range(n):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/v2/pub/app/manifests/1",
            "raw_path": b"/v2/pub/app/manifests/1",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"bench"), (b"accept", ACCEPT.encode()), *headers],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 5000),
        }
        await guard.check(Request(scope, receive), "manifests", "pub/app")
    return (time.process_time() - started) / n * 1e6


async def main(n: int, blocks: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = settings.load(
            None,
            environ={},
            overrides={
                "server.data_dir": tmp + "/data",
                "admin.password": PASSWORD,
                "ratelimit.pull_rate": 0,
            },
        )
        services = await open_services(cfg)
        try:
            app = create_app(
                services.registry,
                access=services.access,
                ops=services.ops,
                config=cfg,
                lifecycle=services.lifecycle,
            )
            token = await _seed(app)
            guard = Guard(services.access)
            basic = base64.b64encode(f"admin:{PASSWORD}".encode())
            sides = {
                "anonymous": [],
                "bearer": [(b"authorization", b"Bearer " + token.encode())],
                "basic": [(b"authorization", b"Basic " + basic)],
            }
            times: dict[str, list[float]] = {side: [] for side in sides}
            for block in range(blocks + 1):
                order = list(sides.items())
                if block % 2:
                    order.reverse()
                for side, headers in order:
                    took = await _time(guard, headers, n)
                    if block:  # the first block warms the caches up
                        times[side].append(took)
            return {side: statistics.median(v) for side, v in times.items()}
        finally:
            services.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--blocks", type=int, default=7)
    args = p.parse_args()
    print(json.dumps(trio.run(main, args.requests, args.blocks)))
    sys.exit(0)
