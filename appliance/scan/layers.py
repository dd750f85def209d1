"""Read the installed packages of an image from its layers in one streaming pass each.

A layer is a tar archive, compressed with gzip or zstd or not at all (told by its first bytes,
not by the media type, which clients get wrong). Layers are read in order, member by member,
through `tarfile`'s stream mode: nothing is seeked and no layer is held in memory. Only the
files that package databases live in are kept (each up to `MAX_DB_FILE` bytes; the SQLite
rpmdb goes to a temporary file, because SQLite needs a path), and executables are searched
for Go build info as they stream past.

Whiteouts follow the OCI image-layer spec: `.wh.<name>` removes `<name>` (and everything
below it) from the layers underneath; `.wh..wh..opq` removes everything the layers underneath
had in its directory. A file in an upper layer replaces the same path underneath.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import zstandard

from appliance.errors import BerthError
from appliance.scan import packages as pk
from appliance.scan.packages import OsRelease, Package, PackageDbError

MAX_DB_FILE = 256 << 20
GO_SCAN_LIMIT = 512 << 20  # an executable larger than this is not searched for build info
GO_HEADER_BYTES = 1 << 20  # build info kept after the magic (version and module list)
_CHUNK = 1 << 20

_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_NPM = re.compile(r"(?:^|/)node_modules/(?:@[^/]+/)?[^/@][^/]*/package\.json$")
_RPMDB = ("var/lib/rpm/rpmdb.sqlite", "usr/lib/sysimage/rpm/rpmdb.sqlite")
_OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class LayerError(BerthError):
    """A layer could not be read: not a tar archive, a corrupt compression stream, a package
    database that does not parse."""


@dataclass
class ImageContents:
    """What the layers hold, after whiteouts: packages by the file that listed them."""

    os: OsRelease = field(default_factory=OsRelease)
    found: dict[str, list[Package]] = field(default_factory=dict)
    os_path: str = ""
    layer_bytes: int = 0

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
    """The uncompressed tar stream of a layer: gzip, zstd or plain, by its magic bytes."""
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


def _read_member(source: IO[bytes], size: int, path: str) -> bytes:
    if size > MAX_DB_FILE:
        raise PackageDbError(f"{path} is {size} bytes, more than Berth reads ({MAX_DB_FILE})")
    return source.read(size)


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


def _parse(kind: str, path: str, source: IO[bytes], member: tarfile.TarInfo, os_id: str) -> Any:
    if kind == "exec":
        return _go_info(source, path)
    if kind == "rpm":
        if member.size > MAX_DB_FILE:
            raise PackageDbError(f"{path} is larger than {MAX_DB_FILE} bytes")
        with tempfile.TemporaryDirectory(prefix="berth-rpmdb-") as tmp:
            target = Path(tmp) / "rpmdb.sqlite"
            with target.open("wb") as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
            return pk.read_rpmdb_sqlite(target, path)
    data = _read_member(source, member.size, path)
    if kind == "os":
        return pk.read_os_release(data)
    if kind == "dpkg":
        return pk.read_dpkg_status(data, path, os_id)
    if kind == "apk":
        return pk.read_apk_installed(data, path)
    if kind == "python":
        return pk.read_python_metadata(data, path)
    return pk.read_npm_package(data, path)


def _remove(found: dict[str, list[Package]], target: str, below_only: bool = False) -> None:
    prefix = target + "/" if target else ""
    for path in [p for p in found if p.startswith(prefix) or (not below_only and p == target)]:
        del found[path]


def walk_layer(contents: ImageContents, raw: BinaryIO, label: str) -> None:
    """Apply one layer (the next one up) to `contents`. Raises LayerError."""
    added: dict[str, list[Package]] = {}
    whiteouts: list[str] = []
    opaque: list[str] = []
    replaced: set[str] = set()
    try:
        with tarfile.open(fileobj=decompressed(raw), mode="r|") as tar:
            for member in tar:
                path = _normalize(member.name)
                directory, _, base = path.rpartition("/")
                if base == OPAQUE:
                    opaque.append(directory)
                    continue
                if base.startswith(WHITEOUT):
                    whiteouts.append(f"{directory}/{base[len(WHITEOUT) :]}".lstrip("/"))
                    continue
                if not member.isreg():
                    if path in contents.found:
                        replaced.add(path)
                    continue
                if path in contents.found:
                    replaced.add(path)
                kind = kind_of(path, member)
                if kind is None:
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                parsed = _parse(kind, path, source, member, contents.os.id)
                if isinstance(parsed, OsRelease):
                    if path == "etc/os-release" or contents.os_path != "etc/os-release":
                        contents.os, contents.os_path = parsed, path
                elif isinstance(parsed, list) and (parsed or kind != "exec"):
                    added[path] = parsed
    except PackageDbError as e:
        raise LayerError(f"layer {label}: {e.message}") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error, zstandard.ZstdError) as e:
        raise LayerError(f"layer {label} is not a readable tar archive: {e}") from None
    for directory in opaque:
        _remove(contents.found, directory, below_only=True)
    for target in whiteouts:
        _remove(contents.found, target)
    for path in replaced:
        contents.found.pop(path, None)
    contents.found.update(added)


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


def read_image(layers: Iterable[tuple[str, Callable[[], BinaryIO]]]) -> ImageContents:
    """Walk every layer, bottom first: (label, opener) pairs. Raises LayerError (blocking)."""
    contents = ImageContents()
    for label, opener in layers:
        counting = CountingReader(opener())
        try:
            walk_layer(contents, counting, label)  # type: ignore[arg-type]
        finally:
            contents.layer_bytes += counting.count
            counting.source.close()
    return contents


__all__ = ["ImageContents", "LayerError", "OsRelease", "Package", "read_image"]
