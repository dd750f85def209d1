"""Several Berth processes serving one registry: two servers on one PostgreSQL and one data
directory, the jobs leader moving when it dies, and `berth serve --workers N`."""

from __future__ import annotations

import base64
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from tests.server.helpers import (
    ADMIN_PASSWORD,
    client_for,
    leaders,
    push_image,
    sha,
    start,
    wait_for,
)
from tests.support.servers import Server


def test_two_processes_share_one_postgres_and_one_data_dir(
    tmp_path: Path, postgres_metadata: Callable[[], dict[str, str]]
) -> None:
    env = postgres_metadata()
    data = tmp_path / "data"
    a = start(data, "a", env)
    b = start(data, "b", env)
    try:
        with client_for(a) as via_a, client_for(b) as via_b:
            digest, manifest = push_image(via_a, "team/app", "v1", b"layer pushed through a")

            got = via_b.get(
                "/v2/team/app/manifests/v1",
                headers={"accept": "application/vnd.oci.image.manifest.v1+json"},
            )
            assert got.status_code == 200
            assert got.content == manifest
            assert got.headers["docker-content-digest"] == digest
            blob = via_b.get(f"/v2/team/app/blobs/{sha(b'layer pushed through a')}")
            assert blob.content == b"layer pushed through a"
            assert via_b.get("/v2/team/app/tags/list").json()["tags"] == ["v1"]
            assert "team/app" in via_b.get("/v2/_catalog").json()["repositories"]
            # A layer the manifest needs cannot be deleted out from under it.
            refused = via_b.delete(f"/v2/team/app/blobs/{sha(b'layer pushed through a')}")
            assert refused.status_code == 405
            assert refused.json()["errors"][0]["code"] == "UNSUPPORTED"
            assert refused.json()["errors"][0]["detail"] == {"manifest": digest}

            # One upload, its chunks through both processes: the second process has no digest
            # state for it and reads the stored bytes once at commit.
            location = via_a.post("/v2/team/app/blobs/uploads/").headers["location"]
            first = via_a.patch(location, content=b"x" * 1000, headers={"content-range": "0-999"})
            assert first.status_code == 202
            second = via_b.patch(
                first.headers["location"],
                content=b"y" * 500,
                headers={"content-range": "1000-1499"},
            )
            assert second.status_code == 202
            # A stale chunk (another process already appended there) is a clean 416.
            stale = via_a.patch(
                first.headers["location"], content=b"z" * 10, headers={"content-range": "1000-1009"}
            )
            assert stale.status_code == 416
            assert stale.headers["range"] == "0-1499"
            body = b"x" * 1000 + b"y" * 500
            done = via_a.put(second.headers["location"], params={"digest": sha(body)})
            assert done.status_code == 201, done.text
            assert via_b.get(f"/v2/team/app/blobs/{sha(body)}").content == body
    finally:
        assert a.stop() == 0, a.log()[-3000:]
        assert b.stop() == 0, b.log()[-3000:]


def test_the_jobs_leader_moves_when_it_dies(
    tmp_path: Path, postgres_metadata: Callable[[], dict[str, str]]
) -> None:
    env = {
        **postgres_metadata(),
        "BERTH_JOBS_LEASE": "0.6",  # campaign and check every 0.2 s
        "BERTH_UPLOADS_EXPIRY": "1",
        "BERTH_UPLOADS_PURGE_INTERVAL": "0.2",
    }
    data = tmp_path / "data"
    servers = [start(data, "a", env), start(data, "b", env)]
    try:
        wait_for("a leader", lambda: sum(len(leaders(s)) for s in servers) == 1)
        (leader,) = [s for s in servers if leaders(s)]
        (follower,) = [s for s in servers if s is not leader]
        (generation, pid) = leaders(leader)[0]
        assert pid == leader.proc.pid

        leader.kill()
        wait_for("the follower to take over", lambda: bool(leaders(follower)), timeout=20)
        assert leaders(follower)[0][0] == generation + 1

        # The new leader runs the jobs: an idle upload expires.
        with client_for(follower) as client:
            location = client.post("/v2/team/jobs/blobs/uploads/").headers["location"]
            wait_for("the upload to expire", lambda: client.get(location).status_code == 404)
    finally:
        for s in servers:
            s.stop()


def _children(pid: int) -> set[int]:
    """Child processes of `pid`, whichever of its threads started them."""
    out: set[int] = set()
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out |= {int(p) for p in path.read_text().split()}
        except OSError:  # the thread is gone
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def _slow_patch(server: Server, location: str, first: bytes) -> socket.socket:
    """Send a PATCH's headers and the first part of its body; the caller sends the rest."""
    parts = urlsplit(server.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    head = (
        f"PATCH {location} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Basic {token}\r\nContent-Length: {2 * len(first)}\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock


def test_workers_restart_lead_and_drain(tmp_path: Path) -> None:
    """`--workers 3` on SQLite: one socket, a dead worker is replaced, the jobs lease moves to
    a live worker, and SIGTERM drains an in-flight request before the exit (0)."""
    env = {"BERTH_JOBS_LEASE": "1", "BERTH_SERVER_SHUTDOWN_TIMEOUT": "20"}
    server = start(tmp_path / "data", "workers", env, args=("--workers", "3"))
    try:
        wait_for("three workers", lambda: len(_children(server.proc.pid)) == 3)
        with client_for(server) as client:
            digest, manifest = push_image(client, "team/app", "v1", b"through some worker")
            for _ in range(20):  # whichever worker accepts, the answer is the same
                got = client.get(f"/v2/team/app/manifests/{digest}")
                assert got.content == manifest

            wait_for("a leader", lambda: bool(leaders(server)))
            generation, leader_pid = leaders(server)[-1]
            assert leader_pid in _children(server.proc.pid)
            os.kill(leader_pid, signal.SIGKILL)
            wait_for(
                "a replacement worker",
                lambda: (
                    len(_children(server.proc.pid)) == 3
                    and leader_pid not in _children(server.proc.pid)
                ),
            )
            wait_for("another leader", lambda: leaders(server)[-1][0] > generation, timeout=20)
            assert leaders(server)[-1][1] != leader_pid
            assert client.get(f"/v2/team/app/manifests/{digest}").content == manifest

            location = client.post("/v2/team/app/blobs/uploads/").headers["location"]
        workers = _children(server.proc.pid)
        sock = _slow_patch(server, location, b"a" * 1000)
        try:
            server.proc.send_signal(signal.SIGTERM)
            wait_for("the drain to begin", lambda: "draining 3 workers" in server.log())
            sock.sendall(b"b" * 1000)
            reply = sock.recv(4096)
            assert reply.startswith(b"HTTP/1.1 202"), reply
        finally:
            sock.close()
        assert server.proc.wait(30) == 0
        assert not any(_alive(pid) for pid in workers)
    finally:
        server.stop()
