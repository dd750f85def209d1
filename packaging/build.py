"""Build the single `berth` executable (dist/berth) with PyInstaller, unless it is up to date.

`python packaging/build.py` (what `make dist` runs) hashes what goes into the executable: the
appliance sources and data, packaging/, web/, and the versions of every installed distribution.
When dist/berth was built from the same inputs it is kept, so tests and `make deb`/`make rpm`
can ask for it cheaply; `--force` rebuilds anyway.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "dist"
BUILD = ROOT / "build" / "pyinstaller"
EXECUTABLE = DIST / "berth"
STAMP = BUILD / "inputs.sha256"


def inputs_digest() -> str:
    h = hashlib.sha256()
    for folder in ("appliance", "packaging", "web"):
        base = ROOT / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    h.update("\n".join(dists).encode())
    h.update(sys.version.encode())
    return h.hexdigest()


def build(force: bool = False) -> Path:
    """dist/berth, (re)built when its inputs changed; returns its path."""
    digest = inputs_digest()
    if not force and EXECUTABLE.exists() and STAMP.exists() and STAMP.read_text() == digest:
        print(f"{EXECUTABLE.relative_to(ROOT)} is up to date")
        return EXECUTABLE
    started = time.monotonic()
    BUILD.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--clean",
        "--log-level=WARN",
        f"--distpath={DIST}",
        f"--workpath={BUILD}",
        str(ROOT / "packaging" / "berth.spec"),
    ]
    subprocess.run(  # noqa: S603 - our own interpreter and spec
        cmd, cwd=ROOT, check=True, env={**os.environ, "BERTH_BUILD_DIR": str(BUILD)}
    )
    STAMP.write_text(digest)
    size = EXECUTABLE.stat().st_size / 2**20
    took = time.monotonic() - started
    print(f"built {EXECUTABLE.relative_to(ROOT)} ({size:.0f} MiB) in {took:.0f} s")
    return EXECUTABLE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    build(parser.parse_args().force)


if __name__ == "__main__":
    main()
