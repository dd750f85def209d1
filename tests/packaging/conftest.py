"""Fixtures for the packaging tests: the built executable, a clean Debian root, test images.

Slow things are built once and kept between runs under `.cache/` (or `BERTH_TEST_CACHE`):
`packaging/build.py --host` keeps build/host/berth while its inputs are unchanged, and the
debootstrap root is kept as a tarball and unpacked afresh for every test session that needs a
clean root. The fast suite packages that host build (quick to make, but it needs this
machine's glibc); the slow suite (`make test-slow`, tests/packaging/test_portable.py and
test_upgrade.py) builds the shipped, portable executable in the Debian 11 root and packages it.
Timings worth reading (start-up, build) are printed in the test summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.earlier import EARLIEST_COMMIT, export_commit
from tests.support.images import ImageCache
from tests.support.servers import REPO_ROOT, require_binary, unavailable

CACHE = Path(os.environ.get("BERTH_TEST_CACHE", REPO_ROOT / ".cache"))
MIRROR = os.environ.get("BERTH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
TIMINGS: list[str] = []


def record(line: str) -> None:
    """A line for the end-of-run summary (`packaging timings`)."""
    TIMINGS.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("packaging timings")
        for line in TIMINGS:
            terminalreporter.write_line(line)


HOST_BUILD = REPO_ROOT / "build" / "host"


@pytest.fixture(scope="session")
def berth_exe() -> Path:
    """build/host/berth, built by `packaging/build.py --host` (a no-op while up to date)."""
    started = time.monotonic()
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "packaging" / "build.py"), "--host"],
        check=True,
        cwd=REPO_ROOT,
    )
    record(f"host build (or up-to-date check): {time.monotonic() - started:.1f} s")
    return HOST_BUILD / "berth"


def package(kind: str, executable: Path, out: Path) -> Path:
    """The .deb or .rpm of `executable`, written into `out` (packaging/package.py)."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "packaging" / "package.py"),
            kind,
            "--executable",
            str(executable),
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageCache:
    require_binary("busybox", "busybox-static")
    return ImageCache(tmp_path_factory.mktemp("images"))


def _debootstrap_tarball() -> Path:
    tarball = CACHE / "debootstrap" / "bookworm-minbase.tar"
    if tarball.exists():
        return tarball
    exe = require_binary("debootstrap", "debootstrap")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    work = tarball.parent / "root.tmp"
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    subprocess.run(
        [exe, "--variant=minbase", "bookworm", str(work), MIRROR],
        check=True,
        capture_output=True,
    )
    subprocess.run(["tar", "-C", str(work), "-cf", str(tarball) + ".tmp", "."], check=True)
    os.replace(str(tarball) + ".tmp", tarball)
    shutil.rmtree(work, ignore_errors=True)
    record(
        f"debootstrap --variant=minbase bookworm (cached after): {time.monotonic() - started:.0f} s"
    )
    return tarball


@pytest.fixture(scope="session")
def debian_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clean Debian 12 minbase root (no python3), with /proc mounted while in use."""
    if os.geteuid() != 0:
        unavailable("needs root (chroot, mount)")
    tarball = _debootstrap_tarball()
    root = tmp_path_factory.mktemp("debian") / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(tarball)], check=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)


# -- the portable build and the Debian 11 root (slow suite) ---------------------------------

sys.path.insert(0, str(REPO_ROOT / "packaging"))
import buildroot  # noqa: E402 (packaging/buildroot.py)

# The earlier version the upgrade tests install first (its .deb and executable are built from
# `git archive` of it).
EARLIER_COMMIT = EARLIEST_COMMIT


def _need_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (chroot, mount, the Debian 11 build root)")


@pytest.fixture(scope="session")
def portable_exe() -> Path:
    """dist/berth built in the Debian 11 root (cached; a no-op while up to date)."""
    _need_root()
    started = time.monotonic()
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "packaging" / "build.py")], check=True, cwd=REPO_ROOT
    )
    record(f"portable build (or up-to-date check): {time.monotonic() - started:.0f} s")
    return REPO_ROOT / "dist" / "berth"


@pytest.fixture(scope="session")
def bullseye_tarball() -> Path:
    """A clean `debootstrap --variant=minbase bullseye` root, as a (cached) tarball."""
    _need_root()
    require_binary("debootstrap", "debootstrap")
    started = time.monotonic()
    tarball = buildroot.minbase_tarball()
    record(f"bullseye minbase tarball (or cache hit): {time.monotonic() - started:.0f} s")
    return tarball


@pytest.fixture
def bullseye_root(bullseye_tarball: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh Debian 11 root (glibc 2.31, no Python), /proc mounted while in use."""
    root = tmp_path / "bullseye"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(bullseye_tarball)], check=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)


@pytest.fixture(scope="session")
def earlier_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb of EARLIER_COMMIT, made by that commit's own package.py around its executable
    built in the Debian 11 root (the executable is cached in the build cache)."""
    _need_root()
    started = time.monotonic()
    tree = export_commit(EARLIER_COMMIT, tmp_path_factory.mktemp("earlier") / EARLIER_COMMIT)
    cached = buildroot.CACHE / "earlier" / EARLIER_COMMIT / "berth"
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "packaging" / "build.py"),
            "--source",
            str(tree),
            "--out",
            str(cached),
        ],
        check=True,
        cwd=REPO_ROOT,
    )
    (tree / "dist").mkdir()
    shutil.copy2(cached, tree / "dist" / "berth")
    done = subprocess.run(
        [sys.executable, str(tree / "packaging" / "package.py"), "deb"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    record(f"earlier ({EARLIER_COMMIT}) executable and .deb: {time.monotonic() - started:.0f} s")
    return tree / done.stdout.strip().splitlines()[-1]
