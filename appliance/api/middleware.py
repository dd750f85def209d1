"""The operations layer around every HTTP request, as raw ASGI middleware.

For each request it sets the request context (`context.py`: request id and client
address), answers `X-Request-Id`, counts the request in the metrics (by route template, never
the raw path), and writes one access-log line. It also serves the operations endpoints itself,
before any routing or sign-in:

    /-/health   200 while the process serves (liveness)
    /-/ready    200 when the metadata database and the blob store answer, else 503, naming
                the host (`server.host_name`); the answer is cached for a second, so a load
                balancer may ask every second, and follows the database and the store back
                without a restart
    /metrics    Prometheus text format (optionally behind a bearer token)

What a request costs here is a few dictionary lookups, one histogram observation and one log
record: the hot registry routes stay lean (bench/ops.py measures it). The console's and the
management API's requests are labelled with their Quart route template (`label_routes`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector
from quart import request
from quart_trio import QuartTrio

from appliance import context
from appliance.api.asgi import ASGIApp, Message, Receive, Scope, Send, client_address, respond
from appliance.api.codes import error_body
from appliance.api.guard import parse_basic
from appliance.api.ratelimit import RateLimited, RateLimiter
from appliance.errors import BerthError
from appliance.runtime.logs import scrub
from appliance.runtime.metrics import REGISTRY
from appliance.webhooks.batching import PullEvents

access_log = logging.getLogger("berth.access")
log = logging.getLogger("berth.ops")

# Route templates of the registry API, by the handler names of api/v2.py.
V2_ROUTES = {
    "base": "/v2/",
    "catalog": "/v2/_catalog",
    "tags": "/v2/{name}/tags/list",
    "manifests": "/v2/{name}/manifests/{reference}",
    "blobs": "/v2/{name}/blobs/{digest}",
    "uploads": "/v2/{name}/blobs/uploads/",
    "upload": "/v2/{name}/blobs/uploads/{uuid}",
    "referrers": "/v2/{name}/referrers/{digest}",
}

REQUESTS = Counter(
    "berth_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "berth_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by route template and method.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
BYTES_IN = Counter(
    "berth_http_request_bytes",
    "Request body bytes received, by route.",
    ["route"],
    registry=REGISTRY,
)
BYTES_OUT = Counter(
    "berth_http_response_bytes",
    "Response body bytes sent, by route.",
    ["route"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "berth_http_requests_in_progress",
    "Requests being served.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
PUSHES = Counter("berth_manifest_pushes", "Manifests pushed (PUT answered 201).", registry=REGISTRY)
PULLS = Counter("berth_manifest_pulls", "Manifests pulled (GET answered 200).", registry=REGISTRY)
BLOB_UPLOADS = Counter(
    "berth_blob_uploads", "Blob uploads completed (answered 201).", registry=REGISTRY
)


class ScrapeCollectors:
    """Collectors whose values are read at scrape time (database counts, pool state): the
    same from whichever process answers, so they are never summed over workers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

    def add(self, collector: Collector) -> None:
        self.registry.register(collector)


def multiprocess_dir() -> str | None:
    """Where the worker processes keep their metric files (`--workers N`), or None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render(scrape: ScrapeCollectors | None) -> bytes:
    """The metrics of every serving process, in the Prometheus text format."""
    path = multiprocess_dir()
    if path is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    if scrape is not None:
        body += generate_latest(scrape.registry)
    return body


def basic_user(header: bytes) -> str | None:
    """The user name of an `Authorization: Basic` header value, without checking anything."""
    scheme, _, value = header.decode("latin-1").partition(" ")
    pair = parse_basic(value) if scheme.lower() == "basic" else None
    return pair[0] if pair is not None and pair[0] else None


def _with_request_id(send: Send, rid: bytes) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
        await send(message)

    return sending


def _route(scope: Scope) -> str:
    handler: str | None = scope.get("berth.route")
    if handler is None:
        return "other"
    return V2_ROUTES.get(handler, handler)


def label_routes(web: QuartTrio) -> None:
    """Label the web app's requests with their route template (for the metrics)."""

    @web.before_request
    async def route_label() -> None:
        rule = request.url_rule
        if rule is not None:
            scope: dict[str, Any] = request.scope  # type: ignore[assignment]
            scope["berth.route"] = rule.rule


_SECRET_ARGS = frozenset(
    {
        "token",
        "access_token",
        "password",
        "secret",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "refresh_token",
        "code",
        "samlresponse",
    }
)


def loggable_target(scope: Scope) -> str:
    """The request path and query, with secret-bearing query parameters redacted."""
    path: str = scope.get("path", "")
    raw = scope.get("query_string", b"")
    if not raw:
        return path
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    clean = [(k, "[redacted]" if k.lower() in _SECRET_ARGS else v) for k, v in pairs]
    return scrub(path + "?" + urlencode(clean))


class Readiness:
    """`/-/ready`: are the database and the store reachable? Asked at most once a second."""

    def __init__(
        self,
        probes: list[tuple[str, Callable[[], Awaitable[None]]]],
        ttl: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.probes = probes
        self.ttl = ttl
        self.timeout = timeout
        self._answer: tuple[float, bool, dict[str, str]] | None = None
        self._lock = trio.Lock()

    async def check(self) -> tuple[bool, dict[str, str]]:
        now = trio.current_time()
        if self._answer is not None and self._answer[0] > now:
            return self._answer[1], self._answer[2]
        async with self._lock:  # one probe at a time; the others take its answer
            if self._answer is not None and self._answer[0] > trio.current_time():
                return self._answer[1], self._answer[2]
            results: dict[str, str] = {}
            for name, probe in self.probes:
                results[name] = "ok"
                with trio.move_on_after(self.timeout) as scope:
                    try:
                        await probe()
                    except BerthError as e:
                        results[name] = e.message
                if scope.cancelled_caught:
                    results[name] = f"no answer within {self.timeout:g} s"
            ok = all(v == "ok" for v in results.values())
            if not ok:
                log.warning("not ready: %s", results)
            self._answer = (trio.current_time() + self.ttl, ok, results)
            return ok, results


def forwarded_client(
    peer: str,
    forwarded: str,
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> str:
    """The client behind trusted reverse proxies: walk `X-Forwarded-For` from the right (the
    hop nearest to us) while the address in hand is a trusted proxy. The first address that is
    not one is the client; a malformed entry stops the walk at the last good address."""

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in trusted)

    address = peer
    for entry in reversed(forwarded.split(",")):
        if not is_trusted(address):
            break
        hop = entry.strip()
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break
        address = hop
    return address


class OperationsMiddleware:
    """Wraps the whole ASGI app (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        readiness: Readiness,
        scrape: ScrapeCollectors | None = None,
        metrics_enabled: bool = True,
        metrics_token: str = "",
        access_log_enabled: bool = True,
        pulls: PullEvents | None = None,
        limiter: RateLimiter | None = None,
        trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
        clock: Callable[[], float] = time.perf_counter,
        host: str = "",
        remembered: Callable[[str], bool] | None = None,
    ) -> None:
        self.app = app
        # Basic credentials this process has checked already (AccessControl.remembered)
        self.remembered = remembered
        self.host = host  # named in /-/ready: which host of several answered
        self.trusted_proxies = trusted_proxies
        self.readiness = readiness
        self.scrape = scrape
        self.metrics_enabled = metrics_enabled
        self.metrics_token = metrics_token
        self.access_log_enabled = access_log_enabled
        self.pulls = pulls
        self.limiter = limiter if limiter is not None and limiter.enabled else None
        self.clock = clock
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        given = None
        agent = ""
        authorization = b""
        forwarded = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
            elif name == b"user-agent":
                agent = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value
            elif name == b"x-forwarded-for":
                forwarded = value.decode("latin-1")
        request_id = context.accept_request_id(given)
        rid = request_id.encode("latin-1")
        # Probes and scrapes: answered here, neither counted nor logged.
        probe = path.startswith("/-/") or path == "/metrics"
        if probe and await self._operations_endpoint(scope, path, _with_request_id(send, rid)):
            return
        scope["berth.request_id"] = request_id
        source = client_address(scope)
        if forwarded and source is not None and self.trusted_proxies:
            real = forwarded_client(source, forwarded, self.trusted_proxies)
            if real != source:  # what every layer below reads (api/asgi.py, client_address)
                scope["client"] = (real, 0)
                source = real
        if path == "/token":
            scope["berth.route"] = "/token"
        token = context.begin(request_id, source)
        started = self.clock()
        status = 0
        sent = 0
        received = 0
        pull: list[tuple[bytes, bytes]] | None = None

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            body = message.get("body")
            if body:
                received += len(body)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                nonlocal pull
                status = message["status"]
                headers = message.setdefault("headers", [])
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers = message["headers"] = [*headers, (b"x-request-id", rid)]
                if (
                    status == 200
                    and self.pulls is not None
                    and self.pulls.wanted
                    and scope["method"] == "GET"
                    and scope.get("berth.route") == "manifests"
                ):
                    pull = headers
            else:
                body = message.get("body")
                if body:
                    sent += len(body)
                sent += message.get("count", 0)  # a zero-copy send (http.response.zerocopysend)
            await send(message)

        if self.metrics_enabled:
            IN_FLIGHT.inc()
        try:
            if (
                path != "/token"
                or self.limiter is None
                or not await self._signin_limited(scope, authorization, source, tracked_send)
            ):
                await self.app(scope, counting_receive, tracked_send)
        finally:
            if self.metrics_enabled:
                IN_FLIGHT.dec()
            elapsed = self.clock() - started
            context.end(token)
            if self.metrics_enabled:
                self._observe(scope, status, elapsed, received, sent)
            if pull is not None:
                self._note_pull(scope, pull)
            if self.access_log_enabled and access_log.isEnabledFor(logging.INFO):
                self._access(scope, request_id, source, agent, status, received, sent, elapsed)

    def _access(  # noqa: PLR0917 (the facts of one request)
        self,
        scope: Scope,
        request_id: str,
        source: str | None,
        agent: str,
        status: int,
        received: int,
        sent: int,
        elapsed: float,
    ) -> None:
        """One access-log line. Built with `makeRecord`, which skips logging's search of the
        call stack for the caller: a measurable part of the cost of a line per request."""
        actor = scope.get("berth.actor") or "-"
        record = access_log.makeRecord(
            access_log.name,
            logging.INFO,
            __file__,
            0,
            '%s %s %s %s %d %d %.1fms "%s"',
            (
                source or "-",
                actor,
                scope["method"],
                loggable_target(scope),
                status,
                sent,
                elapsed * 1000,
                scrub(agent)[:200],
            ),
            None,
            extra={
                "request_id": request_id,
                "fields": {
                    "source": source,
                    "actor": actor,
                    "method": scope["method"],
                    "route": _route(scope),
                    "status": status,
                    "bytes_in": received,
                    "bytes_out": sent,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            },
        )
        access_log.handle(record)

    def _note_pull(self, scope: Scope, headers: list[tuple[bytes, bytes]]) -> None:
        """A manifest GET answered 200: note a pull event from its path and headers."""
        assert self.pulls is not None
        name, _, reference = scope["path"][len("/v2/") :].rpartition("/manifests/")
        values = {k.lower(): v for k, v in headers}
        digest = values.get(b"docker-content-digest", b"").decode("latin-1")
        length = values.get(b"content-length", b"0").decode("latin-1")
        self.pulls.note(
            repository=name,
            digest=digest,
            tag=None if reference.startswith("sha256:") or ":" in reference else reference,
            media_type=values.get(b"content-type", b"").decode("latin-1"),
            size=int(length) if length.isdigit() else 0,
            actor=scope.get("berth.actor"),
        )

    async def _signin_limited(
        self, scope: Scope, authorization: bytes, source: str | None, send: Send
    ) -> bool:
        """Sign-ins (token requests carrying credentials) over the limit get 429."""
        assert self.limiter is not None
        user = basic_user(authorization) if authorization else None
        if user is None and scope["method"] != "POST":
            return False  # an anonymous token: not a sign-in
        # Basic credentials checked before cost no password hash: a client asking for a token
        # before each pull is not held to the rate that bounds password checks. A wrong guess
        # is never remembered, and the lockout still holds for remembered credentials.
        credentials = authorization.decode("latin-1").partition(" ")[2]
        if user is not None and self.remembered is not None and self.remembered(credentials):
            return False
        try:
            self.limiter.check("signin", user, source)
        except RateLimited as e:
            headers = {"content-type": "application/json", **e.headers}
            await respond(send, 429, headers, error_body("TOOMANYREQUESTS", str(e)))
            return True
        return False

    def _observe(self, scope: Scope, status: int, elapsed: float, received: int, sent: int) -> None:
        route = _route(scope)
        method: str = scope["method"]
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                REQUESTS.labels(route, method, str(status)),
                LATENCY.labels(route, method),
                BYTES_IN.labels(route),
                BYTES_OUT.labels(route),
            )
            if len(self._children) < 10_000:  # routes x methods x statuses: bounded anyway
                self._children[key] = children
        children[0].inc()
        children[1].observe(elapsed)
        if received:
            children[2].inc(received)
        if sent:
            children[3].inc(sent)
        handler = scope.get("berth.route")
        if handler == "manifests":
            if method == "GET" and status == 200:
                PULLS.inc()
            elif method == "PUT" and status == 201:
                PUSHES.inc()
        elif handler in ("upload", "uploads") and status == 201:
            BLOB_UPLOADS.inc()

    async def _operations_endpoint(self, scope: Scope, path: str, send: Send) -> bool:
        method = scope["method"]
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return False
        if path == "/-/health":
            await respond(
                send, 200, {"content-type": "application/json"}, b'{"status":"ok"}', head=head
            )
            return True
        if path == "/-/ready":
            ok, checks = await self.readiness.check()
            answer: dict[str, Any] = {"status": "ok" if ok else "unavailable", "checks": checks}
            if self.host:
                answer["host"] = self.host
            body = json.dumps(answer)
            await respond(
                send,
                200 if ok else 503,
                {"content-type": "application/json", "cache-control": "no-store"},
                body.encode(),
                head=head,
            )
            return True
        if path == "/metrics" and self.metrics_enabled:
            if self.metrics_token and not self._metrics_authorised(scope):
                await respond(
                    send,
                    401,
                    {"content-type": "text/plain", "www-authenticate": 'Bearer realm="metrics"'},
                    b"a bearer token is required\n",
                    head=head,
                )
                return True
            text: bytes = await trio.to_thread.run_sync(render, self.scrape)
            await respond(send, 200, {"content-type": CONTENT_TYPE_LATEST}, text, head=head)
            return True
        return False

    def _metrics_authorised(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    return hmac.compare_digest(token.strip().encode(), self.metrics_token.encode())
        return False
