"""A client that goes away in the middle of a console or /api/v1 answer ends the request
quietly: the server's send raises (as ASGI asks of a send on a closed connection) and the
application does not turn that into an error of its own (hypercorn would log it with a
traceback as "Error in ASGI Framework")."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from appliance.server import PeerGone


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"berth")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 5000),
        "extensions": {},
        "state": {},
    }


@pytest.mark.parametrize("path", ["/api/v1/version", "/login"])
async def test_a_client_gone_mid_answer_ends_the_request_quietly(app: Any, path: str) -> None:
    sent: list[str] = []

    asked: list[bool] = []

    async def receive() -> dict[str, Any]:
        if not asked:
            asked.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await trio.sleep_forever()  # the client is silent until it goes
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        if message["type"] == "http.response.body":
            raise PeerGone("the client has gone")

    await app(_scope(path), receive, send)  # raises nothing
    assert sent[0] == "http.response.start"
    assert "http.response.body" in sent
