"""The OCI Distribution API (`/v2/...`) as a raw ASGI application.

Routing, header handling and the translation of domain errors into OCI error JSON live here;
what each operation means lives in `registry.service`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from appliance import context
from appliance.api.asgi import (
    ClientDisconnected,
    Message,
    Pace,
    Receive,
    Request,
    Scope,
    Send,
    header_list,
    respond,
    respond_stream,
)
from appliance.api.codes import error_body, error_for
from appliance.api.guard import AuthProblem, Caller, Guard
from appliance.api.ratelimit import RateLimited
from appliance.errors import InvalidName, RangeInvalid, SizeInvalid
from appliance.oci import mediatypes as mt
from appliance.registry import Registry
from appliance.storage.filesystem import FilesystemStore

if TYPE_CHECKING:
    from appliance.proxy.service import PullThrough

log = logging.getLogger("berth.api")

API_VERSION = "registry/2.0"
# nginx in front (`[nginx] enabled`) marks proxied requests with this header; blob downloads
# are then handed back to it under this internal location, aliased to the storage root.
ACCEL_HEADER = "x-berth-accel"
ACCEL_PREFIX = "/_berth_blobs/"
# ASGI's zero-copy send extension: a file range the server sends without the bytes passing
# through the application (appliance/server.py offers it on plain TCP connections).
ZERO_COPY = "http.response.zerocopysend"
MAX_PAGE = 10_000
JSON = "application/json"

# The name is the shortest prefix that leaves a known route; names may contain slashes.
_ROUTE = re.compile(
    r"^(?P<name>.+?)/(?:"
    r"blobs/uploads/?(?P<upload>[^/]*)"
    r"|(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)"
    r"|(?P<tags>tags/list)"
    r")$"
)


@dataclass(frozen=True)
class Route:
    handler: str
    name: str = ""
    ref: str = ""


def match(path: str) -> Route | None:
    """Map the part of a path after `/v2/` to a route, or None."""
    if path == "":
        return Route("base")
    if path == "_catalog":
        return Route("catalog")
    m = _ROUTE.match(path)
    if m is None:
        return None
    name = m.group("name")
    if m.group("tags"):
        return Route("tags", name)
    kind = m.group("kind")
    if kind is None:
        upload = m.group("upload")
        return Route("upload" if upload else "uploads", name, upload)
    return Route(kind, name, m.group("ref"))


def _error(
    status: int,
    code: str,
    message: str | None = None,
    detail: object = None,
    headers: dict[str, str] | None = None,
) -> Exception:
    return _HTTPError(status, code, message, detail, headers or {})


class _HTTPError(Exception):
    def __init__(
        self, status: int, code: str, message: str | None, detail: object, headers: dict[str, str]
    ) -> None:
        super().__init__(message or code)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers


def _parse_range(header: str) -> tuple[int, int]:
    """A PATCH `Content-Range` (`start-end`, inclusive) → (start, end)."""
    text = header.strip().removeprefix("bytes").strip(" =")
    start, sep, end = text.partition("-")
    if not sep or not start.isdigit() or not end.isdigit() or int(end) < int(start):
        raise _error(416, "RANGE_INVALID", f"invalid Content-Range {header[:100]!r}")
    return int(start), int(end)


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """A GET `Range` → (start, length); None to serve the whole blob (unsupported forms)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    if first == "":
        if not last.isdigit() or int(last) == 0:
            raise RangeInvalid("unsatisfiable range", size)
        length = min(int(last), size)
        return size - length, length
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise RangeInvalid("unsatisfiable range", size)
    return start, end - start + 1


async def _after(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for data in rest:
        yield data


def _page_size(request: Request) -> int | None:
    n = request.arg("n")
    if n is None or n == "":
        return None
    if not n.isdigit():
        raise _error(400, "UNSUPPORTED", "n must be a non-negative integer")
    return min(int(n), MAX_PAGE)


def pushed_by(request: Request) -> str | None:
    """Who is pushing, as the audit log names them (`alice`, `robot:team+ci`), from what the
    guard already found out (no query)."""
    caller: Caller | None = request.scope.get("berth.caller")
    if caller is None:
        return None
    if caller.principal is not None:
        return None if caller.principal.anonymous else caller.principal.actor
    if caller.claims is None:
        return None
    kind, _, name = caller.claims.subject.partition(":")
    return name if kind == "user" else caller.claims.subject


class RegistryAPI:
    """ASGI app for everything under `/v2/`."""

    def __init__(
        self,
        registry: Registry,
        public_url: str = "",
        *,
        guard: Guard,
        proxy: PullThrough | None = None,
        admit: Callable[[Scope, str, str], Awaitable[None]] | None = None,
        pace: Pace | None = None,
    ) -> None:
        self.registry = registry
        self.pace = pace  # how slowly request bodies may arrive (api/asgi.py)
        # After sign-in, before the handler: names the actor, applies rate limits (ops).
        self.admit = admit
        self.proxy = proxy  # the pull-through cache of proxy namespaces, if any are configured
        self.guard = guard
        self.public_url = public_url.rstrip("/")
        self._handlers: dict[str, dict[str, Callable[..., Awaitable[None]]]] = {
            "base": {"GET": self.base, "HEAD": self.base},
            "catalog": {"GET": self.catalog},
            "tags": {"GET": self.tags},
            "manifests": {
                "GET": self.get_manifest,
                "HEAD": self.get_manifest,
                "PUT": self.put_manifest,
                "DELETE": self.delete_manifest,
            },
            "blobs": {"GET": self.get_blob, "HEAD": self.get_blob, "DELETE": self.delete_blob},
            "uploads": {"POST": self.start_upload},
            "upload": {
                "GET": self.upload_status,
                "PATCH": self.patch_upload,
                "PUT": self.put_upload,
                "DELETE": self.cancel_upload,
            },
            "referrers": {"GET": self.referrers},
        }

    def url(self, path: str) -> str:
        return self.public_url + path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, self.pace)
        request_id = scope.get("berth.request_id")  # set by the operations middleware
        if request_id is None:  # the API alone (tests)
            request_id = scope["berth.request_id"] = context.new_request_id()
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers: list[tuple[bytes, bytes]] = message["headers"]
                headers.append((b"docker-distribution-api-version", API_VERSION.encode()))
                headers.append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.dispatch(request, tracked_send)
        except ClientDisconnected:
            log.info("request %s: client disconnected", request_id)
        except _HTTPError as e:
            await self._send_error(
                request, tracked_send, e.status, e.code, e.message, e.detail, e.headers
            )
        except AuthProblem as e:
            await self._send_error(
                request, tracked_send, e.status, e.code, e.message, None, e.headers
            )
        except RateLimited as e:
            await self._send_error(
                request, tracked_send, 429, "TOOMANYREQUESTS", str(e), None, e.headers
            )
        except Exception as e:
            mapped = error_for(e)
            extra: dict[str, str] = {}
            if isinstance(e, RangeInvalid):
                extra = self._range_headers(request, e.size)
            detail: object
            if mapped is None:
                log.exception("request %s: unexpected error", request_id)
                status, code, message, detail = 500, "UNKNOWN", None, {"request_id": request_id}
            else:
                status, error_code, message, detail = mapped
                code = error_code.value
                if status >= 500:
                    log.error("request %s: %s", request_id, message)  # noqa: TRY400 (expected)
            if started:
                return  # too late for an error response; the connection is cut
            await self._send_error(request, tracked_send, status, code, message, detail, extra)

    def _range_headers(self, request: Request, size: int) -> dict[str, str]:
        path = request.scope["path"]
        if "/blobs/uploads/" in path:
            return {
                "location": self.url(path),
                "range": f"0-{max(size - 1, 0)}",
                "docker-upload-uuid": path.rsplit("/", 1)[1],
            }
        return {"content-range": f"bytes */{size}"}

    async def _send_error(  # noqa: PLR0917
        self,
        request: Request,
        send: Send,
        status: int,
        code: str,
        message: str | None,
        detail: object,
        extra: dict[str, str],
    ) -> None:
        body = error_body(code, message, detail)
        headers = {"content-type": JSON, **extra}
        if request.method not in ("HEAD", "GET", "DELETE") and not request._body_done:
            # The rest of an unread body would be taken for the next request.
            headers["connection"] = "close"
        await respond(send, status, headers, body, head=request.method == "HEAD")

    async def dispatch(self, request: Request, send: Send) -> None:
        raw_path: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
        if b"%" in raw_path or b"//" in raw_path or b"/../" in raw_path + b"/":
            raise InvalidName("percent-encoded or empty path components are not allowed")
        path = raw_path.decode("latin-1").split("?", 1)[0]
        if path == "/v2":
            path = "/v2/"
        route = match(path[len("/v2/") :])
        if route is None:
            raise _error(404, "NAME_UNKNOWN", "no such endpoint", {"path": path[:200]})
        request.scope["berth.route"] = route.handler  # the metrics' route label
        methods = self._handlers[route.handler]
        handler = methods.get(request.method)
        if handler is None:
            raise _error(
                405,
                "UNSUPPORTED",
                f"{request.method} is not allowed here",
                {"allowed": sorted(methods)},
                {"allow": ", ".join(sorted(methods))},  # RFC 9110 requires it on a 405
            )
        if self.proxy is not None and self.proxy.serves(route.name):
            refusal = self.proxy.refusal(route.handler, request.method, route.name)
            if refusal is not None:
                raise _error(403, "DENIED", refusal)
        await self.guard.check(request, route.handler, route.name)
        if self.admit is not None:
            await self.admit(request.scope, route.handler, request.method)
        await handler(request, send, route)

    # -- base, catalog, tags, referrers -------------------------------------------------

    def _stored_name(self, name: str) -> str:
        """Where `name`'s records are: itself, or for a proxy alias the cached repository."""
        if self.proxy is not None and self.proxy.serves(name):
            return self.proxy.stored_name(name)
        return name

    async def base(self, request: Request, send: Send, route: Route) -> None:
        await respond(send, 200, {"content-type": JSON}, b"{}", head=request.method == "HEAD")

    def _next_link(self, path: str, n: int, last: str, extra: dict[str, str]) -> str:
        query = urlencode({**extra, "n": n, "last": last})
        return f'<{path}?{query}>; rel="next"'

    async def catalog(self, request: Request, send: Send, route: Route) -> None:
        n = _page_size(request)
        visible = await self.guard.visible(request)
        names = await self._visible_catalog(
            visible, None if n is None else n + 1, request.arg("last")
        )
        headers = {"content-type": JSON}
        if n is not None:
            more, names = len(names) > n, names[:n]
            if more and names:
                headers["link"] = self._next_link("/v2/_catalog", n, names[-1], {})
        body = json.dumps({"repositories": names}).encode()
        await respond(send, 200, headers, body)

    async def _visible_catalog(
        self, visible: Callable[[str], bool], limit: int | None, last: str | None
    ) -> list[str]:
        """Up to `limit` repository names after `last` that pass `visible`, in order."""
        out: list[str] = []
        batch = 1000
        while limit is None or len(out) < limit:
            names = await self.registry.catalog(batch, last)
            out.extend(name for name in names if visible(name))
            if len(names) < batch:
                break
            last = names[-1]
        return out if limit is None else out[:limit]

    async def tags(self, request: Request, send: Send, route: Route) -> None:
        n = _page_size(request)
        names = await self.registry.tags(
            self._stored_name(route.name), None if n is None else n + 1, request.arg("last")
        )
        headers = {"content-type": JSON}
        if n is not None:
            more, names = len(names) > n, names[:n]
            if more and names:
                path = f"/v2/{route.name}/tags/list"
                headers["link"] = self._next_link(path, n, names[-1], {})
        body = json.dumps({"name": route.name, "tags": names}).encode()
        await respond(send, 200, headers, body)

    async def referrers(self, request: Request, send: Send, route: Route) -> None:
        artifact_type = request.arg("artifactType")
        descriptors = await self.registry.referrers(
            self._stored_name(route.name), route.ref, artifact_type
        )
        headers = {"content-type": mt.OCI_INDEX}
        if artifact_type is not None:
            headers["oci-filters-applied"] = "artifactType"
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors}
        ).encode()
        await respond(send, 200, headers, body)

    # -- manifests -----------------------------------------------------------------------

    async def get_manifest(self, request: Request, send: Send, route: Route) -> None:
        if self.proxy is not None and self.proxy.serves(route.name):
            record = await self.proxy.manifest(route.name, route.ref)
        else:
            record = await self.registry.manifest(route.name, route.ref)
        gate = self.registry.pull_gate
        if gate is not None and request.method == "GET":
            await gate(route.name, record.digest, record.media_type, record.payload)
        headers = {
            "content-type": record.media_type,
            "docker-content-digest": record.digest,
            "etag": f'"{record.digest}"',
        }
        await respond(send, 200, headers, record.payload, head=request.method == "HEAD")

    async def put_manifest(self, request: Request, send: Send, route: Route) -> None:
        limit = self.registry.max_manifest_size
        length = request.content_length
        if length is not None and length > limit:
            raise _error(413, "SIZE_INVALID", f"manifest is larger than {limit} bytes")
        payload = await request.read(limit)
        result = await self.registry.put_manifest(
            route.name,
            route.ref,
            payload,
            request.headers.get("content-type"),
            pushed_by(request),
        )
        headers = {
            "location": self.url(f"/v2/{route.name}/manifests/{result.digest}"),
            "docker-content-digest": result.digest,
        }
        if result.subject is not None:
            headers["oci-subject"] = result.subject
        await respond(send, 201, headers)

    async def delete_manifest(self, request: Request, send: Send, route: Route) -> None:
        await self.registry.delete_manifest(route.name, route.ref)
        await respond(send, 202, {})

    # -- blobs ---------------------------------------------------------------------------

    async def get_blob(self, request: Request, send: Send, route: Route) -> None:
        if self.proxy is not None and self.proxy.serves(route.name):
            cached = await self.proxy.cached_blob(route.name, route.ref)
            if cached is None:  # fetched upstream: streamed to this client, or awaited
                cached = await self.proxy.serve_blob(
                    route.name,
                    route.ref,
                    send,
                    head=request.method == "HEAD",
                    whole="range" not in request.headers,
                )
                if cached is None:
                    return
            blob = cached
        else:
            blob = await self.registry.blob(route.name, route.ref)
        headers = {
            "content-type": "application/octet-stream",
            "docker-content-digest": blob.digest,
            "etag": f'"{blob.digest}"',
            "accept-ranges": "bytes",
            "cache-control": "max-age=31536000",
        }
        start, length, status = 0, blob.size, 200
        range_header = request.headers.get("range")
        if range_header:
            picked = _byte_range(range_header, blob.size)
            if picked is not None:
                start, length = picked
                status = 206
                headers["content-range"] = f"bytes {start}-{start + length - 1}/{blob.size}"
        headers["content-length"] = str(length)
        if request.method == "HEAD":
            await self.registry.blob_checked(blob)
            await respond(send, status, headers, head=True)
            return
        url = await self.registry.blob_url(blob)
        if url is not None:  # storage.s3.redirect: the client fetches (and ranges) it there
            await respond(send, 307, {"location": url, "docker-content-digest": blob.digest})
            return
        if request.headers.get(ACCEL_HEADER) == "1" and isinstance(
            self.registry.store, FilesystemStore
        ):
            # Behind Berth's nginx front (omnibus/nginx.conf): authorised here, sent by nginx
            # (sendfile, and it answers Range itself). Only nginx sets this header.
            accel = {"x-accel-redirect": ACCEL_PREFIX + blob.storage_key}
            await respond(send, 200, {"docker-content-digest": blob.digest, **accel})
            return
        store = self.registry.store
        if ZERO_COPY in request.scope.get("extensions", {}) and isinstance(store, FilesystemStore):
            # The server sends the file's bytes itself (sendfile): no copy through this process.
            # Opened (and its length checked) before the status line, as below.
            file = await store.open_range(blob.storage_key, start, length)
            try:
                await send({"type": "http.response.start", "status": status,
                            "headers": header_list(headers)})  # fmt: skip
                await send({"type": ZERO_COPY, "file": file, "offset": start, "count": length})
            finally:
                file.close()
            return
        body = self.registry.read_blob(blob, start, length)
        # The first piece is read before the status line, so that storage being unreachable
        # (or bytes missing) is an OCI error with its status rather than a cut-off 200.
        first = await anext(body, b"")
        await respond_stream(send, status, headers, _after(first, body))

    async def delete_blob(self, request: Request, send: Send, route: Route) -> None:
        await self.registry.delete_blob(route.name, route.ref)
        await respond(send, 202, {})

    # -- uploads -------------------------------------------------------------------------

    def _upload_headers(self, name: str, upload_id: str, size: int) -> dict[str, str]:
        return {
            "location": self.url(f"/v2/{name}/blobs/uploads/{upload_id}"),
            "range": f"0-{max(size - 1, 0)}",
            "docker-upload-uuid": upload_id,
        }

    def _blob_created(self, name: str, digest: str) -> dict[str, str]:
        return {
            # Unquoted: digests are path-safe, and dispatch refuses percent-encoded paths.
            "location": self.url(f"/v2/{name}/blobs/{digest}"),
            "docker-content-digest": digest,
        }

    def _chunk(self, request: Request) -> tuple[int | None, int | None, AsyncIterator[bytes]]:
        """Where a chunk starts by its Content-Range (checked against its Content-Length), its
        declared length if any, and its body, held to the range's length when that is all the
        client declared."""
        header = request.headers.get("content-range")
        if header is None:
            return None, request.content_length, request.chunks()
        start, end = _parse_range(header)
        length = request.content_length
        if length is not None and length != end - start + 1:
            raise SizeInvalid(
                f"Content-Range {start}-{end} is {end - start + 1} bytes, "
                f"Content-Length says {length}"
            )
        exact = None if length is not None else end - start + 1
        return start, end - start + 1, request.chunks(exact_length=exact)

    async def start_upload(self, request: Request, send: Send, route: Route) -> None:
        mount, source = request.arg("mount"), request.arg("from")
        digest = request.arg("digest")
        if (
            mount is not None
            and source is not None
            and await self.guard.may(request, source, "pull")
        ):
            blob = await self.registry.mount(route.name, source, mount)
            if blob is not None:
                await respond(send, 201, self._blob_created(route.name, blob.digest))
                return
        if digest is not None:
            blob = await self.registry.upload_monolithic(
                route.name, digest, request.chunks(), pushed_by(request), request.content_length
            )
            await respond(send, 201, self._blob_created(route.name, blob.digest))
            return
        record = await self.registry.start_upload(route.name, pushed_by(request))
        await respond(send, 202, self._upload_headers(route.name, record.id, 0))

    async def upload_status(self, request: Request, send: Send, route: Route) -> None:
        record = await self.registry.upload_status(route.name, route.ref)
        await respond(send, 204, self._upload_headers(route.name, record.id, record.size))

    async def patch_upload(self, request: Request, send: Send, route: Route) -> None:
        start, length, body = self._chunk(request)
        size = await self.registry.append(route.name, route.ref, body, start, length)
        await respond(send, 202, self._upload_headers(route.name, route.ref, size))

    async def put_upload(self, request: Request, send: Send, route: Route) -> None:
        digest = request.arg("digest")
        if digest is None:
            raise _error(400, "DIGEST_INVALID", "the digest query parameter is required")
        start, length, body = self._chunk(request)
        has_body = (request.content_length or 0) > 0 or "chunked" in request.headers.get(
            "transfer-encoding", ""
        )
        blob = await self.registry.complete(
            route.name, route.ref, digest, body if has_body else None, start, length
        )
        await respond(send, 201, self._blob_created(route.name, blob.digest))

    async def cancel_upload(self, request: Request, send: Send, route: Route) -> None:
        await self.registry.cancel_upload(route.name, route.ref)
        await respond(send, 204, {})


__all__ = ["RegistryAPI", "match"]
