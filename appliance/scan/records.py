"""The scanner's records in the metadata database: the scan queue (filled by a push, through
the store's write hook), reports, findings, and the pull gate's policies and exceptions.

One named function per statement, each run in the caller's transaction (`tx`); the callers
(service.py, policy.py) decide the transactions. The advisory data has its own module
(vulndb.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from appliance.metadata.db import Params, Row, Tx
from appliance.metadata.store import Pushed, WriteEffects
from appliance.oci.manifest import Manifest

_IMAGE_CONFIGS = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)


def queued_on_push(manifest: Manifest) -> bool:
    """An image whose layers are a filesystem: not an index, an artifact or a referrer."""
    return (
        manifest.config is not None
        and manifest.config.media_type in _IMAGE_CONFIGS
        and manifest.subject is None
        and not manifest.is_index
    )


# -- the queue -------------------------------------------------------------------------------


def queue_image(tx: Tx, manifest_id: int, now: float) -> None:
    tx.execute(
        "INSERT INTO scan_queue (manifest_id, queued_at) VALUES (:m, :now)",
        {"m": manifest_id, "now": now},
    )


class ScanQueueing(WriteEffects):
    """The registry's write hook (metadata/store.py): a newly stored image is queued, in its
    push's transaction, and its SBOM is extracted in the background (service.py)."""

    def manifest_pushed(self, tx: Tx, push: Pushed) -> None:
        if push.created and queued_on_push(push.manifest):
            queue_image(tx, push.manifest_id, push.at)


def due(tx: Tx, now: float, limit: int) -> list[Row]:
    """(manifest id, repository, digest, media type, payload, attempts) of queued images whose
    turn has come, oldest first."""
    return tx.execute(
        "SELECT q.manifest_id, r.name, m.digest, m.media_type, m.payload, q.attempts "
        "FROM scan_queue q JOIN manifests m ON m.id = q.manifest_id "
        "JOIN repositories r ON r.id = m.repository_id "
        "WHERE q.not_before <= :now ORDER BY q.queued_at, q.manifest_id LIMIT :n",
        {"now": now, "n": limit},
    )


def dequeue(tx: Tx, manifest_id: int) -> None:
    tx.execute("DELETE FROM scan_queue WHERE manifest_id = :m", {"m": manifest_id})


def postpone(tx: Tx, manifest_id: int, not_before: float) -> None:
    """Count a failed attempt and try again at `not_before`."""
    tx.execute(
        "UPDATE scan_queue SET attempts = attempts + 1, not_before = :t WHERE manifest_id = :m",
        {"t": not_before, "m": manifest_id},
    )


# -- reports and findings --------------------------------------------------------------------


def save_report(  # noqa: PLR0917 (one per column)
    tx: Tx,
    digest: str,
    status: str,
    error: str | None,
    document: str | None,
    sbom_digest: str | None,
    packages: int,
    now: float,
) -> None:
    tx.execute(
        "INSERT INTO scan_reports (digest, status, error, sbom, sbom_digest, packages, "
        "scanned_at) VALUES (:d, :s, :e, :doc, :sd, :p, :now) ON CONFLICT (digest) DO UPDATE "
        "SET status = excluded.status, error = excluded.error, sbom = excluded.sbom, "
        "sbom_digest = excluded.sbom_digest, packages = excluded.packages, "
        "scanned_at = excluded.scanned_at",
        {
            "d": digest,
            "s": status,
            "e": error,
            "doc": document,
            "sd": sbom_digest,
            "p": packages,
            "now": now,
        },
    )


def report_row(tx: Tx, digest: str) -> Row | None:
    """(digest, status, error, packages, scanned at, vulndb version, SBOM digest)."""
    return tx.one(
        "SELECT digest, status, error, packages, scanned_at, vulndb_version, sbom_digest "
        "FROM scan_reports WHERE digest = :d",
        {"d": digest},
    )


def report_status(tx: Tx, digest: str) -> str | None:
    value = tx.scalar("SELECT status FROM scan_reports WHERE digest = :d", {"d": digest})
    return None if value is None else str(value)


def status_and_sbom(tx: Tx, digest: str) -> Row | None:
    return tx.one("SELECT status, sbom FROM scan_reports WHERE digest = :d", {"d": digest})


def sbom(tx: Tx, digest: str) -> Any:
    """The stored SBOM document of an image (None when it has none)."""
    return tx.scalar("SELECT sbom FROM scan_reports WHERE digest = :d", {"d": digest})


def matched_digests(tx: Tx, version: int, *, only_stale: bool) -> list[str]:
    """Images with an SBOM, in digest order; `only_stale`: those matched before `version`."""
    sql = "SELECT digest FROM scan_reports WHERE status IN ('ok', 'incomplete')"
    if only_stale:
        sql += " AND vulndb_version < :v"
    return [r[0] for r in tx.execute(sql + " ORDER BY digest", {"v": version})]


def mark_matched(tx: Tx, digest: str, version: int, now: float) -> None:
    tx.execute(
        "UPDATE scan_reports SET vulndb_version = :v, matched_at = :now WHERE digest = :d",
        {"v": version, "now": now, "d": digest},
    )


def finding_keys(tx: Tx, digest: str) -> set[tuple[str, str]]:
    """(advisory, Package URL) of an image's findings."""
    return {
        (r[0], r[1])
        for r in tx.execute(
            "SELECT advisory_id, purl FROM scan_findings WHERE digest = :d", {"d": digest}
        )
    }


def clear_findings(tx: Tx, digest: str) -> None:
    tx.execute("DELETE FROM scan_findings WHERE digest = :d", {"d": digest})


def add_findings(tx: Tx, rows: Sequence[Params]) -> None:
    """Rows of d (digest), a (advisory), p (purl), n (package), i (installed), f (fixed),
    s (severity), r (its rank), sum (summary)."""
    tx.executemany(
        "INSERT INTO scan_findings (digest, advisory_id, purl, package, installed, fixed, "
        "severity, rank, summary) VALUES (:d, :a, :p, :n, :i, :f, :s, :r, :sum)",
        rows,
    )


def findings(tx: Tx, digest: str) -> list[Row]:
    """(advisory, severity, package, purl, installed, fixed, summary), worst first."""
    return tx.execute(
        "SELECT advisory_id, severity, package, purl, installed, fixed, summary "
        "FROM scan_findings WHERE digest = :d ORDER BY rank DESC, advisory_id, package",
        {"d": digest},
    )


def ranked_findings(tx: Tx, digest: str) -> list[Row]:
    """(rank, advisory, severity, package, installed, fixed), unordered (the pull gate's)."""
    return tx.execute(
        "SELECT rank, advisory_id, severity, package, installed, fixed "
        "FROM scan_findings WHERE digest = :d",
        {"d": digest},
    )


def repositories_holding(tx: Tx, digest: str) -> list[str]:
    return [
        r[0]
        for r in tx.execute(
            "SELECT r.name FROM manifests m JOIN repositories r ON r.id = m.repository_id "
            "WHERE m.digest = :d",
            {"d": digest},
        )
    ]


def findings_by_severity(tx: Tx) -> list[Row]:
    """(severity, count) of the findings of images still stored."""
    return tx.execute(
        "SELECT f.severity, COUNT(*) FROM scan_findings f WHERE EXISTS "
        "(SELECT 1 FROM manifests m WHERE m.digest = f.digest) GROUP BY f.severity"
    )


def reports_by_status(tx: Tx) -> list[Row]:
    """(status, count) of the reports."""
    return tx.execute("SELECT status, COUNT(*) FROM scan_reports GROUP BY status")


# -- the pull gate's policies ------------------------------------------------------------------


def exceptions(tx: Tx) -> list[Row]:
    """(namespace, advisory, expires at or None) of every policy exception."""
    return tx.execute("SELECT namespace, advisory_id, expires_at FROM scan_exceptions")


def exceptions_of(tx: Tx, namespace: str) -> list[Row]:
    """(advisory, expires at or None, reason, created by) of a namespace's exceptions."""
    return tx.execute(
        "SELECT advisory_id, expires_at, reason, created_by FROM scan_exceptions "
        "WHERE namespace = :ns ORDER BY advisory_id",
        {"ns": namespace},
    )


def policies(tx: Tx) -> list[Row]:
    """(namespace, block severity, unscanned) of every namespace's policy."""
    return tx.execute("SELECT namespace, block_severity, unscanned FROM scan_policies")


def generation(tx: Tx) -> int:
    """The scan data's generation (vulndb.bump_generation): cached verdicts older are stale."""
    return int(tx.scalar("SELECT generation FROM scan_generation WHERE id = 1") or 0)


def repository_holds(tx: Tx, repository: str, digest: str) -> bool:
    """Whether `repository` holds manifest `digest`."""
    held = tx.scalar(
        "SELECT 1 FROM manifests m JOIN repositories r ON r.id = m.repository_id "
        "WHERE r.name = :name AND m.digest = :digest",
        {"name": repository, "digest": digest},
    )
    return held is not None


def put_policy(tx: Tx, namespace: str, block_severity: str, unscanned: str, now: float) -> None:
    tx.execute(
        "INSERT INTO scan_policies (namespace, block_severity, unscanned, updated_at) "
        "VALUES (:ns, :sev, :u, :now) ON CONFLICT (namespace) DO UPDATE SET "
        "block_severity = excluded.block_severity, unscanned = excluded.unscanned, "
        "updated_at = excluded.updated_at",
        {"ns": namespace, "sev": block_severity, "u": unscanned, "now": now},
    )


def delete_policy(tx: Tx, namespace: str) -> bool:
    """Whether there was a policy to delete."""
    gone = tx.execute(
        "DELETE FROM scan_policies WHERE namespace = :ns RETURNING namespace", {"ns": namespace}
    )
    return bool(gone)


def has_policy(tx: Tx, namespace: str) -> bool:
    return (
        tx.scalar("SELECT 1 FROM scan_policies WHERE namespace = :ns", {"ns": namespace})
        is not None
    )


def put_exception(  # noqa: PLR0917 (one per column)
    tx: Tx,
    namespace: str,
    advisory_id: str,
    expires_at: float | None,
    reason: str,
    now: float,
    actor: str,
) -> None:
    tx.execute(
        "INSERT INTO scan_exceptions (namespace, advisory_id, expires_at, reason, created_at, "
        "created_by) VALUES (:ns, :a, :e, :r, :now, :by) ON CONFLICT (namespace, advisory_id) "
        "DO UPDATE SET expires_at = excluded.expires_at, reason = excluded.reason, "
        "created_at = excluded.created_at, created_by = excluded.created_by",
        {"ns": namespace, "a": advisory_id, "e": expires_at, "r": reason, "now": now, "by": actor},
    )


def delete_exception(tx: Tx, namespace: str, advisory_id: str) -> bool:
    """Whether there was an exception to delete."""
    gone = tx.execute(
        "DELETE FROM scan_exceptions WHERE namespace = :ns AND advisory_id = :a "
        "RETURNING advisory_id",
        {"ns": namespace, "a": advisory_id},
    )
    return bool(gone)


# -- the advisory data (scan/vulndb.py reads the sources and decides; these store it) ---------


def advisory_hash(tx: Tx, source: str, advisory_id: str) -> str | None:
    """The content hash of the stored advisory, None when there is none."""
    value = tx.scalar(
        "SELECT content_hash FROM vulndb_advisories WHERE source = :s AND id = :id",
        {"s": source, "id": advisory_id},
    )
    return None if value is None else str(value)


def delete_advisory(tx: Tx, source: str, advisory_id: str) -> None:
    tx.execute(
        "DELETE FROM vulndb_advisories WHERE source = :s AND id = :id",
        {"s": source, "id": advisory_id},
    )


def clear_affected(tx: Tx, source: str, advisory_id: str) -> None:
    tx.execute(
        "DELETE FROM vulndb_affected WHERE source = :s AND advisory_id = :id",
        {"s": source, "id": advisory_id},
    )


def insert_advisory(tx: Tx, params: Params) -> None:
    """`params`: s (source), id, sev, sum, mod, h (content hash), imp (import id)."""
    tx.execute(
        "INSERT INTO vulndb_advisories (source, id, severity, summary, modified, "
        "content_hash, import_id) VALUES (:s, :id, :sev, :sum, :mod, :h, :imp)",
        params,
    )


def update_advisory(tx: Tx, params: Params) -> None:
    """`params` as for `insert_advisory`."""
    tx.execute(
        "UPDATE vulndb_advisories SET severity = :sev, summary = :sum, modified = :mod, "
        "content_hash = :h, import_id = :imp WHERE source = :s AND id = :id",
        params,
    )


def add_affected(tx: Tx, rows: Sequence[Params]) -> None:
    """`rows`: s, id, eco, distro, pkg, ranges (JSON), versions (JSON), sev."""
    tx.executemany(
        "INSERT INTO vulndb_affected (source, advisory_id, ecosystem, distro, package, "
        "ranges, versions, severity) VALUES (:s, :id, :eco, :distro, :pkg, :ranges, "
        ":versions, :sev)",
        rows,
    )


def start_import(tx: Tx, path: str, now: float) -> int:
    """A new import's number (its counts filled in by `finish_import`)."""
    rows = tx.execute(
        "INSERT INTO vulndb_imports (source, path, imported_at, added, changed, unchanged, "
        "failed) VALUES ('', :path, :now, 0, 0, 0, 0) RETURNING id",
        {"path": path, "now": now},
    )
    return int(rows[0][0])


def finish_import(tx: Tx, params: Params) -> None:
    """`params`: id, source, a (added), c (changed), u (unchanged), f (failed)."""
    tx.execute(
        "UPDATE vulndb_imports SET source = :source, added = :a, changed = :c, "
        "unchanged = :u, failed = :f WHERE id = :id",
        params,
    )


def next_generation(tx: Tx) -> None:
    """Count one more change to what pull verdicts depend on."""
    tx.execute(
        "INSERT INTO scan_generation (id, generation) VALUES (1, 1) ON CONFLICT (id) "
        "DO UPDATE SET generation = scan_generation.generation + 1"
    )


def newest_import(tx: Tx) -> int:
    """The newest import that changed the advisory data (0: none)."""
    value = tx.scalar("SELECT MAX(id) FROM vulndb_imports WHERE added > 0 OR changed > 0", {})
    return int(value or 0)


def advisories_by_source(tx: Tx) -> list[Row]:
    return tx.execute(
        "SELECT source, COUNT(*) FROM vulndb_advisories GROUP BY source ORDER BY source"
    )


def advisories_by_ecosystem(tx: Tx) -> list[Row]:
    return tx.execute(
        "SELECT ecosystem, COUNT(DISTINCT source || ' ' || advisory_id) FROM vulndb_affected "
        "GROUP BY ecosystem ORDER BY ecosystem"
    )


def recent_imports(tx: Tx, limit: int) -> list[Row]:
    return tx.execute(
        "SELECT id, source, path, imported_at, added, changed, unchanged, failed "
        "FROM vulndb_imports ORDER BY id DESC LIMIT :n",
        {"n": limit},
    )


def affected_rows(tx: Tx, packages: set[tuple[str, str]] | None = None) -> list[Any]:
    """Every affected entry with its advisory's severity and summary, or only those of
    `packages` ((ecosystem, name))."""
    sql = (
        "SELECT a.source, a.advisory_id, a.ecosystem, a.distro, a.package, a.ranges, "
        "a.versions, COALESCE(a.severity, v.severity), v.summary FROM vulndb_affected a "
        "JOIN vulndb_advisories v ON v.source = a.source AND v.id = a.advisory_id"
    )
    if packages is None:
        return list(tx.iterate(sql))
    rows: list[Any] = []
    for ecosystem, name in sorted(packages):
        rows.extend(
            tx.execute(
                sql + " WHERE a.ecosystem = :e AND a.package = :p", {"e": ecosystem, "p": name}
            )
        )
    return rows
