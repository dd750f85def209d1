"""The .rpm: its files, scripts and dependencies, read back with `rpm -qp`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import package
from tests.support.servers import require_binary


@pytest.fixture(scope="module")
def rpm_file(berth_exe: Path) -> Path:
    require_binary("rpmbuild", "rpm")
    return package("rpm", berth_exe, berth_exe.parent)


def rpm_q(path: Path, *args: str) -> str:
    exe = require_binary("rpm", "rpm")
    return subprocess.run(
        [exe, "-qp", *args, str(path)], check=True, capture_output=True, text=True
    ).stdout


def test_rpm_files(rpm_file: Path):
    listing = rpm_q(rpm_file, "--list").split()
    for path in (
        "/usr/bin/berth",
        "/etc/berth/berth.toml",
        "/usr/lib/systemd/system/berth.service",
        "/var/opt/berth",
        "/var/log/berth",
    ):
        assert path in listing, path
    dump = rpm_q(rpm_file, "--dump")
    config_line = next(
        line for line in dump.splitlines() if line.startswith("/etc/berth/berth.toml ")
    )
    fields = config_line.split()
    # path size mtime digest mode owner group isconfig isdoc rdev symlink
    assert int(fields[4], 8) & 0o7777 == 0o640
    assert fields[5:8] == ["root", "berth", "1"]
    assert rpm_q(rpm_file, "--configfiles").split() == ["/etc/berth/berth.toml"]


def test_rpm_scripts(rpm_file: Path):
    scripts = rpm_q(rpm_file, "--scripts")
    assert "useradd --system --gid berth" in scripts  # preinstall: the berth system user
    assert "/usr/bin/berth ctl reconfigure --config /etc/berth/berth.toml" in scripts
    assert "systemctl stop berth-nginx.service berth.service" in scripts  # preuninstall
    assert "rm -rf /var/opt/berth" not in scripts, "erasing an rpm must keep the data"


def test_rpm_requires(rpm_file: Path):
    requires = {line.split()[0]: line for line in rpm_q(rpm_file, "--requires").splitlines()}
    assert requires["glibc"].startswith("glibc >= 2.")
    assert "shadow-utils" in requires
    assert not any(name.startswith("python") for name in requires), requires
