"""What an import did: one item per tag (or untagged manifest) with its outcome, the blob
counts, and the text and JSON forms of the report the command ends with."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

# Outcomes of one item, in the order the report lists them.
IMPORTED = "imported"  # stored now (or, with --dry-run, would be)
PRESENT = "present"  # Berth holds it already, the same
SKIPPED = "skipped"  # not importable by design: Docker schema 1, a name Berth refuses
CONFLICT = "conflict"  # the tag exists in Berth pointing elsewhere; left alone
REFUSED = "refused"  # a rule of Berth refused it: quota, immutable tag, proxy namespace
BROKEN = "broken"  # the source lacks something the image needs, or holds it corrupt
FAILED = "failed"  # could not be done now: the source or Berth's storage unreachable, full
OUTCOMES = (IMPORTED, PRESENT, SKIPPED, CONFLICT, REFUSED, BROKEN, FAILED)
# Outcomes that make the command exit non-zero: something the user should look at.
PROBLEMS = frozenset({CONFLICT, REFUSED, BROKEN, FAILED})


@dataclass
class Item:
    """One tag (or untagged manifest, `reference` a digest) of a source repository."""

    repository: str  # as named in Berth
    source: str  # as named in the source
    reference: str
    outcome: str = ""
    digest: str | None = None
    reason: str = ""
    blobs: int = 0  # blobs copied or linked for it (0 when present)
    bytes: int = 0


@dataclass
class BlobCounts:
    """How blobs reached Berth's storage."""

    linked: int = 0  # hard links: no byte copied
    linked_bytes: int = 0
    copied: int = 0  # copied or streamed into the store
    copied_bytes: int = 0
    shared: int = 0  # stored already for another repository: only recorded as readable
    present: int = 0  # readable by the repository already
    copy_reasons: list[str] = field(default_factory=list)  # why some were not hard-linked

    def note_copy(self, reason: str) -> None:
        if reason not in self.copy_reasons:
            self.copy_reasons.append(reason)


@dataclass
class Report:
    source: str  # where from: a path, s3://bucket/prefix, or a URL (no credentials)
    kind: str  # "Distribution storage" or "registry"
    dry_run: bool = False
    items: list[Item] = field(default_factory=list)
    blobs: BlobCounts = field(default_factory=BlobCounts)
    namespaces_created: list[str] = field(default_factory=list)
    stopped: str = ""  # why the import stopped early (storage full), if it did

    def add(self, item: Item) -> Item:
        self.items.append(item)
        return item

    def counts(self) -> dict[str, int]:
        found = Counter(i.outcome for i in self.items)
        return {o: found.get(o, 0) for o in OUTCOMES}

    @property
    def ok(self) -> bool:
        return not self.stopped and not any(i.outcome in PROBLEMS for i in self.items)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "dry_run": self.dry_run,
            "counts": self.counts(),
            "blobs": asdict(self.blobs),
            "namespaces_created": self.namespaces_created,
            "stopped": self.stopped or None,
            "items": [asdict(i) for i in self.items],
        }

    def lines(self) -> list[str]:
        """The report as text: a line per repository, every item that needs a look, totals."""
        out = [
            f"{'Dry run: nothing was changed. ' if self.dry_run else ''}"
            f"Import from {self.kind} {self.source}"
        ]
        by_repo: dict[str, list[Item]] = {}
        for item in self.items:
            by_repo.setdefault(item.repository, []).append(item)
        for repo, items in by_repo.items():
            found = Counter(i.outcome for i in items)
            summary = ", ".join(f"{found[o]} {o}" for o in OUTCOMES if found.get(o))
            out.append(f"  {repo}: {summary}")
            for item in items:
                if item.outcome not in (IMPORTED, PRESENT):
                    where = f"{item.repository}:{item.reference}"
                    if "@" not in where and ":" in item.reference:
                        where = f"{item.repository}@{item.reference}"
                    out.append(f"    {item.outcome} {where}: {item.reason}")
        counts = self.counts()
        verb = "would be imported" if self.dry_run else "imported"
        out.append(
            f"{counts[IMPORTED]} {verb}, {counts[PRESENT]} already present, "
            f"{counts[SKIPPED]} skipped, {counts[CONFLICT]} conflicting, "
            f"{counts[REFUSED]} refused, {counts[BROKEN]} broken, {counts[FAILED]} failed"
        )
        b = self.blobs
        if self.dry_run:
            total = sum(i.bytes for i in self.items if i.outcome == IMPORTED)
            out.append(f"blobs to store: {sum(i.blobs for i in self.items)} ({_size(total)})")
        else:
            copied = f"{b.copied} copied ({_size(b.copied_bytes)})"
            if b.copy_reasons:
                copied += f": {'; '.join(b.copy_reasons)}"
            out.append(
                f"blobs: {b.linked} hard-linked ({_size(b.linked_bytes)}), {copied}, "
                f"{b.shared} shared with other repositories, {b.present} already present"
            )
        if self.namespaces_created:
            verb = "to create" if self.dry_run else "created"
            out.append(f"namespaces {verb}: {', '.join(self.namespaces_created)}")
        if self.stopped:
            out.append(f"stopped early: {self.stopped}")
        return out


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
