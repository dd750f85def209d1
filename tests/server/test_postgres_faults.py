"""Berth on PostgreSQL when the database is not there: at start-up (one line, non-zero exit),
before migration (a message naming `berth migrate`), and while serving (503 with the OCI error
JSON, then recovery without a restart). The outage test stops a PostgreSQL of its own."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.server.helpers import AUTH, client_for, push_image, start, wait_for
from tests.support.postgres import PostgresServer, migrated
from tests.support.servers import berth_command, free_port


def berth(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    import os  # noqa: PLC0415

    full = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")} | env
    return subprocess.run(
        [*berth_command(), *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("berth:")]


def test_an_unreachable_database_at_start_up_is_one_line_and_a_non_zero_exit(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there
    env = {**AUTH, "BERTH_METADATA_URL": f"postgresql://berth:s3cret@127.0.0.1:{port}/registry"}
    for args in (("serve", "--listen", "127.0.0.1:0"), ("migrate",), ("serve", "--workers", "2")):
        started = time.monotonic()
        done = berth(*args, "--data-dir", str(tmp_path / "data"), env=env, cwd=tmp_path)
        assert done.returncode != 0
        assert time.monotonic() - started < 20
        (line,) = error_lines(done.stderr)
        assert line.startswith(
            f"berth: cannot connect to the metadata database at 127.0.0.1:{port}/registry"
        )
        assert "s3cret" not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr


def test_serving_postgres_needs_berth_migrate_first(
    tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    env = {**AUTH, "BERTH_METADATA_URL": postgres_database()}
    data = ["--data-dir", str(tmp_path / "data")]
    refused = berth("serve", "--listen", "127.0.0.1:0", *data, env=env, cwd=tmp_path)
    assert refused.returncode != 0
    (line,) = error_lines(refused.stderr)
    assert "is at schema version 0" in line
    assert "run `berth migrate`" in line

    status = berth("migrate", "--status", *data, env=env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "schema version: 0" in status.stdout
    assert "pending: 0001 registry" in status.stdout

    applied = berth("migrate", *data, env=env, cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "applied: 0001 registry" in applied.stdout
    again = berth("migrate", "--status", *data, env=env, cwd=tmp_path)
    assert "up to date" in again.stdout

    server = start(tmp_path / "data", "served", {"BERTH_METADATA_URL": env["BERTH_METADATA_URL"]})
    assert server.stop() == 0


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, to stop and start again."""
    server = PostgresServer.create().start()
    try:
        yield server
    finally:
        server.destroy()


def test_the_database_going_away_while_serving(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    url = migrated(own_postgres.create_database())
    env = {"BERTH_METADATA_URL": url, "BERTH_METADATA_POOL_TIMEOUT": "1"}
    server = start(tmp_path / "data", "outage", env)
    try:
        with client_for(server) as client:
            digest, manifest = push_image(client, "team/app", "v1", b"before the outage")
            assert client.get("/v2/team/app/manifests/v1").status_code == 200

            own_postgres.stop()
            for path in ("/v2/team/app/manifests/v1", "/v2/_catalog", "/v2/team/app/tags/list"):
                started = time.monotonic()
                resp = client.get(path)
                assert resp.status_code == 503, resp.text
                assert resp.headers["content-type"].startswith("application/json")
                assert resp.json()["errors"][0]["code"] == "UNAVAILABLE"
                assert time.monotonic() - started < 15
            assert server.proc.poll() is None

            own_postgres.start()
            wait_for(
                "recovery",
                lambda: client.get("/v2/team/app/manifests/v1").status_code == 200,
                timeout=30,
            )
            assert client.get(f"/v2/team/app/manifests/{digest}").content == manifest
            push_image(client, "team/app", "v2", b"after the outage")
            assert client.get("/v2/team/app/tags/list").json()["tags"] == ["v1", "v2"]
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    assert "Traceback" not in server.log()
