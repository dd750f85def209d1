"""This host among several (runtime/hosts.py) and `berth ctl doctor`'s agreement check
(omnibus/checks.py `check_hosts`), on a real SQLite database: each host's row, two hosts under
one name, the host agent's lock, and every disagreement the doctor must name."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from appliance import __version__
from appliance import config as settings
from appliance.auth.secrets import ServerSecret
from appliance.metadata.db import Database, open_database
from appliance.metadata.hosts import STALE, HostRecord, list_hosts
from appliance.omnibus.checks import check_hosts
from appliance.runtime.hosts import HostAgent, ThisHost, instance_id


def make_config(data: Path, **overrides: object) -> settings.Config:
    return settings.load(
        None,
        environ={},
        overrides={"server.data_dir": str(data), "server.host_name": "alpha", **overrides},
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir(mode=0o700)
    ServerSecret.load(path / "secret", create=True)
    return path


@pytest.fixture
def db(data: Path) -> Iterator[Database]:
    database = open_database(make_config(data).metadata_url)
    database.migrate()
    try:
        yield database
    finally:
        database.close()


def register(db: Database, config: settings.Config, fingerprint: str, address: str) -> ThisHost:
    host = ThisHost(config, db, secret_fingerprint=fingerprint)
    host.listening(address)
    trio.run(host.visit)
    return host


def test_a_host_writes_its_row_and_a_second_visit_updates_it(data: Path, db: Database) -> None:
    config = make_config(data)
    fingerprint = ServerSecret.load(config.secret_path).fingerprint
    host = register(db, config, fingerprint, "http://10.0.0.1:5000")
    first = db.run_sync_read(list_hosts)
    assert [(h.name, h.address, h.version, h.secret_fingerprint) for h in first] == [
        ("alpha", "http://10.0.0.1:5000", __version__, fingerprint)
    ]
    assert first[0].schema_version == db.schema_status().current
    assert first[0].instance == host.instance
    time.sleep(0.01)
    trio.run(host.visit)
    (again,) = db.run_sync_read(list_hosts)
    assert again.last_seen > first[0].last_seen


def test_two_hosts_under_one_name_are_noticed(
    data: Path, db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    register(db, make_config(data), "f" * 16, "http://10.0.0.1:5000")
    elsewhere = make_config(tmp_path / "other-host")  # another data directory, the same name
    with caplog.at_level(logging.WARNING, logger="berth.ops"):
        register(db, elsewhere, "f" * 16, "http://10.0.0.2:5000")
    assert "another host (at http://10.0.0.1:5000) registers as 'alpha' too" in caplog.text


def test_the_instance_id_is_made_once_per_data_directory(tmp_path: Path) -> None:
    first = instance_id(tmp_path)
    assert first == instance_id(tmp_path)
    assert len(first) == 16
    assert first != instance_id(tmp_path / "elsewhere")
    assert oct((tmp_path / "run" / "host-id").stat().st_mode & 0o777) == oct(0o600)


def test_one_process_of_a_host_is_its_agent_until_it_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "run" / "host-agent"
    first, second = HostAgent(path), HostAgent(path)
    assert first.held()
    assert not second.held()  # flock: one open file description at a time
    assert first.held()  # kept
    first.close()
    assert second.held()
    assert not first.held()
    second.close()
    assert HostAgent(None).held()  # a process alone is always its agent


def doctor(config: settings.Config, now: float | None = None) -> list[tuple[str, str]]:
    return [(f.status, f.message) for f in check_hosts(config, now)]


def put(db: Database, record: HostRecord) -> None:
    from appliance.metadata.hosts import visit as _visit  # noqa: PLC0415 (the row writer under test)

    db.run_sync_write(lambda tx: _visit(tx, record))


def record(name: str, fingerprint: str, schema: int, storage: str, **kw: object) -> HostRecord:
    values: dict[str, object] = {
        "name": name,
        "instance": os.urandom(8).hex(),
        "version": __version__,
        "secret_fingerprint": fingerprint,
        "schema_version": schema,
        "storage": storage,
        "address": f"http://{name}:5000",
        "started_at": time.time() - 100,
        "last_seen": time.time(),
    }
    values.update(kw)
    return HostRecord(**values)  # type: ignore[arg-type]


def test_doctor_before_any_host_served_needs_no_secret(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    data.mkdir()
    config = make_config(data)
    database = open_database(config.metadata_url)
    database.migrate()
    database.close()
    assert doctor(config) == [("ok", "no host has registered yet (none has served)")]


def test_doctor_names_every_disagreement(data: Path, db: Database) -> None:
    from appliance.runtime.hosts import storage_of  # noqa: PLC0415

    config = make_config(data)
    fingerprint = ServerSecret.load(config.secret_path).fingerprint
    schema = db.schema_status().current
    mine = storage_of(config)
    put(db, record("alpha", fingerprint, schema, mine))
    put(db, record("beta", "0" * 16, schema, mine))
    put(db, record("gamma", fingerprint, schema - 1, "s3 other bucket"))
    put(db, record("delta", fingerprint, schema, mine, version="0.0.1"))
    put(db, record("gone", "0" * 16, schema, mine, last_seen=time.time() - STALE - 600))
    found = dict(
        (message.split(" ", 1)[0], (status, message)) for status, message in doctor(config)
    )
    assert found["alpha"] == ("ok", "alpha (http://alpha:5000) agrees with alpha")
    assert found["beta"][0] == "fail"
    assert (
        f"another server secret (fingerprint {'0' * 16}, this host's {fingerprint})"
        in (found["beta"][1])
    )
    assert found["gamma"][0] == "fail"
    assert f"schema version {schema - 1} (the database's: {schema})" in found["gamma"][1]
    assert "another blob store (s3 other bucket)" in found["gamma"][1]
    assert found["delta"] == (
        "warn",
        f"delta (http://delta:5000) runs Berth 0.0.1, this host {__version__}",
    )
    assert found["gone:"] == ("ok", "gone: gone (last seen 11 min ago)")
    # Several hosts serving with a filesystem store: each would keep blobs the others lack.
    assert ("warn", "4 hosts serve with a filesystem blob store") in doctor(config)


def test_doctor_with_another_secret_fails_every_host(
    data: Path, db: Database, tmp_path: Path
) -> None:
    config = make_config(data)
    fingerprint = ServerSecret.load(config.secret_path).fingerprint
    put(db, record("alpha", fingerprint, db.schema_status().current, "filesystem x"))
    other = tmp_path / "other-secret"
    ServerSecret.load(other, create=True)
    report = doctor(make_config(data, **{"server.secret_file": str(other)}))
    assert report[0][0] == "fail"
    assert "another server secret" in report[0][1]
