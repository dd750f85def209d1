"""A client of one upstream registry: manifests and blobs over the Distribution API.

Authentication follows what the upstream asks for. A `401` with `WWW-Authenticate: Basic`
makes the client send the configured credentials from then on; a `401` with
`WWW-Authenticate: Bearer realm=…,service=…,scope=…` is the Docker token flow: the client fetches
a token from the realm (with the credentials as Basic, when configured, anonymously otherwise),
keeps it per scope until shortly before it expires, and retries.

Errors are translated here, at the boundary (no httpx exception leaves this module):

    UpstreamUnavailable (Unavailable)   cannot connect, timed out, cut off, 5xx, 429
    UpstreamNotFound    (NotFound)      404, or 401/403 after authenticating: the upstream
                                        will not give it to us (Docker Hub answers 401 for a
                                        repository that does not exist)
    UpstreamInvalid     (Unavailable)   the upstream sent something that is not what was asked
                                        (a digest that does not match, an unusable manifest)
      UpstreamSchema1   (UpstreamInvalid)  ... a Docker schema 1 manifest (Berth stores none)
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpcore
import httpx
import trio

from appliance.errors import InvalidDigest, NotFound, Unavailable
from appliance.oci import mediatypes as mt
from appliance.oci.digest import Digest, is_digest
from appliance.proxy.settings import ProxyNamespace
from appliance.registry.copy import SCHEMA1, FetchedManifest

log = logging.getLogger("berth.proxy")
# httpcore reads 64 KiB per receive; 1 MiB lets a blob stream from upstream at disk speed
# (the same choice as hypercorn's receive size in server.py).
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = 1 << 20
# httpx logs every request at INFO: one line per upstream request is noise in Berth's log.
logging.getLogger("httpx").setLevel(logging.WARNING)

# Everything Berth stores; Docker schema 1 is left out on purpose (upstreams then convert).
ACCEPT = ", ".join([mt.OCI_INDEX, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST_LIST, mt.DOCKER_MANIFEST])
CHUNK = 1 << 20
MAX_PAGES = 10_000  # of a catalog or tag listing (1,000 names each)
MAX_LISTING = 8 << 20  # bytes of one such page
_PARAM = re.compile(r'(\w+)="([^"]*)"')


class UpstreamUnavailable(Unavailable):
    pass


class UpstreamNotFound(NotFound):
    pass


class UpstreamInvalid(Unavailable):
    pass


class UpstreamSchema1(UpstreamInvalid):
    """The upstream answered with a Docker schema 1 manifest (it has nothing newer)."""


@dataclass(frozen=True)
class BlobStream:
    """An upstream blob response being read: its size (when the upstream said) and body."""

    size: int | None
    chunks: AsyncIterator[bytes]


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…"` → ("bearer", {"realm": …, "service": …})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in _PARAM.findall(rest)}


class Upstream:
    """The upstream registry of one proxy namespace. One per process; safe for concurrent use."""

    def __init__(
        self,
        ns: ProxyNamespace,
        *,
        timeout: float = 30.0,
        ca_file: str = "",
        clock: Any = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.ns = ns
        self.clock = clock or trio.current_time
        verify: ssl.SSLContext | bool = True
        if ca_file:
            verify = ssl.create_default_context(cafile=ca_file)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            verify=verify,
            follow_redirects=True,  # Docker Hub sends blob downloads to a CDN
            transport=transport,
            headers={"user-agent": "berth-proxy"},
        )
        self._basic = False
        self._tokens: dict[str, tuple[str, float]] = {}  # scope → (token, expires at)
        self._token_lock = trio.Lock()

    async def aclose(self) -> None:
        await self.client.aclose()

    # -- authentication --------------------------------------------------------------------

    def _auth_headers(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token is not None and token[1] > self.clock():
            return {"authorization": f"Bearer {token[0]}"}
        if self._basic and self.ns.username is not None:
            return {"authorization": self._basic_value()}
        return {}

    def _basic_value(self) -> str:
        assert self.ns.username is not None
        return httpx.BasicAuth(self.ns.username, self.ns.password or "")._auth_header

    async def _authenticate(self, challenge: str, scope: str, sent: str | None) -> bool:
        """Act on a 401's challenge to a request that carried `sent` (its Authorization);
        True when a retry may now succeed. Requests run concurrently: a 401 to a request sent
        before another one's sign-in is retried with what that one got, not refused."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self.ns.username is None or sent == self._basic_value():
                return False  # no credentials, or these very ones were refused
            self._basic = True
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        async with self._token_lock:
            current = self._tokens.get(scope)
            if current is not None and current[1] > self.clock() and sent != f"Bearer {current[0]}":
                return True  # another request got a token meanwhile
            query = {"scope": params.get("scope") or scope}
            if "service" in params:
                query["service"] = params["service"]
            headers = {}
            if self.ns.username is not None:
                headers["authorization"] = self._basic_value()
            try:
                r = await self.client.get(params["realm"], params=query, headers=headers)
            except httpx.HTTPError as e:
                raise UpstreamUnavailable(f"{self.ns.name}: token service: {_describe(e)}") from e
            if r.status_code in (401, 403):
                log.warning(
                    "proxy %s: the upstream's token service refused our credentials (%d)",
                    self.ns.name,
                    r.status_code,
                )
                return False
            if r.status_code != 200:
                raise UpstreamUnavailable(f"{self.ns.name}: token service answered {r.status_code}")
            try:
                body = r.json()
                token = str(body.get("token") or body["access_token"])
                lifetime = float(body.get("expires_in") or 60)
            except (ValueError, KeyError, TypeError) as e:
                raise UpstreamInvalid(f"{self.ns.name}: token service sent no token") from e
            # Renew a little early: a token must not expire between the check and its use.
            self._tokens[scope] = (token, self.clock() + max(lifetime - 10, lifetime / 2))
            return True

    # -- requests --------------------------------------------------------------------------

    def _url(self, repository: str, kind: str, ref: str) -> str:
        return f"{self.ns.url}/v2/{repository}/{kind}/{quote(ref, safe=':')}"

    @asynccontextmanager
    async def _request(
        self, method: str, repository: str, kind: str, ref: str, headers: dict[str, str]
    ) -> AsyncIterator[httpx.Response]:
        """An authenticated request whose response body is read by the caller (streamed).
        Errors of the transport become UpstreamUnavailable."""
        scope = f"repository:{repository}:pull"
        url = self._url(repository, kind, ref)
        for attempt in range(2):
            auth = self._auth_headers(scope)
            request = self.client.build_request(method, url, headers={**headers, **auth})
            try:
                response = await self.client.send(request, stream=True)
            except httpx.HTTPError as e:
                raise UpstreamUnavailable(f"{self.ns.name}: {_describe(e)}") from e
            try:
                if response.status_code == 401 and attempt == 0:
                    challenge = response.headers.get("www-authenticate", "")
                    if await self._authenticate(challenge, scope, auth.get("authorization")):
                        continue
                try:
                    yield response
                except httpx.HTTPError as e:
                    raise UpstreamUnavailable(f"{self.ns.name}: {_describe(e)}") from e
                return
            finally:
                with trio.CancelScope(shield=True):
                    await response.aclose()

    def _check(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status == 200:
            return
        if status in (401, 403, 404):
            raise UpstreamNotFound(
                f"{what} is not available from the upstream of {self.ns.name} ({status})"
            )
        raise UpstreamUnavailable(f"{self.ns.name}: the upstream answered {status} for {what}")

    async def manifest_digest(self, repository: str, reference: str) -> str | None:
        """HEAD: the digest a tag points at upstream (None if the upstream does not say)."""
        what = f"manifest {repository}:{reference}"
        async with self._request(
            "HEAD", repository, "manifests", reference, {"accept": ACCEPT}
        ) as r:
            self._check(r, what)
            digest: str | None = r.headers.get("docker-content-digest")
            return digest

    async def manifest(self, repository: str, reference: str, limit: int) -> FetchedManifest:
        """GET a manifest by tag or digest; its digest is checked against what was asked."""
        what = f"manifest {repository}:{reference}"
        async with self._request(
            "GET", repository, "manifests", reference, {"accept": ACCEPT}
        ) as r:
            self._check(r, what)
            declared = r.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise UpstreamInvalid(f"{what} is larger than {limit} bytes")
            payload = await _read_bounded(r.aiter_raw(), limit, f"{what} is larger")
            media_type = mt.base(r.headers.get("content-type"))
            header = r.headers.get("docker-content-digest")
        if media_type in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED):
            raise UpstreamSchema1(f"{what}: {SCHEMA1}")
        expected = Digest.parse(reference) if is_digest(reference) else None
        if expected is None and header:
            with contextlib.suppress(InvalidDigest):  # an unusable header: our own digest serves
                expected = Digest.parse(header)
        algorithm = expected.algorithm if expected is not None else "sha256"
        actual = Digest.of(payload, algorithm)
        if expected is not None and actual != expected:
            raise UpstreamInvalid(f"{what}: the upstream sent content of digest {actual}")
        return FetchedManifest(str(actual), media_type, payload)

    async def blob_size(self, repository: str, digest: str) -> int:
        """HEAD a blob: its size. Raises UpstreamNotFound."""
        async with self._request("HEAD", repository, "blobs", digest, {}) as r:
            self._check(r, f"blob {digest}")
            length = r.headers.get("content-length", "")
            if not length.isdigit():
                raise UpstreamInvalid(f"blob {digest}: the upstream sent no length")
            return int(length)

    @asynccontextmanager
    async def blob(self, repository: str, digest: str) -> AsyncIterator[BlobStream]:
        """GET a blob, streamed. The bytes are not checked here: the caller stores them through
        the registry, which verifies the digest before the blob becomes visible."""
        async with self._request("GET", repository, "blobs", digest, {}) as r:
            self._check(r, f"blob {digest}")
            length = r.headers.get("content-length", "")
            size = int(length) if length.isdigit() else None

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for data in batched(r.aiter_raw(), CHUNK):
                        yield data
                except httpx.HTTPError as e:
                    raise UpstreamUnavailable(
                        f"{self.ns.name}: blob {digest}: {_describe(e)}"
                    ) from e

            yield BlobStream(size, chunks())

    async def tags(self, repository: str) -> list[str]:
        """Every tag of an upstream repository (following `Link` pages)."""
        url = f"{self.ns.url}/v2/{repository}/tags/list?n=1000"
        return await self._pages(
            url, f"repository:{repository}:pull", "tags", f"tags of {repository}"
        )

    async def catalog(self) -> list[str]:
        """Every repository the upstream lists in its catalog (following `Link` pages)."""
        return await self._pages(
            f"{self.ns.url}/v2/_catalog?n=1000", "registry:catalog:*", "repositories", "catalog"
        )

    async def _get_bounded(self, url: str, scope: str, what: str) -> tuple[httpx.Response, bytes]:
        """GET `url` with the credentials for `scope`; the body is read up to MAX_LISTING."""
        request = self.client.build_request("GET", url, headers=self._auth_headers(scope))
        try:
            r = await self.client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise UpstreamUnavailable(f"{self.ns.name}: {_describe(e)}") from e
        try:
            body = await _read_bounded(r.aiter_bytes(), MAX_LISTING, f"{what}: a page is larger")
        except httpx.HTTPError as e:
            raise UpstreamUnavailable(f"{self.ns.name}: {_describe(e)}") from e
        finally:
            with trio.CancelScope(shield=True):
                await r.aclose()
        return r, body

    async def _pages(self, url: str, scope: str, key: str, what: str) -> list[str]:
        """The strings under `key` of a paginated listing. A `Link` to another origin, a page
        seen before or more than MAX_PAGES pages end it with UpstreamInvalid: credentials
        are never sent elsewhere, and a hostile upstream cannot keep a listing going."""
        out: list[str] = []
        seen: set[str] = set()
        origin = httpx.URL(url).copy_with(path="/", query=None)
        page: str | None = url
        while page is not None:
            if page in seen or len(seen) >= MAX_PAGES:
                raise UpstreamInvalid(f"{self.ns.name}: {what}: the pages do not end")
            seen.add(page)
            for attempt in range(2):
                r, body = await self._get_bounded(page, scope, what)
                challenge = r.headers.get("www-authenticate", "")
                if (
                    r.status_code == 401
                    and attempt == 0
                    and await self._authenticate(
                        challenge, scope, r.request.headers.get("authorization")
                    )
                ):
                    continue
                break
            self._check(r, what)
            try:
                items = json.loads(body).get(key) or []
            except (ValueError, AttributeError, RecursionError) as e:
                raise UpstreamInvalid(f"{what}: not a JSON listing") from e
            if not isinstance(items, list):
                raise UpstreamInvalid(f"{what}: not a JSON listing")
            out.extend(str(t) for t in items)
            link = r.links.get("next", {}).get("url")
            if not link:
                break
            target = httpx.URL(page).join(link)
            if target.copy_with(path="/", query=None) != origin:
                raise UpstreamInvalid(f"{self.ns.name}: {what}: the next page is elsewhere")
            page = str(target)
        return out


async def batched(pieces: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """`pieces` joined into chunks of at least `size` bytes (the last may be shorter).

    A blob arrives from the socket in pieces of what each receive found (up to 1 MiB); the
    store and the client are better served by fewer, larger chunks. One join per chunk: httpx's
    own re-chunking (`aiter_raw(size)`) copied each byte several times, a fifth of Berth's CPU
    in a cold pull-through."""
    held: list[bytes] = []
    count = 0
    async for data in pieces:
        held.append(data)
        count += len(data)
        if count >= size:
            yield held[0] if len(held) == 1 else b"".join(held)
            held.clear()
            count = 0
    if held:
        yield b"".join(held)


async def _read_bounded(chunks: AsyncIterator[bytes], limit: int, too_large: str) -> bytes:
    """A whole body of at most `limit` bytes; UpstreamInvalid ("<too_large> than N bytes")
    as soon as more arrive, without holding them."""
    parts: list[bytes] = []
    held = 0
    async for data in chunks:
        held += len(data)
        if held > limit:
            raise UpstreamInvalid(f"{too_large} than {limit} bytes")
        parts.append(data)
    return b"".join(parts)


def _describe(e: httpx.HTTPError) -> str:
    if isinstance(e, httpx.TimeoutException):
        return "the upstream timed out"
    if isinstance(e, httpx.ConnectError):
        return "cannot connect to the upstream"
    return f"the upstream connection failed ({type(e).__name__})"
