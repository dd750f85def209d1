"""The operations side of a running Berth, assembled once per process.

`Operations` gathers what the HTTP layer and the background jobs need: the rate limiter, the
pull-event buffer, the readiness probe, the scrape-time metrics, the webhook deliverer and the
audit-retention job. `server.open_services` builds it; `app.create_app` wraps the ASGI app in
its middleware; `server.background_jobs` runs its `jobs()` in the leader.

It sits beside `app.py` and `server.py`, above the layers it assembles: the process runtime
(`runtime/`: host, limit sync, jobs), a feature (`webhooks/`) and the HTTP edge (`api/`:
middleware, rate limits). It imports no web framework.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import trio
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from appliance import context
from appliance.api.asgi import ASGIApp, Scope, client_address
from appliance.api.guard import Caller
from appliance.api.middleware import OperationsMiddleware, Readiness, ScrapeCollectors
from appliance.api.ratelimit import RateLimiter
from appliance.auth.service import AccessControl
from appliance.config import Config, proxy_networks
from appliance.errors import BerthError
from appliance.metadata import audit, browse
from appliance.metadata.db import Database, Tx, ping
from appliance.metadata.leader import Fence
from appliance.runtime.buckets import SharedBuckets
from appliance.runtime.hosts import HostInfoCollector, ThisHost
from appliance.runtime.jobs import Job
from appliance.runtime.limitsync import LimitSync, Table
from appliance.storage.base import BlobStore
from appliance.webhooks.batching import PullEvents
from appliance.webhooks.delivery import Deliverer, delivery_job
from appliance.webhooks.endpoints import config_endpoints

log = logging.getLogger("berth.ops")

# What each /v2 route and method counts as for the rate limits.
_PULL_ROUTES = frozenset({"manifests", "blobs", "tags", "referrers", "catalog"})
_PUSH_ROUTES = frozenset({"uploads", "upload", "manifests", "blobs"})


def limit_kind(handler: str, method: str) -> str | None:
    if method in ("GET", "HEAD") and handler in _PULL_ROUTES:
        return "pull"
    if method in ("POST", "PATCH", "PUT", "DELETE") and handler in _PUSH_ROUTES:
        return "push"
    return None


class Operations:
    def __init__(
        self,
        config: Config,
        db: Database,
        store: BlobStore,
        *,
        access: AccessControl | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.store = store
        # Shared by the host's serving processes: the configured rates hold for the host.
        self.limiter = RateLimiter.from_config(
            config, SharedBuckets(config.data_dir / "run" / "ratelimit")
        )
        self.pulls = PullEvents(db)
        self.config_wants_pulls = any("pull" in e.actions for e in config_endpoints(config))
        self.readiness = Readiness([("database", self._probe_database), ("storage", store.check)])
        fingerprint = access.secret.fingerprint if access is not None else ""
        self.host = ThisHost(config, db, secret_fingerprint=fingerprint)
        self.scrape = ScrapeCollectors()
        self.scrape.add(_StateCollector(db))
        self.scrape.add(HostInfoCollector(self.host))
        self.limit_sync: LimitSync | None = None
        interval = config["ratelimit.sync_interval"]
        if db.dialect == "postgresql" and interval > 0 and access is not None:
            # Other hosts may share the database: their limits and lockouts count here too.
            self.limit_sync = LimitSync(
                db,
                {
                    "ratelimit": Table(self.limiter.buckets, self.limiter.clock),
                    "signin": Table(access.throttle.buckets, access.throttle.clock),
                },
                host=self.host.instance,
                agent=self.host.agent,
                interval=interval,
            )
        self.deliverer = Deliverer(db, config)
        self.pulls.wanted = self.config_wants_pulls
        self.access = access

    async def start(self) -> None:
        """What must happen before serving: webhook endpoints get their place in the queue."""
        await self.deliverer.prepare()

    async def _probe_database(self) -> None:
        await self.db.read(ping)

    def wrap(self, app: ASGIApp) -> OperationsMiddleware:
        return OperationsMiddleware(
            app,
            readiness=self.readiness,
            scrape=self.scrape,
            metrics_enabled=self.config["metrics.enabled"],
            metrics_token=self.config["metrics.token"],
            access_log_enabled=self.config["log.access"],
            pulls=self.pulls,
            limiter=self.limiter,
            trusted_proxies=proxy_networks(self.config["server.trusted_proxies"]),
            host=self.host.name,
            remembered=self.access.remembered if self.access is not None else None,
        )

    async def admit(self, scope: Scope, handler: str, method: str) -> None:
        """After sign-in, before a /v2 handler: name the actor, apply the rate limits.
        Raises RateLimited."""
        caller: Caller | None = scope.get("berth.caller")
        principal = caller.principal if caller is not None else None
        if caller is not None and caller.claims is not None:
            subject = caller.claims.subject
            actor = subject.removeprefix("user:")
        else:
            actor = principal.actor if principal is not None else "anonymous"
        scope["berth.actor"] = actor
        context.set_actor(actor)
        if not self.limiter.enabled:
            return
        kind = limit_kind(handler, method)
        if kind is None:
            return
        if principal is not None and self.limiter.exempt(
            admin=principal.admin, robot=principal.kind == "robot"
        ):
            return
        address = client_address(scope)
        self.limiter.check(kind, None if actor == "anonymous" else actor, address)

    def jobs(self) -> list[Job]:
        """The leader's jobs: webhook delivery and audit retention."""
        out = [delivery_job(self.deliverer, self.config["webhooks.interval"])]
        days = self.config["audit.retention_days"]
        if days > 0:

            async def prune(fence: Fence) -> None:
                before = time.time() - days * 86400.0
                removed = await self.db.write(lambda tx: audit.prune(tx, before, fence))
                if removed:
                    log.info("pruned %d audit event(s) older than %g days", removed, days)

            out.append(Job("audit-retention", 86400.0, prune, delay=60.0))
        return out

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """This process's own background work (every worker, not only the leader): flushing
        pull events, this host's heartbeat, telling other hosts what the limits counted."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.host.run)
            if self.limit_sync is not None:
                await nursery.start(self.limit_sync.run)
            task_status.started()
            await self.pulls.run(self.config_wants_pulls)


class _StateCollector(Collector):
    """Metrics read from the database at scrape time."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        def fn(tx: Tx) -> tuple[dict[str, int], Any, Any]:
            return browse.totals(tx), *browse.webhook_backlog(tx)

        try:
            totals, queued, failing = self.db.run_sync_read(fn)
        except BerthError as e:
            log.warning("metrics: cannot read the database: %s", e.message)
            up = GaugeMetricFamily("berth_database_up", "Whether the database answered.")
            up.add_metric([], 0)
            yield up
            return
        for name, doc, value in (
            ("berth_database_up", "Whether the database answered.", 1),
            (
                "berth_storage_bytes",
                "Bytes of committed blobs (each digest once).",
                totals["bytes"],
            ),
            ("berth_blobs", "Committed blobs.", totals["blobs"]),
            ("berth_repositories", "Repositories.", totals["repositories"]),
            ("berth_uploads_in_progress", "Upload sessions open.", totals["uploads"]),
            ("berth_webhook_queue_events", "Webhook events waiting or kept.", queued),
            ("berth_webhook_endpoints_failing", "Webhook endpoints retrying.", failing),
        ):
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], float(value))
            yield family
        yield from _pool_metrics(self.db)


def _pool_metrics(db: Database) -> Iterator[GaugeMetricFamily]:
    """Connection pool state, where the database has a pool (PostgreSQL)."""
    pool = getattr(db, "_pool", None)
    stats = getattr(pool, "get_stats", None)
    if stats is None:
        return
    values: dict[str, int] = stats()
    for key, doc in (
        ("pool_size", "Connections the pool holds."),
        ("pool_available", "Idle connections in the pool."),
        ("requests_waiting", "Units of work waiting for a connection."),
        ("connections_errors", "Connection attempts that failed (since start)."),
        ("requests_errors", "Requests for a connection that failed (since start)."),
    ):
        family = GaugeMetricFamily(f"berth_db_{key}", doc)
        family.add_metric([], float(values.get(key, 0)))
        yield family
