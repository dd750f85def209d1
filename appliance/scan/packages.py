"""Installed-package databases found in an image's files, read into `Package` records.

Each reader takes one file as a stream (or, for the SQLite rpmdb, a path on disk) and yields
what it lists, one package at a time: a database is never held whole, so its size costs time,
not memory, and the caller can stop reading after as many packages as it allows. Line-based
databases are read a line at a time (each at most `MAX_LINE` bytes) and keep only the fields
Berth uses. Files that must be parsed whole (a package.json, os-release) are read by the
caller up to a size it checked first. No reader does I/O of its own. A file that cannot be
parsed raises `PackageDbError` naming what is wrong, which the layer walker turns into an error
of the scan.
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import IO

from packageurl import PackageURL

from appliance.errors import BerthError

MAX_LINE = 1 << 20  # a longer line is cut here (no field Berth reads comes near it)
MAX_HEADERS = 1 << 20  # bytes of core-metadata headers read (the body is never read)


class PackageDbError(BerthError):
    """A package database in an image could not be read."""


@dataclass(frozen=True)
class OsRelease:
    """What /etc/os-release says of the image's distribution."""

    id: str = ""
    version_id: str = ""
    codename: str = ""
    pretty_name: str = ""

    @property
    def distro(self) -> str:
        """The Package URL `distro` qualifier: `debian-12`, `alpine-3.19.1`."""
        return f"{self.id}-{self.version_id}" if self.id and self.version_id else ""


@dataclass(frozen=True)
class Package:
    """One installed package. `type` is the Package URL type (deb, apk, rpm, pypi, npm,
    golang); `source` the source package it was built from, when the database says."""

    type: str
    name: str
    version: str
    path: str
    namespace: str = ""
    source: str = ""
    source_version: str = ""
    arch: str = ""
    qualifiers: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def purl(self, os: OsRelease | None = None) -> str:
        qualifiers = dict(self.qualifiers)
        if self.arch:
            qualifiers["arch"] = self.arch
        if os is not None and os.distro and self.type in ("deb", "apk", "rpm"):
            qualifiers["distro"] = os.distro
        return PackageURL(
            type=self.type,
            namespace=self.namespace or None,
            name=self.name,
            version=self.version or None,
            qualifiers=qualifiers or None,
        ).to_string()


def lines(stream: IO[bytes], path: str, *, strict: bool = True) -> Iterator[str]:
    """The lines of a text file as UTF-8 strings (without their line ending), one at a time. A
    line longer than `MAX_LINE` bytes is cut there and the rest of it skipped. `strict`: bytes
    that are not UTF-8 raise PackageDbError (else they are replaced)."""
    while line := stream.readline(MAX_LINE):
        if not line.endswith(b"\n"):
            while (more := stream.readline(MAX_LINE)) and not more.endswith(b"\n"):
                pass
        try:
            text = line.decode("utf-8", "strict" if strict else "replace")
        except UnicodeDecodeError as e:
            raise PackageDbError(f"{path}: not UTF-8 text ({e.reason})") from None
        yield text.rstrip("\r\n")


# -- /etc/os-release ------------------------------------------------------------------------


def read_os_release(data: bytes) -> OsRelease:
    values: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key] = value.strip().strip("\"'")
    return OsRelease(
        values.get("ID", "").lower(),
        values.get("VERSION_ID", ""),
        values.get("VERSION_CODENAME", ""),
        values.get("PRETTY_NAME", ""),
    )


# -- dpkg -------------------------------------------------------------------------------------


def _dpkg_source(field: str) -> tuple[str, str]:
    """A dpkg `Source:` field, `name` or `name (version)`, as (name, version or ""). String
    operations, not a backtracking pattern: the field comes from an image (a crafted one took
    a regular expression quadratic time, holding the process)."""
    name, paren, rest = field.partition("(")
    name = name.strip()
    if paren and len(rest) > 1 and rest.endswith(")") and name and len(name.split()) == 1:
        return name, rest[:-1]
    return field, ""


_DPKG_FIELDS = frozenset({"Package", "Version", "Status", "Source", "Architecture"})


def _stanzas(stream: IO[bytes], path: str, fields: frozenset[str]) -> Iterator[dict[str, str]]:
    """RFC 822-style stanzas (dpkg status), one at a time, with only `fields` kept:
    `Field: value` lines; indented continuation lines belong to fields Berth does not read."""
    current: dict[str, str] = {}
    for line in lines(stream, path):
        if not line.strip():
            if current:
                yield current
            current = {}
            continue
        if line[0] in " \t":
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PackageDbError(f"not a control-file line: {line[:80]!r}")
        key = key.strip()
        if key in fields:
            current[key] = value.strip()
    if current:
        yield current


def read_dpkg_status(stream: IO[bytes], path: str, distro_id: str = "debian") -> Iterator[Package]:
    """Packages dpkg lists as installed (`Status: install ok installed`), from
    /var/lib/dpkg/status or one file of status.d/ (distroless images)."""
    for stanza in _stanzas(stream, path, _DPKG_FIELDS):
        name, version = stanza.get("Package"), stanza.get("Version")
        if not name or not version:
            continue
        status = stanza.get("Status", "install ok installed").split()
        if status[-1:] != ["installed"]:
            continue
        source, source_version = _dpkg_source(stanza.get("Source", ""))
        yield Package(
            "deb",
            name,
            version,
            path,
            namespace=distro_id or "debian",
            source=source or name,
            source_version=source_version or version,
            arch=stanza.get("Architecture", ""),
        )


# -- apk --------------------------------------------------------------------------------------


_APK_FIELDS = frozenset("PVAo")


def read_apk_installed(stream: IO[bytes], path: str) -> Iterator[Package]:
    """/lib/apk/db/installed: stanzas of `X:value` lines (P name, V version, A arch,
    o origin)."""
    current: dict[str, str] = {}
    for line in itertools.chain(lines(stream, path, strict=False), [""]):
        if not line:
            if current.get("P") and current.get("V"):
                yield Package(
                    "apk",
                    current["P"],
                    current["V"],
                    path,
                    namespace="alpine",
                    source=current.get("o", current["P"]),
                    source_version=current["V"],
                    arch=current.get("A", ""),
                )
            current = {}
            continue
        if len(line) < 2 or line[1] != ":":
            raise PackageDbError(f"{path}: not an apk database line: {line[:80]!r}")
        if line[0] in _APK_FIELDS:
            current.setdefault(line[0], line[2:])


# -- rpm (SQLite rpmdb) -----------------------------------------------------------------------

_RPMTAG_NAME, _RPMTAG_VERSION, _RPMTAG_RELEASE, _RPMTAG_EPOCH = 1000, 1001, 1002, 1003
_RPMTAG_ARCH, _RPMTAG_SOURCERPM = 1022, 1044
_RPM_INT32, _RPM_STRING, _RPM_I18NSTRING = 4, 6, 9


def parse_rpm_header(blob: bytes) -> dict[int, str | int]:
    """The tags Berth needs from one rpm header blob (as rpmdb stores it: index count, data
    length, 16-byte index entries, then the data store)."""
    if len(blob) < 8:
        raise PackageDbError("rpm header shorter than 8 bytes")
    count, data_len = struct.unpack(">II", blob[:8])
    start = 8 + 16 * count
    if count > 100_000 or start + data_len > len(blob):
        raise PackageDbError("rpm header sizes do not fit the blob")
    store = blob[start : start + data_len]
    wanted = {
        _RPMTAG_NAME,
        _RPMTAG_VERSION,
        _RPMTAG_RELEASE,
        _RPMTAG_EPOCH,
        _RPMTAG_ARCH,
        _RPMTAG_SOURCERPM,
    }
    out: dict[int, str | int] = {}
    for i in range(count):
        tag, kind, offset, _n = struct.unpack(">iIiI", blob[8 + 16 * i : 24 + 16 * i])
        if tag not in wanted or not 0 <= offset < len(store):
            continue
        if kind in (_RPM_STRING, _RPM_I18NSTRING):
            end = store.find(b"\0", offset)
            if end < 0:
                raise PackageDbError(f"rpm header string of tag {tag} is not terminated")
            out[tag] = store[offset:end].decode("utf-8", "replace")
        elif kind == _RPM_INT32 and offset + 4 <= len(store):
            out[tag] = struct.unpack(">i", store[offset : offset + 4])[0]
    return out


def read_rpmdb_sqlite(db_path: Path, path: str) -> Iterator[Package]:
    """Packages of an rpmdb.sqlite (rpm 4.16+): table Packages(hnum, blob), one row at a
    time."""
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise PackageDbError(f"{path}: {e}") from None
    try:
        for (blob,) in conn.execute("SELECT blob FROM Packages"):
            tags = parse_rpm_header(bytes(blob))
            name, version = tags.get(_RPMTAG_NAME), tags.get(_RPMTAG_VERSION)
            if not isinstance(name, str) or not isinstance(version, str):
                continue
            if name == "gpg-pubkey":  # imported signing keys, not software
                continue
            release = tags.get(_RPMTAG_RELEASE)
            epoch = tags.get(_RPMTAG_EPOCH)
            full = f"{version}-{release}" if isinstance(release, str) else version
            qualifiers = {"epoch": str(epoch)} if isinstance(epoch, int) and epoch else {}
            source_rpm = tags.get(_RPMTAG_SOURCERPM)
            source = ""
            if isinstance(source_rpm, str):
                m = re.match(r"^(.+)-[^-]+-[^-]+\.(?:no)?src\.rpm$", source_rpm)
                source = m.group(1) if m else ""
            arch = tags.get(_RPMTAG_ARCH)
            yield Package(
                "rpm",
                name,
                full,
                path,
                source=source or name,
                arch=arch if isinstance(arch, str) else "",
                qualifiers=qualifiers,
            )
    except sqlite3.Error as e:
        raise PackageDbError(f"{path}: not an rpm SQLite database ({e})") from None
    finally:
        conn.close()


# -- Python, npm --------------------------------------------------------------------------------


def read_python_metadata(stream: IO[bytes], path: str) -> list[Package]:
    """`*.dist-info/METADATA` or `*.egg-info/PKG-INFO` (core metadata: email headers; only
    the headers are read, at most `MAX_HEADERS` bytes of them, not the description after)."""
    head = bytearray()
    while len(head) < MAX_HEADERS and (line := stream.readline(MAX_LINE)):
        head += line
        if not line.strip():
            break
    headers = BytesHeaderParser().parsebytes(bytes(head))
    name, version = headers.get("Name"), headers.get("Version")
    if not name or not version:
        raise PackageDbError(f"{path}: no Name or Version header")
    normalized = re.sub(r"[-_.]+", "-", str(name)).lower()
    return [Package("pypi", normalized, str(version).strip(), path)]


def read_npm_package(data: bytes, path: str) -> list[Package]:
    """`node_modules/<name>/package.json` (or `@scope/<name>`)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise PackageDbError(f"{path}: not JSON ({e})") from None
    except RecursionError:
        raise PackageDbError(f"{path}: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise PackageDbError(f"{path}: not a JSON object")
    name, version = doc.get("name"), doc.get("version")
    if not isinstance(name, str) or not isinstance(version, str) or not name:
        return []  # a package.json without a name is not a published package
    scope, _, base = name.rpartition("/")
    return [Package("npm", base, version, path, namespace=scope)]


# -- Go build info ------------------------------------------------------------------------------

GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data):
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            break
    raise PackageDbError("Go build info: bad varint")


def parse_go_buildinfo(header: bytes, path: str) -> list[Package]:
    """Modules from the build info of a Go 1.18+ binary. `header` starts at the build info
    magic and holds enough bytes for both strings (the version and the module list)."""
    if len(header) < 32 or not header.startswith(GO_BUILDINFO_MAGIC):
        return []
    if not header[15] & 0x2:
        return []  # the pointer-based layout of Go before 1.18: not read
    pos = 32
    length, pos = _uvarint(header, pos)
    go_version = header[pos : pos + length].decode("utf-8", "replace")
    pos += length
    length, pos = _uvarint(header, pos)
    if pos + length > len(header):
        raise PackageDbError(f"{path}: Go build info is cut short")
    modinfo = header[pos : pos + length]
    if len(modinfo) >= 33 and modinfo[-17] == ord("\n"):
        modinfo = modinfo[16:-16]
    out: list[Package] = []
    if go_version.startswith("go"):
        out.append(Package("golang", "stdlib", "v" + go_version[2:].split()[0], path))
    replaced: dict[str, tuple[str, str]] = {}
    lines = modinfo.decode("utf-8", "replace").splitlines()
    entries: list[tuple[str, str]] = []
    for i, line in enumerate(lines):
        parts = line.split("\t")
        if parts[0] in ("mod", "dep") and len(parts) >= 3:
            entries.append((parts[1], parts[2]))
            nxt = lines[i + 1].split("\t") if i + 1 < len(lines) else []
            if nxt and nxt[0] == "=>" and len(nxt) >= 3:
                replaced[parts[1]] = (nxt[1], nxt[2])
    for entry in entries:
        module, version = replaced.get(entry[0], entry)
        if version in ("", "(devel)"):
            continue
        namespace, _, name = module.rpartition("/")
        out.append(Package("golang", name, version, path, namespace=namespace))
    return out
