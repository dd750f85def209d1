"""Versions: from git tags (a dev suffix between tags), the fallback without git or tags, and
their Debian and RPM spellings, whose order is checked by dpkg and rpm themselves."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from appliance import version as v
from tests.support.servers import REPO_ROOT, require_binary

# In the order PEP 440 sorts them.
ORDERED = [
    "0.1.0.dev0",
    "0.1.0.dev5+gabc",
    "0.1.0.dev12+gdef",
    "0.1.0rc1.dev2+g123",
    "0.1.0rc1",
    "0.1.0rc2",
    "0.1.0",
    "0.1.0.post1",
    "0.1.1.dev1+g456",
    "0.1.1",
    "0.2.0.dev3+g789",
    "0.2.0",
    "0.10.0",
]


@pytest.mark.parametrize(
    ("described", "expected"),
    [
        ("v0.1.0-0-gabcdef123456", "0.1.0"),
        ("v0.1.0-0-gabcdef123456-dirty", "0.1.0+dirty"),
        ("v0.1.0-5-gabcdef123456", "0.2.0.dev5+gabcdef123456"),
        ("v0.1.0-5-gabcdef123456-dirty", "0.2.0.dev5+gabcdef123456.dirty"),
        ("v0.2.0rc1-3-g1234", "0.2.0rc2.dev3+g1234"),
        ("v1.4.2-10-g1234", "1.5.0.dev10+g1234"),
    ],
)
def test_versions_from_git_describe(described: str, expected: str) -> None:
    assert v.from_describe(described) == expected
    # A build between tags sorts after the tag and before the release it leads to.
    tag = described.split("-", maxsplit=1)[0][1:]
    if not described.endswith("-0-gabcdef123456"):
        assert v.sort_key(tag) < v.sort_key(expected)


def test_a_tag_that_is_not_a_version_is_refused() -> None:
    with pytest.raises(v.BadVersion):
        v.from_describe("vnext-3-gabc")


def test_next_release_wins_when_it_is_later(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v, "NEXT_RELEASE", "0.1.1")
    assert v.from_describe("v0.1.0-2-gabc") == "0.1.1.dev2+gabc"
    monkeypatch.setattr(v, "NEXT_RELEASE", "0.1.0")
    assert v.from_describe("v0.1.0-2-gabc") == "0.2.0.dev2+gabc"


def test_pep440_order() -> None:
    keys = [v.sort_key(x) for x in ORDERED]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_debian_order_matches(tmp_path: Path) -> None:
    """`dpkg --compare-versions` agrees: every dev build sorts before its release."""
    dpkg = require_binary("dpkg", "dpkg")
    debs = [v.debian(x) for x in ORDERED]
    assert v.debian("0.2.0.dev5+gabc") == "0.2.0~dev5+gabc"
    for low, high in pairwise(debs):
        done = subprocess.run([dpkg, "--compare-versions", low, "lt", high], check=False)
        assert done.returncode == 0, f"dpkg sorts {low} after {high}"


def test_rpm_order_matches() -> None:
    rpm = require_binary("rpm", "rpm")
    rpms = [v.rpm(x) for x in ORDERED]
    script = "".join(f'print(rpm.vercmp("{low}", "{high}"), " ")' for low, high in pairwise(rpms))
    out = subprocess.run(
        [rpm, "--eval", f"%{{lua: {script}}}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["-1"] * (len(rpms) - 1), list(zip(pairwise(rpms), out, strict=True))


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _tree_version(tree: Path) -> str:
    """`appliance.__version__` as the copy of the package in `tree` computes it."""
    return subprocess.run(
        [sys.executable, "-c", "import appliance; print(appliance.__version__)"],
        cwd=tree,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_a_checkout_without_git_tags_or_stamp(tmp_path: Path) -> None:
    """A copy of the package without git, a clone without tags, then tagged, then a commit
    after the tag: each gives the version the rules say."""
    require_binary("git", "git")
    tree = tmp_path / "tree"
    shutil.copytree(
        REPO_ROOT / "appliance", tree / "appliance", ignore=shutil.ignore_patterns("_stamp.json")
    )
    assert _tree_version(tree) == f"{v.NEXT_RELEASE}.dev0"  # no git: the recorded release

    _git(tree, "init", "-q")
    _git(tree, "add", "appliance/__init__.py", "appliance/version.py")
    _git(tree, "commit", "-q", "-m", "one")
    _git(tree, "commit", "-q", "--allow-empty", "-m", "two")
    sha = _git(tree, "rev-parse", "--short=12", "HEAD")
    assert _tree_version(tree) == f"{v.NEXT_RELEASE}.dev2+g{sha}"  # no tag yet: commit count

    _git(tree, "tag", "v0.1.0")
    assert _tree_version(tree) == "0.1.0"
    _git(tree, "commit", "-q", "--allow-empty", "-m", "three")
    sha = _git(tree, "rev-parse", "--short=12", "HEAD")
    assert _tree_version(tree) == f"0.2.0.dev1+g{sha}"
    (tree / "appliance" / "version.py").write_text(
        (tree / "appliance" / "version.py").read_text() + "\n"
    )
    assert _tree_version(tree) == f"0.2.0.dev1+g{sha}.dirty"

    # A stamp (what a build writes into its copy) wins over git.
    (tree / "appliance" / "_stamp.json").write_text(
        json.dumps({"version": "9.9.9", "commit": "cafe"})
    )
    assert _tree_version(tree) == "9.9.9"


def test_version_of_this_checkout_is_valid() -> None:
    version, commit = v.identity()
    v.parse(version)
    assert commit
