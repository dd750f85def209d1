"""The backup target's tree and the backup manifest.

    <target>/blobs/<algorithm>/<ab>/<hex>        a blob's bytes, shared by every backup that
                                                 references it (so a later backup copies only
                                                 blobs the target does not hold yet)
    <target>/backups/<id>/started                present while the backup runs
    <target>/backups/<id>/metadata.db            the metadata snapshot: a SQLite database,
                                                 whatever the source's dialect
    <target>/backups/<id>/secrets.bin            config, server secret and signing keys
                                                 (sealed with the passphrase when one is set)
    <target>/backups/<id>/manifest.json          every file above with its digest and size;
                                                 written last: a backup without one is
                                                 incomplete
    <target>/backups/<id>/manifest.sha256        the manifest's own digest

Backup ids sort by time: `YYYYMMDDTHHMMSSZ-xxxx` (UTC, then four random hex digits).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from appliance.backup import BackupCorrupt, BackupError
from appliance.oci.digest import Digest

FORMAT = 1
_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{4}$")


def new_id(now: float) -> str:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(2)}"


def check_id(backup_id: str) -> str:
    if not _ID.match(backup_id):
        raise BackupError(f"{backup_id!r} is not a backup id (like 20260102T030000Z-1a2b)")
    return backup_id


def blob_path(digest: str) -> str:
    d = Digest.parse(digest)
    return f"blobs/{d.algorithm}/{d.hex[:2]}/{d.hex}"


def backup_dir(backup_id: str) -> str:
    return f"backups/{check_id(backup_id)}"


def metadata_path(backup_id: str) -> str:
    return f"{backup_dir(backup_id)}/metadata.db"


def secrets_path(backup_id: str) -> str:
    return f"{backup_dir(backup_id)}/secrets.bin"


def manifest_path(backup_id: str) -> str:
    return f"{backup_dir(backup_id)}/manifest.json"


def manifest_digest_path(backup_id: str) -> str:
    return f"{backup_dir(backup_id)}/manifest.sha256"


def started_path(backup_id: str) -> str:
    return f"{backup_dir(backup_id)}/started"


@dataclass(frozen=True)
class FileEntry:
    """One file of a backup: where it is in the target, what it is, its digest and size."""

    path: str
    kind: str  # metadata, secrets or blob
    digest: str
    size: int


@dataclass
class Manifest:
    """What a backup holds. Everything `list` shows about a target comes from here."""

    id: str
    created_at: float
    finished_at: float
    berth_version: str
    schema_version: int
    source_metadata: str
    source_storage: str
    encrypted: bool
    files: list[FileEntry] = field(default_factory=list)
    format: int = FORMAT

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def blobs(self) -> list[FileEntry]:
        return [f for f in self.files if f.kind == "blob"]

    def file(self, kind: str) -> FileEntry:
        for f in self.files:
            if f.kind == kind:
                return f
        raise BackupCorrupt(f"backup {self.id}: the manifest lists no {kind} file")

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "berth_version": self.berth_version,
            "schema_version": self.schema_version,
            "source": {"metadata": self.source_metadata, "storage": self.source_storage},
            "encrypted": self.encrypted,
            "files": len(self.files),
            "blobs": len(self.blobs),
            "size": self.size,
        }

    def to_json(self) -> bytes:
        data = asdict(self)
        return json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, backup_id: str) -> Manifest:
        try:
            data = json.loads(raw)
            version = data.get("format")
        except (ValueError, AttributeError) as e:
            raise BackupCorrupt(f"backup {backup_id}: the manifest is unreadable ({e})") from e
        if version != FORMAT:
            raise BackupError(
                f"backup {backup_id}: manifest format {version!r} is not {FORMAT}; "
                "use the Berth version that wrote it"
            )
        try:
            files = [FileEntry(**f) for f in data.pop("files")]
            manifest = cls(files=files, **data)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise BackupCorrupt(f"backup {backup_id}: the manifest is unreadable ({e})") from e
        if manifest.id != backup_id:
            raise BackupCorrupt(f"backup {backup_id}: the manifest names {manifest.id!r}")
        return manifest


def manifest_digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()
