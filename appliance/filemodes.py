"""Who may read Berth's data on the host: private modes for what it creates, and tightening an
install made with looser ones.

The data directory holds password hashes, webhook secrets, signing keys and private images:
nobody but the service (and its group) may read any of it. `berth serve` runs with a umask that
takes at least `PRIVATE_UMASK` away (directories 0750, files 0640 at most; the systemd unit
sets the same), creates the data directory 0700, and at start tightens the places that govern
access, the data directory, the storage root, the SQLite files, the keys, the server secret and
the log directory, when an older install left them open to other users. A directory closed to
others closes everything below it, so this is cheap however many blobs there are;
`berth ctl doctor --fix` also tightens every file and directory below them.

Only permission bits are removed (other users' access, the group's write), never added, and
symbolic links are not followed.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.config import Config

log = logging.getLogger("berth")

PRIVATE_UMASK = 0o027  # no access for other users, no writing for the group
LOOSE = 0o027  # the bits a private path must not have
DATA_DIR_MODE = 0o700


@dataclass(frozen=True)
class Change:
    path: Path
    before: int
    after: int

    def line(self) -> str:
        return f"{self.path}: {self.before:04o} -> {self.after:04o}"


def restrict_umask() -> int:
    """Take at least PRIVATE_UMASK away from every file this process creates (a stricter
    umask, as systemd's UMask=0077, is kept). Returns the previous umask."""
    previous = os.umask(0)
    os.umask(previous | PRIVATE_UMASK)
    return previous


def private_paths(config: Config) -> list[Path]:
    """The places whose modes decide who can read Berth's data (those that exist)."""
    from appliance.omnibus.checks import log_dir  # noqa: PLC0415 (omnibus imports this module)

    data = config.data_dir
    places = [data, config.secret_path, data / "keys", *sorted((data / "keys").glob("*.pem"))]
    if config["storage.backend"] == "filesystem":
        places.append(config.storage_root)
    url = config.metadata_url
    if url.startswith("sqlite:///"):
        database = Path(url.removeprefix("sqlite://"))
        places += [database, *sorted(database.parent.glob(database.name + "-*"))]
    places.append(log_dir(config))
    seen: dict[Path, None] = {}
    for place in places:
        if place.exists() and not place.is_symlink():
            seen.setdefault(place, None)
    return list(seen)


def _below(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        yield path
        if path.is_dir() and not path.is_symlink():
            for folder, dirs, files in os.walk(path):  # os.walk does not follow links
                for name in [*dirs, *files]:
                    yield Path(folder) / name


def loose(paths: Iterable[Path], *, deep: bool = False) -> list[Change]:
    """The paths (and with `deep`, everything below them) other users can reach, with the
    mode each should have."""
    out = []
    for path in _below(paths) if deep else paths:
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
        except OSError:
            continue  # gone meanwhile
        if stat.S_ISLNK(path.lstat().st_mode) or not mode & LOOSE:
            continue
        out.append(Change(path, mode, mode & ~LOOSE))
    return out


def _chmod_no_follow(path: Path, mode: int) -> None:
    """chmod without following a symbolic link. glibc does that through /proc; where /proc is
    not mounted (a chroot, a bare container) Python raises NotImplementedError, and the path,
    already seen by `loose` not to be a link, is changed by name (re-checked just before)."""
    try:
        os.chmod(path, mode, follow_symlinks=False)
    except NotImplementedError:
        if stat.S_ISLNK(path.lstat().st_mode):
            return  # became a link meanwhile: not ours to change
        os.chmod(path, mode)


def tighten(paths: Iterable[Path], *, deep: bool = False) -> tuple[list[Change], list[str]]:
    """Remove other users' access (and the group's write) from `paths` (with `deep`, from
    everything below them too). Returns what changed and what could not be changed."""
    changed, failed = [], []
    for change in loose(paths, deep=deep):
        try:
            _chmod_no_follow(change.path, change.after)
        except OSError as e:
            failed.append(f"{change.path}: {e.strerror or 'cannot change its mode'}")
            continue
        changed.append(change)
    return changed, failed


def prepare(config: Config) -> None:
    """At `berth serve` start: the umask, the data directory (made 0700), and the places that
    govern access tightened, each change logged."""
    restrict_umask()
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=DATA_DIR_MODE)
    changed, failed = tighten(private_paths(config))
    for change in changed:
        log.warning("tightened %s: other users could read it", change.line())
    for problem in failed:
        log.warning("cannot tighten %s (run `berth ctl doctor --fix` as its owner)", problem)


__all__ = ["Change", "loose", "prepare", "private_paths", "restrict_umask", "tighten"]
