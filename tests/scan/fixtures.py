"""Layers and advisory files for the scanning tests, written here byte by byte.

Package databases are in their real formats (dpkg status stanzas, apk's `installed`, core
metadata, package.json, a Go 1.18+ build info blob inside an ELF file); OSV records follow
the published OSV schema.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from typing import Any

import zstandard

DPKG_STATUS = b"""\
Package: libssl3
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 6105
Maintainer: Debian OpenSSL Team <pkg-openssl-devel@alioth-lists.debian.net>
Architecture: amd64
Multi-Arch: same
Source: openssl
Version: 3.0.11-1~deb12u2
Depends: libc6 (>= 2.34)
Description: Secure Sockets Layer toolkit - shared libraries
 This package is part of the OpenSSL project's implementation of the SSL
 and TLS cryptographic protocols for secure communication over the
 Internet.

Package: zlib1g
Status: install ok installed
Architecture: amd64
Source: zlib (1:1.2.13.dfsg-1)
Version: 1:1.2.13.dfsg-1
Description: compression library - runtime

Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u3
Description: GNU C Library: Shared libraries

Package: oldpkg
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
Description: removed, only its configuration files are left
"""

OS_RELEASE_DEBIAN = b"""\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
"""

OS_RELEASE_ALPINE = b"""\
NAME="Alpine Linux"
ID=alpine
VERSION_ID=3.19.1
PRETTY_NAME="Alpine Linux v3.19"
"""

APK_INSTALLED = b"""\
C:Q1abc=
P:musl
V:1.2.4_git20230717-r4
A:x86_64
S:407314
I:667648
T:the musl c library (libc) implementation
o:musl
m:Timo Teras <timo.teras@iki.fi>

C:Q1def=
P:libcrypto3
V:3.1.4-r5
A:x86_64
o:openssl
T:Crypto library from openssl

"""

PY_METADATA = b"""\
Metadata-Version: 2.1
Name: Requests
Version: 2.31.0
Summary: Python HTTP for Humans.

Long description here: Name: not-a-header
"""

PY_METADATA_URLLIB3 = b"Metadata-Version: 2.1\nName: urllib3\nVersion: 2.0.6\n"


def npm_package(name: str, version: str) -> bytes:
    return json.dumps({"name": name, "version": version, "license": "MIT"}).encode()


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def go_binary(go_version: str, main: str, deps: list[tuple[str, str]]) -> bytes:
    """An ELF file carrying Go 1.18+ build info (the inline-string layout) among padding."""
    lines = [f"path\t{main}", f"mod\t{main}\t(devel)\t"]
    lines += [f"dep\t{path}\t{version}\th1:xyz=" for path, version in deps]
    modinfo = ("\n".join(lines) + "\n").encode()
    # The runtime wraps the module info in two 16-byte sentinels.
    sentinel_start = bytes.fromhex("3077af0c9274080241e1c107e6d618e6")
    sentinel_end = bytes.fromhex("f932433186182072008242104116d8f2")
    modinfo = sentinel_start + modinfo + sentinel_end
    version = go_version.encode()
    header = b"\xff Go buildinf:" + bytes([8, 0x2]) + b"\0" * 16
    info = header + _uvarint(len(version)) + version + _uvarint(len(modinfo)) + modinfo
    elf = b"\x7fELF" + b"\x02\x01\x01" + b"\0" * 9
    return elf + b"\x90" * (3 << 20) + info + b"\0" * 4096


def tar_bytes(files: dict[str, bytes | None], *, modes: dict[str, int] | None = None) -> bytes:
    """A tar archive of `files` (path → bytes; None: a directory)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.mtime = 1_700_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            info.size = len(data)
            info.mode = (modes or {}).get(path, 0o644)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def gzip_layer(files: dict[str, bytes | None], **kw: Any) -> bytes:
    return gzip.compress(tar_bytes(files, **kw), mtime=0)


def zstd_layer(files: dict[str, bytes | None], **kw: Any) -> bytes:
    return zstandard.ZstdCompressor().compress(tar_bytes(files, **kw))


def osv(
    adv_id: str, ecosystem: str, name: str, events: list[dict[str, str]], **extra: Any
) -> dict[str, Any]:
    """An OSV record (schema 1.6) affecting one package."""
    return {
        "schema_version": "1.6.0",
        "id": adv_id,
        "modified": "2024-01-02T03:04:05Z",
        "published": "2024-01-01T00:00:00Z",
        "summary": f"{adv_id} in {name}",
        "affected": [
            {
                "package": {"ecosystem": ecosystem, "name": name},
                "ranges": [{"type": "ECOSYSTEM", "events": events}],
            }
        ],
        **extra,
    }


CRITICAL = [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]
MEDIUM = [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:H/PR:N/UI:R/S:U/C:L/I:L/A:N"}]


# -- hostile layers ------------------------------------------------------------------------


def dpkg_flood_status(packages: int = 100_000) -> bytes:
    """A dpkg status of `packages` installed packages (100k: about 7 MiB)."""
    return b"".join(
        b"Package: flood-%06d\nStatus: install ok installed\nVersion: 1.0-%d\n\n" % (i, i)
        for i in range(packages)
    )


def dpkg_flood_layer(packages: int = 100_000) -> bytes:
    """A gzip layer of about 540 KiB holding `dpkg_flood_status`."""
    return gzip_layer(
        {"etc/os-release": OS_RELEASE_DEBIAN, "var/lib/dpkg/status": dpkg_flood_status(packages)}
    )


def zip_bomb_layer(expanded_mib: int) -> bytes:
    """A gzip layer whose one file is `expanded_mib` MiB of zeros, about a thousand times the
    layer's size: one gzip member of a MiB of zeros, repeated (gzip readers read concatenated
    members as one stream), between the members of the tar header and of its end."""
    header = tarfile.TarInfo("var/cache/zeros")
    header.size = expanded_mib << 20
    header.mtime = 1_700_000_000
    zeros = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    return (
        gzip.compress(header.tobuf(format=tarfile.PAX_FORMAT), mtime=0)
        + zeros * expanded_mib
        + gzip.compress(bytes(1024), mtime=0)  # the end of the archive
    )
