"""`berth mirror sync`: copy chosen repositories and tags from upstream into the cache ahead of
time (before an outage, or to carry into an air-gapped site with a backup).

Everything goes through the same path as a pull-through (`PullThrough`): blobs are fetched,
verified and stored one by one, then each manifest (children before their index) and its tag.
A sync is idempotent and resumable: what is cached already is not fetched again, so running it
again after an interruption fetches only what was missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import InvalidName
from appliance.oci import manifest as manifests
from appliance.oci.digest import Digest
from appliance.oci.names import validate_tag
from appliance.proxy.service import PullThrough, Target
from appliance.proxy.upstream import FetchedManifest

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
        refs = [ref] if ref is not None else await target.upstream.tags(target.remote)
        for one in refs:
            fetched = await self._manifest(target, one, report)
            tag = None if ":" in one else one
            await self._copy(target, fetched, tag, report)
            if tag is not None:
                report.tags += 1
            self.progress(f"{target.local}:{one} {fetched.digest}")
        return report

    async def _manifest(
        self, target: Target, reference: str, report: SyncReport
    ) -> FetchedManifest:
        if ":" in reference:  # by digest: the cached copy, if any, is the same bytes
            record = await self.proxy.cached_manifest(target.local, reference)
            if record is not None:
                return FetchedManifest(record.digest, record.media_type, record.payload)
        report.manifests_fetched += 1
        return await target.upstream.manifest(
            target.remote, reference, self.proxy.registry.max_manifest_size
        )

    async def _copy(
        self, target: Target, fetched: FetchedManifest, tag: str | None, report: SyncReport
    ) -> None:
        parsed = manifests.parse(fetched.payload, fetched.media_type or None)
        for child in parsed.children:
            child_manifest = await self._manifest(target, str(child.digest), report)
            await self._copy(target, child_manifest, None, report)
        for d in parsed.required_blobs:
            digest = str(d.digest)
            if await self.proxy.cached_blob(target.local, digest) is not None:
                report.blobs_cached += 1
                continue
            await self.proxy.fetch_blob(target, digest)
            report.blobs_fetched += 1
            report.bytes_fetched += d.size
        await self.proxy.keep_manifest(target, fetched, tag)
