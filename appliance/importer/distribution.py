"""The storage layout of CNCF Distribution, read directly: `registry:2`, Debian's
`docker-registry`, and GitLab's container registry (its storage, without its database).

    <root>/docker/registry/v2/
      blobs/<alg>/<ab>/<hex>/data                      every blob and manifest, by digest
      repositories/<name>/                             a repository: one folder per component
        _layers/<alg>/<hex>/link                       blobs the repository may read
        _manifests/revisions/<alg>/<hex>/link          manifests it holds (the link goes when a
                                                       manifest is deleted; the folder stays)
        _manifests/tags/<tag>/current/link             the manifest a tag points at now
        _manifests/tags/<tag>/index/<alg>/<hex>/link   where it pointed before (not imported)
        _uploads/<id>/...                              uploads in progress (not imported)

A link file holds one digest (`sha256:<hex>`). A folder whose name starts with `_` is never a
repository component, so a repository is a folder holding `_manifests`, at any depth.

What the reference registry serves is what this reads: a tag whose manifest was deleted, a
manifest whose bytes are gone, and a blob that is missing are reported as such (SourceMissing),
never guessed around. Every manifest read is checked against its digest here; blobs are
checked when they are stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from appliance.errors import BlobNotFound, InvalidDigest, SizeInvalid, Unavailable
from appliance.importer.tree import Tree
from appliance.oci.digest import Digest, is_digest
from appliance.oci.manifest import Descriptor
from appliance.registry.copy import (
    SCHEMA1,
    FetchedManifest,
    SourceInvalid,
    SourceMissing,
    SourceUnsupported,
    is_schema1,
)

V2 = "docker/registry/v2"
LINK_LIMIT = 256  # bytes: a digest and perhaps a newline
MAX_DEPTH = 64  # folders of one repository name (a name has at most 255 characters)


class NotADistributionStore(Unavailable):
    pass


def blob_path(base: str, digest: Digest) -> str:
    return f"{base}blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/data"


class DistributionStore:
    """A Distribution store in `tree` (its root, or the `docker/registry/v2` folder itself)."""

    kind = "Distribution storage"

    def __init__(self, tree: Tree, base: str, max_manifest_size: int) -> None:
        self.tree = tree
        self.base = base  # "" or "docker/registry/v2/"
        self.max_manifest_size = max_manifest_size
        self.where = tree.where

    @classmethod
    async def open(cls, tree: Tree, max_manifest_size: int) -> DistributionStore:
        """Find the layout in `tree`; NotADistributionStore (one clear line) when it is not."""
        for base in (V2 + "/", ""):
            found = set(await tree.folders(base.rstrip("/")))
            if "repositories" in found or "blobs" in found:
                return cls(tree, base, max_manifest_size)
        raise NotADistributionStore(
            f"{tree.where} is not a Distribution store: neither it nor {V2} under it holds "
            "repositories/ or blobs/ (give the registry's storage root directory)"
        )

    async def repositories(self) -> list[str]:
        """Every repository, in name order (names as found, not yet validated)."""
        found: list[str] = []

        async def walk(parts: list[str]) -> None:
            names = await self.tree.folders(self.base + "/".join(["repositories", *parts]))
            if "_manifests" in names and parts:
                found.append("/".join(parts))
            if len(parts) < MAX_DEPTH:
                for name in sorted(names):
                    if not name.startswith("_"):
                        await walk([*parts, name])

        await walk([])
        return sorted(found)

    def repository(self, name: str) -> DistributionRepository:
        return DistributionRepository(self, name)

    async def aclose(self) -> None:
        return None


class DistributionRepository:
    """One repository of a Distribution store, as a copy source."""

    def __init__(self, store: DistributionStore, name: str) -> None:
        self.store = store
        self.tree = store.tree
        self.name = name
        self._manifests = f"{store.base}repositories/{name}/_manifests"

    async def _link(self, path: str) -> Digest | None:
        """The digest a link file holds; None when there is no link."""
        try:
            data = await self.tree.read(path, LINK_LIMIT)
        except SizeInvalid:
            raise SourceInvalid(f"{self.name}: {path} is not a link") from None
        if data is None:
            return None
        try:
            return Digest.parse(data.decode("ascii", "replace").strip())
        except InvalidDigest as e:
            raise SourceInvalid(f"{self.name}: {path} holds no digest ({e.message})") from None

    async def tags(self) -> list[str]:
        return sorted(await self.tree.folders(f"{self._manifests}/tags"))

    async def tag_digest(self, tag: str) -> str | None:
        try:
            found = await self._link(f"{self._manifests}/tags/{tag}/current/link")
        except SourceInvalid:
            return None
        return None if found is None else str(found)

    async def revisions(self) -> list[str]:
        """Digests of the manifests the repository holds (deleted ones left out)."""
        out: list[str] = []
        for algorithm in await self.tree.folders(f"{self._manifests}/revisions"):
            for hexpart in await self.tree.folders(f"{self._manifests}/revisions/{algorithm}"):
                try:
                    digest = Digest.parse(f"{algorithm}:{hexpart}")
                except InvalidDigest:
                    continue  # not something the registry wrote
                if await self._link(self._revision(digest)) is not None:
                    out.append(str(digest))
        return sorted(out)

    def _revision(self, digest: Digest) -> str:
        return f"{self._manifests}/revisions/{digest.algorithm}/{digest.hex}/link"

    async def manifest(self, reference: str) -> FetchedManifest:
        if is_digest(reference):
            digest = Digest.parse(reference)
            deleted = f"manifest {digest} is not in the repository"
        else:
            found = await self._link(f"{self._manifests}/tags/{reference}/current/link")
            if found is None:
                raise SourceMissing(f"tag {reference} has no current manifest")
            digest = found
            deleted = f"tag {reference} points at manifest {digest}, which was deleted"
        if await self._link(self._revision(digest)) is None:
            raise SourceMissing(deleted)
        path = blob_path(self.store.base, digest)
        try:
            payload = await self.tree.read(path, self.store.max_manifest_size)
        except SizeInvalid:
            raise SourceInvalid(
                f"manifest {digest} is larger than {self.store.max_manifest_size} bytes "
                "(manifests.max_size)"
            ) from None
        if payload is None:
            raise SourceMissing(f"the bytes of manifest {digest} are missing ({path})")
        actual = Digest.of(payload, digest.algorithm)
        if actual != digest:
            if is_schema1(payload, ""):  # signed schema 1 is named by its unsigned bytes
                raise SourceUnsupported(f"manifest {digest}: {SCHEMA1}")
            raise SourceInvalid(f"manifest {digest} is corrupt: its bytes have digest {actual}")
        return FetchedManifest(str(digest), "", payload)

    async def check_blob(self, blob: Descriptor) -> None:
        size = await self.tree.size(blob_path(self.store.base, blob.digest))
        if size is None:
            raise SourceMissing(f"blob {blob.digest} is missing")
        if size != blob.size:
            raise SourceInvalid(
                f"blob {blob.digest} holds {size} bytes, its manifest says {blob.size}"
            )

    def local_file(self, blob: Descriptor) -> Path | None:
        return self.tree.local(blob_path(self.store.base, blob.digest))

    @asynccontextmanager
    async def open_blob(self, blob: Descriptor) -> AsyncIterator[AsyncIterator[bytes]]:
        yield self._stream(blob)

    async def _stream(self, blob: Descriptor) -> AsyncIterator[bytes]:
        try:
            async for data in self.tree.stream(blob_path(self.store.base, blob.digest), blob.size):
                yield data
        except BlobNotFound:
            raise SourceMissing(f"blob {blob.digest} is missing") from None
