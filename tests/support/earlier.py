"""Earlier versions of Berth for upgrade tests and benchmarks: this repository's history.

`export_commit(commit, dest)` unpacks `git archive` of a commit; `FROM_SOURCE` run in that tree
(with `source_env(tree)`) is that version of Berth, on this virtual environment (whose packages
are a superset of what an earlier commit needs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.support.servers import REPO_ROOT, require_binary, unavailable

# The first commit with today's migration layout (schema 3): the earliest Berth an upgrade
# starts from, in the upgrade tests (from source and as packages), the migration rules (its
# migrations are never edited) and bench/upgrade.py.
EARLIEST_COMMIT = "84baf47"
EARLIEST_SCHEMA = 3


def export_commit(commit: str, dest: Path) -> Path:
    """`git archive commit` unpacked into `dest`; the test fails (CI) or skips without it."""
    git = require_binary("git", "git")
    if not (REPO_ROOT / ".git").exists():
        unavailable("not a git checkout: an earlier commit cannot be exported")
    archive = dest.with_suffix(".tar")
    done = subprocess.run(
        [git, "-C", str(REPO_ROOT), "archive", "--format=tar", "-o", str(archive), commit],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        unavailable(f"commit {commit} is not in this clone (a shallow clone?): {done.stderr}")
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="tar")
    archive.unlink()
    return dest


# Run with the source tree as the working directory (and on PYTHONPATH): that tree's Berth.
FROM_SOURCE = [sys.executable, "-m", "appliance"]


def source_env(tree: Path, **extra: str) -> dict[str, str]:
    """The environment for FROM_SOURCE run in `tree`: only that tree's package on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["PYTHONPATH"] = str(tree)
    env.update(extra)
    return env


def now_version() -> str:
    """This checkout's version as a process started now computes it (not the one this process
    cached when it started: a commit made meanwhile changes it)."""
    from appliance.version import identity  # noqa: PLC0415

    return identity.__wrapped__()[0]
