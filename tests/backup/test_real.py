"""Backups of a real Berth with real clients: push with skopeo, `berth backup create` while it
serves, wipe, `berth restore`, pull byte-identical; concurrent pushes; damage refused; and
restores across backends (SQLite + filesystem <-> PostgreSQL + S3 on SeaweedFS, with an
s3:// backup target)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.azurite import Azurite
from tests.support.clients import Skopeo, ToolError
from tests.support.images import BuiltImage, ImageCache, compare_images
from tests.support.postgres import migrated
from tests.support.seaweedfs import SeaweedFS
from tests.support.servers import (
    ADMIN,
    ADMIN_PASSWORD,
    Server,
    berth_command,
    require_binary,
    start_berth,
)

CREDS = f"{ADMIN}:{ADMIN_PASSWORD}"


def berth(*args: str, env: dict[str, str] | None = None, check: bool = True) -> Any:
    """Run the `berth` command line; the parsed JSON (with --json) or the completed process."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    full["BERTH_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    full.update(env or {})
    proc = subprocess.run(
        [*berth_command(), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"berth {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    if check and "--json" in args:
        return json.loads(proc.stdout)
    return proc


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageCache:
    require_binary("busybox", "busybox-static")
    return ImageCache(tmp_path_factory.mktemp("images"))


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    return Skopeo(tmp_path / "skopeo")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(data: Path, env: dict[str, str] | None = None) -> Server:
        server = start_berth(data, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def push(skopeo: Skopeo, server: Server, image: BuiltImage, repo: str) -> None:
    dest = f"docker://{server.host}/{repo}:{image.tag}"
    assert skopeo.push(image, dest, creds=CREDS) == image.manifest_digest


def pulled_identical(
    skopeo: Skopeo, server: Server, image: BuiltImage, repo: str, tmp: Path
) -> None:
    layout = tmp / f"pulled-{repo.replace('/', '-')}-{image.tag}"
    shutil.rmtree(layout, ignore_errors=True)
    skopeo.copy(
        f"docker://{server.host}/{repo}:{image.tag}",
        f"oci:{layout}:{image.tag}",
        all=bool(image.child_manifests),
        creds=CREDS,
    )
    assert compare_images(image.layout, image.tag, layout, image.tag) == []


def test_skopeo_push_backup_wipe_restore_pull(
    tmp_path: Path, images: ImageCache, skopeo: Skopeo, serve: Callable[..., Server]
) -> None:
    data, target = tmp_path / "data", tmp_path / "backups"
    server = serve(data)
    pushed = {
        "team/busybox": images.busybox(),
        "team/multi": images.multi_arch(),
        "team/schema2": images.docker_schema2(),
    }
    for repo, image in pushed.items():
        push(skopeo, server, image, repo)
    # Taken while the server runs.
    summary = berth("backup", "create", "--to", str(target), "--data-dir", str(data), "--json")
    assert summary["blobs"] >= 5
    assert summary["reused_blobs"] == 0
    listed = berth("backup", "list", "--from", str(target), "--json")
    assert [b["id"] for b in listed["backups"]] == [summary["id"]]
    verified = berth("backup", "verify", summary["id"], "--from", str(target), "--json")
    assert verified["ok"] is True
    assert verified["files"] == summary["files"]
    # Incremental: nothing new, nothing copied but the metadata.
    again = berth("backup", "create", "--to", str(target), "--data-dir", str(data), "--json")
    assert again["reused_blobs"] == summary["blobs"]
    assert again["copied"] < summary["copied"]
    assert server.stop() == 0

    shutil.rmtree(data)  # the disaster
    restored = tmp_path / "restored"
    out = berth("restore", summary["id"], "--from", str(target), "--data-dir", str(restored))
    assert "restored backup" in out.stdout
    server = serve(restored)
    for repo, image in pushed.items():
        pulled_identical(skopeo, server, image, repo, tmp_path)
    # Restoring again onto the now non-empty data directory is refused without --force.
    server.stop()
    again_out = berth(
        "restore", summary["id"], "--from", str(target), "--data-dir", str(restored), check=False
    )
    assert again_out.returncode == 2
    assert "not empty" in again_out.stderr
    assert "--force" in again_out.stderr


def test_damaged_backup_is_found_and_refused(
    tmp_path: Path, images: ImageCache, skopeo: Skopeo, serve: Callable[..., Server]
) -> None:
    data, target = tmp_path / "data", tmp_path / "backups"
    server = serve(data)
    push(skopeo, server, images.busybox(), "team/busybox")
    summary = berth("backup", "create", "--to", str(target), "--data-dir", str(data), "--json")
    server.stop()
    biggest = max(
        (target / "blobs").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0
    )
    with biggest.open("r+b") as f:  # truncate the largest layer
        f.truncate(biggest.stat().st_size // 2)
    verified = berth("backup", "verify", summary["id"], "--from", str(target), check=False)
    assert verified.returncode == 1
    assert "DAMAGED" in verified.stdout
    assert "truncated" in verified.stdout
    refused = berth(
        "restore", summary["id"], "--from", str(target), "--data-dir", str(tmp_path / "r"),
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "damaged, nothing was restored" in refused.stderr
    assert not (tmp_path / "r" / "storage" / "blobs").exists()


def test_backup_during_concurrent_skopeo_pushes_restores_consistently(
    tmp_path: Path, images: ImageCache, skopeo: Skopeo, serve: Callable[..., Server]
) -> None:
    data, target = tmp_path / "data", tmp_path / "backups"
    server = serve(data)
    image = images.busybox()
    push(skopeo, server, image, "team/first")
    done: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def pusher() -> None:
        try:
            for i in range(12):
                if stop.is_set():
                    return
                push(Skopeo(tmp_path / f"pusher-{i}"), server, image, f"team/busy-{i}")
                done.append(f"team/busy-{i}")
        except BaseException as e:  # reported by the test below
            errors.append(e)

    thread = threading.Thread(target=pusher)
    thread.start()
    try:
        backups = [
            berth("backup", "create", "--to", str(target), "--data-dir", str(data), "--json")
            for _ in range(2)
        ]
    finally:
        stop.set()
        thread.join()
    assert errors == []
    server.stop()
    last = backups[-1]["id"]
    restored = tmp_path / "restored"
    berth("restore", last, "--from", str(target), "--data-dir", str(restored))
    server = serve(restored)
    # team/first was pushed before the backups began: it is there. Every repository of the
    # concurrent pushes that made it into the snapshot with its tag pulls whole.
    restored_tags = 0
    for repo in ["team/first", *[f"team/busy-{i}" for i in range(12)]]:
        try:
            tags = skopeo.list_tags(f"docker://{server.host}/{repo}", creds=CREDS)
        except ToolError:  # a repository the snapshot did not see
            assert repo != "team/first"
            continue
        if image.tag in tags:
            pulled_identical(skopeo, server, image, repo, tmp_path)
            restored_tags += 1
    assert restored_tags >= 1


# -- across backends ---------------------------------------------------------------------------


def test_restore_sqlite_filesystem_into_postgres_and_s3(
    tmp_path: Path,
    images: ImageCache,
    skopeo: Skopeo,
    serve: Callable[..., Server],
    postgres_database: Callable[[], str],
    seaweedfs: SeaweedFS,
) -> None:
    data, target = tmp_path / "data", tmp_path / "backups"
    server = serve(data)
    image = images.multi_arch()
    push(skopeo, server, image, "team/multi")
    summary = berth("backup", "create", "--to", str(target), "--data-dir", str(data), "--json")
    server.stop()

    env = {
        "BERTH_METADATA_URL": migrated(postgres_database()),
        **seaweedfs.env(seaweedfs.new_bucket("restored")),
    }
    restored = tmp_path / "restored"
    result = berth(
        "restore", summary["id"], "--from", str(target), "--data-dir", str(restored), "--json",
        env=env,
    )  # fmt: skip
    assert result["blobs"] == summary["blobs"]
    assert result["storage"].startswith("s3://restored-")
    server = serve(restored, env=env)
    pulled_identical(skopeo, server, image, "team/multi", tmp_path)


def test_postgres_s3_backed_up_to_s3_and_restored_onto_sqlite_filesystem(
    tmp_path: Path,
    images: ImageCache,
    skopeo: Skopeo,
    serve: Callable[..., Server],
    postgres_database: Callable[[], str],
    seaweedfs: SeaweedFS,
) -> None:
    env = {
        "BERTH_METADATA_URL": migrated(postgres_database()),
        **seaweedfs.env(seaweedfs.new_bucket("source")),
    }
    data = tmp_path / "data"
    server = serve(data, env=env)
    image = images.busybox()
    push(skopeo, server, image, "team/busybox")
    bucket = seaweedfs.new_bucket("backups")
    target = f"s3://{bucket}/nightly"
    summary = berth("backup", "create", "--to", target, "--data-dir", str(data), "--json", env=env)
    assert summary["target"] == target
    listed = berth("backup", "list", "--from", target, "--json", env=env)
    assert [b["id"] for b in listed["backups"]] == [summary["id"]]
    assert berth("backup", "verify", summary["id"], "--from", target, "--json", env=env)["ok"]
    keys = [
        o["Key"]
        for o in seaweedfs.client.list_objects_v2(Bucket=bucket, Prefix="nightly/").get(
            "Contents", []
        )
    ]
    assert f"nightly/backups/{summary['id']}/manifest.json" in keys
    server.stop()

    # Onto a plain data directory: SQLite and the filesystem, reading the s3:// target with the
    # source's S3 credentials (backup.s3.* falls back to storage.s3.*).
    s3_only = {
        "BERTH_BACKUP_S3_ENDPOINT": seaweedfs.endpoint,
        "BERTH_BACKUP_S3_ACCESS_KEY": seaweedfs.access_key,
        "BERTH_BACKUP_S3_SECRET_KEY": seaweedfs.secret_key,
    }
    restored = tmp_path / "restored"
    berth("restore", summary["id"], "--from", target, "--data-dir", str(restored), env=s3_only)
    assert (restored / "berth.db").exists()
    server = serve(restored)
    pulled_identical(skopeo, server, image, "team/busybox", tmp_path)


def test_sqlite_azure_backed_up_to_azure_and_restored_onto_sqlite_filesystem(
    tmp_path: Path,
    images: ImageCache,
    skopeo: Skopeo,
    serve: Callable[..., Server],
    azurite: Azurite,
) -> None:
    """Berth on Azure Blob Storage (Azurite), backed up to an azure:// target, restored onto
    SQLite + the filesystem with only [backup.azure] settings, and onto a fresh container."""
    env = azurite.env(azurite.new_container("source"), prefix="registry")
    data = tmp_path / "data"
    server = serve(data, env=env)
    image = images.busybox()
    push(skopeo, server, image, "team/busybox")
    container = azurite.new_container("backups")
    target = f"azure://{container}/nightly"
    summary = berth("backup", "create", "--to", target, "--data-dir", str(data), "--json", env=env)
    assert summary["target"] == target
    listed = berth("backup", "list", "--from", target, "--json", env=env)
    assert [b["id"] for b in listed["backups"]] == [summary["id"]]
    assert berth("backup", "verify", summary["id"], "--from", target, "--json", env=env)["ok"]
    assert f"nightly/backups/{summary['id']}/manifest.json" in azurite.listing(container)
    server.stop()

    azure_only = {
        "BERTH_BACKUP_AZURE_ENDPOINT": azurite.endpoint,
        "BERTH_BACKUP_AZURE_ACCOUNT_NAME": azurite.account,
        "BERTH_BACKUP_AZURE_ACCOUNT_KEY": azurite.key,
    }
    restored = tmp_path / "restored"
    berth("restore", summary["id"], "--from", target, "--data-dir", str(restored), env=azure_only)
    assert (restored / "berth.db").exists()
    assert any((restored / "storage" / "blobs").rglob("*"))
    server = serve(restored)
    pulled_identical(skopeo, server, image, "team/busybox", tmp_path)
    server.stop()

    fresh = azurite.env(azurite.new_container("restored"))
    again = tmp_path / "again"
    result = berth(
        "restore", summary["id"], "--from", target, "--data-dir", str(again), "--json",
        env=fresh,
    )  # fmt: skip
    assert result["storage"] == f"azure://{fresh['BERTH_STORAGE_AZURE_CONTAINER']}"
    assert result["blobs"] == summary["blobs"]
    server = serve(again, env=fresh)
    pulled_identical(skopeo, server, image, "team/busybox", tmp_path)
