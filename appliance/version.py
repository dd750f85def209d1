"""Which version this Berth is, and how that version is written for Debian and RPM.

The version comes from the git tag: a commit tagged `vX.Y.Z` is version X.Y.Z; a commit N
commits after a tag is a development build of the next release, `X.Y+1.0.devN+g<commit>` (or
of `NEXT_RELEASE` when that is later), which sorts before that release. It is decided where the
code is built and recorded in what is built, so that nothing reads git at run time except a
source checkout:

1. the single executable: the version written into its `buildinfo.json` at build time;
2. a copy of the source stamped by a build (the executable's build root, a wheel or an sdist):
   `appliance/_stamp.json`;
3. a git checkout: `git describe` (no network);
4. anything else (a tree without git or stamp, a clone without tags): `NEXT_RELEASE.dev0`,
   or `NEXT_RELEASE.devN+g<commit>` where git knows the commits but no tag yet.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

#: The release being prepared. Builds after a tag lead to it while it is later than the tag
#: (set it to 0.1.1 after tagging v0.1.0 to prepare a patch release); otherwise they lead to
#: the next minor release.
NEXT_RELEASE = "0.1.0"

PACKAGE = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE.parent
STAMP = PACKAGE / "_stamp.json"

# A PEP 440 version as Berth writes them: release, pre-release, post, dev, local.
_PEP440 = re.compile(
    r"^(?P<release>\d+(?:\.\d+)*)"
    r"(?:(?P<pre_kind>a|b|rc)(?P<pre>\d+))?"
    r"(?:\.post(?P<post>\d+))?"
    r"(?:\.dev(?P<dev>\d+))?"
    r"(?:\+(?P<local>[a-z0-9]+(?:\.[a-z0-9]+)*))?$"
)
_DESCRIBE = re.compile(r"^v(?P<tag>.+)-(?P<distance>\d+)-g(?P<sha>[0-9a-f]+)(?P<dirty>-dirty)?$")


class BadVersion(ValueError):
    pass


def parse(version: str) -> dict[str, Any]:
    """The parts of a PEP 440 version of the forms Berth uses; raises BadVersion."""
    m = _PEP440.match(version.strip().lower())
    if m is None:
        raise BadVersion(f"not a version Berth understands: {version!r}")
    return m.groupdict()


def sort_key(version: str) -> tuple[Any, ...]:
    """Orders versions the way PEP 440 does: 1.0.dev1 < 1.0rc1.dev1 < 1.0rc1 < 1.0 < 1.0.post1."""
    p = parse(version)
    release = tuple(int(x) for x in p["release"].split("."))
    release += (0,) * (3 - len(release))
    pre_rank = {"a": 0, "b": 1, "rc": 2}
    if p["pre_kind"] is not None:
        pre: tuple[int, int] = (pre_rank[p["pre_kind"]], int(p["pre"]))
    elif p["dev"] is not None and p["post"] is None:
        pre = (-1, 0)  # X.devN comes before X's pre-releases
    else:
        pre = (3, 0)  # a final release (or a post-release) comes after them
    post = int(p["post"]) if p["post"] is not None else -1
    dev = int(p["dev"]) if p["dev"] is not None else sys.maxsize
    local = tuple(p["local"].split(".")) if p["local"] else ()
    return (release, pre, post, dev, local)


def _next_after(tag: str) -> str:
    """The release a commit after tag `tag` leads to: NEXT_RELEASE when it is later than the
    tag, else the next pre-release (after 1.0rc1, 1.0rc2) or the next minor release."""
    if sort_key(NEXT_RELEASE) > sort_key(tag):
        return NEXT_RELEASE
    p = parse(tag)
    if p["pre_kind"] is not None:
        return f"{p['release']}{p['pre_kind']}{int(p['pre']) + 1}"
    parts = [int(x) for x in p["release"].split(".")] + [0, 0]
    return f"{parts[0]}.{parts[1] + 1}.0"


def from_describe(describe: str) -> str:
    """The version of `git describe --tags --long --dirty` output (`v0.1.0-5-gabc123`)."""
    m = _DESCRIBE.match(describe.strip())
    if m is None:
        raise BadVersion(f"unexpected git describe output {describe!r}")
    tag, distance, sha = m.group("tag"), int(m.group("distance")), m.group("sha")
    parse(tag)  # a tag that is not a version is an error, not a guess
    dirty = bool(m.group("dirty"))
    if distance == 0:
        return f"{tag}+dirty" if dirty else tag
    local = f"g{sha}" + (".dirty" if dirty else "")
    return f"{_next_after(tag)}.dev{distance}+{local}"


def untagged(count: int, sha: str, dirty: bool) -> str:
    """The version of commit `sha`, the `count`-th, when no release tag exists yet."""
    local = f"g{sha}" + (".dirty" if dirty else "")
    return f"{NEXT_RELEASE}.dev{count}+{local}"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(  # noqa: S603
            ["git", "-c", f"safe.directory={SOURCE_ROOT}", "-C", str(SOURCE_ROOT), *args],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def from_git() -> tuple[str, str] | None:
    """(version, commit) of the git checkout this package lives in, or None."""
    if not (SOURCE_ROOT / ".git").exists():  # a directory, or a worktree's file
        return None
    commit = _git("rev-parse", "--short=12", "HEAD")
    if commit is None:
        return None
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    described = _git("describe", "--tags", "--long", "--dirty", "--abbrev=12", "--match", "v[0-9]*")
    if described:
        try:
            return from_describe(described), commit + ("-dirty" if dirty else "")
        except BadVersion:
            pass
    count = _git("rev-list", "--count", "HEAD")
    version = untagged(int(count or 0), commit, dirty)
    return version, commit + ("-dirty" if dirty else "")


def _bundled() -> dict[str, Any] | None:
    base = getattr(sys, "_MEIPASS", None)  # set by the single executable's bootloader
    if base and (Path(base) / "buildinfo.json").is_file():
        info: dict[str, Any] = json.loads((Path(base) / "buildinfo.json").read_text())
        return info
    return None


@functools.cache
def identity() -> tuple[str, str]:
    """(version, commit) of this Berth: see the module's docstring for where they come from."""
    bundled = _bundled()
    if bundled is not None:
        return str(bundled["version"]), str(bundled.get("commit", "unknown"))
    if STAMP.is_file():
        stamp = json.loads(STAMP.read_text())
        return str(stamp["version"]), str(stamp.get("commit", "unknown"))
    found = from_git()
    if found is not None:
        return found
    return f"{NEXT_RELEASE}.dev0", "unknown"


def version() -> str:
    return identity()[0]


def stamp() -> dict[str, str]:
    """What a build writes into `appliance/_stamp.json` of the copy it builds."""
    version, commit = identity()
    return {"version": version, "commit": commit}


# -- Debian and RPM ------------------------------------------------------------------------


def debian(version: str) -> str:
    """The Debian upstream version: pre-releases and dev builds sort before the release (~).

    0.2.0.dev5+gabc -> 0.2.0~dev5+gabc; 0.2.0rc1 -> 0.2.0~rc1; 0.2.0rc1.dev2 -> 0.2.0~rc1~dev2;
    0.2.0.post1 -> 0.2.0.post1 (after 0.2.0, as in PEP 440).
    """
    p = parse(version)
    out = str(p["release"])
    if p["pre_kind"]:
        out += f"~{p['pre_kind']}{p['pre']}"
    if p["post"] is not None:
        out += f".post{p['post']}"
    if p["dev"] is not None:
        out += f"~dev{p['dev']}"
    if p["local"]:
        out += f"+{p['local']}"
    return out


def rpm(version: str) -> str:
    """The RPM Version: the same as Debian's (rpm >= 4.10 sorts `~` first, `+` separates)."""
    return debian(version)
