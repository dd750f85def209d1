"""Import the repositories of another registry into Berth, through the registry's own services.

The source is a Distribution store (on disk or in S3, `distribution.py`) or a running registry
(`remote.py`); each of its repositories offers tags, manifests and blobs. Every image (a tag,
or with `untagged` a manifest no tag points at) is copied by the shared copy path
(`appliance/registry/copy.py`): planned first, so that a manifest with a missing or corrupt
blob or child is reported and nothing of it copied, then its blobs, then its manifests,
children first and the tagged one last.

Everything is written as a push would be (`Registry`): blobs verified against their digests
before they become visible, manifests stored only with all they need, in transactions that
queue the collector's reviews, check quotas and immutable-tag rules, and record the audit row
and webhook event of each push. The actor is `import` (`context.py`), and each manifest is
`pushed_by` `import`.

Decisions (docs/importing.md, "Moving in from another registry"):

* **Blobs.** A blob Berth stores already (for any repository) is only recorded as readable by
  the new one. A file on the same file system as a filesystem store is hard-linked (no byte
  copied; hashed once to verify it), unless `link` is off; otherwise it is copied, or streamed
  into S3.
* **Tags that exist already.** A tag Berth has at the same digest is `present`; at another
  digest it is left alone and reported as a `conflict`, unless `force` (then it moves, as a push
  would move it; an immutable-tag rule still refuses, reported as `refused`). The check is made
  in the transaction that writes the tag, so a push in between is never overwritten.
* **Namespaces.** A repository's namespace (its first component) is created when it does not
  exist (private, no members: admins see it, and give roles), as `namespace.create` by
  `import`. A proxy namespace is refused (it holds a cache, not pushes); so is a name that is
  not a valid namespace. `into` puts every repository under one namespace instead
  (`alpine` → `team/alpine`).
* **Resuming.** Nothing is kept about a run: what Berth holds is the state. A rerun skips what
  is present (manifests are compared by digest, blobs by digest), so an interrupted import is
  finished by running it again, and nothing is copied twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from appliance import context
from appliance.auth import accounts
from appliance.errors import (
    BerthError,
    BlobNotFound,
    Conflict,
    Denied,
    InvalidDigest,
    InvalidName,
    ManifestNotFound,
    StorageFull,
)
from appliance.importer.patterns import RepositoryFilter
from appliance.importer.report import (
    BROKEN,
    CONFLICT,
    FAILED,
    IMPORTED,
    PRESENT,
    REFUSED,
    SKIPPED,
    Item,
    Report,
)
from appliance.metadata import audit, identity
from appliance.metadata.db import Tx
from appliance.oci import mediatypes as mt
from appliance.oci.digest import is_digest
from appliance.oci.manifest import Descriptor, Manifest
from appliance.oci.names import namespace_of, validate_component, validate_name, validate_tag
from appliance.proxy import records as proxy_records
from appliance.registry import Registry, copy
from appliance.registry.copy import (
    FetchedManifest,
    ImageSource,
    SourceInvalid,
    SourceMissing,
    SourceUnsupported,
)
from appliance.storage.base import FileImport

log = logging.getLogger("berth.import")
ACTOR = "import"


class RepositorySource(ImageSource, Protocol):
    """One repository of a source."""

    name: str

    async def tags(self) -> list[str]:
        """Its tags (names as found, validated by the caller)."""
        ...

    async def tag_digest(self, tag: str) -> str | None:
        """Where `tag` points, cheaply (a link file, a HEAD), without reading the manifest;
        None when the source cannot say that way."""
        ...

    async def revisions(self) -> list[str]:
        """Digests of every manifest it holds, tagged or not ([] when it cannot say)."""
        ...

    def local_file(self, blob: Descriptor) -> Path | None:
        """The blob's file on this machine, when it is one (it may then be hard-linked)."""
        ...

    def open_blob(self, blob: Descriptor) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """The blob's bytes, streamed. SourceMissing when it is gone."""
        ...


class Source(Protocol):
    where: str  # shown in the report: never a credential
    kind: str

    async def repositories(self) -> list[str]:
        """Every repository of the source, in name order."""
        ...

    def repository(self, name: str) -> RepositorySource: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Options:
    wanted: RepositoryFilter = field(default_factory=RepositoryFilter)
    into: str | None = None  # a namespace every repository is put under
    dry_run: bool = False
    force: bool = False  # move tags Berth has at another digest
    link: bool = True  # hard-link files when the store allows
    untagged: bool = False  # also manifests no tag points at (Distribution stores)
    parallel: int = 4  # blobs stored at once


@dataclass
class Progress:
    """Where an import is, for a progress line."""

    repositories: int = 0
    repositories_done: int = 0
    repository: str = ""
    images: int = 0  # items reported so far
    blobs: int = 0  # blobs stored so far
    bytes: int = 0  # bytes copied or linked so far
    started: float = field(default_factory=time.monotonic)


class Importer:
    """One import run from `source` into `registry` (whose database is `registry.meta.db`)."""

    def __init__(
        self,
        registry: Registry,
        source: Source,
        options: Options,
        *,
        proxies: Collection[str] = (),
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        """`proxies`: the proxy namespaces of the configuration (those of the database count
        too): an import into one is refused, as a push would be."""
        self.registry = registry
        self.proxies = frozenset(proxies)
        self.db = registry.meta.db
        self.source = source
        self.options = options
        self.on_progress = on_progress or (lambda progress: None)
        self.progress = Progress()
        self.report = Report(source.where, source.kind, dry_run=options.dry_run)
        self._namespaces: dict[str, str] = {}  # name → "exists", "absent", "proxy"
        if not options.link:
            self.report.blobs.note_copy("--copy")
        if not isinstance(registry.store, FileImport):
            self.report.blobs.note_copy("the blob store is not a filesystem store")

    async def run(self) -> Report:
        """Import every wanted repository; the report says what became of each image.
        A cancellation stops between two writes: everything stored is whole."""
        token = context.begin(context.new_request_id(), None)
        context.set_actor(ACTOR)
        try:
            names = self.options.wanted.names
            if names is None:
                names = [n for n in await self.source.repositories() if self.options.wanted(n)]
            self.progress.repositories = len(names)
            for name in names:
                self.progress.repository = name
                self.on_progress(self.progress)
                try:
                    await self._repository(name)
                except StorageFull as e:
                    self.report.stopped = e.message
                    break
                self.progress.repositories_done += 1
                self.on_progress(self.progress)
            if not self.options.dry_run:
                await self._audit()
        finally:
            context.end(token)
        return self.report

    # -- one repository ----------------------------------------------------------------------

    def _target_name(self, name: str) -> str:
        return f"{self.options.into}/{name}" if self.options.into else name

    async def _repository(self, name: str) -> None:
        target = self._target_name(name)
        whole = Item(target, name, "*")
        try:
            validate_name(target)
            namespace = validate_component(namespace_of(target))
        except InvalidName as e:
            self._done(whole, SKIPPED, f"not a repository name Berth takes: {e.message}")
            return
        if await self._namespace_state(namespace) == "proxy":
            self._done(
                whole,
                REFUSED,
                f"{namespace} is a proxy namespace (a cache of another registry): import "
                "into another namespace (--into)",
            )
            return
        source = self.source.repository(name)
        try:
            tags = await source.tags()
        except (SourceMissing, SourceInvalid) as e:
            self._done(whole, BROKEN, e.message)
            return
        except StorageFull:
            raise
        except BerthError as e:
            self._done(whole, FAILED, e.message)
            return
        destination = RepositoryDestination(self, target, source)
        covered: set[str] = set()
        for tag in tags:
            await self._image(source, destination, tag, tag, covered)
        if self.options.untagged:
            await self._untagged(source, destination, covered)

    async def _untagged(
        self, source: RepositorySource, destination: RepositoryDestination, covered: set[str]
    ) -> None:
        """Manifests no tag reaches: each with what it lists, and none listed by another."""
        try:
            candidates = [d for d in await source.revisions() if d not in covered]
        except BerthError as e:
            self._done(Item(destination.repository, source.name, "*"), FAILED, e.message)
            return
        listed: set[str] = set()
        for digest in candidates:
            try:
                parsed = copy.parse(await source.manifest(digest))
            except BerthError:
                continue  # reported when it is imported
            listed.update(str(child.digest) for child in parsed.children)
        for digest in candidates:
            if digest not in listed and digest not in covered:
                await self._image(source, destination, digest, None, covered)

    async def _image(
        self,
        source: RepositorySource,
        destination: RepositoryDestination,
        reference: str,
        tag: str | None,
        covered: set[str],
    ) -> None:
        item = Item(destination.repository, source.name, reference)
        try:
            current = None
            if tag is not None:
                validate_tag(tag)
                current = await destination.tag_digest(tag)
                if current is not None and await source.tag_digest(tag) == current:
                    # The same as Berth has: not one manifest read (a rerun stays cheap).
                    item.digest = current
                    self._done(item, PRESENT)
                    if self.options.untagged:
                        covered.update(await self._reached(source, current))
                    return
            elif await destination.held_manifest(reference):
                item.digest = reference
                self._done(item, PRESENT)
                return
            image = await copy.plan(source, destination, reference, check_blobs=True)
            item.digest = image.root.fetched.digest
            covered.update(node.fetched.digest for node in image.manifests)
            if self.options.untagged:
                covered.update(await self._listed(source, image.root.parsed))
            if image.root_held and (tag is None or current == item.digest):
                self._done(item, PRESENT)
                return
            if current is not None and current != item.digest and not self.options.force:
                self._done(
                    item,
                    CONFLICT,
                    f"Berth has this tag at {current}, the source at {item.digest}: left "
                    "alone (--force moves it)",
                )
                return
            item.blobs, item.bytes = len(image.blobs), image.blob_bytes
            self.report.blobs.present += image.held_blobs
            namespace = namespace_of(destination.repository)
            if self.options.dry_run:
                if await self._namespace_state(namespace) == "absent":
                    self._note_namespace(namespace)
                self._done(item, IMPORTED)
                return
            await self._ensure_namespace(namespace)

            def stored(blob: Descriptor) -> None:
                self.progress.blobs += 1
                self.on_progress(self.progress)

            await copy.apply(image, destination, tag, on_blob=stored)
            self._done(item, IMPORTED)
        except SourceUnsupported as e:
            self._done(item, SKIPPED, e.message)
        except (SourceMissing, SourceInvalid) as e:
            self._done(item, BROKEN, e.message)
        except InvalidName as e:
            self._done(item, SKIPPED, e.message)
        except Denied as e:
            self._done(item, REFUSED, e.message)
        except Conflict as e:
            self._done(item, CONFLICT, f"{e.message}: left alone (--force moves it)")
        except StorageFull as e:
            self._done(item, FAILED, e.message)
            raise
        except BerthError as e:
            self._done(item, FAILED, e.message)

    async def _reached(self, source: RepositorySource, digest: str) -> set[str]:
        """`digest` and the manifests it lists, at any depth (read from the source)."""
        try:
            parsed = copy.parse(await source.manifest(digest))
        except BerthError:
            return {digest}
        return {digest} | await self._listed(source, parsed)

    async def _listed(self, source: RepositorySource, parsed: Manifest, depth: int = 0) -> set[str]:
        """Digests of the manifests an index lists, at any depth (read from the source)."""
        out: set[str] = set()
        for child in parsed.children:
            out.add(str(child.digest))
            if depth < copy.MAX_DEPTH and child.media_type in mt.INDEXES:
                try:
                    nested = copy.parse(await source.manifest(str(child.digest)))
                except BerthError:
                    continue
                out |= await self._listed(source, nested, depth + 1)
        return out

    def _done(self, item: Item, outcome: str, reason: str = "") -> None:
        item.outcome, item.reason = outcome, reason
        self.report.add(item)
        if outcome not in (IMPORTED, PRESENT):
            log.info("import %s %s:%s: %s", outcome, item.source, item.reference, reason)
        self.progress.images += 1
        self.on_progress(self.progress)

    # -- namespaces ----------------------------------------------------------------------------

    async def _namespace_state(self, name: str) -> str:
        state = self._namespaces.get(name)
        if state is None:

            def fn(tx: Tx) -> str:
                if name in self.proxies or proxy_records.is_proxy_namespace(tx, name):
                    return "proxy"
                return "exists" if identity.namespace_by_name(tx, name) else "absent"

            state = await self.db.read(fn)
            self._namespaces[name] = state
        return state

    def _note_namespace(self, name: str) -> None:
        if name not in self.report.namespaces_created:
            self.report.namespaces_created.append(name)

    async def _ensure_namespace(self, name: str) -> None:
        if await self._namespace_state(name) != "absent":
            return
        now = self.registry.clock()

        def fn(tx: Tx) -> bool:
            if identity.namespace_by_name(tx, name) is not None:
                return False  # made meanwhile
            accounts.create_namespace(tx, ACTOR, name, now)
            return True

        if await self.db.write(fn):
            self._note_namespace(name)
        self._namespaces[name] = "exists"

    async def _audit(self) -> None:
        counts = self.report.counts()
        b = self.report.blobs
        action = "import.registry" if self.source.kind == "registry" else "import.distribution"

        def fn(tx: Tx) -> None:
            audit.record(
                tx,
                ACTOR,
                action,
                self.source.where[:500],
                linked=b.linked,
                copied=b.copied,
                copied_bytes=b.copied_bytes,
                **counts,
            )

        await self.db.write(fn)


# Local files placed per transaction: few enough that an interrupted import loses little work
# (a group not yet recorded is placed again), many enough that commits do not dominate.
GROUP_FILES = 16
GROUP_BYTES = 1 << 30


def _groups(files: list[tuple[Descriptor, Path]]) -> list[list[tuple[Descriptor, Path]]]:
    out: list[list[tuple[Descriptor, Path]]] = [[]]
    held = 0
    for blob, path in files:
        if out[-1] and (len(out[-1]) >= GROUP_FILES or held + blob.size > GROUP_BYTES):
            out.append([])
            held = 0
        out[-1].append((blob, path))
        held += blob.size
    return out


class RepositoryDestination:
    """A repository of Berth as the destination of a copy, written through `Registry`."""

    def __init__(self, importer: Importer, repository: str, source: RepositorySource) -> None:
        self.importer = importer
        self.registry = importer.registry
        self.repository = repository
        self.source = source
        self.blobs = importer.report.blobs

    async def tag_digest(self, tag: str) -> str | None:
        """Where Berth's tag points (not a pull: no last-pull time is recorded)."""
        try:
            return (await self.registry.meta.manifest(self.repository, tag, False)).digest
        except ManifestNotFound:
            return None

    async def held_manifest(self, digest: str) -> bool:
        try:
            await self.registry.meta.manifest(self.repository, digest, True)
        except ManifestNotFound:
            return False
        return True

    async def held_blob(self, blob: Descriptor) -> bool:
        return await self.registry.meta.blob(self.repository, str(blob.digest)) is not None

    async def store_blobs(
        self, blobs: Sequence[Descriptor], on_blob: Callable[[Descriptor], None]
    ) -> None:
        """Blobs Berth stores already are only linked to the repository; files of this
        machine are placed by the store in groups (one transaction each); the rest is
        streamed, `parallel` at a time."""
        options = self.importer.options
        shared = await self.registry.adopt_blobs(self.repository, [str(b.digest) for b in blobs])
        self.blobs.shared += len(shared)
        for blob in blobs:
            if str(blob.digest) in shared:
                on_blob(blob)
        rest = [b for b in blobs if str(b.digest) not in shared]
        files = [(b, self.source.local_file(b)) for b in rest]
        local = [(b, path) for b, path in files if path is not None]
        if len(local) < len(files):
            self.blobs.note_copy("the source is not on this machine's file system")
        if local and isinstance(self.registry.store, FileImport):
            # Two groups at a time: one is placed (CPU: hashing) while the other is synced
            # (the disk), so the two overlap.
            await copy.each(_groups(local), lambda group: self._place(group, on_blob), 2)
            rest = [b for b, path in files if path is None]

        async def stream(blob: Descriptor) -> None:
            await self._stream(blob)
            on_blob(blob)

        await copy.each(rest, stream, options.parallel)

    async def _place(
        self, group: list[tuple[Descriptor, Path]], on_blob: Callable[[Descriptor], None]
    ) -> None:
        """Store a group of local files in one pass each and one transaction."""
        by_digest = {str(b.digest): b for b, _ in group}
        try:
            placed = await self.registry.import_files(
                self.repository,
                [(str(b.digest), path) for b, path in group],
                link=self.importer.options.link,
                parallel=self.importer.options.parallel,
            )
        except InvalidDigest as e:
            raise SourceInvalid(f"a blob is corrupt in the source: {e.message}") from e
        except (FileNotFoundError, IsADirectoryError) as e:
            raise SourceMissing(f"a blob is missing in the source ({e.filename})") from e
        assert placed is not None  # the store takes files (checked by the caller)
        for done in placed:
            blob = by_digest[str(done.digest)]
            if done.size != blob.size:  # the plan checked it: the file changed since
                raise SourceInvalid(f"blob {blob.digest} changed size in the source")
            if done.linked:
                self.blobs.linked += 1
                self.blobs.linked_bytes += done.size
            else:
                if self.importer.options.link:
                    self.blobs.note_copy(
                        "not on the blob store's file system, or not readable by its owner"
                    )
                self.blobs.copied += 1
                self.blobs.copied_bytes += done.size
            self.importer.progress.bytes += done.size
            on_blob(blob)

    async def _stream(self, blob: Descriptor) -> None:
        """Stream one blob from the source into the store (an upload, verified)."""
        digest = str(blob.digest)
        try:
            async with (
                self.source.open_blob(blob) as chunks,
                copy.read_ahead(self._counted(blob, chunks)) as ahead,
            ):
                await self.registry.upload_monolithic(self.repository, digest, ahead)
        except InvalidDigest as e:
            raise SourceInvalid(f"blob {digest} is corrupt in the source: {e.message}") from e
        except BlobNotFound as e:
            raise SourceMissing(f"blob {digest} is missing") from e
        self.blobs.copied += 1
        self.blobs.copied_bytes += blob.size

    async def _counted(
        self, blob: Descriptor, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """The blob's bytes, never more than its descriptor says (a source cannot make Berth
        store more than the manifest declared), counted for the progress line."""
        held = 0
        progress = self.importer.progress
        async for data in chunks:
            held += len(data)
            if held > blob.size:
                raise SourceInvalid(
                    f"blob {blob.digest} is longer than the {blob.size} bytes declared"
                )
            progress.bytes += len(data)
            yield data

    async def store_manifest(
        self, fetched: FetchedManifest, parsed: Manifest, tag: str | None
    ) -> None:
        reference = tag if tag is not None else fetched.digest
        if tag is None and is_digest(reference) and await self.held_manifest(fetched.digest):
            return  # a child stored by an earlier image of this run
        await self.registry.put_manifest(
            self.repository,
            reference,
            fetched.payload,
            fetched.media_type or None,
            pushed_by=ACTOR,
            move_tag=self.importer.options.force,
        )
