"""Read the installed packages of an image from its layers in one streaming pass each, within
bounds.

A layer is a tar archive, compressed with gzip or zstd or not at all (told by its first bytes,
not by the media type, which clients get wrong). Layers are read in order, member by member,
through `tarfile`'s stream mode: nothing is seeked, no layer is held in memory, and the
members already read are forgotten (tarfile would otherwise keep every header of the archive).
Package databases are parsed as they stream past, one package at a time (the SQLite rpmdb goes
to a temporary file first, because SQLite needs a path), and executables are searched for Go
build info.

Every layer is hostile until bounded (`Limits`): the bytes it decompresses to, the files it
holds, the size of each package database, the packages of the image, and a deadline. A bound
reached cuts the layer there: what was read of it counts, the next layer is read as usual, and
`ImageContents.cuts` says which bound cut what. The scan is then incomplete, not an error: only
an archive that cannot be read at all, or a database that does not parse, is one.

Whiteouts follow the OCI image-layer spec: `.wh.<name>` removes `<name>` (and everything
below it) from the layers underneath; `.wh..wh..opq` removes everything the layers underneath
had in its directory. A file in an upper layer replaces the same path underneath. They are
applied to the layers underneath as they are met (a sorted index finds what they remove), so
a layer of many whiteouts costs neither memory nor a pass over every package per whiteout.
"""

from __future__ import annotations

import bisect
import contextlib
import gzip
import io
import re
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import zstandard

from appliance.errors import BerthError
from appliance.scan import packages as pk
from appliance.scan.packages import OsRelease, Package, PackageDbError

GO_SCAN_LIMIT = 512 << 20  # an executable larger than this is not searched for build info
GO_HEADER_BYTES = 1 << 20  # build info kept after the magic (version and module list)
WHOLE_FILE_LIMIT = 1 << 20  # files parsed whole (package.json, os-release)
HEADER_EXTENSION_LIMIT = 1 << 20  # a pax header or GNU long name, read whole by tarfile
_CHUNK = 1 << 20

_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_NPM = re.compile(r"(?:^|/)node_modules/(?:@[^/]+/)?[^/@][^/]*/package\.json$")
_RPMDB = ("var/lib/rpm/rpmdb.sqlite", "usr/lib/sysimage/rpm/rpmdb.sqlite")
_OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
_STREAMED = frozenset({"dpkg", "apk", "rpm"})  # databases bounded by `Limits.db_bytes`
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class LayerError(BerthError):
    """A layer could not be read: not a tar archive, a corrupt compression stream, a package
    database that does not parse."""


def size_text(n: int) -> str:
    """`n` bytes for a message: 8 GiB, 256 MiB, 512 KiB, 100 bytes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class Limits:
    """How much of an image a scan reads. The defaults are the settings' (`scan.*`)."""

    layer_bytes: int = 8 << 30  # decompressed bytes per layer
    layer_files: int = 1_000_000  # tar members per layer
    db_bytes: int = 256 << 20  # one package database file
    packages: int = 10_000  # packages of the image
    deadline: float | None = None  # time.monotonic() after which the layer being read is cut

    def as_json(self) -> dict[str, Any]:
        return {
            "layer_bytes": self.layer_bytes,
            "layer_files": self.layer_files,
            "db_bytes": self.db_bytes,
            "packages": self.packages,
        }


class Cut(Exception):
    """A bound was reached: the layer being read stops here. Not a BerthError, and no
    OSError or TarError, so that nothing between the reader and the walker swallows it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ImageContents:
    """What the layers hold, after whiteouts: packages by the file that listed them, and the
    bounds that cut the reading (empty: the image was read whole)."""

    os: OsRelease = field(default_factory=OsRelease)
    found: dict[str, list[Package]] = field(default_factory=dict)
    os_path: str = ""
    layer_bytes: int = 0
    cuts: list[str] = field(default_factory=list)
    held: int = 0  # packages in `found`

    def packages(self) -> list[Package]:
        out = [p for path in sorted(self.found) for p in self.found[path]]
        distro = self.os.id
        if distro:
            out = [
                Package(
                    p.type,
                    p.name,
                    p.version,
                    p.path,
                    namespace=distro if p.type in ("deb", "rpm") else p.namespace,
                    source=p.source,
                    source_version=p.source_version,
                    arch=p.arch,
                    qualifiers=p.qualifiers,
                )
                for p in out
            ]
        return out

    def drop(self, path: str) -> None:
        gone = self.found.pop(path, None)
        if gone is not None:
            self.held -= len(gone)


def kind_of(path: str, member: tarfile.TarInfo) -> str | None:
    """Which reader a member needs, or None to let it stream past."""
    if path == "var/lib/dpkg/status":
        return "dpkg"
    if path.startswith("var/lib/dpkg/status.d/"):
        rest = path[len("var/lib/dpkg/status.d/") :]
        return "dpkg" if "/" not in rest and "." not in rest else None
    if path == "lib/apk/db/installed":
        return "apk"
    if path in _RPMDB:
        return "rpm"
    if path in _OS_RELEASE:
        return "os"
    if path.endswith((".dist-info/METADATA", ".egg-info/PKG-INFO")):
        return "python"
    if path.endswith("/package.json") and _NPM.search(path):
        return "npm"
    if member.mode & 0o111 and member.size >= 1024:
        return "exec"
    return None


def _shown(path: str) -> str:
    """A path as a report quotes it: an archive's names can be up to a MiB long."""
    return path if len(path) <= 200 else path[:200] + "…"


def _normalize(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


class _Peekable(io.RawIOBase):
    """The raw stream with its first bytes put back, so the compression can be sniffed."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def decompressed(raw: BinaryIO) -> BinaryIO:
    """The uncompressed tar stream of a layer: gzip, zstd or plain, by its magic bytes. Each
    read decompresses only as much as asked for, so a small layer that expands enormously
    costs time, not memory."""
    head = b""
    while len(head) < 4:
        more = raw.read(4 - len(head))
        if not more:
            break
        head += more
    stream = io.BufferedReader(_Peekable(head, raw), _CHUNK)
    if head.startswith(_GZIP):
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if head.startswith(_ZSTD):
        return zstandard.ZstdDecompressor().stream_reader(stream, read_size=_CHUNK)
    return stream


class _Bounded:
    """The decompressed stream of one layer, cut (`Cut`) past `limits.layer_bytes` or the
    deadline."""

    def __init__(self, source: BinaryIO, limits: Limits) -> None:
        self.source = source
        self.limits = limits
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        deadline = self.limits.deadline
        if deadline is not None and time.monotonic() > deadline:
            raise Cut("the scan ran out of time (scan.timeout)")
        data = self.source.read(_CHUNK if n < 0 else n)
        self.count += len(data)
        if self.count > self.limits.layer_bytes:
            raise Cut(
                f"decompresses to more than {size_text(self.limits.layer_bytes)} "
                "(scan.max_layer_bytes)"
            )
        return data


_EXTENSIONS = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
    | {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)


class _Header(tarfile.TarInfo):
    """A tar header whose extensions (pax records, GNU long names) are refused past
    `HEADER_EXTENSION_LIMIT`: tarfile reads each of them into memory whole."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENSIONS and self.size > HEADER_EXTENSION_LIMIT:
            raise Cut(
                f"a tar header extension of {size_text(self.size)} (more than "
                f"{size_text(HEADER_EXTENSION_LIMIT)})"
            )
        processed: tarfile.TarInfo = super()._proc_member(archive)  # type: ignore[misc]
        return processed


def _go_info(source: IO[bytes], path: str) -> list[Package]:
    """Search an executable's bytes for Go build info, chunk by chunk."""
    magic = pk.GO_BUILDINFO_MAGIC
    first = source.read(4)
    if first != b"\x7fELF":
        return []
    tail = b""
    read = 4
    while read < GO_SCAN_LIMIT:
        chunk = source.read(_CHUNK)
        if not chunk:
            return []
        read += len(chunk)
        window = tail + chunk
        at = window.find(magic)
        if at >= 0:
            header = window[at:]
            while len(header) < GO_HEADER_BYTES:
                more = source.read(GO_HEADER_BYTES - len(header))
                if not more:
                    break
                header += more
            return pk.parse_go_buildinfo(header, path)
        tail = window[-(len(magic) - 1) :]
    return []


def _packages(kind: str, path: str, source: IO[bytes], os_id: str) -> Generator[Package]:
    """The packages one file lists, as they are read."""
    if kind == "exec":
        yield from _go_info(source, path)
    elif kind == "rpm":
        with tempfile.TemporaryDirectory(prefix="berth-rpmdb-") as tmp:
            target = Path(tmp) / "rpmdb.sqlite"
            with target.open("wb") as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
            yield from pk.read_rpmdb_sqlite(target, path)
    elif kind == "dpkg":
        yield from pk.read_dpkg_status(source, path, os_id)
    elif kind == "apk":
        yield from pk.read_apk_installed(source, path)
    elif kind == "python":
        yield from pk.read_python_metadata(source, path)
    else:
        yield from pk.read_npm_package(source.read(WHOLE_FILE_LIMIT), path)


class _Index:
    """The paths of the layers underneath, sorted, to find what a whiteout removes."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = sorted(paths)

    def below(self, directory: str) -> list[str]:
        """Paths strictly below `directory` ("" is the root)."""
        if not directory:
            return list(self.paths)
        low = bisect.bisect_left(self.paths, directory + "/")
        high = bisect.bisect_left(self.paths, directory + "0")  # "0" follows "/" in ASCII
        return self.paths[low:high]


class _Layer:
    """The walk of one layer: packages it adds (by file), applied on top when it ends."""

    def __init__(self, contents: ImageContents, limits: Limits) -> None:
        self.contents = contents
        self.limits = limits
        self.index = _Index(contents.found)
        self.added: dict[str, list[Package]] = {}
        self.adding = 0  # packages in `added`
        self.files = 0

    def whiteout(self, target: str) -> None:
        self.contents.drop(target)
        for path in self.index.below(target):
            self.contents.drop(path)

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.files += 1
        if self.files > self.limits.layer_files:
            raise Cut(f"holds more than {self.limits.layer_files} files (scan.max_layer_files)")
        path = _normalize(member.name)
        directory, _, base = path.rpartition("/")
        if base == OPAQUE:
            for below in self.index.below(directory):
                self.contents.drop(below)
            return
        if base.startswith(WHITEOUT):
            self.whiteout(f"{directory}/{base[len(WHITEOUT) :]}".lstrip("/"))
            return
        self.contents.drop(path)  # this layer's file (or directory) replaces the one beneath
        self._forget(path)  # and a later member of the same path replaces an earlier one
        if not member.isreg():
            return
        kind = kind_of(path, member)
        if kind is None:
            return
        if kind in _STREAMED and member.size > self.limits.db_bytes:
            self.contents.cuts.append(
                f"{_shown(path)} is {size_text(member.size)}, more than "
                f"{size_text(self.limits.db_bytes)} (scan.max_db_bytes): not read"
            )
            return
        if kind in ("os", "npm") and member.size > WHOLE_FILE_LIMIT:
            self.contents.cuts.append(
                f"{_shown(path)} is {size_text(member.size)}, more than "
                f"{size_text(WHOLE_FILE_LIMIT)}: not read"
            )
            return
        source = tar.extractfile(member)
        if source is None:
            return
        if kind == "os":
            os = pk.read_os_release(source.read(WHOLE_FILE_LIMIT))
            if path == "etc/os-release" or self.contents.os_path != "etc/os-release":
                self.contents.os, self.contents.os_path = os, path
            return
        listed: list[Package] = []
        try:
            with contextlib.closing(_packages(kind, path, source, self.contents.os.id)) as found:
                for package in found:
                    if self.contents.held + self.adding >= self.limits.packages:
                        raise Cut(
                            f"lists more than {self.limits.packages} packages in the image "
                            f"(scan.max_packages), the last read from {_shown(path)}"
                        )
                    listed.append(package)
                    self.adding += 1
        finally:
            if listed:  # what was read before a cut still counts
                self.added[path] = listed

    def _forget(self, path: str) -> None:
        gone = self.added.pop(path, None)
        if gone is not None:
            self.adding -= len(gone)

    def apply(self) -> None:
        self.contents.found.update(self.added)
        self.contents.held += self.adding


def walk_layer(
    contents: ImageContents, raw: BinaryIO, label: str, limits: Limits | None = None
) -> None:
    """Apply one layer (the next one up) to `contents`. A bound reached cuts the layer where it
    was reached (noted in `contents.cuts`). Raises LayerError."""
    limits = limits or Limits()
    layer = _Layer(contents, limits)
    try:
        stream = cast(IO[bytes], _Bounded(decompressed(raw), limits))  # read() is all it needs
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_Header) as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # type: ignore[attr-defined]  # read once, never looked up
                layer.member(tar, member)
    except Cut as cut:
        contents.cuts.append(f"layer {label}: {cut.reason}")
    except MemoryError:
        contents.cuts.append(f"layer {label}: needed more memory than scan.max_memory allows")
    except PackageDbError as e:
        raise LayerError(f"layer {label}: {e.message}") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error, zstandard.ZstdError) as e:
        raise LayerError(f"layer {label} is not a readable tar archive: {e}") from None
    layer.apply()


class CountingReader(io.RawIOBase):
    """Counts the bytes read through it (the compressed size of a layer)."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.source.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


def read_image(
    layers: Iterable[tuple[str, Callable[[], BinaryIO]]], limits: Limits | None = None
) -> ImageContents:
    """Walk every layer, bottom first: (label, opener) pairs. Raises LayerError (blocking)."""
    contents = ImageContents()
    for label, opener in layers:
        counting = CountingReader(opener())
        try:
            walk_layer(contents, counting, label, limits)  # type: ignore[arg-type]
        finally:
            contents.layer_bytes += counting.count
            counting.source.close()
    return contents


__all__ = ["ImageContents", "LayerError", "Limits", "OsRelease", "Package", "read_image"]
