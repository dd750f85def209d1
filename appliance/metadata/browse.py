"""Read-only views of the registry records for people: listings, sizes, recent pushes.

Pieces of units of work (`fn(tx)`), like `identity.py`, used by the web console. Listings page
by keyset (`after` the last row shown), never by OFFSET, so page 500 of 10,000 repositories
costs what page 1 does. Visibility is a set of namespaces (None: everything, for admins), turned
into name ranges (`ns/` ≤ name < `ns0`) that the unique index on `repositories.name` serves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from appliance.metadata.db import Row, Tx


@dataclass(frozen=True)
class RepositoryRow:
    name: str
    tags: int
    size: int
    updated_at: float | None


@dataclass(frozen=True)
class TagRow:
    name: str
    digest: str
    media_type: str
    size: int
    updated_at: float
    pushed_by: str | None
    pulled_at: float | None
    payload: bytes
    config_digest: str | None


@dataclass(frozen=True)
class PushRow:
    repository: str
    tag: str
    digest: str
    updated_at: float
    pushed_by: str | None


@dataclass(frozen=True)
class ManifestRow:
    digest: str
    media_type: str
    artifact_type: str | None
    payload: bytes
    subject: str | None
    config_digest: str | None
    total_size: int
    created_at: float
    pushed_by: str | None
    tags: tuple[str, ...]


def _visibility(namespaces: Iterable[str] | None, params: dict[str, Any]) -> str:
    """A SQL condition on `r.name` limiting it to repositories of `namespaces` (None: all)."""
    if namespaces is None:
        return "1 = 1"
    parts = []
    for i, ns in enumerate(sorted(set(namespaces))):
        params[f"lo{i}"] = ns + "/"
        params[f"hi{i}"] = ns + "0"  # '0' sorts right after '/'
        parts.append(f"(r.name >= :lo{i} AND r.name < :hi{i})")
    return "(" + " OR ".join(parts) + ")" if parts else "1 = 0"


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def repositories(
    tx: Tx,
    namespaces: Iterable[str] | None,
    *,
    search: str = "",
    descending: bool = False,
    after: str | None = None,
    limit: int = 50,
) -> list[RepositoryRow]:
    """Repositories holding a manifest, by name, `limit` of them after (or before, when
    `descending`) the name `after`. Each with its tag count, stored size and last push."""
    params: dict[str, Any] = {"n": limit}
    where = [_visibility(namespaces, params)]
    where.append("EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id)")
    if search:
        where.append("r.name LIKE :q ESCAPE '\\'")
        params["q"] = _like(search.lower())
    if after is not None:
        where.append("r.name < :after" if descending else "r.name > :after")
        params["after"] = after
    order = "DESC" if descending else "ASC"
    page = tx.execute(
        f"SELECT r.id, r.name FROM repositories r WHERE {' AND '.join(where)} "  # noqa: S608
        f"ORDER BY r.name {order} LIMIT :n",
        params,
    )
    out = []
    for repo_id, name in page:
        row = tx.one(
            "SELECT (SELECT COUNT(*) FROM tags t WHERE t.repository_id = :id), "
            "(SELECT COALESCE(SUM(b.size), 0) FROM repository_blobs rb "
            " JOIN blobs b ON b.digest = rb.digest WHERE rb.repository_id = :id), "
            "(SELECT MAX(t.updated_at) FROM tags t WHERE t.repository_id = :id)",
            {"id": repo_id},
        )
        assert row is not None
        out.append(RepositoryRow(str(name), int(row[0]), int(row[1]), row[2]))
    return out


def repository_exists(tx: Tx, name: str) -> bool:
    return tx.scalar("SELECT id FROM repositories WHERE name = :n", {"n": name}) is not None


def tags(tx: Tx, repository: str, *, after: str | None = None, limit: int = 100) -> list[TagRow]:
    """Tags of `repository` by name after `after`, with what each points at."""
    rows = tx.execute(
        "SELECT t.name, m.digest, m.media_type, m.total_size, t.updated_at, t.pushed_by, "
        "t.pulled_at, m.payload, m.config_digest FROM tags t "
        "JOIN repositories r ON r.id = t.repository_id JOIN manifests m ON m.id = t.manifest_id "
        "WHERE r.name = :repo AND t.name > :after ORDER BY t.name LIMIT :n",
        {"repo": repository, "after": after or "", "n": limit},
    )
    return [
        TagRow(
            str(r[0]),
            str(r[1]),
            str(r[2]),
            int(r[3]),
            float(r[4]),
            r[5],
            None if r[6] is None else float(r[6]),
            bytes(r[7]),
            r[8],
        )
        for r in rows
    ]


def manifest(tx: Tx, repository: str, digest: str) -> ManifestRow | None:
    row = tx.one(
        "SELECT m.id, m.digest, m.media_type, m.artifact_type, m.payload, m.subject_digest, "
        "m.config_digest, m.total_size, m.created_at, m.pushed_by FROM manifests m "
        "JOIN repositories r ON r.id = m.repository_id WHERE r.name = :repo AND m.digest = :d",
        {"repo": repository, "d": digest},
    )
    if row is None:
        return None
    names = tx.execute(
        "SELECT name FROM tags WHERE manifest_id = :id ORDER BY name", {"id": int(row[0])}
    )
    return ManifestRow(
        str(row[1]),
        str(row[2]),
        row[3],
        bytes(row[4]),
        row[5],
        row[6],
        int(row[7]),
        float(row[8]),
        row[9],
        tuple(str(n[0]) for n in names),
    )


def blob_sizes(tx: Tx, digests: list[str]) -> dict[str, int]:
    out = {}
    for d in digests:
        size = tx.scalar("SELECT size FROM blobs WHERE digest = :d", {"d": d})
        if size is not None:
            out[d] = int(size)
    return out


def recent_pushes(tx: Tx, namespaces: Iterable[str] | None, limit: int = 10) -> list[PushRow]:
    params: dict[str, Any] = {"n": limit}
    cond = _visibility(namespaces, params)
    rows = tx.execute(
        "SELECT r.name, t.name, m.digest, t.updated_at, t.pushed_by FROM tags t "  # noqa: S608
        "JOIN repositories r ON r.id = t.repository_id JOIN manifests m ON m.id = t.manifest_id "
        f"WHERE {cond} ORDER BY t.updated_at DESC LIMIT :n",
        params,
    )
    return [PushRow(str(r[0]), str(r[1]), str(r[2]), float(r[3]), r[4]) for r in rows]


def storage_by_namespace(tx: Tx, namespaces: Iterable[str] | None) -> dict[str, int]:
    """Bytes each namespace's repositories may read (a blob shared by two namespaces counts in
    both), largest first."""
    params: dict[str, Any] = {}
    cond = _visibility(namespaces, params)
    rows = tx.execute(
        "SELECT r.name, COALESCE(SUM(b.size), 0) FROM repositories r "  # noqa: S608
        "JOIN repository_blobs rb ON rb.repository_id = r.id JOIN blobs b ON b.digest = rb.digest "
        f"WHERE {cond} GROUP BY r.name",
        params,
    )
    totals: dict[str, int] = {}
    for name, size in rows:
        ns = str(name).split("/", 1)[0]
        totals[ns] = totals.get(ns, 0) + int(size)
    return dict(sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])))


def totals(tx: Tx) -> dict[str, int]:
    """Instance-wide counts, the one copy the console overview, the status page and the
    metrics all read: stored bytes (each blob once), blobs, repositories, tags, manifests and
    open upload sessions. A repository counts once it holds a manifest, as `/v2/_catalog` and
    the console's listing have it; one with only blobs (a first push cut short) does not, but
    its blobs and bytes do."""
    row = tx.one(
        "SELECT (SELECT COALESCE(SUM(size), 0) FROM blobs), (SELECT COUNT(*) FROM blobs), "
        "(SELECT COUNT(*) FROM repositories r WHERE EXISTS "
        " (SELECT 1 FROM manifests m WHERE m.repository_id = r.id)), "
        "(SELECT COUNT(*) FROM tags), (SELECT COUNT(*) FROM manifests), "
        "(SELECT COUNT(*) FROM uploads)"
    )
    assert row is not None
    return {
        "bytes": int(row[0]),
        "blobs": int(row[1]),
        "repositories": int(row[2]),
        "tags": int(row[3]),
        "manifests": int(row[4]),
        "uploads": int(row[5]),
    }


def webhook_cursors(tx: Tx) -> list[Row]:
    """(endpoint key, last event delivered, failures, next attempt at, last error) of every
    webhook endpoint's delivery cursor (the status page)."""
    return tx.execute(
        "SELECT endpoint, last_event_id, failures, next_attempt_at, last_error FROM webhook_cursors"
    )


def queued_webhook_events(tx: Tx) -> int:
    return int(tx.scalar("SELECT COUNT(*) FROM webhook_events"))


def webhook_backlog(tx: Tx) -> tuple[int, int]:
    """(webhook events queued, endpoints whose last delivery failed): the metrics' gauges."""
    row = tx.one(
        "SELECT (SELECT COUNT(*) FROM webhook_events), "
        "(SELECT COUNT(*) FROM webhook_cursors WHERE failures > 0)"
    )
    assert row is not None
    return int(row[0]), int(row[1])
