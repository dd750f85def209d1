"""`berth mirror sync`: copy chosen repositories and tags from upstream into the cache ahead of
time (before an outage, or to carry into an air-gapped site with a backup).

Everything goes through the same path as a pull-through (`PullThrough`): blobs are fetched,
verified and stored one by one, then each manifest (children before their index) and its tag.
A sync is idempotent and resumable: what is cached already is not fetched again, so running it
again after an interruption fetches only what was missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from appliance.errors import InvalidName, ManifestNotFound
from appliance.oci.digest import Digest, is_digest
from appliance.oci.manifest import Descriptor, Manifest
from appliance.oci.names import validate_tag
from appliance.proxy.service import PullThrough, Target
from appliance.registry import copy
from appliance.registry.copy import FetchedManifest

log = logging.getLogger("berth.proxy")


@dataclass
class SyncReport:
    tags: int = 0
    manifests_fetched: int = 0
    blobs_fetched: int = 0
    blobs_cached: int = 0
    bytes_fetched: int = 0


def parse_reference(text: str) -> tuple[str, str | None]:
    """`hub/library/alpine:3.19`, `hub/library/alpine@sha256:…` or `hub/library/alpine` (every
    tag) → (repository, reference or None)."""
    if "@" in text:
        name, _, digest = text.partition("@")
        return name, str(Digest.parse(digest))
    head, sep, tag = text.rpartition(":")
    if sep and "/" not in tag:
        return head, validate_tag(tag)
    return text, None


class Mirror:
    def __init__(self, proxy: PullThrough, progress: Callable[[str], None] | None = None) -> None:
        self.proxy = proxy
        self.progress = progress or (lambda line: None)

    async def sync(self, reference: str, report: SyncReport | None = None) -> SyncReport:
        """Copy `reference` (see `parse_reference`) from its proxy namespace's upstream."""
        report = report or SyncReport()
        name, ref = parse_reference(reference)
        if not self.proxy.serves(name):
            raise InvalidName(
                f"{name!r} is not in a proxy namespace (configured: "
                f"{', '.join(sorted(self.proxy.namespaces)) or 'none'})"
            )
        target = self.proxy.target(name)
        source = _UpstreamSource(self.proxy, target, report)
        destination = _CacheDestination(self.proxy, target)
        refs = [ref] if ref is not None else await target.upstream.tags(target.remote)
        for one in refs:
            tag = None if is_digest(one) else one
            image = await copy.plan(source, destination, one)
            report.blobs_cached += image.held_blobs

            def fetched(blob: Descriptor) -> None:
                report.blobs_fetched += 1
                report.bytes_fetched += blob.size

            await copy.apply(image, destination, tag, on_blob=fetched)
            if tag is not None:
                report.tags += 1
            self.progress(f"{target.local}:{one} {image.root.fetched.digest}")
        return report


class _UpstreamSource:
    """The upstream of a proxy namespace, as a copy source; a manifest the cache holds
    (stored or staged) is read from the cache, not fetched again."""

    def __init__(self, proxy: PullThrough, target: Target, report: SyncReport) -> None:
        self.proxy = proxy
        self.target = target
        self.report = report

    async def manifest(self, reference: str) -> FetchedManifest:
        if is_digest(reference):  # by digest: the cached copy, if any, is the same bytes
            record = await self.proxy.cached_manifest(self.target.local, reference)
            if record is not None:
                return FetchedManifest(record.digest, record.media_type, record.payload)
        self.report.manifests_fetched += 1
        return await self.target.upstream.manifest(
            self.target.remote, reference, self.proxy.registry.max_manifest_size
        )

    async def check_blob(self, blob: Descriptor) -> None:
        await self.target.upstream.blob_size(self.target.remote, str(blob.digest))


class _CacheDestination:
    """The cache of a proxy namespace's repository, filled as a pull-through fills it."""

    def __init__(self, proxy: PullThrough, target: Target) -> None:
        self.proxy = proxy
        self.target = target

    async def held_manifest(self, digest: str) -> bool:
        try:
            await self.proxy.registry.manifest(self.target.local, digest)
        except ManifestNotFound:
            return False
        return True

    async def held_blob(self, blob: Descriptor) -> bool:
        return await self.proxy.cached_blob(self.target.local, str(blob.digest)) is not None

    async def store_blobs(
        self, blobs: Sequence[Descriptor], on_blob: Callable[[Descriptor], None]
    ) -> None:
        for blob in blobs:  # one at a time, as pulls through the cache fetch them
            await self.proxy.fetch_blob(self.target, str(blob.digest))
            on_blob(blob)

    async def store_manifest(
        self, fetched: FetchedManifest, parsed: Manifest, tag: str | None
    ) -> None:
        await self.proxy.keep_manifest(self.target, fetched, tag)
