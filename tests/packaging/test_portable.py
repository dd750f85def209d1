"""The shipped executable, built in the Debian 11 root, on a clean Debian 11 (glibc 2.31) root:
it says what it needs, serves, takes a skopeo push, and its bundled SQLite and OpenSSL do what
Berth asks of them. Its .rpm requires that glibc and installs into an empty root. (Slow: the
first build compiles CPython; later ones reuse the cached root.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import package, record
from tests.packaging.helpers import start_command
from tests.packaging.test_rpm import verify_unit
from tests.support.clients import Skopeo
from tests.support.images import ImageCache, compare_images
from tests.support.servers import ADMIN, ADMIN_PASSWORD, require_binary

pytestmark = pytest.mark.slow

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def in_root(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chroot", str(root), *args],
        capture_output=True,
        text=True,
        env={"PATH": PATH, "LANG": "C.UTF-8"},
        check=False,
    )


def test_runs_on_glibc_2_31(portable_exe: Path, bullseye_root: Path, tmp_path: Path) -> None:
    root = bullseye_root
    assert not (root / "usr/bin/python3").exists(), "the clean root must have no Python"
    libc = in_root(root, "ldd", "--version").stdout.splitlines()[0]
    assert libc.endswith(" 2.31"), libc
    shutil.copy2(portable_exe, root / "usr/local/bin/berth")

    shown = in_root(root, "/usr/local/bin/berth", "--version")
    assert shown.returncode == 0, shown.stderr
    m = re.search(r"^glibc: needs (\d+)\.(\d+) or newer \(running on 2\.31\)$", shown.stdout, re.M)
    assert m is not None, shown.stdout
    assert (int(m.group(1)), int(m.group(2))) <= (2, 31), shown.stdout
    assert re.search(r"^python: 3\.11\.\d+ \(bundled\)$", shown.stdout, re.M), shown.stdout

    cmd = [
        "chroot",
        str(root),
        "/usr/local/bin/berth",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        "/srv/berth",
    ]
    env = {"PATH": PATH, "BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
    server, took = start_command(cmd, env=env, cwd=tmp_path, log_path=tmp_path / "serve.log")
    skopeo = Skopeo(tmp_path / "skopeo")
    creds = f"{ADMIN}:{ADMIN_PASSWORD}"
    require_binary("busybox", "busybox-static")
    image = ImageCache(tmp_path / "images").busybox()
    try:
        dest = f"docker://{server.host}/old/busybox:1"
        assert skopeo.push(image, dest, creds=creds) == image.manifest_digest
        pulled = skopeo.pull_to_layout(dest, tmp_path / "pulled", image.tag, creds=creds)
        assert compare_images(image.layout, image.tag, pulled, image.tag) == []
    finally:
        assert server.stop() == 0, server.log()[-4000:]
    record(f"portable dist/berth in the Debian 11 root: first /v2/ answered after {took:.2f} s")

    # A backup uses SQLite's RETURNING (3.35+; bullseye has 3.34: the bundled one is newer)
    # and hashes with the bundled OpenSSL.
    made = in_root(root, "/usr/local/bin/berth", "backup", "create", "--data-dir", "/srv/berth")
    assert made.returncode == 0, made.stdout + made.stderr
    backup_id = made.stdout.split()[1]
    verified = in_root(
        root, "/usr/local/bin/berth", "backup", "verify", backup_id, "--data-dir", "/srv/berth"
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_portable_rpm_requires_glibc_2_31_and_installs(portable_exe: Path, tmp_path: Path) -> None:
    exe = require_binary("rpm", "rpm")
    rpm_file = package("rpm", portable_exe, tmp_path)
    requires = subprocess.run(
        [exe, "-qp", "--requires", str(rpm_file)], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"^glibc >= 2\.(\d+)$", requires, re.M)
    assert m is not None, requires
    assert int(m.group(1)) <= 31, requires
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run([exe, "--root", str(root), "--initdb"], check=True)
    subprocess.run(
        [exe, "-i", "--root", str(root), "--nodeps", "--noscripts", str(rpm_file)], check=True
    )
    assert (root / "usr/bin/berth").read_bytes() == portable_exe.read_bytes()
    verify_unit(root, "/usr/lib/systemd/system/berth.service")
