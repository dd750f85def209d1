"""The .deb in a clean Debian 12 root (debootstrap --variant=minbase: no python3, no systemd
running): install, `berth ctl reconfigure` from the post-install step, serve from the chroot,
push and pull, upgrade keeps config and data, remove keeps data, purge removes it."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import package, record
from tests.packaging.helpers import start_command
from tests.support.clients import Skopeo
from tests.support.servers import ADMIN, ADMIN_PASSWORD, require_binary

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="module")
def deb(berth_exe: Path) -> Path:
    require_binary("dpkg-deb", "dpkg")
    return package("deb", berth_exe, berth_exe.parent)


def chroot(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["chroot", str(root), *args],
        capture_output=True,
        text=True,
        env={"PATH": PATH},
        check=False,
    )
    if check:
        assert result.returncode == 0, (
            f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def serve_in(root: Path, log: Path):
    cmd = [
        "chroot",
        "--userspec=berth:berth",
        str(root),
        "/usr/bin/berth",
        "serve",
        "--config",
        "/etc/berth/berth.toml",
    ]
    env = {
        "BERTH_SERVER_LISTEN": "127.0.0.1:0",
        "BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "PATH": PATH,
    }
    return start_command(cmd, env=env, cwd=root.parent, log_path=log)


def test_deb_installs_serves_upgrades_removes_and_purges(
    deb: Path, debian_root: Path, tmp_path: Path, images
):
    root = debian_root
    assert not (root / "usr/bin/python3").exists(), "the clean root must have no Python"
    shutil.copy2(deb, root / "tmp" / "berth.deb")

    installed = chroot(root, "dpkg", "-i", "/tmp/berth.deb")
    # The post-install step ran `berth ctl reconfigure`, which skipped the restart and said why.
    assert "/var/opt/berth/berth.db: schema version" in installed.stdout
    assert "systemd is not running here" in installed.stdout
    assert chroot(root, "getent", "passwd", "berth").stdout.startswith("berth:")
    conf = (root / "etc/berth/berth.toml").stat()
    assert stat.S_IMODE(conf.st_mode) == 0o640
    berth_gid = int(chroot(root, "getent", "group", "berth").stdout.split(":")[2])
    assert conf.st_gid == berth_gid
    for folder in ("var/opt/berth", "var/log/berth"):
        assert (root / folder).stat().st_gid == berth_gid
    assert (root / "etc/systemd/system/berth.service").exists()

    skopeo = Skopeo(tmp_path / "skopeo")
    creds = f"{ADMIN}:{ADMIN_PASSWORD}"
    server, took = serve_in(root, tmp_path / "serve1.log")
    try:
        digest = skopeo.push(images.busybox(), f"docker://{server.host}/deb/busybox:1", creds=creds)
        skopeo.pull_to_layout(
            f"docker://{server.host}/deb/busybox:1", tmp_path / "p1", "1", creds=creds
        )
    finally:
        assert server.stop() == 0, server.log()[-4000:]
    record(f".deb in a minbase chroot: start-up to first answered /v2/ {took:.2f} s")

    # Upgrade (a reinstall runs prerm upgrade + postinst configure): config and data stay.
    config = root / "etc/berth/berth.toml"
    config.write_text(config.read_text().replace('# level = "info"', 'level = "debug"'))
    chroot(root, "dpkg", "-i", "/tmp/berth.deb")
    assert 'level = "debug"' in config.read_text()
    server, _ = serve_in(root, tmp_path / "serve2.log")
    try:
        skopeo.pull_to_layout(
            f"docker://{server.host}/deb/busybox@{digest}", tmp_path / "p2", "1", creds=creds
        )
    finally:
        assert server.stop() == 0, server.log()[-4000:]

    chroot(root, "dpkg", "-r", "berth")
    assert not (root / "usr/bin/berth").exists()
    assert (root / "var/opt/berth/berth.db").exists(), "remove must keep the data"
    assert not (root / "etc/systemd/system/berth.service").exists()

    chroot(root, "dpkg", "-P", "berth")
    for gone in ("var/opt/berth", "var/log/berth", "etc/berth"):
        assert not (root / gone).exists(), gone
    assert chroot(root, "getent", "passwd", "berth", check=False).returncode != 0
