"""Fixtures for upgrade tests: the source of an earlier commit, run with this environment.

`earlier_source(commit)` exports that commit of this repository with `git archive` into a
temporary directory (once per session); `python -m appliance` run there is that version of
Berth, on the same virtual environment (whose packages are a superset of what it needs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.servers import REPO_ROOT, require_binary, unavailable

EarlierSource = Callable[[str], Path]


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


@pytest.fixture(scope="session")
def earlier_source(tmp_path_factory: pytest.TempPathFactory) -> EarlierSource:
    made: dict[str, Path] = {}

    def get(commit: str) -> Path:
        if commit not in made:
            made[commit] = export_commit(commit, tmp_path_factory.mktemp("earlier") / commit)
        return made[commit]

    return get


# Run with the source tree as the working directory (and on PYTHONPATH): that tree's Berth.
FROM_SOURCE = [sys.executable, "-m", "appliance"]


def source_env(tree: Path, **extra: str) -> dict[str, str]:
    """The environment for FROM_SOURCE run in `tree`: only that tree's package on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["PYTHONPATH"] = str(tree)
    env.update(extra)
    return env
