"""Immutable tag rules, namespace quotas and storage usage.

`Rules` is the `WriteChecks` the metadata store calls inside each write transaction: a tag
matching an immutable rule of its namespace cannot be moved or deleted, and a blob that would
take a namespace past its quota cannot be linked into it. The rules live in the database
(migration 0005) and are cached in memory, so a push into a namespace without rules costs no
query at all, and one with a quota costs one query per blob linked. Every change to them
touches the `rules` change stamp (metadata/changes.py), so every process of the host reloads
before its next check, and other hosts within milliseconds.

Usage counts blobs once per namespace however many repositories hold them: `total` is the
bytes of the distinct blobs readable by the namespace's repositories (what quotas limit),
`shared` the part of it that some repository elsewhere also holds, `unique` the rest (what
deleting the namespace would free).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from appliance.errors import Denied, InvalidName, NotFound
from appliance.lifecycle import records
from appliance.metadata import audit
from appliance.metadata.db import Database, Tx
from appliance.oci import patterns
from appliance.oci.names import namespace_of, validate_component, validate_name
from appliance.oci.patterns import TagPattern

log = logging.getLogger("berth.lifecycle")


@dataclass(frozen=True)
class ImmutableRule:
    id: int
    namespace: str
    pattern: str
    created_by: str
    created_at: float

    @functools.cached_property
    def compiled(self) -> TagPattern:
        """The pattern on RE2; a stored one RE2 refuses matches nothing (see `problem`)."""
        return patterns.stored(self.pattern, "the rule's pattern")

    @property
    def problem(self) -> str | None:
        """Why a stored pattern cannot be used (the rule then protects no tag), or None."""
        return self.compiled.error

    def matches(self, tag: str) -> bool:
        return self.compiled.fullmatch(tag)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.problem is not None:
            out["problem"] = self.problem
        return out


@dataclass(frozen=True)
class Quota:
    namespace: str
    limit_bytes: int
    updated_by: str
    updated_at: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Usage:
    """Blob bytes held by a namespace or a repository (see the module docstring)."""

    name: str
    blobs: int
    total: int
    shared: int

    @property
    def unique(self) -> int:
        return self.total - self.shared

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "blobs": self.blobs,
            "total_bytes": self.total,
            "shared_bytes": self.shared,
            "unique_bytes": self.unique,
        }


def namespace_usage(tx: Tx, ns: str) -> Usage:
    row = records.namespace_usage(tx, ns)
    return Usage(ns, int(row[0]), int(row[1]), int(row[2]))


def repository_usage(tx: Tx, ns: str) -> list[Usage]:
    """Usage of every repository of `ns`; `shared` is what another repository also holds."""
    rows = records.repository_usage(tx, ns)
    return [Usage(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]


def namespaces_in_use(tx: Tx) -> list[str]:
    """Namespaces that hold at least one repository."""
    names = {namespace_of(name) for name in records.repository_names(tx)}
    return sorted(names)


TOPIC = "rules"  # the change stamp of immutable-tag rules and quotas


class Rules:
    """The cached immutable-tag rules and quotas, and the changes to them.

    Implements `metadata.store.WriteChecks`. `clock` stamps changes. The cache is good while
    the `rules` change stamp is the one read before it was loaded.
    """

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock
        self._lock = threading.Lock()
        self._stamp: int | None = None
        self._immutable: dict[str, tuple[ImmutableRule, ...]] = {}
        self._quotas: dict[str, int] = {}
        self._warned: set[int] = set()

    # -- the cache ------------------------------------------------------------------------

    def invalidate(self) -> None:
        self._stamp = None

    def _fresh(self, tx: Tx) -> None:
        stamp = self.db.changes.stamp(TOPIC)  # before the load: a change meanwhile reloads
        if stamp == self._stamp:
            return
        rules = list_immutable_rules(tx)
        quotas = list_quotas(tx)
        by_ns: dict[str, list[ImmutableRule]] = {}
        for rule in rules:
            if rule.problem is not None and rule.id not in self._warned:
                self._warned.add(rule.id)  # once per process, not at every reload
                log.warning(
                    "immutable tag rule %d of %s protects no tag: %s",
                    rule.id,
                    rule.namespace,
                    rule.problem,
                )
            by_ns.setdefault(rule.namespace, []).append(rule)
        with self._lock:
            self._immutable = {ns: tuple(found) for ns, found in by_ns.items()}
            self._quotas = {q.namespace: q.limit_bytes for q in quotas}
            self._stamp = stamp

    def immutable_rule(self, tx: Tx, repository: str, tag: str) -> ImmutableRule | None:
        """The rule that makes `tag` of `repository` immutable, if any."""
        self._fresh(tx)
        for rule in self._immutable.get(namespace_of(repository), ()):
            if rule.matches(tag):
                return rule
        return None

    # -- WriteChecks ----------------------------------------------------------------------

    def blob_linking(self, tx: Tx, repository: str, digest: str, size: int) -> None:
        self._fresh(tx)
        ns = namespace_of(repository)
        limit = self._quotas.get(ns)
        if limit is None:
            return
        usage, held = records.usage_with(tx, ns, digest)
        if not held and usage + size > limit:
            raise Denied(
                f"quota of namespace {ns} exceeded: it holds {usage} bytes, this blob "
                f"needs {size} more, the limit is {limit} bytes",
                {"namespace": ns, "usage": usage, "size": size, "limit": limit},
            )

    def quota_limited(self, tx: Tx, repository: str) -> bool:
        self._fresh(tx)
        return namespace_of(repository) in self._quotas

    def held_size(self, tx: Tx, repository: str, digest: str) -> int:
        return records.held_size(tx, namespace_of(repository), digest)

    def upload_growing(self, tx: Tx, repository: str, upload_id: str, total: int) -> None:
        """Open uploads count against the quota while they are written: committed bytes, plus
        what the namespace's other open uploads hold or reserved, plus `total` must fit."""
        self._fresh(tx)
        ns = namespace_of(repository)
        limit = self._quotas.get(ns)
        if limit is None:
            return
        usage = namespace_usage(tx, ns).total
        held = records.uploads_held(tx, ns, upload_id)
        if usage + held + total > limit:
            raise Denied(
                f"quota of namespace {ns} exceeded: it holds {usage} bytes and its other open "
                f"uploads {held}, this upload needs {total}, the limit is {limit} bytes",
                {"namespace": ns, "usage": usage, "uploads": held, "size": total, "limit": limit},
            )

    def tag_moving(self, tx: Tx, repository: str, tag: str, previous: int | None, new: int) -> None:
        if previous is None or previous == new:
            return
        rule = self.immutable_rule(tx, repository, tag)
        if rule is not None:
            raise Denied(
                f"tag {tag} of {repository} is immutable (rule {rule.id} of namespace "
                f"{rule.namespace}: {rule.pattern!r}): it cannot be overwritten",
                {"rule": rule.id, "pattern": rule.pattern, "tag": tag},
            )

    def tag_deleting(self, tx: Tx, repository: str, tag: str) -> None:
        rule = self.immutable_rule(tx, repository, tag)
        if rule is not None:
            raise Denied(
                f"tag {tag} of {repository} is immutable (rule {rule.id} of namespace "
                f"{rule.namespace}: {rule.pattern!r}): it cannot be deleted",
                {"rule": rule.id, "pattern": rule.pattern, "tag": tag},
            )

    def manifest_deleting(self, tx: Tx, repository: str, manifest_id: int) -> None:
        self._fresh(tx)
        if not self._immutable.get(namespace_of(repository)):
            return
        for tag in records.tags_of_manifest(tx, manifest_id):
            self.tag_deleting(tx, repository, tag)

    # -- changes (audited) ----------------------------------------------------------------

    async def add_immutable_rule(self, actor: str, namespace: str, pattern: str) -> ImmutableRule:
        validate_component(namespace)
        patterns.compile_pattern(pattern, "the rule's pattern")
        now = self.clock()

        def fn(tx: Tx) -> ImmutableRule:
            records.insert_immutable_rule(tx, namespace, pattern, actor, now)
            rule = next(r for r in list_immutable_rules(tx, namespace) if r.pattern == pattern)
            tx.touch(TOPIC)
            audit.record(
                tx, actor, "immutable_rule.create", namespace, at=now, rule=rule.id, pattern=pattern
            )
            return rule

        try:
            return await self.db.write(fn)
        finally:
            self.invalidate()

    async def remove_immutable_rule(self, actor: str, namespace: str, rule_id: int) -> None:
        now = self.clock()

        def fn(tx: Tx) -> None:
            pattern = records.delete_immutable_rule(tx, namespace, rule_id)
            if pattern is None:
                raise NotFound(f"no immutable tag rule {rule_id} in namespace {namespace}")
            tx.touch(TOPIC)
            audit.record(
                tx,
                actor,
                "immutable_rule.delete",
                namespace,
                at=now,
                rule=rule_id,
                pattern=pattern,
            )

        try:
            await self.db.write(fn)
        finally:
            self.invalidate()

    async def set_quota(self, actor: str, namespace: str, limit_bytes: int) -> Quota:
        validate_component(namespace)
        if limit_bytes < 0:
            raise InvalidName("a quota is a number of bytes, 0 or more")
        now = self.clock()

        def fn(tx: Tx) -> Quota:
            records.upsert_quota(tx, namespace, limit_bytes, actor, now)
            audit.record(tx, actor, "quota.set", namespace, at=now, limit_bytes=limit_bytes)
            tx.touch(TOPIC)
            return Quota(namespace, limit_bytes, actor, now)

        try:
            return await self.db.write(fn)
        finally:
            self.invalidate()

    async def remove_quota(self, actor: str, namespace: str) -> None:
        now = self.clock()

        def fn(tx: Tx) -> None:
            limit = records.delete_quota(tx, namespace)
            if limit is None:
                raise NotFound(f"namespace {namespace} has no quota")
            tx.touch(TOPIC)
            audit.record(tx, actor, "quota.delete", namespace, at=now, limit_bytes=limit)

        try:
            await self.db.write(fn)
        finally:
            self.invalidate()

    async def usage(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Usage per namespace (all, or one), each with its quota and its repositories."""
        if namespace is not None:
            validate_name(namespace)

        def fn(tx: Tx) -> list[dict[str, Any]]:
            quotas = {q.namespace: q.limit_bytes for q in list_quotas(tx)}
            names = [namespace] if namespace is not None else namespaces_in_use(tx)
            out = []
            for ns in names:
                entry = namespace_usage(tx, ns).as_json()
                entry["quota_bytes"] = quotas.get(ns)
                entry["repositories"] = [u.as_json() for u in repository_usage(tx, ns)]
                out.append(entry)
            return out

        return await self.db.read(fn)


def list_immutable_rules(tx: Tx, namespace: str | None = None) -> list[ImmutableRule]:
    rows = records.immutable_rules(tx, namespace)
    return [ImmutableRule(int(r[0]), r[1], r[2], r[3], float(r[4])) for r in rows]


def list_quotas(tx: Tx) -> list[Quota]:
    rows = records.quotas(tx)
    return [Quota(r[0], int(r[1]), r[2], float(r[3])) for r in rows]
