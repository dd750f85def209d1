"""A running registry as an import source, read over the Distribution API through the
pull-through cache's upstream client (`appliance/proxy/upstream.py`): the same sign-in (Basic,
or the Docker token flow), digest checks and bounded reads as a pull-through.

The registry API cannot list manifests no tag points at, so only tags are imported from a
registry; the catalog (`/v2/_catalog`) lists the repositories unless they are named.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

from appliance.oci.manifest import Descriptor
from appliance.proxy.settings import ProxyNamespace, registry_url
from appliance.proxy.upstream import (
    Upstream,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamSchema1,
)
from appliance.registry.copy import (
    FetchedManifest,
    SourceInvalid,
    SourceMissing,
    SourceUnsupported,
)


class RemoteRegistry:
    """The registry at `url`, signed in to as `username` when given."""

    kind = "registry"

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        *,
        max_manifest_size: int,
        timeout: float = 30.0,
        ca_file: str = "",
    ) -> None:
        url = registry_url(url, "the registry to import from")
        self.where = url
        self.max_manifest_size = max_manifest_size
        # The client names its registry in messages by the namespace it serves: the host.
        host = urlsplit(url).netloc
        self.upstream = Upstream(
            ProxyNamespace(host, url, username, password), timeout=timeout, ca_file=ca_file
        )

    async def repositories(self) -> list[str]:
        try:
            return sorted(await self.upstream.catalog())
        except UpstreamNotFound as e:
            raise SourceMissing(
                f"{self.where} did not list its repositories ({e.message}): check the "
                "credentials, or name the repositories with --repository"
            ) from e

    def repository(self, name: str) -> RemoteRepository:
        return RemoteRepository(self, name)

    async def aclose(self) -> None:
        await self.upstream.aclose()


class RemoteRepository:
    """One repository of a remote registry, as a copy source."""

    def __init__(self, registry: RemoteRegistry, name: str) -> None:
        self.registry = registry
        self.upstream = registry.upstream
        self.name = name

    async def tags(self) -> list[str]:
        try:
            return sorted(await self.upstream.tags(self.name))
        except UpstreamNotFound as e:
            raise SourceMissing(e.message) from e

    async def tag_digest(self, tag: str) -> str | None:
        try:
            return await self.upstream.manifest_digest(self.name, tag)
        except (UpstreamNotFound, UpstreamInvalid):
            return None

    async def revisions(self) -> list[str]:
        return []  # not listable over the registry API

    async def manifest(self, reference: str) -> FetchedManifest:
        try:
            return await self.upstream.manifest(
                self.name, reference, self.registry.max_manifest_size
            )
        except UpstreamNotFound as e:
            raise SourceMissing(e.message) from e
        except UpstreamSchema1 as e:
            raise SourceUnsupported(e.message) from e
        except UpstreamInvalid as e:
            raise SourceInvalid(e.message) from e

    async def check_blob(self, blob: Descriptor) -> None:
        try:
            size = await self.upstream.blob_size(self.name, str(blob.digest))
        except UpstreamNotFound as e:
            raise SourceMissing(f"blob {blob.digest} is missing ({e.message})") from e
        except UpstreamInvalid as e:
            raise SourceInvalid(e.message) from e
        if size != blob.size:
            raise SourceInvalid(
                f"blob {blob.digest} holds {size} bytes, its manifest says {blob.size}"
            )

    def local_file(self, blob: Descriptor) -> Path | None:
        return None

    @asynccontextmanager
    async def open_blob(self, blob: Descriptor) -> AsyncIterator[AsyncIterator[bytes]]:
        try:
            async with self.upstream.blob(self.name, str(blob.digest)) as stream:
                yield stream.chunks
        except UpstreamNotFound as e:
            raise SourceMissing(f"blob {blob.digest} is missing ({e.message})") from e
