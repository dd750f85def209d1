"""Webhook notifications: registry events queued in the database, delivered by the leader.

`emit(tx, action, repository=..., ...)` queues one event in the caller's transaction, so an
event exists exactly when its change committed. Events have the shape of the Distribution
registry's notifications (`application/vnd.docker.distribution.events.v1+json`), so receivers
written for it work unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import re
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio
from prometheus_client import Counter

from appliance.backoff import delay as retry_delay
from appliance.config import Config
from appliance.errors import BerthError, ConfigError, NotFound
from appliance.metadata.changes import WEBHOOKS
from appliance.metadata.db import Database, Tx
from appliance.metadata.leader import Fence, check_fence
from appliance.ops import audit, context
from appliance.ops.jobs import Job
from appliance.ops.metrics import REGISTRY

log = logging.getLogger("berth.webhooks")

# The Distribution registry's three actions, then Berth's own: `vulnerability` (a new critical
# finding in an image) and `backup` (a scheduled or requested backup failed), which receivers
# written for Distribution simply ignore.
ACTIONS = ("push", "pull", "delete", "vulnerability", "backup")
ENVELOPE_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"


def event_payload(
    action: str,
    *,
    repository: str,
    digest: str | None = None,
    tag: str | None = None,
    media_type: str | None = None,
    size: int | None = None,
    actor: str | None = None,
    at: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One Distribution-style event (without its envelope). An instance event (a backup) has
    no repository: its target is empty and its details are in `berth`."""
    now = time.time() if at is None else at
    target: dict[str, Any] = {"repository": repository} if repository else {}
    if media_type is not None:
        target["mediaType"] = media_type
    if size is not None:
        target["size"] = size
        target["length"] = size
    if digest is not None:
        target["digest"] = digest
    if tag is not None:
        target["tag"] = tag
    event: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "timestamp": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        "action": action,
        "target": target,
        "actor": {"name": actor} if actor else {},
    }
    request = context.current()
    if request is not None:
        event["request"] = {"id": request.request_id, "addr": request.source or ""}
    if extra:
        event["berth"] = extra
    return event


def emit(tx: Tx, action: str, *, repository: str, **fields: Any) -> None:
    """Queue one event (one of `ACTIONS`) in `tx`; it is delivered after `tx` commits, in
    order, to every endpoint that wants it. `fields` are `event_payload`'s (digest, tag,
    media_type, size, actor, and extra members for the event's `berth` object: JSON, no
    secret). `repository=""` makes an instance event, which only the instance-wide endpoints
    receive."""
    if action not in ACTIONS:
        raise ValueError(f"unknown webhook action {action!r}")
    now = time.time()
    payload = event_payload(action, repository=repository, at=now, **fields)
    queue(tx, [(now, action, repository, payload)])


def queue(tx: Tx, events: list[tuple[float, str, str, dict[str, Any]]]) -> None:
    """Queue prepared events (at, action, repository, payload) in `tx`, in list order."""
    tx.executemany(
        "INSERT INTO webhook_events (at, action, namespace, repository, payload) "
        "VALUES (:at, :action, :namespace, :repository, :payload)",
        [
            {
                "at": at,
                "action": action,
                "namespace": repository.split("/", 1)[0],
                "repository": repository,
                "payload": json.dumps(payload, sort_keys=True, default=str),
            }
            for at, action, repository, payload in events
        ],
    )


# -- pull events: gathered in memory, written in batches ---------------------------------


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
        self.wanted = config_wants_pulls or await self.db.read(_namespace_pulls)

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


def _namespace_pulls(tx: Tx) -> bool:
    return (
        tx.scalar(
            "SELECT 1 FROM webhook_endpoints WHERE enabled = 1 AND actions LIKE '%pull%' LIMIT 1"
        )
        is not None
    )


# -- endpoints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where events go. `key` names it in the cursor and delivery tables; `namespace` None:
    every event of the instance."""

    key: str
    url: str
    secret: str
    actions: frozenset[str]
    namespace: str | None = None
    id: int | None = None


def config_endpoints(config: Config) -> list[Endpoint]:
    """The instance-wide endpoints of `webhooks.endpoints` (URLs separated by spaces or
    commas), all signed with `webhooks.secret`."""
    secret = config["webhooks.secret"]
    actions = parse_actions(config["webhooks.actions"])
    out = []
    for url in re.split(r"[\s,]+", config["webhooks.endpoints"].strip()):
        if url:
            check_url(url)
            key = "config:" + hashlib.sha256(url.encode()).hexdigest()[:16]
            out.append(Endpoint(key, url, secret, actions))
    return out


def parse_actions(text: str) -> frozenset[str]:
    actions = frozenset(a.strip() for a in text.split(",") if a.strip())
    unknown = actions - set(ACTIONS)
    if unknown or not actions:
        raise ConfigError(f"webhook actions must be some of {', '.join(ACTIONS)}, not {text!r}")
    return actions


def check_url(url: str) -> str:
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"a webhook endpoint must be an http(s):// URL, not {url[:200]!r}")
    return url


# -- where namespace endpoints may point ----------------------------------------------------

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
"""Resolves a host name (and port) to its addresses, blocking; raises OSError when it cannot.
Delivery takes it as a parameter, so tests can answer what DNS would (a rebinding name)."""

# Ranges `ipaddress`'s `is_global` calls global (in the Python versions Berth runs on) that a
# webhook must not reach: what they lead to is not a public host, or is decided by routing
# the host may have (a 6to4 tunnel turns 2002:7f00:1:: into 127.0.0.1).
_ALSO_INTERNAL = (
    (ipaddress.ip_network("192.0.0.0/24"), "IETF protocol assignments (192.0.0.0/24)"),
    (ipaddress.ip_network("192.88.99.0/24"), "the 6to4 relay range (192.88.99.0/24)"),
    (ipaddress.ip_network("2002::/16"), "a 6to4 address (2002::/16)"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "local-use NAT64 (64:ff9b:1::/48)"),
    (ipaddress.ip_network("fec0::/10"), "site-local (fec0::/10)"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64: an IPv4 address inside
_SHARED = ipaddress.ip_network("100.64.0.0/10")


def internal_reason(address: Address) -> str | None:
    """Why a namespace's webhook may not call `address`, or None when it is a public address.
    IPv4 inside IPv6 (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) is judged by the
    IPv4 address it reaches; everything else must be `is_global` and in none of the ranges
    `is_global` misses (6to4, multicast, ...)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped
        if inner is None and address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            why = internal_reason(inner)
            return None if why is None else f"{why}, as {inner}"
    for network, name in _ALSO_INTERNAL:
        if address in network:
            return name
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:  # IPv4-compatible IPv6 (::a.b.c.d) among them
        return "reserved"
    if address.is_global:
        return None
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (where cloud metadata services answer)"
    if address.is_unspecified:
        return "unspecified"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "shared address space (100.64.0.0/10: carrier-grade NAT, some cloud metadata)"
    if address.is_private:
        return "private"
    return "not globally reachable"


class TargetRefused(BerthError):
    """A namespace's webhook URL leads to an address it may not call (`internal`), or its
    host cannot be resolved."""

    def __init__(self, message: str, *, internal: bool = False) -> None:
        super().__init__(message)
        self.internal = internal


def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, each once, in its order."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve(url: str, resolver: Resolver = system_resolver) -> list[Address]:
    """The addresses of `url`'s host: itself when it is one, else what `resolver` answers.
    Raises TargetRefused when it cannot be resolved. Blocking."""
    parts = httpx.URL(url)
    try:
        return [ipaddress.ip_address(parts.host)]
    except ValueError:
        pass
    try:
        found = resolver(parts.host, parts.port or (443 if parts.scheme == "https" else 80))
        addresses = [ipaddress.ip_address(a) for a in found]
    except (OSError, UnicodeError, ValueError) as e:
        raise TargetRefused(f"cannot resolve {parts.host[:100]!r}: {e}") from None
    if not addresses:
        raise TargetRefused(f"{parts.host[:100]!r} has no address")
    return addresses


def check_target(url: str, resolver: Resolver = system_resolver) -> str:
    """The address to connect to for `url`: its host resolved once and every address it has
    checked (one internal address refuses the name: DNS may answer either). Raises
    TargetRefused naming the address and why. Blocking (resolves)."""
    addresses = resolve(url, resolver)
    for address in addresses:
        why = internal_reason(address)
        if why is not None:
            host = httpx.URL(url).host
            shown = "the URL" if host == str(address) else host[:100]
            raise TargetRefused(
                f"{shown} leads to {address}, an internal address ({why})", internal=True
            )
    return str(addresses[0])


def private_target(url: str, resolver: Resolver = system_resolver) -> str | None:
    """Why `url` may not be a namespace's webhook target (it leads to a loopback, private,
    link-local or otherwise internal address: a maintainer must not make Berth call into the
    network it runs in, or a cloud metadata service), or None. Blocking: resolves the host."""
    try:
        check_target(url, resolver)
    except TargetRefused as e:
        return e.message
    return None


def pinned_request(url: str, address: str) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """The request for `url` sent to `address` (checked), not to whatever the name resolves
    to when the connection is made: the URL with the address as its host, the `Host` header
    of the original name, and (https) the name for TLS SNI and certificate checking."""
    parts = httpx.URL(url)
    extensions: dict[str, Any] = {}
    if parts.scheme == "https":
        extensions["sni_hostname"] = parts.host
    return parts.copy_with(host=address), {"host": parts.netloc.decode("ascii")}, extensions


def namespace_endpoints(tx: Tx, namespace: str | None = None) -> list[Endpoint]:
    """Endpoints registered for namespaces (one namespace, or all)."""
    where = "" if namespace is None else "WHERE n.name = :ns "
    rows = tx.execute(
        "SELECT e.id, e.url, e.secret, e.actions, n.name FROM webhook_endpoints e "  # noqa: S608
        f"JOIN namespaces n ON n.id = e.namespace_id {where}ORDER BY e.id",
        {"ns": namespace} if namespace is not None else {},
    )
    return [Endpoint(f"ns:{r[0]}", r[1], r[2], parse_actions(r[3]), r[4], int(r[0])) for r in rows]


def endpoint_listing(tx: Tx, namespace: str) -> list[dict[str, Any]]:
    """The namespace's endpoints as the management API lists them: the URL redacted, and each
    one's delivery state (how far delivered, failures, next attempt, last error)."""
    cursors = {
        r[0]: r[1:]
        for r in tx.execute(
            "SELECT endpoint, last_event_id, failures, next_attempt_at, last_error "
            "FROM webhook_cursors"
        )
    }
    out = []
    for e in namespace_endpoints(tx, namespace):
        state = cursors.get(e.key)
        out.append(
            {
                "id": e.id,
                "url": redact_url(e.url),
                "actions": ",".join(sorted(e.actions)),
                "delivered_through": state[0] if state else None,
                "failures": state[1] if state else 0,
                "next_attempt_at": state[2] if state else None,
                "last_error": state[3] if state else None,
            }
        )
    return out


def add_endpoint(
    tx: Tx, actor: str, namespace: str, url: str, *, actions: str, secret: str | None = None
) -> tuple[int, str]:
    """Register an endpoint for `namespace` (audited); returns its id and signing secret.
    Delivery starts with the events queued after this."""
    check_url(url)
    parse_actions(actions)
    ns_id = tx.scalar("SELECT id FROM namespaces WHERE name = :n", {"n": namespace})
    if ns_id is None:
        raise NotFound(f"namespace {namespace} does not exist")
    secret = secret or secrets.token_urlsafe(32)
    row = tx.one(
        "INSERT INTO webhook_endpoints (namespace_id, url, secret, actions, enabled, "
        "created_at, created_by) VALUES (:ns, :url, :secret, :actions, 1, :now, :actor) "
        "RETURNING id",
        {
            "ns": ns_id,
            "url": url,
            "secret": secret,
            "actions": actions,
            "now": time.time(),
            "actor": actor,
        },
    )
    assert row is not None
    endpoint_id = int(row[0])
    tx.touch(WEBHOOKS)  # every process notes pull events at once if this one wants them
    start = tx.scalar("SELECT MAX(id) FROM webhook_events") or 0
    tx.execute(
        "INSERT INTO webhook_cursors (endpoint, last_event_id) VALUES (:e, :last)",
        {"e": f"ns:{endpoint_id}", "last": int(start)},
    )
    audit.record(
        tx,
        actor,
        "webhook.create",
        f"{namespace}/{endpoint_id}",
        url=redact_url(url),
        actions=actions,
    )
    return endpoint_id, secret


def remove_endpoint(tx: Tx, actor: str, namespace: str, endpoint_id: int) -> None:
    gone = tx.execute(
        "DELETE FROM webhook_endpoints WHERE id = :id AND namespace_id = "
        "(SELECT id FROM namespaces WHERE name = :ns) RETURNING url",
        {"id": endpoint_id, "ns": namespace},
    )
    if not gone:
        raise NotFound(f"webhook {endpoint_id} is not registered for namespace {namespace}")
    tx.touch(WEBHOOKS)
    tx.execute("DELETE FROM webhook_cursors WHERE endpoint = :e", {"e": f"ns:{endpoint_id}"})
    audit.record(
        tx, actor, "webhook.delete", f"{namespace}/{endpoint_id}", url=redact_url(gone[0][0])
    )


def redact_url(url: str) -> str:
    """`url` without user information or query (either may carry a credential)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}"


def deliveries(tx: Tx, endpoint: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The delivery log, newest first."""
    where = "" if endpoint is None else "WHERE endpoint = :e "
    rows = tx.execute(
        "SELECT id, endpoint, at, first_event_id, last_event_id, events, attempt, status, "  # noqa: S608
        f"error, duration FROM webhook_deliveries {where}ORDER BY id DESC LIMIT :limit",
        {"e": endpoint, "limit": limit} if endpoint is not None else {"limit": limit},
    )
    names = (
        "id",
        "endpoint",
        "at",
        "first_event_id",
        "last_event_id",
        "events",
        "attempt",
        "status",
        "error",
        "duration",
    )
    return [dict(zip(names, r, strict=True)) for r in rows]


# -- delivery -------------------------------------------------------------------------------


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
            await self.db.write(lambda tx: _ensure_cursors(tx, keys))

    async def run_once(self, fence: Fence | None = None) -> int:
        """One pass over every endpoint; returns how many events were acknowledged. An idle
        pass costs two reads (endpoints, then each cursor); housekeeping writes happen when
        the set of endpoints changes and at most once a minute."""
        endpoints = self.config_endpoints + await self.db.read(namespace_endpoints)
        keys = frozenset(e.key for e in endpoints)
        if keys - self._known:
            await self.db.write(lambda tx: _ensure_cursors(tx, sorted(keys)))
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
        cursor = await self.db.read(lambda tx: _cursor(tx, endpoint.key))
        if cursor is None or cursor[2] > now:
            return 0
        last, failures = cursor[0], cursor[1]
        events = await self.db.read(lambda tx: _next_events(tx, endpoint, last, self.batch))
        if not events:
            return 0
        skipped_to = events[-1][0]
        wanted = [e for e in events if e[1] in endpoint.actions]
        if not wanted:  # nothing this endpoint asked for: move on without a request
            await self.db.write(lambda tx: _advance(tx, endpoint.key, skipped_to))
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
            tx.execute(
                "INSERT INTO webhook_deliveries (endpoint, at, first_event_id, last_event_id, "
                "events, attempt, status, error, duration) VALUES (:e, :at, :first, :last, "
                ":n, :attempt, :status, :error, :duration)",
                {
                    "e": endpoint.key,
                    "at": self.clock(),
                    "first": wanted[0][0],
                    "last": wanted[-1][0],
                    "n": len(wanted),
                    "attempt": attempt,
                    "status": status,
                    "error": error,
                    "duration": duration,
                },
            )
            if ok:
                _advance(tx, endpoint.key, skipped_to)
            else:
                tx.execute(
                    "UPDATE webhook_cursors SET failures = failures + 1, "
                    "next_attempt_at = :at, last_error = :error WHERE endpoint = :e",
                    {"e": endpoint.key, "at": retry_at, "error": error},
                )

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

        def fn(tx: Tx) -> None:
            if fence is not None:
                check_fence(tx, fence)
            params: dict[str, Any] = {f"k{i}": k for i, k in enumerate(configured)}
            keep = f" AND endpoint NOT IN ({', '.join(params_names(params))})" if params else ""
            tx.execute(
                f"DELETE FROM webhook_cursors WHERE endpoint LIKE 'config:%'{keep}",  # noqa: S608
                params,
            )
            low = tx.scalar("SELECT MIN(last_event_id) FROM webhook_cursors")
            if low is None:  # nobody listens: nothing to keep
                low = tx.scalar("SELECT MAX(id) FROM webhook_events")
            # The newest event is kept, delivered or not: SQLite numbers a new row
            # MAX(id) + 1, so an emptied table would number the next events from 1 again,
            # below every cursor, and they would never be sent.
            tx.execute(
                "DELETE FROM webhook_events WHERE (id <= :low OR at < :cutoff) "
                "AND id < (SELECT MAX(id) FROM webhook_events)",
                {"low": int(low or 0), "cutoff": cutoff},
            )
            tx.execute("DELETE FROM webhook_deliveries WHERE at < :cutoff", {"cutoff": cutoff})

        await self.db.write(fn)


def params_names(params: dict[str, Any]) -> list[str]:
    return [f":{name}" for name in params]


def _ensure_cursors(tx: Tx, keys: list[str]) -> None:
    """A new endpoint starts after the events already queued (no flood of history)."""
    start = int(tx.scalar("SELECT MAX(id) FROM webhook_events") or 0)
    tx.executemany(
        "INSERT INTO webhook_cursors (endpoint, last_event_id) VALUES (:e, :last) "
        "ON CONFLICT (endpoint) DO NOTHING",
        [{"e": k, "last": start} for k in keys],
    )


def _cursor(tx: Tx, key: str) -> tuple[int, int, float] | None:
    row = tx.one(
        "SELECT last_event_id, failures, next_attempt_at FROM webhook_cursors WHERE endpoint = :e",
        {"e": key},
    )
    return None if row is None else (int(row[0]), int(row[1]), float(row[2]))


def _next_events(
    tx: Tx, endpoint: Endpoint, after: int, limit: int
) -> list[tuple[int, str, dict[str, Any]]]:
    if endpoint.namespace is None:
        rows = tx.execute(
            "SELECT id, action, payload FROM webhook_events WHERE id > :after "
            "ORDER BY id LIMIT :limit",
            {"after": after, "limit": limit},
        )
    else:
        rows = tx.execute(
            "SELECT id, action, payload FROM webhook_events WHERE namespace = :ns "
            "AND id > :after ORDER BY id LIMIT :limit",
            {"ns": endpoint.namespace, "after": after, "limit": limit},
        )
    return [(int(r[0]), r[1], json.loads(r[2])) for r in rows]


def _advance(tx: Tx, key: str, last: int) -> None:
    tx.execute(
        "UPDATE webhook_cursors SET last_event_id = :last, failures = 0, next_attempt_at = 0, "
        "last_error = NULL WHERE endpoint = :e",
        {"e": key, "last": last},
    )


def delivery_job(deliverer: Deliverer, interval: float) -> Job:
    """The leader job that delivers webhooks every `interval` seconds."""
    return Job("webhook-delivery", interval, deliverer.run_once)
