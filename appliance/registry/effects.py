"""What a registry write sets off, assembled once: the features registered on the metadata
store's write hook (`WriteEffects`, metadata/store.py) wherever the registry is opened.

    metadata/events.py  Recorded       an audit row and a webhook event per change
    scan/records.py     ScanQueueing   a pushed image joins the scan queue

The store imports none of them; every process that writes manifests (the server, `berth
import`) registers the same list, so a push records the same things whoever makes it.
"""

from __future__ import annotations

from appliance.metadata import events
from appliance.metadata.db import Tx
from appliance.metadata.store import Pushed, WriteEffects
from appliance.scan.records import ScanQueueing


class Recorded(WriteEffects):
    """The registry's write hook as audit rows and webhook events (metadata/events.py)."""

    def manifest_pushed(self, tx: Tx, push: Pushed) -> None:
        events.manifest_pushed(
            tx,
            push.repository,
            push.digest,
            push.manifest.media_type,
            push.size,
            push.tag,
            push.moved_from,
        )

    def tag_deleted(self, tx: Tx, repository: str, tag: str, digest: str, *, audited: bool) -> None:
        events.tag_deleted(tx, repository, tag, digest, audited=audited)

    def manifest_deleted(self, tx: Tx, repository: str, digest: str, tags: list[str]) -> None:
        events.manifest_deleted(tx, repository, digest, tags)

    def blob_deleted(self, tx: Tx, repository: str, digest: str) -> None:
        events.blob_deleted(tx, repository, digest)


def write_effects() -> list[WriteEffects]:
    """The effects of a registry write, in the order they run in its transaction."""
    return [Recorded(), ScanQueueing()]
