"""Last-pull times of tags, gathered in memory and written in batches.

A pull resolves a tag (a manifest GET or HEAD by tag) many times a second on a busy registry;
writing `tags.pulled_at` each time would turn every pull into a write. Each process notes the
time in a dict instead (`seen`, no I/O) and writes what it gathered every `interval` seconds
(`run`), and once more when it stops. Cleanup policies with `time_basis = "pull"` read it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from appliance.errors import BerthError
from appliance.lifecycle import records
from appliance.metadata.db import Database

log = logging.getLogger("berth.pulls")


class PullTracker:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock
        self._seen: dict[tuple[str, str], float] = {}

    def seen(self, repository: str, tag: str) -> None:
        """A client resolved `tag` of `repository` (the hot path: no I/O)."""
        self._seen[(repository, tag)] = self.clock()

    async def flush(self) -> int:
        """Write the gathered pull times; returns how many tags were noted."""
        pending, self._seen = self._seen, {}
        if not pending:
            return 0
        rows = [{"repo": r, "tag": t, "at": at} for (r, t), at in pending.items()]

        await self.db.write(lambda tx: records.note_pulls(tx, rows))
        return len(rows)

    async def run(
        self,
        interval: float = 60.0,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Flush every `interval` seconds until cancelled, then once more (shielded)."""
        task_status.started()
        try:
            while True:
                await trio.sleep(interval)
                try:
                    await self.flush()
                except BerthError as e:
                    log.warning("could not record pull times: %s", e.message)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.flush()
                except BerthError as e:
                    log.warning("could not record pull times: %s", e.message)
