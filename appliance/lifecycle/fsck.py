"""`berth fsck`: compare what storage holds with what the database says it holds.

The one place that walks storage (through `BlobStore.list_objects`). It reports

* orphans: objects under `blobs/` that no blobs row names (a crash between a commit's bytes
  and its row, or between the collector's row delete and its byte delete), and upload
  folders under `uploads/` with no upload session;
* missing: blobs rows whose bytes are not in storage;
* corrupt: stored bytes whose size or digest differs from their row (digests are checked
  unless `verify` is off: every blob is read once).

`repair` removes orphans older than `gc.delay` (younger ones may be a commit in flight, whose
row is about to be written) and leaves missing and corrupt blobs to the operator: they are
reported with their digest, which a push of the same image restores.

Rows and objects that change while fsck runs are checked again before they are reported, so a
busy registry yields no false alarms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from appliance.errors import BerthError, BlobNotFound
from appliance.lifecycle import records
from appliance.metadata.db import Database, Tx
from appliance.oci.digest import Digest, new_hasher
from appliance.storage import layout
from appliance.storage.base import BlobStore


@dataclass
class FsckReport:
    objects: int = 0
    checked: int = 0
    orphans: list[dict[str, Any]] = field(default_factory=list)
    orphan_uploads: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    corrupt: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept_young: int = 0  # orphans not removed because they are younger than the delay

    @property
    def clean(self) -> bool:
        return not (self.orphans or self.orphan_uploads or self.missing or self.corrupt)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "clean": self.clean}


def _known(tx: Tx) -> tuple[dict[str, tuple[str, int]], set[str]]:
    return records.blob_keys(tx), records.upload_ids(tx)


async def _hash(store: BlobStore, key: str, size: int, algorithm: str) -> Digest:
    hasher = new_hasher(algorithm)
    async for data in store.read(key, 0, size):
        await trio.to_thread.run_sync(hasher.update, data)
    return Digest(algorithm, hasher.hexdigest())


async def fsck(
    db: Database,
    store: BlobStore,
    clock: Callable[[], float],
    *,
    delay: float,
    repair: bool = False,
    verify: bool = True,
) -> FsckReport:
    """Check storage against the database (see the module docstring)."""
    report = FsckReport()
    started = clock()
    keys, uploads = await db.read(_known)
    seen: set[str] = set()
    orphans: list[dict[str, Any]] = []
    async for obj in store.list_objects("blobs/"):
        report.objects += 1
        row = keys.get(obj.key)
        if row is None:
            orphans.append({"key": obj.key, "size": obj.size, "modified": obj.modified})
            continue
        seen.add(obj.key)
        digest, size = row
        report.checked += 1
        if obj.size != size:
            report.corrupt.append(
                {"digest": digest, "key": obj.key, "reason": f"{obj.size} bytes, not {size}"}
            )
            continue
        if verify:
            try:
                expected = Digest.parse(digest)
                actual = await _hash(store, obj.key, size, expected.algorithm)
            except (BlobNotFound, BerthError):
                continue  # deleted meanwhile (the collector): checked again below
            if actual != expected:
                report.corrupt.append(
                    {"digest": digest, "key": obj.key, "reason": f"content is {actual}"}
                )
    upload_folders: dict[str, dict[str, Any]] = {}
    async for obj in store.list_objects("uploads/"):
        report.objects += 1
        upload_id = obj.key.split("/")[1] if obj.key.count("/") >= 2 else ""
        if not layout.is_upload_id(upload_id) or upload_id in uploads:
            continue
        entry = upload_folders.setdefault(upload_id, {"upload": upload_id, "modified": 0.0})
        entry["modified"] = max(entry["modified"], obj.modified)

    # What changed meanwhile is not a fault: look again before reporting.
    keys_now, uploads_now = await db.read(_known)
    report.orphans = [o for o in orphans if o["key"] not in keys_now]
    report.orphan_uploads = [u for u in upload_folders.values() if u["upload"] not in uploads_now]
    report.missing = [
        {"digest": digest, "key": key}
        for key, (digest, _) in keys.items()
        if key not in seen and keys_now.get(key) == keys[key]
    ]
    if repair:
        before = clock() - delay
        for orphan in report.orphans:
            if orphan["modified"] < before and orphan["modified"] < started:
                await store.delete(orphan["key"])
                report.removed.append(orphan["key"])
            else:
                report.kept_young += 1
        for folder in report.orphan_uploads:
            if folder["modified"] < before and folder["modified"] < started:
                await store.delete_upload(folder["upload"])
                report.removed.append(layout.upload_key(folder["upload"]).rsplit("/", 1)[0])
            else:
                report.kept_young += 1
    return report
