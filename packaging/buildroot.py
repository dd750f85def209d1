"""The Debian 11 build root in which the shipped `berth` executable is made (glibc 2.31).

An executable made by PyInstaller needs the C library of the machine it was built on, or a newer
one. To run on every distribution teams use (Debian 11+, Ubuntu 20.04+, RHEL/Rocky/Alma 9,
Amazon Linux 2023), it is built in a Debian 11 (bullseye, glibc 2.31) root:

1. `debootstrap --variant=minbase bullseye`: kept as `bullseye-minbase.tar` (tests unpack it
   afresh as a clean glibc 2.31 machine);
2. the build root: that tarball unpacked, with compilers and headers from bullseye, and the
   source packages of CPython 3.11, OpenSSL 3.0 and SQLite from bookworm (`apt-get source`, so
   Debian's own patches are applied), compiled into /opt/berth (OpenSSL 3 and a SQLite with
   `RETURNING`, because bullseye's 1.1.1 and 3.34 are too old for what Berth uses);
3. a virtual environment in the root with Berth's dependencies (the versions the host's
   environment has, as constraints) and PyInstaller;
4. for each build: the source tree copied into the root, stamped with its version, and
   `packaging/berth.spec` run there.

Everything is cached in `BERTH_BUILD_CACHE` (default ~/.cache/berth-build), outside the
repository, each stage keyed by what went into it (mirror, package lists, source versions, the
dependency set), so that only the first build pays for debootstrap and the compilers (about
20 minutes on two cores); later builds take about two. Needs root (chroot, mount). Only Debian's
mirror (the one apt uses here) and PyPI are reached.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("BERTH_BUILD_CACHE", "~/.cache/berth-build")).expanduser()
SUITE = "bullseye"  # glibc 2.31: the oldest C library the executable supports
SOURCE_SUITE = "bookworm"  # where CPython 3.11, OpenSSL 3.0 and SQLite 3.40 come from
PREFIX = "/opt/berth"  # inside the root: openssl/, sqlite/, python/, venv/
PATH = f"{PREFIX}/venv/bin:{PREFIX}/python/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Compilers and headers for CPython's modules; tcl generates SQLite's sources; binutils strips.
BUILD_PACKAGES = (
    "build-essential", "pkg-config", "dpkg-dev", "ca-certificates", "tcl", "perl", "binutils",
    "file", "zlib1g-dev", "libffi-dev", "libbz2-dev", "liblzma-dev", "uuid-dev", "libexpat1-dev",
)  # fmt: skip
SOURCES = ("openssl", "sqlite3", "python3.11")


def log(message: str) -> None:
    print(f"buildroot: {message}", flush=True)


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (BERTH_DEBIAN_MIRROR overrides it)."""
    if os.environ.get("BERTH_DEBIAN_MIRROR"):
        return os.environ["BERTH_DEBIAN_MIRROR"].rstrip("/")
    for path in sorted(Path("/etc/apt").glob("sources.list*")) + sorted(
        Path("/etc/apt/sources.list.d").glob("*")
    ):
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for m in re.finditer(r"(https?://\S+/debian)(?=\s|$)", text):
            if "security" not in m.group(1):
                return m.group(1)
    return "http://deb.debian.org/debian"


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, and on failure show the end of what it printed."""
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]  # noqa: S603
    if result.returncode != 0:
        tail = (result.stdout[-3000:] + "\n" + result.stderr[-3000:]).strip()
        raise RuntimeError(f"{' '.join(cmd)[:200]} exited {result.returncode}:\n{tail}")
    return result  # type: ignore[no-any-return]


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """One build at a time per cache (tests and `make dist` may run side by side)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def minbase_tarball() -> Path:
    """A clean `debootstrap --variant=minbase bullseye` root, as a tarball (cached)."""
    mirror = debian_mirror()
    tarball = CACHE / f"{SUITE}-minbase-{_key(mirror)}.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap not found: install the Debian package 'debootstrap'")
    work = CACHE / "minbase.tmp"
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    log(f"debootstrap --variant=minbase {SUITE} from {mirror}")
    run(["debootstrap", "--variant=minbase", SUITE, str(work), mirror])
    run(["tar", "-C", str(work), "-cf", f"{tarball}.tmp", "."])
    os.replace(f"{tarball}.tmp", tarball)
    shutil.rmtree(work, ignore_errors=True)
    log(f"{tarball.name} made in {time.monotonic() - started:.0f} s")
    return tarball


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[Path]:
    """/proc and /dev in `root`, and the host's resolver, while commands run there."""
    done: list[Path] = []
    try:
        for kind, target in (("proc", root / "proc"), ("dev", root / "dev")):
            if kind == "proc":
                run(["mount", "-t", "proc", "proc", str(target)])
            else:
                run(["mount", "--bind", "/dev", str(target)])
            done.append(target)
        shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
        yield root
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-l", str(target)], check=False)  # noqa: S603, S607


def chroot(root: Path, script: str, env: dict[str, str] | None = None) -> str:
    """Run a shell script in `root` (mounted); return what it printed."""
    environ = {
        "PATH": PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        **(env or {}),
    }
    return run(["chroot", str(root), "/bin/sh", "-ec", script], env=environ).stdout


def _unpack(tarball: Path, root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    run(["tar", "-C", str(root), "-xf", str(tarball)])


def _stage_done(root: Path, name: str) -> Path:
    return root / "opt" / f".berth-{name}"


def builder_root() -> Path:
    """The build root with CPython, OpenSSL and SQLite compiled (cached; made when missing).

    Each step leaves a marker in the root, so a build that was interrupted (or failed) goes on
    from the step it stopped at rather than from debootstrap.
    """
    tarball = minbase_tarball()
    mirror = debian_mirror()
    key = _key(tarball.name, mirror, BUILD_PACKAGES, SOURCES, SOURCE_SUITE, PREFIX, 2)
    root = CACHE / f"{SUITE}-builder-{key}"
    if _stage_done(root, "toolchain").exists():
        return root
    for old in CACHE.glob(f"{SUITE}-builder-*"):
        if old != root:
            shutil.rmtree(old, ignore_errors=True)
    started = time.monotonic()
    if not _stage_done(root, "unpacked").exists():
        _unpack(tarball, root)
        (root / "etc/apt/sources.list").write_text(
            f"deb {mirror} {SUITE} main\n"
            f"deb-src {mirror} {SOURCE_SUITE} main\n"
            f"deb-src {mirror} {SOURCE_SUITE}-updates main\n"
            f"deb-src {mirror}-security {SOURCE_SUITE}-security main\n"
        )
        _stage_done(root, "unpacked").write_text("")
    with mounted(root):
        for name, step in (
            ("packages", _install_packages),
            ("sources", _fetch_sources),
            ("openssl", _compile_openssl),
            ("sqlite", _compile_sqlite),
            ("python", _compile_python),
        ):
            marker = _stage_done(root, name)
            if marker.exists():
                continue
            began = time.monotonic()
            step(root)
            marker.write_text(f"{time.monotonic() - began:.0f} s\n")
    _stage_done(root, "toolchain").write_text(
        json.dumps({"made": time.time(), "sources": _source_versions(root)}) + "\n"
    )
    log(f"build root ready in {time.monotonic() - started:.0f} s")
    return root


def _install_packages(root: Path) -> None:
    log(f"installing compilers and headers in the {SUITE} root")
    chroot(
        root,
        "apt-get update -q && apt-get install -y -q --no-install-recommends "
        + " ".join(BUILD_PACKAGES),
    )


def _fetch_sources(root: Path) -> None:
    log(f"fetching the {SOURCE_SUITE} sources of {', '.join(SOURCES)} (apt-get source)")
    chroot(
        root,
        "rm -rf /src && mkdir -p /src && cd /src && apt-get source -q --download-only "
        + " ".join(f"{p}/{SOURCE_SUITE}" for p in SOURCES),
    )
    _unpack_sources(root)


# Debian's python3.11 patches begin with its packaging (install layout, multiarch, ensurepip
# disabled, ...), which a standalone build in /opt must not take; every fix and security
# backport comes after them, from this patch on.
PYTHON_FIXES_FROM = "fix-py_compile.diff"
# A fix that makes an extension module include CPython's internal headers (pyexpat.c, for
# CVE-2026-4224) relies on Py_BUILD_CORE_MODULE, which Debian's build (Modules/Setup) defines
# and setup.py does not: such a module gets the guard upstream puts at the top of these.
CORE_MODULE_GUARD = "#ifndef Py_BUILD_CORE_BUILTIN\n#  define Py_BUILD_CORE_MODULE 1\n#endif\n"


def _unpack_sources(root: Path) -> None:
    """OpenSSL and SQLite with all of Debian's patches; CPython with its fixes only."""
    dsc = {p: next((root / "src").glob(f"{p}_*.dsc")).name for p in SOURCES}
    chroot(
        root,
        f"cd /src && dpkg-source -x {dsc['openssl']} openssl-src >/dev/null && "
        f"dpkg-source -x {dsc['sqlite3']} sqlite3-src >/dev/null && "
        f"dpkg-source -x --skip-patches {dsc['python3.11']} python3.11-src >/dev/null",
    )
    series = (root / "src/python3.11-src/debian/patches/series").read_text().split()
    if PYTHON_FIXES_FROM not in series:
        raise RuntimeError(
            f"Debian's python3.11 patch series no longer has {PYTHON_FIXES_FROM}: "
            "choose the first fix patch again (packaging/buildroot.py)"
        )
    fixes = series[series.index(PYTHON_FIXES_FROM) :]
    chroot(
        root,
        "cd /src/python3.11-src && for p in "
        + " ".join(fixes)
        + "; do patch -p1 --forward -s < debian/patches/$p; done",
    )
    patches = root / "src/python3.11-src/debian/patches"
    for name in fixes:
        target = None
        for line in (patches / name).read_text(errors="replace").splitlines():
            if line.startswith("+++ "):
                target = line.split()[1].split("/", 1)[1]
            elif line.startswith('+#include "pycore_') and target and target.startswith("Modules/"):
                module = root / "src/python3.11-src" / target
                text = module.read_text(errors="surrogateescape")
                if "Py_BUILD_CORE" not in text:
                    module.write_text(CORE_MODULE_GUARD + text, errors="surrogateescape")


def _source_dir(root: Path, prefix: str) -> str:
    return f"/src/{prefix}-src"


def _source_versions(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "src").glob("*.dsc"))


def _jobs() -> str:
    return str(os.cpu_count() or 2)


def _compile_openssl(root: Path) -> None:
    log("compiling OpenSSL")
    chroot(
        root,
        f"cd {_source_dir(root, 'openssl')} && make clean >/dev/null 2>&1 || true; "
        f"./Configure linux-x86_64 shared no-tests --prefix={PREFIX}/openssl "
        f"--libdir=lib --openssldir=/etc/ssl '-Wl,-rpath,{PREFIX}/openssl/lib' >/dev/null "
        f"&& make -j{_jobs()} >/dev/null && make install_sw >/dev/null",
    )


def _compile_sqlite(root: Path) -> None:
    log("compiling SQLite")
    chroot(
        root,
        f"cd {_source_dir(root, 'sqlite3')} && ./configure --prefix={PREFIX}/sqlite "
        "--disable-tcl --disable-static "
        "CFLAGS='-O2 -DSQLITE_ENABLE_FTS5 -DSQLITE_ENABLE_JSON1 -DSQLITE_ENABLE_RTREE "
        "-DSQLITE_DQS=0' >/dev/null "
        f"&& make -j{_jobs()} >/dev/null && make install >/dev/null",
    )


def _compile_python(root: Path) -> None:
    log("compiling CPython")
    # Its output is long: the end of it is kept in /src/python-build.log for a failed build.
    chroot(
        root,
        f"cd {_source_dir(root, 'python3.11')} && ./configure --prefix={PREFIX}/python "
        f"--enable-shared --with-openssl={PREFIX}/openssl --with-openssl-rpath=auto "
        "--with-ensurepip=install "
        f"LDFLAGS='-Wl,-rpath,{PREFIX}/python/lib -Wl,-rpath,{PREFIX}/sqlite/lib' "
        f"LIBSQLITE3_CFLAGS='-I{PREFIX}/sqlite/include' "
        f"LIBSQLITE3_LIBS='-L{PREFIX}/sqlite/lib -lsqlite3' >/src/python-build.log 2>&1 "
        f"&& make -j{_jobs()} >>/src/python-build.log 2>&1 "
        f"&& make install >>/src/python-build.log 2>&1 "
        f"&& {PREFIX}/python/bin/python3.11 -c "
        "'import ssl, sqlite3, zlib, bz2, lzma, ctypes, uuid, decimal, pyexpat, "
        'xml.etree.ElementTree as et; et.fromstring("<a/>"); '
        'print(ssl.OPENSSL_VERSION, "sqlite", sqlite3.sqlite_version)\' '
        "|| { tail -40 /src/python-build.log; exit 1; }",
    )
    # `make` leaves out a module it could not build and goes on: refuse that here.
    built = (root / "src/python-build.log").read_text(errors="replace")
    if "Failed to build these modules" in built:
        tail = built[built.index("Failed to build these modules") :][:600]
        raise RuntimeError(f"CPython built without some modules:\n{tail}")


def _requirements() -> list[str]:
    """Berth's dependencies and PyInstaller, pinned to what the host's environment runs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dist"]]
    return [*wanted, "setuptools>=77", "wheel"]


def _constraints() -> list[str]:
    pins = []
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in ("berth", "pip", "setuptools", "wheel"):
            pins.append(f"{name}=={dist.version}")
    return sorted(set(pins), key=str.lower)


def _ca_bundle() -> str:
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE")):
        if candidate and Path(candidate).is_file():
            return candidate
    return "/etc/ssl/certs/ca-certificates.crt"


def venv(root: Path) -> None:
    """The root's virtual environment with the dependencies (kept while they are the same)."""
    requirements, constraints = _requirements(), _constraints()
    key = _key(requirements, constraints)
    marker = _stage_done(root, "venv")
    if marker.exists() and marker.read_text().strip() == key:
        return
    started = time.monotonic()
    log("making the virtual environment in the build root (pip install from PyPI)")
    (root / "opt/requirements.txt").write_text("\n".join(requirements) + "\n")
    (root / "opt/constraints.txt").write_text("\n".join(constraints) + "\n")
    # pip in the root trusts what pip here trusts (this machine may reach PyPI through a proxy
    # with a CA of its own).
    shutil.copy2(_ca_bundle(), root / "opt/host-ca.crt")
    with mounted(root):
        chroot(
            root,
            f"rm -rf {PREFIX}/venv && {PREFIX}/python/bin/python3.11 -m venv {PREFIX}/venv && "
            f"{PREFIX}/venv/bin/pip install -q --upgrade pip && "
            f"{PREFIX}/venv/bin/pip install -q -r /opt/requirements.txt "
            "-c /opt/constraints.txt",
            env={"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CERT": "/opt/host-ca.crt"},
        )
    marker.write_text(key + "\n")
    log(f"virtual environment ready in {time.monotonic() - started:.0f} s")


def _copy_tree(source: Path, dest: Path) -> None:
    """The files a build needs from `source` (no virtual environments, builds or caches)."""
    skip = {".git", ".venv", "build", "dist", ".cache", "__pycache__", ".mypy_cache"}
    skip |= {".ruff_cache", ".pytest_cache", "berth-data", "test-artifacts", "artifacts"}

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n in skip or n.endswith(".egg-info")]

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, ignore=ignore, symlinks=True)


def build(source: Path, out: Path, stamp: dict[str, str]) -> Path:
    """Build the executable of the source tree `source` in the root; write it to `out` (and
    its build facts to `<out>.buildinfo.json`); `stamp` is the version and commit it carries.
    """
    with locked():
        root = builder_root()
        venv(root)
        started = time.monotonic()
        work = root / "build"
        _copy_tree(source, work / "src")
        stamp_path = work / "src" / "appliance" / "_stamp.json"
        stamp_path.write_text(json.dumps(stamp) + "\n")
        shutil.rmtree(work / "out", ignore_errors=True)
        epoch = str(int(time.time()))
        with mounted(root):
            chroot(
                root,
                # The berth distribution's metadata (some builds bundle it), then PyInstaller.
                f"{PREFIX}/venv/bin/pip install -q --no-deps --no-build-isolation "
                "--no-index /build/src >/dev/null && cd /build/src && "
                f"{PREFIX}/venv/bin/python -m PyInstaller --noconfirm --clean --log-level=WARN "
                "--distpath=/build/out --workpath=/build/work packaging/berth.spec",
                env={
                    "BERTH_BUILD_DIR": "/build/work",
                    "SOURCE_DATE_EPOCH": epoch,
                    "LD_LIBRARY_PATH": f"{PREFIX}/openssl/lib:{PREFIX}/sqlite/lib",
                },
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / "out" / "berth", f"{out}.tmp")
        os.replace(f"{out}.tmp", out)
        info = work / "work" / "buildinfo.json"
        if info.exists():
            shutil.copy2(info, f"{out}.buildinfo.json")
        log(f"built {out} in {time.monotonic() - started:.0f} s in the {SUITE} root")
        return out


if __name__ == "__main__":  # prepare the root ahead of time: `python packaging/buildroot.py`
    with locked():
        venv(builder_root())
    sys.exit(0)
