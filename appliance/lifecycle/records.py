"""Lifecycle records in the metadata database: pull times of tags (pulls.py), what the
consistency check compares the blob store against (fsck.py), and the usage, quotas and
immutable-tag rules the write checks read (rules.py).

One named function per statement, each run in the caller's transaction (`tx`); the callers
decide the transactions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from appliance.metadata.db import Params, Row, Tx


def note_pulls(tx: Tx, rows: Sequence[Params]) -> None:
    """Rows of repo, tag and at (when it was pulled); a later time already noted stays."""
    tx.executemany(
        "UPDATE tags SET pulled_at = :at WHERE name = :tag AND repository_id = "
        "(SELECT id FROM repositories WHERE name = :repo) "
        "AND (pulled_at IS NULL OR pulled_at < :at)",
        rows,
    )


def blob_keys(tx: Tx) -> dict[str, tuple[str, int]]:
    """storage key → (digest, size) of every blob row, read in batches."""
    return {
        r[2]: (r[0], int(r[1])) for r in tx.iterate("SELECT digest, size, storage_key FROM blobs")
    }


def upload_ids(tx: Tx) -> set[str]:
    return {r[0] for r in tx.execute("SELECT id FROM uploads")}


# -- quotas and immutable tags (rules.py) ------------------------------------------------------


def in_namespace(column: str, ns: str) -> tuple[str, dict[str, str]]:
    """SQL matching repository names of namespace `ns` (the name itself, or `ns/...`): a
    range on the unique index of names rather than a LIKE pattern."""
    return (
        f"({column} = :ns OR ({column} >= :lo AND {column} < :hi))",
        # '0' is the character after '/': every `ns/...` name sorts between the two bounds.
        {"ns": ns, "lo": ns + "/", "hi": ns + "0"},
    )


def namespace_usage(tx: Tx, ns: str) -> Row:
    """(blobs, bytes, bytes another namespace also holds) of namespace `ns`."""
    inside, params = in_namespace("r.name", ns)
    outside, _ = in_namespace("o_r.name", ns)
    row = tx.one(
        "SELECT COUNT(*), COALESCE(SUM(b.size), 0), COALESCE(SUM(CASE WHEN EXISTS ("  # noqa: S608
        "SELECT 1 FROM repository_blobs o JOIN repositories o_r ON o_r.id = o.repository_id "
        f"WHERE o.digest = b.digest AND NOT {outside}) THEN b.size ELSE 0 END), 0) "
        "FROM blobs b WHERE b.digest IN (SELECT rb.digest FROM repository_blobs rb "
        f"JOIN repositories r ON r.id = rb.repository_id WHERE {inside})",
        params,
    )
    assert row is not None
    return row


def repository_usage(tx: Tx, ns: str) -> list[Row]:
    """(repository, blobs, bytes, bytes another repository also holds) of each repository of
    `ns`, by name."""
    inside, params = in_namespace("r.name", ns)
    return tx.execute(
        "SELECT r.name, COUNT(*), COALESCE(SUM(b.size), 0), COALESCE(SUM(CASE WHEN EXISTS ("  # noqa: S608
        "SELECT 1 FROM repository_blobs o WHERE o.digest = rb.digest "
        "AND o.repository_id <> rb.repository_id) THEN b.size ELSE 0 END), 0) "
        "FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
        f"JOIN blobs b ON b.digest = rb.digest WHERE {inside} GROUP BY r.name ORDER BY r.name",
        params,
    )


def repository_names(tx: Tx) -> list[str]:
    return [r[0] for r in tx.execute("SELECT name FROM repositories")]


def usage_with(tx: Tx, ns: str, digest: str) -> tuple[int, bool]:
    """(bytes namespace `ns` holds, whether it holds blob `digest` already)."""
    inside, params = in_namespace("r.name", ns)
    row = tx.one(
        "SELECT COALESCE(SUM(b.size), 0), COALESCE(MAX(CASE WHEN b.digest = :d "  # noqa: S608
        "THEN 1 ELSE 0 END), 0) FROM blobs b WHERE b.digest IN (SELECT rb.digest "
        "FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
        f"WHERE {inside})",
        {**params, "d": digest},
    )
    assert row is not None
    return int(row[0]), bool(row[1])


def held_size(tx: Tx, ns: str, digest: str) -> int:
    """The size of blob `digest` if namespace `ns` holds it, else 0."""
    inside, params = in_namespace("r.name", ns)
    size = tx.scalar(
        "SELECT b.size FROM blobs b WHERE b.digest = :d AND EXISTS (SELECT 1 "  # noqa: S608
        "FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id "
        f"WHERE rb.digest = b.digest AND {inside})",
        {**params, "d": digest},
    )
    return 0 if size is None else int(size)


def uploads_held(tx: Tx, ns: str, but: str) -> int:
    """Bytes the open uploads of namespace `ns` other than `but` hold or reserved."""
    inside, params = in_namespace("r.name", ns)
    return int(
        tx.scalar(
            "SELECT COALESCE(SUM(CASE WHEN u.reserved > u.size THEN u.reserved "  # noqa: S608
            "ELSE u.size END), 0) FROM uploads u JOIN repositories r "
            f"ON r.id = u.repository_id WHERE {inside} AND u.id <> :id",
            {**params, "id": but},
        )
    )


def tags_of_manifest(tx: Tx, manifest_id: int) -> list[str]:
    return [
        r[0]
        for r in tx.execute(
            "SELECT name FROM tags WHERE manifest_id = :id ORDER BY name", {"id": manifest_id}
        )
    ]


def insert_immutable_rule(tx: Tx, namespace: str, pattern: str, by: str, now: float) -> None:
    """A rule (none when the namespace has that pattern already)."""
    tx.execute(
        "INSERT INTO immutable_tag_rules (namespace, pattern, created_by, created_at) "
        "VALUES (:ns, :p, :by, :now) ON CONFLICT (namespace, pattern) DO NOTHING",
        {"ns": namespace, "p": pattern, "by": by, "now": now},
    )


def delete_immutable_rule(tx: Tx, namespace: str, rule_id: int) -> str | None:
    """Remove a namespace's rule; its pattern, or None when it had no such rule."""
    gone = tx.execute(
        "DELETE FROM immutable_tag_rules WHERE id = :id AND namespace = :ns RETURNING pattern",
        {"id": rule_id, "ns": namespace},
    )
    return str(gone[0][0]) if gone else None


def immutable_rules(tx: Tx, namespace: str | None = None) -> list[Row]:
    """(id, namespace, pattern, created by, created at) of every rule, or a namespace's."""
    sql = "SELECT id, namespace, pattern, created_by, created_at FROM immutable_tag_rules"
    params: dict[str, Any] = {}
    if namespace is not None:
        sql += " WHERE namespace = :ns"
        params["ns"] = namespace
    return tx.execute(sql + " ORDER BY namespace, id", params)


def upsert_quota(tx: Tx, namespace: str, limit_bytes: int, by: str, now: float) -> None:
    tx.execute(
        "INSERT INTO namespace_quotas (namespace, limit_bytes, updated_by, updated_at) "
        "VALUES (:ns, :n, :by, :now) ON CONFLICT (namespace) DO UPDATE SET "
        "limit_bytes = excluded.limit_bytes, updated_by = excluded.updated_by, "
        "updated_at = excluded.updated_at",
        {"ns": namespace, "n": limit_bytes, "by": by, "now": now},
    )


def delete_quota(tx: Tx, namespace: str) -> Any:
    """Remove a namespace's quota; its limit, or None when it had none."""
    gone = tx.execute(
        "DELETE FROM namespace_quotas WHERE namespace = :ns RETURNING limit_bytes",
        {"ns": namespace},
    )
    return gone[0][0] if gone else None


def quotas(tx: Tx) -> list[Row]:
    """(namespace, limit, updated by, updated at) of every quota, by namespace."""
    return tx.execute(
        "SELECT namespace, limit_bytes, updated_by, updated_at FROM namespace_quotas "
        "ORDER BY namespace"
    )


# -- cleanup policies (policies.py) ------------------------------------------------------------

_POLICY_COLUMNS = (
    "id, scope, settings, enabled, created_by, created_at, updated_at, previewed_at, "
    "last_run_at, last_result"
)


def policy_rows(tx: Tx, scope: str | None = None) -> list[Row]:
    """(id, scope, settings, enabled, created by, created at, updated at, previewed at, last
    run at, last result) of every cleanup policy, or those of one scope, by id."""
    sql = f"SELECT {_POLICY_COLUMNS} FROM cleanup_policies"  # noqa: S608
    params: dict[str, Any] = {}
    if scope is not None:
        sql += " WHERE scope = :scope"
        params["scope"] = scope
    return tx.execute(sql + " ORDER BY id", params)


def policy_row(tx: Tx, policy_id: int) -> Row | None:
    """A policy's row, as `policy_rows` gives them."""
    return tx.one(
        f"SELECT {_POLICY_COLUMNS} FROM cleanup_policies WHERE id = :id",  # noqa: S608
        {"id": policy_id},
    )


def insert_policy(tx: Tx, row: Params) -> int:
    """A row of scope, settings (JSON), enabled (0 or 1), by and now; returns its id."""
    added = tx.one(
        "INSERT INTO cleanup_policies (scope, settings, enabled, created_by, created_at, "
        "updated_at) VALUES (:scope, :settings, :enabled, :by, :now, :now) RETURNING id",
        row,
    )
    assert added is not None
    return int(added[0])


def set_policy_settings(tx: Tx, policy_id: int, settings: str, now: float) -> None:
    """New settings (JSON); the policy must be previewed again."""
    tx.execute(
        "UPDATE cleanup_policies SET settings = :s, updated_at = :now, "
        "previewed_at = NULL WHERE id = :id",
        {"s": settings, "now": now, "id": policy_id},
    )


def set_policy_enabled(tx: Tx, policy_id: int, enabled: bool, now: float) -> None:
    tx.execute(
        "UPDATE cleanup_policies SET enabled = :e, updated_at = :now WHERE id = :id",
        {"e": int(enabled), "now": now, "id": policy_id},
    )


def delete_policy(tx: Tx, policy_id: int) -> None:
    tx.execute("DELETE FROM cleanup_policies WHERE id = :id", {"id": policy_id})


def policy_previewed(tx: Tx, policy_id: int, now: float) -> None:
    tx.execute(
        "UPDATE cleanup_policies SET previewed_at = :now WHERE id = :id",
        {"now": now, "id": policy_id},
    )


def policy_ran(tx: Tx, policy_id: int, now: float, result: str) -> None:
    """The policy ran at `now`, with `result` (its summary, JSON)."""
    tx.execute(
        "UPDATE cleanup_policies SET last_run_at = :now, last_result = :r WHERE id = :id",
        {"now": now, "r": result, "id": policy_id},
    )


def repositories_in_scope(tx: Tx, scope: str) -> list[Row]:
    """(id, name) of the repository `scope` names, or of every repository of namespace
    `scope` (by name) when it has no '/'."""
    if "/" in scope:
        return tx.execute("SELECT id, name FROM repositories WHERE name = :n", {"n": scope})
    inside, params = in_namespace("name", scope)
    return tx.execute(
        f"SELECT id, name FROM repositories WHERE {inside} ORDER BY name",  # noqa: S608
        params,
    )


def tags_with_times(tx: Tx, repository_id: int) -> list[Row]:
    """(tag, manifest id, digest, pushed at, pulled at) of a repository's tags, by name."""
    return tx.execute(
        "SELECT t.name, t.manifest_id, m.digest, t.updated_at, t.pulled_at FROM tags t "
        "JOIN manifests m ON m.id = t.manifest_id WHERE t.repository_id = :r "
        "ORDER BY t.name",
        {"r": repository_id},
    )


def delete_tag(tx: Tx, repository_id: int, tag: str) -> None:
    tx.execute(
        "DELETE FROM tags WHERE repository_id = :r AND name = :n",
        {"r": repository_id, "n": tag},
    )


def manifest_name(tx: Tx, manifest_id: int) -> Row | None:
    """(repository, digest) of a manifest."""
    return tx.one(
        "SELECT r.name, m.digest FROM manifests m JOIN repositories r "
        "ON r.id = m.repository_id WHERE m.id = :id",
        {"id": manifest_id},
    )


def layers_of(tx: Tx, manifest_id: int) -> list[str]:
    return [
        r[0]
        for r in tx.execute(
            "SELECT digest FROM manifest_layers WHERE manifest_id = :id", {"id": manifest_id}
        )
    ]


def dependents(tx: Tx, manifest_id: int) -> list[int]:
    """Manifests an index lists, and referrers of a manifest (same repository)."""
    return [
        int(r[0])
        for r in tx.execute(
            "SELECT child_id FROM manifest_references WHERE parent_id = :id "
            "UNION SELECT m.id FROM manifests m JOIN manifests s ON s.repository_id = "
            "m.repository_id AND s.digest = m.subject_digest WHERE s.id = :id",
            {"id": manifest_id},
        )
    ]


def layer_in_use(tx: Tx, digest: str) -> bool:
    """Whether any manifest still lists blob `digest` as a layer."""
    return (
        tx.scalar("SELECT 1 FROM manifest_layers WHERE digest = :d LIMIT 1", {"d": digest})
        is not None
    )


def blob_size(tx: Tx, digest: str) -> int:
    return int(tx.scalar("SELECT size FROM blobs WHERE digest = :d", {"d": digest}) or 0)


# -- the collector (gc.py) ---------------------------------------------------------------------


def _ids(prefix: str, values: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """`(:p0, :p1, ...)` and its parameters, for an IN list."""
    names = [f"{prefix}{i}" for i in range(len(values))]
    return "(" + ", ".join(":" + n for n in names) + ")", dict(zip(names, values, strict=True))


def held(tx: Tx, now: float) -> bool:
    """Whether an unexpired gc hold exists (a snapshot reader is copying)."""
    return (
        tx.scalar("SELECT 1 FROM gc_holds WHERE expires_at > :now LIMIT 1", {"now": now})
        is not None
    )


def manifest_needed(tx: Tx, manifest_id: int, referrers: bool) -> bool:
    """Whether the manifest must stay: a tag or an index needs it, it is a referrer whose
    subject is present (or `referrers` is off), or it no longer exists (nothing to remove)."""
    row = tx.one(
        "SELECT m.subject_digest, "
        "EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = m.id), "
        "EXISTS (SELECT 1 FROM manifest_references r WHERE r.child_id = m.id), "
        "EXISTS (SELECT 1 FROM manifests s WHERE s.repository_id = m.repository_id "
        "AND s.digest = m.subject_digest) "
        "FROM manifests m WHERE m.id = :id",
        {"id": manifest_id},
    )
    if row is None:
        return True  # already gone: nothing to remove
    subject, tagged, listed, subject_present = row
    if tagged or listed:
        return True
    if subject is not None:
        return not referrers or bool(subject_present)
    return False


def _due_params(now: float, untagged_before: float | None) -> dict[str, Any]:
    return {
        "untagged": 0 if untagged_before is None else 1,
        "ub": untagged_before if untagged_before is not None else 0.0,
        "now": now,
    }


def due_manifests(
    tx: Tx, now: float, untagged_before: float | None, limit: int, *, locking: bool
) -> list[int]:
    """Ids of queued manifests due for review, oldest first: untagged ones queued before
    `untagged_before` (None: never), referrers due by `now`. `locking` (PostgreSQL): the
    rows are locked, and rows another collector holds are skipped."""
    sql = (
        "SELECT q.manifest_id FROM gc_manifest_queue q "
        "JOIN manifests m ON m.id = q.manifest_id WHERE "
        "((m.subject_digest IS NULL AND :untagged = 1 AND q.review_after <= :ub) "
        "OR (m.subject_digest IS NOT NULL AND q.review_after <= :now)) "
        "ORDER BY q.review_after LIMIT :n"
    )
    if locking:
        sql += " FOR UPDATE OF q SKIP LOCKED"
    params = {**_due_params(now, untagged_before), "n": limit}
    return [int(r[0]) for r in tx.execute(sql, params)]


def all_due_manifests(tx: Tx, now: float, untagged_before: float | None) -> list[int]:
    """Ids of every queued manifest due for review (as `due_manifests`, unordered, unlocked)."""
    sql = (
        "SELECT m.id FROM gc_manifest_queue q JOIN manifests m ON m.id = q.manifest_id "
        "WHERE ((m.subject_digest IS NULL AND :untagged = 1 AND q.review_after <= :ub) "
        "OR (m.subject_digest IS NOT NULL AND q.review_after <= :now))"
    )
    return [int(r[0]) for r in tx.execute(sql, _due_params(now, untagged_before))]


def sweep_manifest_queue(tx: Tx, now: float) -> None:
    """Drop due manifest rows that need no review: the manifest is gone, tagged again or
    listed by an index (each of those events queues it again when it ends)."""
    tx.execute(
        "DELETE FROM gc_manifest_queue WHERE review_after <= :now AND ("
        "NOT EXISTS (SELECT 1 FROM manifests m WHERE m.id = gc_manifest_queue.manifest_id) "
        "OR EXISTS (SELECT 1 FROM tags t WHERE t.manifest_id = gc_manifest_queue.manifest_id) "
        "OR EXISTS (SELECT 1 FROM manifest_references r "
        "WHERE r.child_id = gc_manifest_queue.manifest_id))",
        {"now": now},
    )


def unqueue_manifest(tx: Tx, manifest_id: int) -> None:
    tx.execute("DELETE FROM gc_manifest_queue WHERE manifest_id = :id", {"id": manifest_id})


def due_blobs(tx: Tx, now: float, limit: int, *, locking: bool) -> list[str]:
    """Digests of queued blobs due for review, oldest first (`locking`: as `due_manifests`)."""
    sql = (
        "SELECT digest FROM gc_blob_queue WHERE review_after <= :now ORDER BY review_after LIMIT :n"
    )
    if locking:
        sql += " FOR UPDATE SKIP LOCKED"
    return [r[0] for r in tx.execute(sql, {"now": now, "n": limit})]


def unqueue_blobs(tx: Tx, digests: Sequence[str]) -> None:
    in_list, params = _ids("d", digests)
    tx.execute(f"DELETE FROM gc_blob_queue WHERE digest IN {in_list}", params)  # noqa: S608


def unlink_unused(tx: Tx, digests: Sequence[str]) -> list[Row]:
    """Remove access to these blobs from repositories none of whose manifests use them
    (pushed or mounted, never referenced within the delay); one row per access removed."""
    in_list, params = _ids("d", digests)
    return tx.execute(
        f"DELETE FROM repository_blobs WHERE digest IN {in_list} AND NOT EXISTS ("  # noqa: S608
        "SELECT 1 FROM manifest_layers ml JOIN manifests m ON m.id = ml.manifest_id "
        "WHERE ml.digest = repository_blobs.digest "
        "AND m.repository_id = repository_blobs.repository_id) RETURNING digest",
        params,
    )


def delete_unreferenced_blobs(tx: Tx, digests: Sequence[str]) -> list[Row]:
    """Delete the rows of these blobs that no repository reads and no manifest lists;
    (digest, size, storage key) of each."""
    in_list, params = _ids("d", digests)
    return tx.execute(
        f"DELETE FROM blobs WHERE digest IN {in_list} "  # noqa: S608
        "AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = blobs.digest) "
        "AND NOT EXISTS (SELECT 1 FROM manifest_layers ml WHERE ml.digest = blobs.digest) "
        "RETURNING digest, size, storage_key",
        params,
    )


def queued_blobs(tx: Tx) -> int:
    return int(tx.scalar("SELECT COUNT(*) FROM gc_blob_queue"))


def queued_manifests(tx: Tx) -> int:
    return int(tx.scalar("SELECT COUNT(*) FROM gc_manifest_queue"))


def due_unused_blobs(tx: Tx, now: float) -> tuple[int, int]:
    """(how many, bytes) of queued blobs due by `now` that no manifest lists."""
    row = tx.one(
        "SELECT COUNT(*), COALESCE(SUM(b.size), 0) FROM gc_blob_queue q "
        "JOIN blobs b ON b.digest = q.digest WHERE q.review_after <= :now "
        "AND NOT EXISTS (SELECT 1 FROM manifest_layers ml WHERE ml.digest = q.digest)",
        {"now": now},
    )
    assert row is not None
    return int(row[0]), int(row[1])


def blobs_freed(tx: Tx, manifest_ids: Sequence[int]) -> tuple[int, int]:
    """How many blobs, and bytes, no manifest outside `manifest_ids` uses while some of them
    do: what removing those manifests frees (once the collector has reviewed the blobs)."""
    if not manifest_ids:
        return 0, 0
    going = set(manifest_ids)
    digests: set[str] = set()
    ids = sorted(going)
    for i in range(0, len(ids), 500):
        in_list, params = _ids("m", ids[i : i + 500])
        digests.update(
            r[0]
            for r in tx.execute(
                f"SELECT DISTINCT digest FROM manifest_layers WHERE manifest_id IN {in_list}",  # noqa: S608
                params,
            )
        )
    count = total = 0
    ordered = sorted(digests)
    for i in range(0, len(ordered), 500):
        in_list, params = _ids("d", ordered[i : i + 500])
        users: dict[str, set[int]] = {}
        for digest, manifest_id in tx.execute(
            f"SELECT digest, manifest_id FROM manifest_layers WHERE digest IN {in_list}",  # noqa: S608
            params,
        ):
            users.setdefault(digest, set()).add(int(manifest_id))
        sizes: dict[str, int] = dict(
            tx.execute(f"SELECT digest, size FROM blobs WHERE digest IN {in_list}", params)  # noqa: S608
        )
        for digest, used_by in users.items():
            if used_by <= going:
                count += 1
                total += int(sizes.get(digest, 0))
    return count, total
