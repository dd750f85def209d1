"""The .rpm: its files, scripts and dependencies, read back with `rpm -qp`."""

from __future__ import annotations

import shutil
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
        # The manual: the front door and its pages, linked from it by relative paths.
        "/usr/share/doc/berth/README.md",
        "/usr/share/doc/berth/docs/configuration.md",
        "/usr/share/doc/berth/docs/identity.md",
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


def test_rpm_installs_into_an_empty_root(rpm_file: Path, tmp_path: Path):
    """`rpm -i --root` (no dependency check; the empty root has no shell to run scriptlets):
    the files with their modes and owners, the user-creation scriptlet in rpm's database, and a
    systemd unit that `systemd-analyze verify` accepts."""
    exe = require_binary("rpm", "rpm")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run([exe, "--root", str(root), "--initdb"], check=True)
    done = subprocess.run(
        [exe, "-i", "--root", str(root), "--nodeps", "--noscripts", str(rpm_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    berth = root / "usr/bin/berth"
    assert berth.stat().st_mode & 0o777 == 0o755
    assert berth.read_bytes()[:4] == b"\x7fELF"
    config = root / "etc/berth/berth.toml"
    assert config.stat().st_mode & 0o777 == 0o640
    assert "[server]" in config.read_text()
    for folder in ("var/opt/berth", "var/log/berth"):
        assert (root / folder).is_dir(), folder
    unit = root / "usr/lib/systemd/system/berth.service"
    assert "ExecStart=/usr/bin/berth serve --config /etc/berth/berth.toml" in unit.read_text()
    assert (root / "usr/share/doc/berth/CHANGELOG.md").exists()

    installed = subprocess.run(
        [exe, "-q", "--root", str(root), "--scripts", "berth"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pre = installed.split("preinstall scriptlet", 1)[1].split("scriptlet", 1)[0]
    assert "useradd --system --gid berth --home-dir /var/opt/berth" in pre
    assert "groupadd --system berth" in pre
    verify_unit(root, "/usr/lib/systemd/system/berth.service")


def verify_unit(root: Path, unit: str) -> None:
    """`systemd-analyze verify` on `unit` inside `root`: ExecStart must exist there, every
    directive and value must parse (any complaint fails the test), and the units it depends on
    (sysinit.target, network-online.target) are systemd's own, copied from this machine."""
    analyze = require_binary("systemd-analyze", "systemd")
    units = root / "usr/lib/systemd/system"
    for path in Path("/usr/lib/systemd/system").glob("*.target"):
        if not (units / path.name).exists():
            shutil.copy2(path, units / path.name, follow_symlinks=False)
    (root / "etc").mkdir(exist_ok=True)
    passwd = root / "etc/passwd"
    if not passwd.exists():  # User= must name a user of the root
        passwd.write_text(
            "root:x:0:0:root:/root:/bin/sh\nberth:x:999:999::/var/opt/berth:/sbin/nologin\n"
        )
        (root / "etc/group").write_text("root:x:0:\nberth:x:999:\n")
    done = subprocess.run(
        [analyze, "verify", f"--root={root}", unit],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.strip() == "", done.stderr
