"""Build the single `berth` executable with PyInstaller, unless it is up to date.

    python packaging/build.py          dist/berth, built in a Debian 11 root: runs on glibc 2.31+
                                       (what `make dist` runs and the packages ship)
    python packaging/build.py --host   build/host/berth, built with this interpreter: quick, but
                                       needs this machine's glibc or newer (tests, development)
    python packaging/build.py --source DIR --out FILE
                                       the executable of another source tree (an earlier commit
                                       exported with `git archive`), built in the Debian 11 root

Each executable has its build facts beside it (`<executable>.buildinfo.json`: version, commit,
glibc baseline), which `packaging/package.py` reads. An executable is kept while the inputs
it was built from are unchanged (the appliance sources and data, packaging/, web/, omnibus/,
the version, and the versions of every installed distribution); `--force` rebuilds anyway.
The Debian 11 root, its CPython and its virtual environment are cached outside the repository
(packaging/buildroot.py).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.version import identity  # noqa: E402

DIST = ROOT / "dist"
EXECUTABLE = DIST / "berth"  # the portable build: what the packages ship
HOST_BUILD = ROOT / "build" / "host"
HOST_EXECUTABLE = HOST_BUILD / "berth"


def buildinfo_path(executable: Path) -> Path:
    return executable.with_name(executable.name + ".buildinfo.json")


def read_buildinfo(executable: Path) -> dict[str, str]:
    """The build facts written beside `executable` (version, commit, glibc, ...)."""
    path = buildinfo_path(executable)
    if not path.exists():
        raise SystemExit(f"{path} is missing: rebuild {executable} with packaging/build.py")
    info: dict[str, str] = json.loads(path.read_text())
    return info


def inputs_digest(source: Path, kind: str, facts: object) -> str:
    """What an executable of `source` is made from: its files, the installed distributions,
    this interpreter, `kind` and `facts` (the version and commit it will carry)."""
    h = hashlib.sha256(kind.encode() + json.dumps(facts).encode())
    for folder in ("appliance", "packaging", "web", "omnibus"):
        base = source / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    h.update("\n".join(dists).encode())
    h.update(sys.version.encode())
    return h.hexdigest()


def _up_to_date(executable: Path, digest: str) -> bool:
    stamp = executable.with_name(executable.name + ".inputs")
    return executable.exists() and stamp.exists() and stamp.read_text() == digest


def _mark(executable: Path, digest: str) -> None:
    executable.with_name(executable.name + ".inputs").write_text(digest)


def _report(executable: Path, started: float) -> None:
    size = executable.stat().st_size / 2**20
    info = read_buildinfo(executable)
    print(
        f"built {executable} ({size:.0f} MiB, berth {info['version']}, needs glibc "
        f"{info['glibc']}) in {time.monotonic() - started:.0f} s"
    )


def build_host(force: bool = False) -> Path:
    """build/host/berth with this interpreter (needs this machine's glibc or newer)."""
    digest = inputs_digest(ROOT, "host", identity())
    if not force and _up_to_date(HOST_EXECUTABLE, digest):
        print(f"{HOST_EXECUTABLE.relative_to(ROOT)} is up to date")
        return HOST_EXECUTABLE
    started = time.monotonic()
    work = HOST_BUILD / "work"
    work.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--clean",
        "--log-level=WARN",
        f"--distpath={HOST_BUILD}",
        f"--workpath={work}",
        str(ROOT / "packaging" / "berth.spec"),
    ]
    subprocess.run(  # noqa: S603 - our own interpreter and spec
        cmd, cwd=ROOT, check=True, env={**os.environ, "BERTH_BUILD_DIR": str(work)}
    )
    shutil.copy2(work / "buildinfo.json", buildinfo_path(HOST_EXECUTABLE))
    _mark(HOST_EXECUTABLE, digest)
    _report(HOST_EXECUTABLE, started)
    return HOST_EXECUTABLE


def build_portable(
    source: Path = ROOT, out: Path = EXECUTABLE, force: bool = False
) -> Path:
    """`out` built from the tree `source` in the Debian 11 root (runs on glibc 2.31+)."""
    import buildroot  # noqa: PLC0415 - packaging/buildroot.py, beside this file

    if os.geteuid() != 0:
        raise SystemExit("the portable build needs root (chroot, mount): or use --host")
    stamp = identity() if source == ROOT else _stamp_of(source)
    digest = inputs_digest(source, "portable", stamp)
    if not force and _up_to_date(out, digest):
        print(f"{out} is up to date")
        return out
    started = time.monotonic()
    buildroot.build(source, out, {"version": stamp[0], "commit": stamp[1]})
    _mark(out, digest)
    _report(out, started)
    return out


def _stamp_of(source: Path) -> tuple[str, str]:
    """The version of another tree: its own recorded version (it may predate the stamp)."""
    found = source / "appliance" / "_stamp.json"
    if found.exists():
        stamp = json.loads(found.read_text())
        return str(stamp["version"]), str(stamp.get("commit", "unknown"))
    done = subprocess.run(
        [sys.executable, "-c", "import appliance; print(appliance.__version__)"],
        cwd=source,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(source)},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip(), "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument(
        "--host", action="store_true", help="build with this interpreter into build/host/"
    )
    parser.add_argument("--source", type=Path, help="build this source tree instead")
    parser.add_argument("--out", type=Path, help="where the executable goes (with --source)")
    args = parser.parse_args()
    if args.host:
        build_host(args.force)
    elif args.source is not None:
        if args.out is None:
            parser.error("--source needs --out")
        build_portable(args.source.resolve(), args.out.resolve(), args.force)
    else:
        build_portable(force=args.force)


if __name__ == "__main__":
    main()
