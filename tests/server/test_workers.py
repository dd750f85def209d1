"""Several serving processes on one host, as `berth serve` runs by default: one per CPU, limits
and lockouts that hold for the host, changes seen by every worker at once, and keep-alive
connections that get every answer, even while a worker is replaced."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.server.helpers import (
    ADMIN_PASSWORD,
    OCI_MANIFEST,
    client_for,
    push_image,
    start,
    wait_for,
)
from tests.server.test_processes import _children
from tests.support.servers import Server

BASIC = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()


@contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


def serving_pids(server: Server) -> set[int]:
    """Processes that wrote access-log lines (JSON logs carry the writer's pid)."""
    pids = set()
    for line in server.log().splitlines():
        if '"logger": "berth.access"' in line:
            pids.add(json.loads(line)["pid"])
    return pids


def worker_of(server: Server, agent: str) -> int:
    """The serving process that logged a request sent with User-Agent `agent`."""
    found: list[int] = []

    def logged() -> bool:
        records = (json.loads(x) for x in server.log().splitlines() if '"berth.access"' in x)
        found[:] = [r["pid"] for r in records if r["message"].endswith(f'"{agent}"')]
        return bool(found)

    wait_for(f"the access-log line of {agent}", logged)
    return found[0]


def on_every_worker(server: Server, per_worker: int, workers: int = 2) -> list[httpx.Client]:
    """Keep-alive clients signed in as the admin, `per_worker` of them held by each serving
    process. Which process accepts a new connection is the kernel's choice, and with both idle
    it favours one (runs of ten to one another are common), so connections are opened and
    kept or closed until each process holds its share."""
    held: dict[int, list[httpx.Client]] = {}
    for n in range(64 * per_worker):
        agent = f"connection-{n}"
        headers = {"authorization": BASIC, "user-agent": agent}  # a request's own replaces it
        client = httpx.Client(base_url=server.url, headers=headers, timeout=30)
        assert client.get("/v2/").status_code == 200
        mine = held.setdefault(worker_of(server, agent), [])
        if len(mine) < per_worker:
            mine.append(client)
        else:
            client.close()
        if len(held) == workers and all(len(c) == per_worker for c in held.values()):
            return [c for clients in held.values() for c in clients]
    for clients in held.values():
        for c in clients:
            c.close()
    raise AssertionError(f"{64 * per_worker} connections did not reach {workers} workers: {held}")


def fresh_get(server: Server, path: str, authorization: str = BASIC) -> int:
    """A GET on a new connection (so that requests spread over the workers)."""
    headers = {"authorization": authorization, "accept": OCI_MANIFEST, "connection": "close"}
    return httpx.get(server.url + path, headers=headers, timeout=30).status_code


def test_workers_default_to_the_cpus_this_process_may_run_on(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    expected = min(len(cpus), 8)
    with running(start(tmp_path / "a", "auto", {})) as server:
        assert f"{expected} serving process" in server.log()
        if expected > 1:
            wait_for("the workers", lambda: len(_children(server.proc.pid)) == expected)
    # Narrowed to one CPU (as taskset or a container would): one process, no supervisor.
    os.sched_setaffinity(0, cpus[:1])
    try:
        server = start(tmp_path / "b", "one-cpu", {})
    finally:
        os.sched_setaffinity(0, cpus)
    with running(server):
        assert "1 serving process (server.workers = auto; 1 CPUs available)" in server.log()
        assert not _children(server.proc.pid) - {server.proc.pid}


def test_a_rate_limit_holds_for_the_host_not_each_worker(tmp_path: Path) -> None:
    env = {
        "BERTH_SERVER_WORKERS": "2",
        "BERTH_LOG_FORMAT": "json",
        "BERTH_RATELIMIT_EXEMPT_ADMINS": "false",
        "BERTH_RATELIMIT_PULL_RATE": "0.01",  # hardly refills while the test runs
        "BERTH_RATELIMIT_PULL_BURST": "30",
    }
    with running(start(tmp_path / "data", "limits", env)) as server:
        with client_for(server) as client:
            push_image(client, "team/app", "v1", b"rate limited layer")
        statuses = [fresh_get(server, "/v2/team/app/manifests/v1") for _ in range(90)]
        assert len(serving_pids(server)) == 2, "both workers answered"
        allowed = statuses.count(200)
        assert 30 <= allowed <= 31, statuses  # the burst once for the host, not once a worker
        assert set(statuses) == {200, 429}


def test_a_sign_in_lockout_holds_for_the_host(tmp_path: Path) -> None:
    env = {"BERTH_SERVER_WORKERS": "2", "BERTH_LOG_FORMAT": "json"}
    wrong = "Basic " + base64.b64encode(b"admin:not-the-password").decode()
    with running(start(tmp_path / "data", "lockout", env)) as server:
        failures = [fresh_get(server, "/v2/", wrong) for _ in range(10)]
        assert set(failures) == {401}
        answers = [fresh_get(server, "/v2/") for _ in range(6)]
        while len(serving_pids(server)) < 2 and len(answers) < 64:  # see on_every_worker
            answers.append(fresh_get(server, "/v2/"))
        assert len(serving_pids(server)) == 2, "both workers answered"
        assert set(answers) == {429}, "locked, whichever worker answers"


def test_a_tag_move_and_a_delete_are_seen_by_every_worker_at_once(tmp_path: Path) -> None:
    env = {"BERTH_SERVER_WORKERS": "2", "BERTH_LOG_FORMAT": "json"}
    with running(start(tmp_path / "data", "moves", env)) as server:
        clients = on_every_worker(server, 6)  # a keep-alive connection each
        try:
            first, _ = push_image(clients[0], "team/app", "v1", b"first layer")
            assert {
                c.get("/v2/team/app/manifests/v1").headers["docker-content-digest"] for c in clients
            } == {first}
            second, _ = push_image(clients[0], "team/app", "v1", b"second layer")
            seen = {
                c.get("/v2/team/app/manifests/v1").headers["docker-content-digest"] for c in clients
            }
            assert seen == {second}
            assert clients[1].delete(f"/v2/team/app/manifests/{second}").status_code == 202
            assert {c.get("/v2/team/app/manifests/v1").status_code for c in clients} == {404}
        finally:
            for c in clients:
                c.close()


class KeepAlive:
    """One HTTP/1.1 keep-alive connection. A request whose reused connection is closed (or
    reset) before any byte of the answer is sent again on a new connection, as RFC 9112
    (9.3.1) lets a client do for an idempotent request; everything else is a failure."""

    def __init__(self, server: Server) -> None:
        parts = urlsplit(server.url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.host = parts.netloc
        self.sock: socket.socket | None = None
        self.retries = 0
        self.closes_announced = 0

    def get(self, path: str) -> int:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: {BASIC}\r\n"
            f"Accept: {OCI_MANIFEST}\r\n\r\n"
        ).encode()
        reused = self.sock is not None
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=30)
        try:
            self.sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            assert reused, "a new connection refused the request"
            self.sock.close()
            self.sock = None
            self.retries += 1
            return self.get(path)
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:  # closed with our request unread: as good as EOF
                chunk = b""
            if not chunk:
                assert reused, "a new connection was closed without an answer"
                assert not data, f"connection cut mid-answer: {data!r}"
                self.sock.close()
                self.sock = None
                self.retries += 1
                return self.get(path)
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        length = int(fields.get("content-length", "0"))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "connection cut mid-body"
            body += chunk
        if fields.get("connection", "").lower() == "close":
            self.closes_announced += 1
            self.sock.close()
            self.sock = None
        return int(lines[0].split()[1])


def test_keep_alive_connections_get_every_answer_while_a_worker_is_replaced(
    tmp_path: Path,
) -> None:
    env = {"BERTH_SERVER_WORKERS": "2", "BERTH_LOG_FORMAT": "json"}
    with running(start(tmp_path / "data", "keepalive", env)) as server:
        with client_for(server) as client:
            push_image(client, "team/app", "v1", b"kept alive")
        conns = [KeepAlive(server) for _ in range(16)]
        statuses: list[int] = []
        workers = _children(server.proc.pid)
        assert len(workers) == 2
        for round_ in range(120):
            if round_ == 40:
                replaced = min(workers)
                os.kill(replaced, signal.SIGTERM)  # drained, then replaced by the supervisor
            statuses.extend(c.get("/v2/team/app/manifests/v1") for c in conns)
        wait_for(
            "a replacement worker",
            lambda: (
                len(_children(server.proc.pid)) == 2 and replaced not in _children(server.proc.pid)
            ),
        )
        statuses.extend(c.get("/v2/team/app/manifests/v1") for c in conns)
        assert statuses == [200] * (121 * 16)
        retries = sum(c.retries for c in conns)
        assert retries <= len(conns), "at most one resend per connection the worker held"
        for c in conns:
            if c.sock is not None:
                c.sock.close()


def test_a_revoked_token_is_refused_by_every_worker_at_once(tmp_path: Path) -> None:
    """Each worker has checked (and cached) the PAT and a registry token made with it; the
    revocation, answered by one worker, holds for the next request on every connection."""
    env = {"BERTH_SERVER_WORKERS": "2", "BERTH_LOG_FORMAT": "json"}
    with running(start(tmp_path / "data", "revoke", env)) as server:
        with client_for(server) as admin:
            push_image(admin, "team/app", "v1", b"revoked layer")
            made = admin.post("/api/v1/tokens", json={"name": "ci", "scopes": ["read_registry"]})
            assert made.status_code == 201, made.text
            pat, pat_id = made.json()["token"], made.json()["id"]
            jwt = admin.get(
                "/token",
                params={"service": "berth", "scope": "repository:team/app:pull"},
                auth=("admin", pat),
            ).json()["token"]
        basic = "Basic " + base64.b64encode(f"admin:{pat}".encode()).decode()
        # Eight connections: each refused Basic sign-in counts as a failure, and ten lock the
        # account (429), which is not what this test is about.
        clients = on_every_worker(server, 4)
        try:
            for c in clients:
                for auth in (basic, f"Bearer {jwt}"):
                    got = c.get("/v2/team/app/manifests/v1", headers={"authorization": auth})
                    assert got.status_code == 200
            revoked = clients[0].delete(
                f"/api/v1/tokens/{pat_id}", headers={"authorization": BASIC}
            )
            assert revoked.status_code in (200, 204), revoked.text
            for c in clients:
                for auth in (basic, f"Bearer {jwt}"):
                    got = c.get("/v2/team/app/manifests/v1", headers={"authorization": auth})
                    assert got.status_code == 401, (auth[:6], got.status_code)
        finally:
            for c in clients:
                c.close()
