"""In-place upgrades from source: `berth ctl reconfigure` on a data directory written by an
earlier commit backs it up, migrates it and serves every image; `berth migrate --status` says
who applied what; a Berth older than the database refuses it with one line naming both
versions, and leaves it as it was. (tests/packaging/test_upgrade.py does the same with the
.deb packages of both versions.)"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance import config as settings
from appliance.backup import layout
from appliance.metadata.db import DIALECTS, migrations, open_database
from tests.packaging.helpers import start_command
from tests.support.clients import Skopeo
from tests.support.earlier import (
    EARLIEST_COMMIT,
    EARLIEST_SCHEMA,
    FROM_SOURCE,
    now_version,
    source_env,
)
from tests.support.images import ImageCache, compare_images
from tests.support.servers import ADMIN, ADMIN_PASSWORD, REPO_ROOT, require_binary
from tests.upgrade.conftest import EarlierSource

EARLIEST = EARLIEST_COMMIT


def berth(tree: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FROM_SOURCE, *args],
        cwd=tree,
        env=source_env(tree, **env),
        capture_output=True,
        text=True,
        check=False,
    )


def _config(tmp_path: Path, url: str = "") -> Path:
    path = tmp_path / "berth.toml"
    text = f'[server]\ndata_dir = "{tmp_path / "data"}"\n[log]\ndir = "{tmp_path / "log"}"\n'
    if url:
        text += f'[metadata]\nurl = "{url}"\n'
    path.write_text(text)
    return path


def _schema(config: Path) -> int:
    cfg = settings.load(config, environ={})
    db = open_database(cfg.metadata_url)
    try:
        return db.schema_status().current
    finally:
        db.close()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_reconfigure_upgrades_an_earlier_install(
    earlier_source: EarlierSource,
    tmp_path: Path,
    dialect: str,
    postgres_database: Callable[[], str],
) -> None:
    require_binary("skopeo", "skopeo")
    require_binary("busybox", "busybox-static")
    old = earlier_source(EARLIEST)
    config = _config(tmp_path, postgres_database() if dialect == "postgresql" else "")
    if dialect == "postgresql":  # served without auto-migration: the earlier `berth migrate`
        made = berth(old, "migrate", "--config", str(config))
        assert made.returncode == 0, made.stderr
    skopeo = Skopeo(tmp_path / "skopeo")
    creds = f"{ADMIN}:{ADMIN_PASSWORD}"
    image = ImageCache(tmp_path / "images").busybox()

    # The earlier Berth serves and takes a push.
    cmd = [*FROM_SOURCE, "serve", "--config", str(config), "--listen", "127.0.0.1:0"]
    env = source_env(old, BERTH_ADMIN_PASSWORD=ADMIN_PASSWORD)
    server, _ = start_command(cmd, env=env, cwd=old, log_path=tmp_path / "old.log")
    try:
        skopeo.push(image, f"docker://{server.host}/up/busybox:1", creds=creds)
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    assert _schema(config) == EARLIEST_SCHEMA

    # This Berth: backup first, then the migrations.
    done = berth(
        REPO_ROOT, "ctl", "reconfigure", "--config", str(config), "--systemd-dir", str(tmp_path)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    latest = migrations(dialect)[-1].version
    assert f"upgrading schema {EARLIEST_SCHEMA} -> {latest}" in done.stdout
    assert "pre-upgrade backup " in done.stdout
    assert f"upgraded the schema from {EARLIEST_SCHEMA} to {latest}" in done.stdout
    lines = done.stdout.splitlines()
    assert next(i for i, x in enumerate(lines) if "pre-upgrade backup" in x) < next(
        i for i, x in enumerate(lines) if x.startswith("applied migration")
    ), "the backup comes before the first migration"
    listed = json.loads(
        berth(REPO_ROOT, "backup", "list", "--config", str(config), "--json").stdout
    )
    (backup,) = listed["backups"]
    verified = berth(REPO_ROOT, "backup", "verify", backup["id"], "--config", str(config))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    backups = tmp_path / "data" / "backups"
    manifest = json.loads((backups / layout.manifest_path(backup["id"])).read_text())
    assert manifest["schema_version"] == EARLIEST_SCHEMA  # the database as it was
    assert manifest["source_metadata"] == dialect
    assert _schema(config) == latest
    assert image.manifest_digest in _snapshot_manifests(tmp_path, backup["id"])

    status = berth(REPO_ROOT, "migrate", "--status", "--config", str(config))
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert "0001 registry (expand) at " in out
    assert "by a Berth that did not record it" in out  # the earlier Berth's rows
    assert f"{latest:04d} " in out
    assert f"by Berth {now_version()}" in out
    assert "up to date" in out

    # A second reconfigure has nothing to do: no backup, no migration.
    again = berth(
        REPO_ROOT, "ctl", "reconfigure", "--config", str(config), "--systemd-dir", str(tmp_path)
    )
    assert again.returncode == 0, again.stderr
    assert "backup" not in again.stdout
    assert "applied migration" not in again.stdout

    # The first request of the new version sees the image, byte for byte.
    cmd = [*FROM_SOURCE, "serve", "--config", str(config), "--listen", "127.0.0.1:0"]
    env = source_env(REPO_ROOT, BERTH_ADMIN_PASSWORD=ADMIN_PASSWORD)
    server, _ = start_command(cmd, env=env, cwd=REPO_ROOT, log_path=tmp_path / "new.log")
    try:
        pulled = skopeo.pull_to_layout(
            f"docker://{server.host}/up/busybox:1", tmp_path / "pulled", image.tag, creds=creds
        )
        assert compare_images(image.layout, image.tag, pulled, image.tag) == []
    finally:
        assert server.stop() == 0, server.log()[-3000:]


def _snapshot_manifests(tmp_path: Path, backup_id: str) -> set[str]:
    snap = tmp_path / "data" / "backups" / layout.metadata_path(backup_id)
    with sqlite3.connect(f"file:{snap}?mode=ro", uri=True) as conn:
        return {r[0] for r in conn.execute("SELECT digest FROM manifests")}


def test_reconfigure_without_backup(earlier_source: EarlierSource, tmp_path: Path) -> None:
    old = earlier_source(EARLIEST)
    config = _config(tmp_path)
    made = berth(old, "migrate", "--config", str(config))
    assert made.returncode == 0, made.stderr
    done = berth(
        REPO_ROOT,
        "ctl",
        "reconfigure",
        "--no-backup",
        "--config",
        str(config),
        "--systemd-dir",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert "pre-upgrade backup skipped" in done.stdout
    assert not (tmp_path / "data" / "backups").exists()


def _older_berth(tmp_path: Path, version: str) -> Path:
    """This Berth without its newest migration, calling itself `version`: an older release as
    far as the database can tell."""
    tree = tmp_path / "older"
    shutil.copytree(
        REPO_ROOT / "appliance",
        tree / "appliance",
        ignore=shutil.ignore_patterns("__pycache__", "_stamp.json"),
    )
    shutil.copytree(REPO_ROOT / "omnibus", tree / "omnibus")
    for dialect in ("sqlite", "postgresql"):
        newest = sorted((tree / "appliance/metadata/migrations" / dialect).glob("*.sql"))[-1]
        newest.unlink()
    (tree / "appliance" / "_stamp.json").write_text(json.dumps({"version": version}))
    return tree


def test_a_downgrade_is_refused_with_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path)
    made = berth(REPO_ROOT, "migrate", "--config", str(config))
    assert made.returncode == 0, made.stderr
    latest = migrations("sqlite")[-1].version
    db_file = tmp_path / "data" / "berth.db"
    before = db_file.read_bytes()
    older = _older_berth(tmp_path, "0.0.9")
    expected = (
        f"berth: the metadata database {db_file} is at schema version {latest}, applied by "
        f"Berth {now_version()}, newer than this Berth 0.0.9 knows (up to "
        f"{latest - 1}): install Berth {now_version()} or newer, or restore the backup "
        "taken before the upgrade"
    )
    for args in (
        ("migrate", "--config", str(config)),
        ("ctl", "reconfigure", "--config", str(config), "--systemd-dir", str(tmp_path / "u")),
        ("serve", "--config", str(config), "--listen", "127.0.0.1:0"),
        ("backup", "create", "--config", str(config)),
    ):
        done = berth(older, *args, BERTH_ADMIN_PASSWORD=ADMIN_PASSWORD)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        # One line says it (`serve` logs its start first).
        said = [line for line in done.stderr.splitlines() if line.startswith("berth:")]
        assert said == [expected], (args, done.stderr)
        assert done.stderr.splitlines()[-1] == expected
    assert db_file.read_bytes() == before, "a refused downgrade changes nothing"
