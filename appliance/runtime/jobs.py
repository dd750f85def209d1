"""Background jobs: run in exactly one leader process, on a schedule, fenced.

Every serving process runs `run_jobs(lock, jobs)`. It campaigns for leadership through the
metadata database (`metadata/leader.py`: a PostgreSQL advisory lock, or a lease row on SQLite);
the one process that wins runs the `Scheduler`, the others keep asking. The leader checks every
`keep_interval` seconds that it still leads (renewing a lease); when it does not, or when the
database cannot be reached, its jobs are cancelled and it campaigns again. Each job receives the
`Fence` of the leadership it runs under and passes it to every destructive delete, which checks
it in the same transaction: a former leader that was paused cannot delete anything after
another process has taken over.

Time: the scheduler sleeps on trio's clock, so tests drive it with `trio.testing.MockClock`.
A job with a cron expression (`runtime/cron.py`) runs at the wall-clock times it names; the wall
clock is injected too (`Scheduler(jobs, wall_clock=...)`), so a test can start at 02:59 UTC and
see the 03:00 run without waiting.

Cancellation: cancelling `run_jobs` cancels the running jobs (a unit of work already in its
thread completes) and releases leadership so that another process takes over at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from appliance.errors import BerthError
from appliance.metadata.leader import Fence, LeaderLock, LeadershipLost
from appliance.runtime.cron import Cron

log = logging.getLogger("berth.jobs")

JobFn = Callable[[Fence], Awaitable[object]]


@dataclass(frozen=True)
class Job:
    """Run `fn` every `interval` seconds (the first run at once, or after `delay`), or, with
    `cron`, at the times the cron expression names (then `interval` and `delay` are unused)."""

    name: str
    interval: float
    fn: JobFn
    delay: float = 0.0
    cron: Cron | None = None

    @classmethod
    def scheduled(cls, name: str, cron: Cron | str, fn: JobFn) -> Job:
        """A job that runs at the times of a cron expression (UTC)."""
        return cls(name, 0.0, fn, cron=cron if isinstance(cron, Cron) else Cron(cron))


class Scheduler:
    """Runs jobs on their intervals, on trio's clock. A run that fails is logged; the job runs
    again at its next time. Runs of one job never overlap: a run that overruns its interval
    delays the next."""

    def __init__(self, jobs: list[Job], wall_clock: Callable[[], float] = time.time) -> None:
        self.jobs = list(jobs)
        self.runs: dict[str, int] = {job.name: 0 for job in jobs}
        self.wall_clock = wall_clock

    async def run(self, fence: Fence) -> None:
        """Run every job until cancelled, or until a job finds that leadership moved on."""
        try:
            async with trio.open_nursery() as nursery:
                for job in self.jobs:
                    nursery.start_soon(self._loop, job, fence, name=f"job {job.name}")
        except* LeadershipLost:
            pass  # the caller campaigns again

    async def _run_once(self, job: Job, fence: Fence) -> None:
        try:
            await job.fn(fence)
        except LeadershipLost as e:
            log.warning("job %s stopped: %s", job.name, e.message)
            raise
        except BerthError as e:
            log.warning("job %s failed: %s; will retry", job.name, e.message)
        except Exception:
            log.exception("job %s failed; will retry", job.name)
        self.runs[job.name] += 1

    async def _cron_loop(self, job: Job, cron: Cron, fence: Fence) -> None:
        # Sleep on trio's clock for as long as the wall clock says is left. A run missed while
        # no leader was up (or one overrun by the previous run) is not made up: cron's rule.
        last = -math.inf
        while True:
            now = self.wall_clock()
            due = cron.next_after(max(now, last))
            await trio.sleep(max(0.0, due - now))
            if self.wall_clock() < due - 1.0:
                continue  # the wall clock was set back meanwhile: look again
            last = due
            await self._run_once(job, fence)

    async def _loop(self, job: Job, fence: Fence) -> None:
        if job.cron is not None:
            await self._cron_loop(job, job.cron, fence)
            return
        due = trio.current_time() + job.delay
        while True:
            await trio.sleep_until(due)
            await self._run_once(job, fence)
            now = trio.current_time()
            due += job.interval
            if due <= now:  # overran: skip the missed runs rather than run them back to back
                due = now + job.interval - math.fmod(now - due, job.interval)


async def run_jobs(
    lock: LeaderLock,
    work: Callable[[Fence], Awaitable[None]],
    *,
    keep_interval: float = 5.0,
    retry_interval: float = 5.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Campaign for leadership forever; while leading, run `work(fence)`.

    `work` is usually `Scheduler(jobs).run`. Reports started at once (campaigning has begun).
    """
    task_status.started()
    while True:
        try:
            fence = await lock.acquire()
        except BerthError as e:
            log.warning("cannot campaign for leadership of %s: %s", lock.name, e.message)
            fence = None
        if fence is None:
            await trio.sleep(retry_interval)
            continue
        log.info("leading %s (generation %d, pid %d)", lock.name, fence.generation, os.getpid())
        try:
            await _lead(lock, fence, work, keep_interval)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await lock.release()
                except BerthError as e:
                    log.warning("could not release leadership of %s: %s", lock.name, e.message)
        log.warning("no longer leading %s (generation %d)", lock.name, fence.generation)
        await trio.sleep(retry_interval)


async def _lead(
    lock: LeaderLock, fence: Fence, work: Callable[[Fence], Awaitable[None]], keep: float
) -> None:
    async with trio.open_nursery() as nursery:

        async def guarded_work() -> None:
            with contextlib.suppress(LeadershipLost):
                await work(fence)
            nursery.cancel_scope.cancel()

        nursery.start_soon(guarded_work)
        while True:
            await trio.sleep(keep)
            try:
                still = await lock.keep()
            except BerthError as e:
                log.warning("cannot confirm leadership of %s: %s", lock.name, e.message)
                still = False
            if not still:
                nursery.cancel_scope.cancel()
                return
