"""What a registry write sets off, assembled once: the features registered on the metadata
store's write hook (`WriteEffects`, metadata/store.py) wherever the registry is opened.

    ops/events.py     Recorded       an audit row and a webhook event per change
    scan/records.py   ScanQueueing   a pushed image joins the scan queue

The store imports none of them; every process that writes manifests (the server, `berth
import`) registers the same list, so a push records the same things whoever makes it.
"""

from __future__ import annotations

from appliance.metadata.store import WriteEffects
from appliance.ops.events import Recorded
from appliance.scan.records import ScanQueueing


def write_effects() -> list[WriteEffects]:
    """The effects of a registry write, in the order they run in its transaction."""
    return [Recorded(), ScanQueueing()]
