"""Backups inside a running Berth: the scheduled job (leader only) and the API's operations.

One backup runs at a time per installation: a backup is refused (`Conflict`) while another
process's backup row is `running` with a fresh heartbeat. Backups, verifies and prunes started
through the API run in the service's own nursery (`run`), so the request returns at once; their
results land in the `backups` table.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from appliance.backup import BackupError, layout, records
from appliance.backup.create import HOLD_TTL, RENEW_EVERY, create_backup
from appliance.backup.crypto import passphrase_from
from appliance.backup.prune import PruneResult, Retention, prune
from appliance.backup.target import Target, default_target_url, open_target
from appliance.backup.verify import VerifyResult, list_backups, verify_backup
from appliance.config import Config
from appliance.errors import BerthError, Conflict, NotFound
from appliance.metadata.db import Database, Tx
from appliance.metadata.leader import Fence
from appliance.runtime.cron import Cron
from appliance.runtime.jobs import Job
from appliance.storage.base import BlobStore

log = logging.getLogger("berth.backup")


class BackupService:
    def __init__(
        self,
        config: Config,
        db: Database,
        store: BlobStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.db = db
        self.store = store
        self.clock = clock
        self.target_url = default_target_url(config)
        self.schedule = Cron(config["backup.schedule"]) if config["backup.schedule"] else None
        self.retention = Retention(
            config["backup.keep_last"], config["backup.keep_daily"], config["backup.keep_weekly"]
        )
        passphrase_from(config)  # a missing passphrase file stops start-up, not the 3 a.m. run
        self._target: Target | None = None
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self.verifying: set[str] = set()

    @property
    def target(self) -> Target:
        if self._target is None:
            self._target = open_target(self.target_url, self.config)
        return self._target

    def jobs(self) -> list[Job]:
        if self.schedule is None:
            return []
        return [Job.scheduled("backup", self.schedule, self.scheduled)]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery in which API-started work runs; set the metrics from the table."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                last = await self.db.read(records.last_success)
                if last is not None:
                    records.observe_success(last)
            except BerthError as e:
                log.warning("cannot read the last backup: %s", e.message)
            task_status.started()
            await trio.sleep_forever()

    # -- backups ---------------------------------------------------------------------------

    async def _check_idle(self) -> None:
        now = self.clock()

        def fn(tx: Tx) -> str | None:
            # A running row whose process stopped renewing is marked failed, not trusted.
            records.mark_interrupted(tx, now, now - HOLD_TTL)
            return records.running_backup(tx, now - 3 * RENEW_EVERY)

        running = await self.db.write(fn)
        if running is not None or self._lock.locked():
            raise Conflict(f"backup {running or ''} is already running".replace("  ", " "))

    async def backup(
        self, trigger: str, actor: str, backup_id: str | None = None
    ) -> dict[str, Any]:
        """Take a backup now, into the configured target; return its summary."""
        await self._check_idle()
        async with self._lock:
            _, summary = await create_backup(
                self.config,
                self.db,
                self.store,
                self.target,
                passphrase=passphrase_from(self.config),
                trigger=trigger,
                actor=actor,
                clock=self.clock,
                backup_id=backup_id,
            )
        return summary

    async def scheduled(self, fence: Fence) -> None:
        """The leader's job: a backup, then the retention (`backup.prune`)."""
        await self.backup("schedule", "system")
        if self.config["backup.prune"]:
            await self.prune("system")

    async def start(self, actor: str) -> str:
        """Start a backup in the background; return its id (API)."""
        await self._check_idle()
        backup_id = layout.new_id(self.clock())
        nursery = self._require_nursery()

        async def go() -> None:
            with contextlib.suppress(BerthError):  # logged, counted and recorded already
                await self.backup("api", actor, backup_id)

        nursery.start_soon(go)
        return backup_id

    def _require_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise BackupError("the backup service is not running")
        return self._nursery

    # -- verify, prune, list -----------------------------------------------------------------

    async def verify(self, backup_id: str, actor: str) -> VerifyResult:
        layout.check_id(backup_id)
        if backup_id in self.verifying:
            raise Conflict(f"backup {backup_id} is being verified")
        await trio.to_thread.run_sync(self._exists, backup_id)
        self.verifying.add(backup_id)
        try:
            work = self.config.data_dir / "tmp"
            await trio.to_thread.run_sync(lambda: work.mkdir(parents=True, exist_ok=True))
            result = await verify_backup(self.target, backup_id, work)
        finally:
            self.verifying.discard(backup_id)
        error = "; ".join(result.problems[:5]) or None
        now = self.clock()

        def note(tx: Tx) -> None:
            if records.get(tx, backup_id) is not None:
                records.verified(
                    tx, backup_id, now=now, ok=result.ok, error=error, actor=actor,
                    where=self.target.url,
                )  # fmt: skip

        await self.db.write(note)
        if not result.ok:
            log.error("backup %s failed verification: %s", backup_id, error)
        return result

    async def start_verify(self, backup_id: str, actor: str) -> None:
        layout.check_id(backup_id)
        await trio.to_thread.run_sync(self._exists, backup_id)
        nursery = self._require_nursery()

        async def go() -> None:
            try:
                await self.verify(backup_id, actor)
            except BerthError as e:
                log.warning("verify of backup %s: %s", backup_id, e.message)

        nursery.start_soon(go)

    def _exists(self, backup_id: str) -> None:
        if self.target.stat(layout.manifest_path(backup_id)) is None:
            raise NotFound(f"no complete backup {backup_id} in {self.target.url}")

    async def prune(self, actor: str, dry_run: bool = False) -> PruneResult:
        now = self.clock()
        result = await trio.to_thread.run_sync(
            lambda: prune(self.target, self.retention, now=now, dry_run=dry_run)
        )
        if not dry_run and (result.removed or result.incomplete_removed):
            removed = result.removed + result.incomplete_removed
            await self.db.write(
                lambda tx: records.pruned(tx, removed, now=now, actor=actor, where=self.target.url)
            )
        return result

    async def in_target(self) -> list[dict[str, Any]]:
        return await trio.to_thread.run_sync(list_backups, self.target)

    async def recent(self, limit: int = 100) -> list[records.BackupRecord]:
        return await self.db.read(lambda tx: records.recent(tx, limit))

    async def record(self, backup_id: str) -> records.BackupRecord | None:
        return await self.db.read(lambda tx: records.get(tx, backup_id))

    def status(self) -> dict[str, Any]:
        return {
            "target": self.target_url,
            "schedule": self.schedule.expression if self.schedule else None,
            "next_run": self.schedule.next_after(self.clock()) if self.schedule else None,
            "retention": {
                "keep_last": self.retention.keep_last,
                "keep_daily": self.retention.keep_daily,
                "keep_weekly": self.retention.keep_weekly,
                "after_each_scheduled_backup": bool(self.config["backup.prune"]),
            },
            "running": self._lock.locked(),
        }
