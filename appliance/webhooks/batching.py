"""Pull events: noted in memory on the hot path, queued in the database in batches.

A pull is the one registry change that writes nothing, so its webhook event must not cost the
pull a write: the serving process gathers pull events and queues them about once a second
(`metadata/events.py` writes the queue's rows).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import trio

from appliance.errors import BerthError
from appliance.metadata.changes import WEBHOOKS
from appliance.metadata.db import Database
from appliance.metadata.events import event_payload, queue
from appliance.webhooks import records

log = logging.getLogger("berth.webhooks")


class PullEvents:
    """Pull events noted in memory on the hot path and queued in one write per `flush`.

    `note` costs a list append and never touches the database; the serving process flushes
    every second or so (`run`). Events are noted only while some endpoint wants pulls
    (`wanted`, read again by the flusher when the `webhooks` change stamp moved: within a
    second of an endpoint's change on any host), so a registry without webhooks pays nothing.
    A process that dies loses at most its last second of pull events.
    """

    def __init__(self, db: Database, *, limit: int = 10_000) -> None:
        self.db = db
        self.limit = limit
        self.wanted = False
        self.dropped = 0
        self._pending: list[tuple[float, str, str, dict[str, Any]]] = []

    def note(
        self,
        *,
        repository: str,
        digest: str,
        tag: str | None,
        media_type: str,
        size: int,
        actor: str | None,
    ) -> None:
        if not self.wanted:
            return
        if len(self._pending) >= self.limit:
            self.dropped += 1
            return
        now = time.time()
        payload = event_payload(
            "pull",
            repository=repository,
            digest=digest,
            tag=tag,
            media_type=media_type,
            size=size,
            actor=actor,
            at=now,
        )
        self._pending.append((now, "pull", repository, payload))

    async def flush(self) -> int:
        """Queue what was noted, in one transaction; returns how many events."""
        batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            await self.db.write(lambda tx: queue(tx, batch))
        except BaseException:
            self._pending[:0] = batch[: self.limit]  # try again at the next flush
            raise
        return len(batch)

    async def refresh(self, config_wants_pulls: bool) -> None:
        """Whether any endpoint wants pull events."""
        self.wanted = config_wants_pulls or await self.db.read(records.namespace_pulls)

    async def run(self, config_wants_pulls: bool, interval: float = 1.0) -> None:
        """Flush every `interval` seconds until cancelled (then flush once more)."""
        seen: int | None = None  # the `webhooks` stamp `wanted` was read under
        try:
            while True:
                stamp = self.db.changes.stamp(WEBHOOKS)
                if stamp != seen:
                    try:
                        await self.refresh(config_wants_pulls)
                        seen = stamp
                    except BerthError as e:
                        log.warning("cannot read webhook endpoints: %s", e.message)
                try:
                    await self.flush()
                except BerthError as e:
                    log.warning("cannot queue pull events: %s", e.message)
                await trio.sleep(interval)
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(BerthError):
                await self.flush()
