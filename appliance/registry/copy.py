"""Copy an image into Berth: the one copy path of `berth mirror sync` and `berth import`.

An image is a tree: a manifest, the manifests an index lists (children), and the blobs
(configs and layers) they all need. Copying it is two steps:

* `plan` reads every manifest of the tree from the source, each checked against its digest,
  and asks the destination what it holds already. A manifest the destination holds for good
  is not looked into: everything below it is held too. With `check_blobs`, the source is asked
  that every missing blob is there with the size its manifest says, so a broken image is found
  before a byte is copied (an import does this; the pull-through mirror does not, as it
  fetches what it can and serves the rest later).
* `apply` stores the missing blobs, then the manifests, children before the index that lists
  them and the tagged one last. The destination only ever shows a manifest whose blobs and
  children it holds, so an interrupted copy leaves nothing half-visible, and the same copy run
  again stores only what is still missing: blobs stored before the interruption are held.

The source and the destination are small protocols: an upstream registry, a Distribution
store on disk or in S3 (`appliance/importer/`) on one side; the proxy cache or a repository of
Berth on the other.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import trio

from appliance.errors import ManifestInvalid, NotFound
from appliance.oci import manifest as manifests
from appliance.oci import mediatypes as mt
from appliance.oci.manifest import Descriptor, Manifest

# Bounds on what a hostile or broken source can make a copy walk: indexes nested this deep,
# and this many manifests in one image (real multi-platform images have tens).
MAX_DEPTH = 4
MAX_MANIFESTS = 1000

T = TypeVar("T")


class SourceMissing(NotFound):
    """The source lacks a manifest or a blob the image needs (deleted, or never there)."""


class SourceInvalid(ManifestInvalid):
    """The source holds something unusable: content that does not match its digest, a size
    that disagrees with its descriptor, or a manifest Berth cannot store."""


class SourceUnsupported(SourceInvalid):
    """A manifest of a kind Berth does not store by design (Docker schema 1)."""


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest as read from a source: its digest (verified), media type and bytes. The
    media type may be empty when the source does not say (a Distribution store on disk):
    the payload's own `mediaType` then decides."""

    digest: str
    media_type: str
    payload: bytes


class ImageSource(Protocol):
    """Where an image is copied from: one repository of a registry or of a store."""

    async def manifest(self, reference: str) -> FetchedManifest:
        """The manifest `reference` (a tag or a digest), its digest verified. Raises
        SourceMissing when the source does not have it, SourceInvalid when what it has does
        not match, Unavailable when it cannot be reached."""
        ...

    async def check_blob(self, blob: Descriptor) -> None:
        """Raise SourceMissing unless the source holds `blob`, SourceInvalid when its size
        differs from the descriptor's. Cheap (a stat, a HEAD): the bytes are verified when
        they are stored."""
        ...


class ImageDestination(Protocol):
    """Where an image is copied to: one repository of Berth."""

    async def held_manifest(self, digest: str) -> bool:
        """Whether the destination holds this manifest for good (with all it needs)."""
        ...

    async def held_blob(self, blob: Descriptor) -> bool:
        """Whether the destination's repository may read this blob already. A read only."""
        ...

    async def store_blobs(
        self, blobs: Sequence[Descriptor], on_blob: Callable[[Descriptor], None]
    ) -> None:
        """Store blobs the destination lacks, from the source it was made for (one by one or
        several together, telling `on_blob` of each once it is stored); each verified before
        it becomes visible, nothing of a failed one left behind."""
        ...

    async def store_manifest(
        self, fetched: FetchedManifest, parsed: Manifest, tag: str | None
    ) -> None:
        """Store a manifest whose blobs and children are stored (and point `tag` at it)."""
        ...


@dataclass(frozen=True)
class Node:
    fetched: FetchedManifest
    parsed: Manifest


@dataclass
class Plan:
    """What copying one image takes: `manifests` to store, children first and the root last
    (the root is always there, to point its tag), and the missing `blobs`."""

    root: Node
    manifests: list[Node] = field(default_factory=list)
    blobs: list[Descriptor] = field(default_factory=list)
    held_blobs: int = 0
    root_held: bool = False  # the destination holds the root manifest: nothing to copy

    @property
    def blob_bytes(self) -> int:
        return sum(b.size for b in self.blobs)


def parse(fetched: FetchedManifest) -> Manifest:
    """The manifest's references; SourceInvalid (with the reason) when Berth cannot store it,
    SourceUnsupported when it is a Docker schema 1 manifest."""
    try:
        return manifests.parse(fetched.payload, fetched.media_type or None)
    except ManifestInvalid as e:
        if is_schema1(fetched.payload, fetched.media_type):
            raise SourceUnsupported(f"manifest {fetched.digest}: {SCHEMA1}") from e
        raise SourceInvalid(f"manifest {fetched.digest}: {e.message}") from e


SCHEMA1 = (
    "a Docker schema 1 manifest, which Berth does not store (convert it to schema 2 with "
    "`skopeo copy --format v2s2`, then import or push that)"
)


def is_schema1(payload: bytes, media_type: str) -> bool:
    """Whether a manifest is Docker schema 1 (by its media type, or `schemaVersion: 1`)."""
    if mt.base(media_type) in (mt.DOCKER_SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED):
        return True
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("schemaVersion") == 1


async def plan(
    source: ImageSource,
    destination: ImageDestination,
    reference: str,
    *,
    check_blobs: bool = False,
) -> Plan:
    """Read the image `reference` from `source` and work out what `destination` lacks.
    Raises what the source raises (SourceMissing, SourceInvalid, Unavailable); copies nothing.
    """
    root_fetched = await source.manifest(reference)
    root = Node(root_fetched, parse(root_fetched))
    result = Plan(root)
    if await destination.held_manifest(root_fetched.digest):
        result.root_held = True
        result.manifests.append(root)
        return result
    seen_blobs: set[str] = set()
    seen_manifests: set[str] = {root_fetched.digest}

    async def walk(node: Node, depth: int) -> None:
        for child in node.parsed.children:
            digest = str(child.digest)
            if digest in seen_manifests or await destination.held_manifest(digest):
                continue
            seen_manifests.add(digest)
            if depth >= MAX_DEPTH or len(seen_manifests) > MAX_MANIFESTS:
                raise SourceInvalid(
                    f"manifest {root_fetched.digest} nests more than {MAX_DEPTH} indexes "
                    f"or lists more than {MAX_MANIFESTS} manifests"
                )
            try:
                fetched = await source.manifest(digest)
            except SourceMissing as e:
                raise SourceMissing(
                    f"index {node.fetched.digest} lists manifest {digest}: {e.message}"
                ) from e
            await walk(Node(fetched, parse(fetched)), depth + 1)
        for blob in node.parsed.required_blobs:
            digest = str(blob.digest)
            if digest in seen_blobs:
                continue
            seen_blobs.add(digest)
            if await destination.held_blob(blob):
                result.held_blobs += 1
                continue
            if check_blobs:
                await source.check_blob(blob)
            result.blobs.append(blob)
        result.manifests.append(node)

    await walk(root, 0)
    return result


async def apply(
    plan: Plan,
    destination: ImageDestination,
    tag: str | None,
    *,
    on_blob: Callable[[Descriptor], None] | None = None,
) -> None:
    """Store what `plan` found missing: blobs, then manifests, the root last with `tag`.
    Stops at the first failure (the blobs stored so far stay, held for the next attempt; no
    manifest that lacks them is stored). `on_blob` is told of each blob once it is stored."""
    await destination.store_blobs(plan.blobs, on_blob or (lambda blob: None))
    for node in plan.manifests[:-1]:
        await destination.store_manifest(node.fetched, node.parsed, None)
    await destination.store_manifest(plan.root.fetched, plan.root.parsed, tag)


async def each(items: Sequence[T], fn: Callable[[T], Awaitable[None]], parallel: int) -> None:
    """Run `fn` on every item, up to `parallel` at once, started in the order of the list. The
    first failure cancels the others and is raised as itself (not in an exception group)."""
    if parallel <= 1 or len(items) <= 1:
        for item in items:
            await fn(item)
        return
    limiter = trio.CapacityLimiter(parallel)
    failed: list[Exception] = []

    async with trio.open_nursery() as nursery:

        async def run(item: T, task_status: trio.TaskStatus[None]) -> None:
            async with limiter:
                task_status.started()
                try:
                    await fn(item)
                except Exception as e:
                    failed.append(e)
                    nursery.cancel_scope.cancel()

        for item in items:
            if failed:
                break
            await nursery.start(run, item)
    if failed:
        raise failed[0]


@asynccontextmanager
async def read_ahead(
    chunks: AsyncIterator[bytes], depth: int = 4
) -> AsyncIterator[AsyncIterator[bytes]]:
    """`chunks`, read up to `depth` chunks ahead by a task of its own, so that reading the
    source and writing the destination overlap instead of taking turns. An error of the
    source is raised where the chunks are consumed; leaving the block stops the reading."""
    send, receive = trio.open_memory_channel[bytes](depth)
    failed: list[Exception] = []

    async def pump() -> None:
        async with send:
            try:
                async for data in chunks:
                    await send.send(data)
            except Exception as e:
                failed.append(e)

    async def consume() -> AsyncIterator[bytes]:
        async with receive:
            async for data in receive:
                yield data
        if failed:
            raise failed[0]

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            try:
                yield consume()
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the block failed; the reading was cancelled
        raise first_error(group) from None


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that ended a nursery: a real error rather than the Cancelled it caused."""
    errors = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
    found = (errors or list(group.exceptions))[0]
    return first_error(found) if isinstance(found, BaseExceptionGroup) else found
