"""Pull-through: serve a proxy namespace's repositories from the cache, filling it from upstream.

A pull of `hub/library/alpine:3` (proxy namespace `hub`) is answered from the local store when
it can be, and otherwise fetched from the namespace's upstream on first use:

* **Manifests** are fetched whole, checked against their digest, and kept byte for byte. A
  manifest is stored as a regular manifest (`Registry.put_manifest`, as a push would) as soon as
  every blob and child it needs is cached; until then it waits in `proxy_manifests` and is
  served from there. An index whose platforms are not all cached stays there.
* **Blobs** are streamed from upstream to the client while the same bytes go into an upload
  (`Registry.upload_monolithic`): the digest is verified before the blob becomes visible and a
  failure leaves nothing behind. Concurrent pulls of one uncached blob share one upstream fetch,
  in this process (single flight) and across the host's workers (a host lock, runtime/hostlocks.py);
  the others wait for it and are served from the cache.
* **Tags** are served from the cache for `proxy.tag_ttl` seconds after they were last checked,
  then re-validated with a HEAD (digest compared). When the upstream cannot be reached (or
  refuses), the cached copy is served and the check retried after `RETRY_AFTER` seconds.
  Manifests by digest never expire.

Names: Docker Hub's convention (`hub/alpine` is `library/alpine` upstream) maps both spellings
to one cached repository, `hub/library/alpine`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio
from prometheus_client import Counter

from appliance.api.asgi import Send, header_list
from appliance.config import Config
from appliance.errors import (
    BerthError,
    BlobNotFound,
    InvalidName,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestNotFound,
    Unavailable,
)
from appliance.metadata.db import Database
from appliance.metadata.store import BlobRecord, ManifestRecord
from appliance.oci import manifest as manifests
from appliance.oci.digest import Digest, is_digest
from appliance.oci.names import namespace_of, readable_reference, validate_name
from appliance.proxy import settings
from appliance.proxy.records import CachedTag, ProxyStore
from appliance.proxy.settings import ProxyNamespace
from appliance.proxy.upstream import Upstream, UpstreamInvalid, UpstreamNotFound
from appliance.registry import Registry
from appliance.registry.copy import FetchedManifest, read_ahead
from appliance.runtime.hostlocks import HostLocks
from appliance.runtime.metrics import REGISTRY

log = logging.getLogger("berth.proxy")

T = TypeVar("T")

# After a failed re-validation, serve the cached tag this long before asking upstream again.
RETRY_AFTER = 30.0
# Chunks (of about 1 MiB) read from upstream ahead of what the store has written.
AHEAD = 4

REQUESTS = Counter(
    "berth_proxy_requests",
    "Pulls through proxy namespaces: hit (from the cache), miss (fetched upstream), "
    "revalidated (tag checked upstream, unchanged) or stale (upstream failed, cache served).",
    ["namespace", "kind", "result"],
    registry=REGISTRY,
)
UPSTREAM_BYTES = Counter(
    "berth_proxy_upstream_bytes",
    "Blob bytes fetched from upstream registries.",
    ["namespace"],
    registry=REGISTRY,
)


@dataclass
class _Flight(Generic[T]):
    done: trio.Event = field(default_factory=trio.Event)
    result: T | None = None
    error: Exception | None = None
    ok: bool = False


class SingleFlight(Generic[T]):
    """Run one call per key at a time in this process; concurrent callers share its outcome.

    A caller that finds a call running waits for it and gets its result (or its error). If the
    running call was cancelled, a waiter runs the call itself.
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, _Flight[T]] = {}

    def running(self, key: Hashable) -> bool:
        return key in self._running

    async def run(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> T:
        while True:
            flight = self._running.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.ok:
                return flight.result  # type: ignore[return-value]
        flight = _Flight()
        self._running[key] = flight
        try:
            result = await fn()
        except Exception as e:
            flight.error = e
            raise
        else:
            flight.result, flight.ok = result, True
            return result
        finally:
            del self._running[key]
            flight.done.set()


@dataclass(frozen=True)
class Target:
    """A repository of a proxy namespace: the local (cached) and upstream names."""

    ns: ProxyNamespace
    upstream: Upstream
    local: str
    remote: str


class _Sink:
    """Where a blob fetched upstream is also streamed: the client that asked, if any."""

    def __init__(self, send: Send | None) -> None:
        self.send = send
        self.started = False


class PullThrough:
    """The pull-through cache of every proxy namespace of one Berth process."""

    def __init__(
        self,
        namespaces: dict[str, ProxyNamespace],
        registry: Registry,
        store: ProxyStore,
        *,
        tag_ttl: float = 300.0,
        timeout: float = 30.0,
        ca_file: str = "",
        clock: Callable[[], float],
        locks: HostLocks | None = None,
    ) -> None:
        self.namespaces = namespaces
        self.locks = locks  # one upstream fetch per blob across the host's workers
        self.registry = registry
        self.store = store
        self.tag_ttl = tag_ttl
        self.clock = clock
        self.upstreams = {
            name: Upstream(ns, timeout=timeout, ca_file=ca_file, clock=clock)
            for name, ns in namespaces.items()
        }
        self._tags: dict[tuple[str, str], CachedTag] = {}
        self._manifests: SingleFlight[ManifestRecord] = SingleFlight()
        self._blobs: SingleFlight[BlobRecord] = SingleFlight()

    async def aclose(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.aclose()

    def serves(self, name: str) -> bool:
        """Whether `name` is in a proxy namespace (a dictionary lookup: hot paths call it)."""
        return bool(self.namespaces) and namespace_of(name) in self.namespaces

    def stored_name(self, name: str) -> str:
        """The repository the cache keeps `name` in (`hub/alpine` → `hub/library/alpine`), so
        that listing tags or referrers answers the same under either spelling."""
        return self.namespaces[namespace_of(name)].local_name(name) if "/" in name else name

    def refusal(self, handler: str, method: str, name: str) -> str | None:
        """Why a request to `name` (in a proxy namespace) is refused, or None: pushes are."""
        if handler in ("uploads", "upload") or (handler == "manifests" and method == "PUT"):
            ns = self.namespaces[namespace_of(name)]
            return (
                f"{ns.name} is a proxy namespace (a cache of {ns.url}): pushes to it are "
                "refused; push to another namespace"
            )
        return None

    def target(self, name: str) -> Target:
        ns = self.namespaces[namespace_of(name)]
        if "/" not in name:
            raise InvalidName(
                f"{name!r} is a proxy namespace: pull a repository in it "
                f"(e.g. {name}/library/alpine)"
            )
        remote = validate_name(ns.upstream_name(name))
        return Target(ns, self.upstreams[ns.name], f"{ns.name}/{remote}", remote)

    # -- manifests -------------------------------------------------------------------------

    async def manifest(self, name: str, reference: str) -> ManifestRecord:
        """The manifest `reference` (a tag or a digest) of `name`, from the cache or upstream.

        Raises ManifestNotFound (not cached, and the upstream does not have it) and
        Unavailable (not cached, and the upstream cannot be reached).
        """
        target = self.target(name)
        reference = readable_reference(reference)
        try:
            if is_digest(reference):
                return await self._by_digest(target, reference)
            record = await self._by_tag(target, reference)
        except UpstreamNotFound as e:
            raise ManifestNotFound(e.message, {"name": name, "reference": reference}) from e
        if self.registry.on_tag_resolved is not None:  # last-pull times, as for any tag
            self.registry.on_tag_resolved(target.local, reference)
        return record

    async def cached_manifest(self, local: str, digest: str) -> ManifestRecord | None:
        try:
            return await self.registry.manifest(local, digest)
        except ManifestNotFound:
            pass
        staged = await self.store.staged(local, digest)
        if not staged:
            return None
        m = staged[0]
        return ManifestRecord(m.digest, m.media_type, m.payload, None)

    async def _by_digest(self, target: Target, digest: str) -> ManifestRecord:
        record = await self.cached_manifest(target.local, digest)
        if record is not None:
            REQUESTS.labels(target.ns.name, "manifest", "hit").inc()
            return record
        return await self._manifests.run(
            (target.local, digest), lambda: self._fetch_manifest(target, digest, None)
        )

    async def _by_tag(self, target: Target, tag: str) -> ManifestRecord:
        key = (target.local, tag)
        cached = self._tags.get(key)
        if cached is None:
            cached = await self.store.tag(target.local, tag)
            if cached is not None:
                self._tags[key] = cached
        if cached is not None and self.clock() - cached.validated_at < self.tag_ttl:
            record = await self.cached_manifest(target.local, cached.digest)
            if record is not None:
                REQUESTS.labels(target.ns.name, "manifest", "hit").inc()
                return record
        return await self._manifests.run(key, lambda: self._revalidate(target, tag, cached))

    async def _revalidate(
        self, target: Target, tag: str, cached: CachedTag | None
    ) -> ManifestRecord:
        """Ask upstream where `tag` points now; fetch the manifest if it moved or is unknown."""
        now = self.clock()
        try:
            if cached is not None:
                digest = await target.upstream.manifest_digest(target.remote, tag)
                if digest == cached.digest:
                    record = await self.cached_manifest(target.local, digest)
                    if record is not None:
                        await self._set_tag(target.local, tag, digest, now)
                        REQUESTS.labels(target.ns.name, "manifest", "revalidated").inc()
                        return record
            return await self._fetch_manifest(target, tag, tag)
        except (UpstreamNotFound, Unavailable) as e:
            record = None
            if cached is not None:
                record = await self.cached_manifest(target.local, cached.digest)
            if record is None:
                raise
            log.warning(
                "proxy %s: serving cached %s:%s (%s)", target.ns.name, target.local, tag, e.message
            )
            # Ask again soon, not on every pull while the upstream is away.
            retry_at = now - self.tag_ttl + min(self.tag_ttl, RETRY_AFTER)
            self._tags[(target.local, tag)] = CachedTag(cached.digest, retry_at)  # type: ignore[union-attr]
            REQUESTS.labels(target.ns.name, "manifest", "stale").inc()
            return record

    async def _set_tag(self, local: str, tag: str, digest: str, at: float) -> None:
        await self.store.set_tag(local, tag, digest, at)
        self._tags[(local, tag)] = CachedTag(digest, at)

    async def _fetch_manifest(
        self, target: Target, reference: str, tag: str | None
    ) -> ManifestRecord:
        fetched = await target.upstream.manifest(
            target.remote, reference, self.registry.max_manifest_size
        )
        REQUESTS.labels(target.ns.name, "manifest", "miss").inc()
        return await self.keep_manifest(target, fetched, tag)

    async def keep_manifest(
        self, target: Target, fetched: FetchedManifest, tag: str | None
    ) -> ManifestRecord:
        """Cache a manifest fetched upstream (and where `tag` points); store it for good now
        if everything it refers to is cached already."""
        try:
            parsed = manifests.parse(fetched.payload, fetched.media_type or None)
        except ManifestInvalid as e:
            raise UpstreamInvalid(
                f"{target.ns.name}: the upstream's manifest {fetched.digest} cannot be stored: "
                f"{e.message}"
            ) from e
        await self.store.stage(target.local, fetched.digest, parsed.media_type, fetched.payload)
        if tag is not None:
            await self._set_tag(target.local, tag, fetched.digest, self.clock())
        await self.promote(target.local)
        subject = str(parsed.subject.digest) if parsed.subject is not None else None
        return ManifestRecord(fetched.digest, parsed.media_type, fetched.payload, subject)

    async def promote(self, local: str) -> int:
        """Store every staged manifest of `local` whose blobs and children are all cached,
        through `Registry.put_manifest` (so quotas, policies and the collector see it), with
        the tags that point at it. Returns how many were stored."""
        stored = 0
        progress = True
        while progress:  # an index can follow once its children are stored
            progress = False
            for m in await self.store.staged(local):
                refs = await self.store.tags_of(local, m.digest)
                if not refs or Digest.parse(m.digest).algorithm != "sha256":
                    refs = [m.digest]
                try:
                    for ref in refs:
                        await self.registry.put_manifest(local, ref, m.payload, m.media_type)
                except ManifestBlobUnknown:
                    continue  # not everything it needs is cached yet
                except BerthError as e:  # a quota, an immutable tag: keep serving it staged
                    log.warning("proxy: cannot store %s@%s: %s", local, m.digest, e.message)
                    continue
                await self.store.unstage(local, m.digest)
                stored += 1
                progress = True
        return stored

    # -- blobs -----------------------------------------------------------------------------

    async def cached_blob(self, name: str, digest_text: str) -> BlobRecord | None:
        target = self.target(name)
        try:
            return await self.registry.blob(target.local, digest_text)
        except BlobNotFound:
            return None

    async def serve_blob(
        self, name: str, digest_text: str, send: Send, *, head: bool, whole: bool
    ) -> BlobRecord | None:
        """Answer a blob GET/HEAD of `name` that the cache does not hold.

        A HEAD is answered from the upstream's HEAD. A GET is fetched upstream and streamed to
        `send` while it is stored, and None returned (the response has been sent); when
        another request of this process is fetching it already, or `whole` is false (a Range
        request), it waits for the fetch and returns the cached blob for the caller to serve.
        """
        target = self.target(name)
        digest = str(Digest.parse(digest_text))
        if head:
            try:
                size = await target.upstream.blob_size(target.remote, digest)
            except UpstreamNotFound as e:
                raise BlobNotFound(e.message, {"digest": digest}) from e
            headers = {
                "content-type": "application/octet-stream",
                "docker-content-digest": digest,
                "content-length": str(size),
            }
            await send(
                {"type": "http.response.start", "status": 200, "headers": header_list(headers)}
            )
            await send({"type": "http.response.body", "body": b""})
            return None
        sink = _Sink(send if whole else None)
        blob = await self.fetch_blob(target, digest, sink)
        return None if sink.started else blob

    async def fetch_blob(
        self, target: Target, digest: str, sink: _Sink | None = None
    ) -> BlobRecord:
        """Fetch a blob upstream into the cache (once, whoever else asks meanwhile)."""
        return await self._blobs.run(
            (target.local, digest), lambda: self._fetch_on_host(target, digest, sink)
        )

    async def _fetch_on_host(self, target: Target, digest: str, sink: _Sink | None) -> BlobRecord:
        """One fetch per host: a worker that finds another fetching waits, then serves what it
        stored (or fetches itself, if that fetch failed)."""
        if self.locks is None:
            return await self._download(target, digest, sink)
        async with self.locks.hold(f"proxy-blob:{target.local}@{digest}") as first:
            if not first:
                with contextlib.suppress(BlobNotFound):
                    return await self.registry.blob(target.local, digest)
            return await self._download(target, digest, sink)

    async def _download(self, target: Target, digest: str, sink: _Sink | None) -> BlobRecord:
        REQUESTS.labels(target.ns.name, "blob", "miss").inc()
        bytes_in = UPSTREAM_BYTES.labels(target.ns.name)
        try:
            async with target.upstream.blob(target.remote, digest) as stream:
                client = sink.send if sink is not None else None
                if client is not None and sink is not None:
                    headers = {
                        "content-type": "application/octet-stream",
                        "docker-content-digest": digest,
                        "etag": f'"{digest}"',
                    }
                    if stream.size is not None:
                        headers["content-length"] = str(stream.size)
                    await client(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": header_list(headers),
                        }
                    )
                    sink.started = True

                async def relayed() -> AsyncIterator[bytes]:
                    """The upstream's bytes, sent on to the client as they arrive."""
                    nonlocal client
                    async for data in stream.chunks:
                        bytes_in.inc(len(data))
                        if client is not None:
                            try:
                                await client(
                                    {"type": "http.response.body", "body": data, "more_body": True}
                                )
                            except Exception:  # the client left: keep filling the cache
                                log.info("proxy: client left during %s", digest)
                                client = None
                        yield data

                # Reading upstream (and sending to the client) runs ahead of writing to the
                # store by up to AHEAD chunks, so the two overlap instead of taking turns.
                async with read_ahead(relayed(), AHEAD) as chunks:
                    blob = await self.registry.upload_monolithic(target.local, digest, chunks)
        except UpstreamNotFound as e:
            raise BlobNotFound(e.message, {"digest": digest}) from e
        if sink is not None and sink.send is not None and client is not None:
            await client({"type": "http.response.body", "body": b""})
        await self.promote(target.local)
        return blob


async def open_proxy(
    config: Config, db: Database, registry: Registry, clock: Callable[[], float]
) -> PullThrough | None:
    """The pull-through cache of the configured proxy namespaces (None when there are none),
    after claiming their names. Raises ConfigError for a bad setting or a name collision."""
    namespaces = settings.parse(config)
    if not namespaces:
        return None
    store = ProxyStore(db, clock)
    await store.register({name: ns.url for name, ns in namespaces.items()})
    return PullThrough(
        namespaces,
        registry,
        store,
        tag_ttl=config["proxy.tag_ttl"],
        timeout=config["proxy.timeout"],
        ca_file=config["proxy.ca_file"],
        clock=clock,
        locks=HostLocks(config.data_dir / "run" / "locks"),
    )
