"""Lifecycle: garbage collection, cleanup policies, immutable tags, quotas, usage, fsck.

`Lifecycle` gathers the pieces one serving process (or one CLI command) needs, built from the
settings: the cached rules the metadata store checks on every write (`rules.py`), the
collector (`gc.py`), cleanup policies (`policies.py`), last-pull times (`pulls.py`), and the
leader jobs that run the collector and the policies on their schedules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from appliance.config import Config
from appliance.lifecycle.gc import Collector, GcSettings
from appliance.lifecycle.policies import Policies
from appliance.lifecycle.pulls import PullTracker
from appliance.lifecycle.rules import Rules
from appliance.metadata.db import Database
from appliance.metadata.leader import Fence
from appliance.runtime.jobs import Job
from appliance.storage.base import BlobStore


def gc_settings(config: Config, pace: float = 1.0) -> GcSettings:
    return GcSettings(
        delay=config["gc.delay"],
        batch=max(1, config["gc.batch"]),
        untagged_age=config["gc.untagged_age"],
        referrers=config["gc.referrers"],
        pace=pace,
    )


@dataclass
class Lifecycle:
    rules: Rules
    collector: Collector
    policies: Policies
    pulls: PullTracker
    gc_interval: float = 60.0
    policy_interval: float = 86400.0

    @classmethod
    def open(
        cls,
        config: Config,
        db: Database,
        store: BlobStore,
        clock: Callable[[], float],
        *,
        actor: str = "system",
        pace: float = 0.5,
    ) -> Lifecycle:
        """`pace`: the share of its time the collector may work (see GcSettings); a serving
        process keeps half for requests, `berth gc` runs flat out."""
        settings = gc_settings(config, pace)
        rules = Rules(db, clock)
        return cls(
            rules=rules,
            collector=Collector(db, store, clock, settings, actor=actor),
            policies=Policies(db, rules, clock, delay=settings.delay, referrers=settings.referrers),
            pulls=PullTracker(db, clock),
            gc_interval=config["gc.interval"],
            policy_interval=config["lifecycle.policy_interval"],
        )

    def jobs(self) -> list[Job]:
        """The leader's jobs: the collector, and the cleanup policies when scheduled."""

        async def collect(fence: Fence) -> None:
            await self.collector.run(fence)

        async def policies(fence: Fence) -> None:
            await self.pulls.flush()  # this process's pulls count too
            await self.policies.run_all(fence, every=self.policy_interval)

        jobs = [Job("gc", max(0.05, self.gc_interval), collect, delay=min(self.gc_interval, 5.0))]
        if self.policy_interval > 0:
            # Checked often, each policy run once per interval (its last run is recorded), so
            # restarting the leader neither skips nor repeats a day's run.
            check = min(self.policy_interval, 600.0)
            jobs.append(Job("cleanup-policies", check, policies, delay=check))
        return jobs


__all__ = ["Collector", "GcSettings", "Lifecycle", "Policies", "PullTracker", "Rules"]
