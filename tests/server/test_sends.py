"""What one answer costs the server in sends, against `serve()` in this process (the real
hypercorn stack Berth runs, counted at trio's socket stream): a small answer leaves in one
send with its head, a large one streams after its head, and a small blob sent with sendfile(2)
still follows its head. And the keep-alive timer starts again after every answer."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from appliance import server as berth_server
from tests.api.conftest import make_config
from tests.support.servers import ADMIN, ADMIN_PASSWORD


@pytest.fixture
async def served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[str, list[bytes]]]:
    """`berth serve` in this process on a free port; yields its URL and every buffer the
    server's connections hand to `send_all` (the client's, on the same class, are left out)."""
    sent: list[bytes] = []
    ports: list[int] = []
    original = trio.SocketStream.send_all

    async def counting(self: trio.SocketStream, data: Any) -> None:
        if self.socket.getsockname()[1] in ports:
            sent.append(bytes(data))
        await original(self, data)

    monkeypatch.setattr(trio.SocketStream, "send_all", counting)
    config = make_config(tmp_path / "data", **{"server.listen": "127.0.0.1:0"})
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            lambda task_status: berth_server.serve(
                config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        ports.append(int(urls[0].rsplit(":", 1)[1]))
        try:
            yield urls[0], sent
        finally:
            stop.set()


async def _push_blob(client: httpx.AsyncClient, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = await client.post(f"/v2/sends/app/blobs/uploads/?digest={digest}", content=data)
    assert r.status_code == 201, r.text
    return digest


async def test_a_small_answer_leaves_in_one_send_with_its_head(
    served: tuple[str, list[bytes]],
) -> None:
    url, sent = served
    async with httpx.AsyncClient(base_url=url) as client:
        await client.get("/v2/")  # the connection is open; count from here
        sent.clear()
        r = await client.get("/v2/")
    assert r.status_code == 401
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert len(sent) == 1
    assert sent[0].startswith(b"HTTP/1.1 401 ")
    assert sent[0].endswith(r.content)


async def test_a_large_answer_streams_after_its_head(served: tuple[str, list[bytes]]) -> None:
    url, sent = served
    data = os.urandom(300_000)  # larger than one send's coalescing, read from storage
    async with httpx.AsyncClient(base_url=url, auth=(ADMIN, ADMIN_PASSWORD)) as client:
        digest = await _push_blob(client, data)
        sent.clear()
        r = await client.get(f"/v2/sends/app/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data
    assert sent[0].startswith(b"HTTP/1.1 200 ")
    assert sent[0].endswith(b"\r\n\r\n")  # the head alone: the body follows (sendfile)


async def test_small_blobs_sent_with_sendfile_follow_their_head(
    served: tuple[str, list[bytes]],
) -> None:
    """A small blob's head is held for its body, which then bypasses the protocol (sendfile):
    the head must go first, on every answer of a kept-alive connection."""
    url, _ = served
    blobs = [os.urandom(n) for n in (1, 1000, 60_000, 65_536)]
    async with httpx.AsyncClient(base_url=url, auth=(ADMIN, ADMIN_PASSWORD)) as client:
        digests = [await _push_blob(client, b) for b in blobs]
        for _ in range(3):
            for digest, data in zip(digests, blobs, strict=True):
                r = await client.get(f"/v2/sends/app/blobs/{digest}")
                assert r.status_code == 200
                assert r.headers["docker-content-digest"] == digest
                assert r.content == data
                r = await client.head(f"/v2/sends/app/blobs/{digest}")
                assert r.status_code == 200
                assert r.headers["content-length"] == str(len(data))


async def test_the_keep_alive_timer_starts_again_after_every_answer(
    tmp_path: Path,
) -> None:
    """With `server.idle_timeout` 1 s, a connection asking every 0.5 s for 3 s stays open;
    once it stops asking it is closed about a second after its last answer."""
    config = make_config(
        tmp_path / "data", **{"server.listen": "127.0.0.1:0", "server.idle_timeout": 1}
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            lambda task_status: berth_server.serve(
                config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        host, port = urls[0].removeprefix("http://").rsplit(":", 1)

        def client() -> float:
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                for _ in range(6):
                    sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n")
                    answer = b""
                    while not answer.endswith(b"}"):
                        answer += sock.recv(65536)
                    assert answer.startswith(b"HTTP/1.1 401 ")
                    time.sleep(0.5)
                last = time.monotonic() - 0.5
                assert sock.recv(1) == b""  # closed by the server
                return time.monotonic() - last

        try:
            idle = await trio.to_thread.run_sync(client)
        finally:
            stop.set()
    assert 0.9 <= idle < 5
