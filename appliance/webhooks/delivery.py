"""Webhook delivery: the leader sends the queued events to every endpoint, in order, signed.

Each endpoint has a cursor in the queue (`records.py`); a pass sends every due endpoint its next
batch in one envelope (`application/vnd.docker.distribution.events.v1+json`, the Distribution
registry's shape), moves the cursor on a 2xx answer and backs off on anything else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import trio
from prometheus_client import Counter

from appliance.backoff import delay as retry_delay
from appliance.config import Config
from appliance.metadata.db import Database, Tx
from appliance.metadata.leader import Fence
from appliance.runtime.jobs import Job
from appliance.runtime.metrics import REGISTRY
from appliance.webhooks import records
from appliance.webhooks.endpoints import (
    Endpoint,
    Resolver,
    TargetRefused,
    check_target,
    config_endpoints,
    namespace_endpoints,
    pinned_request,
    redact_url,
    resolve,
    system_resolver,
)

log = logging.getLogger("berth.webhooks")

ENVELOPE_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: `sha256=<hex HMAC-SHA-256 of the body>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


SIGNATURE_HEADER = "X-Berth-Signature-256"
PRUNE_INTERVAL = 60.0  # seconds between housekeeping passes of the delivery job

DELIVERED = Counter(
    "berth_webhook_deliveries",
    "Webhook delivery attempts, by outcome (ok, failed).",
    ["outcome"],
    registry=REGISTRY,
)


class Deliverer:
    """Sends queued events to every endpoint, in order, from the jobs leader.

    Each endpoint has a cursor (the last event id it acknowledged). A pass sends each due
    endpoint its next batch (at most `batch` events, one envelope) concurrently with the
    others; a 2xx answer moves the cursor, anything else keeps it and waits
    `backoff(failures)` before trying the same batch again, so a receiver that was down gets
    every event, in order, once it is back. Requests run here, never on the request path.

    A namespace's endpoint is resolved once per attempt (`resolver`), every address checked
    (unless `webhooks.allow_private_targets`), and the request sent to the address checked,
    with the name in the Host header and TLS SNI: a name whose DNS answer changes between the
    check and the connection (DNS rebinding) cannot lead the request inward. Redirects are
    never followed (an answer is a 2xx or a failure).
    """

    def __init__(
        self,
        db: Database,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.db = db
        self.config_endpoints = config_endpoints(config)
        self.timeout = config["webhooks.timeout"]
        self.batch = max(1, config["webhooks.batch"])
        self.retention = config["webhooks.retention_days"] * 86400.0
        self.public_url = config["server.public_url"].rstrip("/")
        self.source = {"addr": socket.gethostname(), "instanceID": socket.gethostname()}
        self.clock = clock
        self.transport = transport
        self.resolver = resolver
        self.max_backoff = 300.0
        self.allow_private = config["webhooks.allow_private_targets"]
        self._known: frozenset[str] = frozenset()
        self._pruned = -math.inf

    def backoff(self, failures: int) -> float:
        return retry_delay(failures, 1.0, self.max_backoff)

    async def prepare(self) -> None:
        """Give each configured endpoint its cursor at start-up, so that it gets every event
        from then on (an endpoint added to the configuration gets no history)."""
        keys = [e.key for e in self.config_endpoints]
        if keys:
            await self.db.write(lambda tx: records.ensure_cursors(tx, keys))

    async def run_once(self, fence: Fence | None = None) -> int:
        """One pass over every endpoint; returns how many events were acknowledged. An idle
        pass costs two reads (endpoints, then each cursor); housekeeping writes happen when
        the set of endpoints changes and at most once a minute."""
        endpoints = self.config_endpoints + await self.db.read(namespace_endpoints)
        keys = frozenset(e.key for e in endpoints)
        if keys - self._known:
            await self.db.write(lambda tx: records.ensure_cursors(tx, sorted(keys)))
        self._known = keys
        done = 0
        if endpoints:
            async with httpx.AsyncClient(
                timeout=self.timeout, transport=self.transport, follow_redirects=False
            ) as client:

                async def one(endpoint: Endpoint) -> None:
                    nonlocal done
                    # Not `done += await ...`: that reads `done` before the await, and an
                    # endpoint finishing meanwhile would have its count overwritten.
                    delivered = await self._deliver(client, endpoint)
                    done += delivered

                async with trio.open_nursery() as nursery:
                    for endpoint in endpoints:
                        nursery.start_soon(one, endpoint)
        if self.clock() - self._pruned >= PRUNE_INTERVAL:
            await self.prune(fence)
            self._pruned = self.clock()
        return done

    async def _deliver(self, client: httpx.AsyncClient, endpoint: Endpoint) -> int:
        now = self.clock()
        cursor = await self.db.read(lambda tx: records.cursor(tx, endpoint.key))
        if cursor is None or cursor[2] > now:
            return 0
        last, failures = cursor[0], cursor[1]
        events = await self.db.read(
            lambda tx: records.next_events(tx, endpoint.namespace, last, self.batch)
        )
        if not events:
            return 0
        skipped_to = events[-1][0]
        wanted = [e for e in events if e[1] in endpoint.actions]
        if not wanted:  # nothing this endpoint asked for: move on without a request
            await self.db.write(lambda tx: records.advance(tx, endpoint.key, skipped_to))
            return 0
        body = json.dumps({"events": [self._complete(e[2]) for e in wanted]}).encode()
        headers = {"content-type": ENVELOPE_MEDIA_TYPE, "user-agent": "berth-webhooks"}
        if endpoint.secret:
            headers[SIGNATURE_HEADER] = sign(endpoint.secret, body)
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        url: str | httpx.URL = endpoint.url
        extensions: dict[str, Any] = {}
        if endpoint.namespace is not None:
            # Resolved and checked at every delivery, not only at registration (DNS changes),
            # and the connection made to the address checked.
            try:
                address = await trio.to_thread.run_sync(self._address, endpoint.url)
            except TargetRefused as e:
                hint = " (webhooks.allow_private_targets)" if e.internal else ""
                error = f"refused: {e.message}{hint}"
            else:
                url, host, extensions = pinned_request(endpoint.url, address)
                headers.update(host)
        if error is None:
            try:
                response = await client.post(
                    url, content=body, headers=headers, extensions=extensions
                )
                status = response.status_code
                if 300 <= status < 400:
                    error = f"HTTP {status} (redirects are not followed)"
                elif not 200 <= status < 300:
                    error = f"HTTP {status}"
            except httpx.HTTPError as e:
                error = f"{type(e).__name__}: {e}"[:500]
        duration = time.monotonic() - started
        ok = error is None
        DELIVERED.labels("ok" if ok else "failed").inc()
        attempt = failures + 1
        retry_at = self.clock() + self.backoff(attempt)

        def record(tx: Tx) -> None:
            records.record_attempt(
                tx,
                endpoint.key,
                self.clock(),
                wanted[0][0],
                wanted[-1][0],
                len(wanted),
                attempt,
                status,
                error,
                duration,
            )
            if ok:
                records.advance(tx, endpoint.key, skipped_to)
            else:
                assert error is not None
                records.failed(tx, endpoint.key, retry_at, error)

        await self.db.write(record)
        if not ok:
            log.warning(
                "webhook %s: %s (attempt %d; next in %.0f s)",
                redact_url(endpoint.url),
                error,
                attempt,
                self.backoff(attempt),
            )
        return len(wanted) if ok else 0

    def _address(self, url: str) -> str:
        """The address a namespace endpoint's request goes to (blocking: resolves). With
        `webhooks.allow_private_targets` any address is allowed, but still resolved once and
        the connection pinned to it."""
        if self.allow_private:
            return str(resolve(url, self.resolver)[0])
        return check_target(url, self.resolver)

    def _complete(self, payload: dict[str, Any]) -> dict[str, Any]:
        target = payload.get("target", {})
        reference = target.get("digest") or target.get("tag")
        if self.public_url and reference and "url" not in target:
            kind = (
                "blobs" if target.get("mediaType") == "application/octet-stream" else ("manifests")
            )
            target["url"] = f"{self.public_url}/v2/{target['repository']}/{kind}/{reference}"
        payload["source"] = self.source
        return payload

    async def prune(self, fence: Fence | None = None) -> None:
        """Forget events every endpoint has (or that passed the retention) but the newest, old
        delivery log rows, and the cursors of configured endpoints no longer in the configuration (a
        namespace endpoint's cursor goes with it, in `remove_endpoint`)."""
        configured = [e.key for e in self.config_endpoints]
        cutoff = self.clock() - self.retention

        await self.db.write(lambda tx: records.prune(tx, configured, cutoff, fence))


def delivery_job(deliverer: Deliverer, interval: float) -> Job:
    """The leader job that delivers webhooks every `interval` seconds."""
    return Job("webhook-delivery", interval, deliverer.run_once)
