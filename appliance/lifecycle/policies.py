"""Cleanup policies: which tags of a namespace or repository to remove, previewed before run.

A policy's scope is a namespace (`team`: every repository in it) or one repository
(`team/app`). In each repository its tags are ordered newest first by push time (or by last
pull time, falling back to the push time for tags never pulled), and a tag is removed when

* it is not among the `keep_recent` newest tags of its repository (when set),
* it does not match `keep_regex` (when set) and does match `remove_regex` (when set),
* it is older than `older_than_days` (when set),
* and no immutable tag rule protects it.

`keep_recent` or `older_than_days` must be set: a policy never means "remove everything".
Manifests left with no tag and no index listing them go with their tags, and so do their
referrers and the children of removed indexes that nothing else needs; their blobs are queued
for the collector, which frees them after `gc.delay`.

A preview runs exactly the code of a real run inside a transaction that is then rolled back,
so it lists exactly the tags a run at that moment would remove and the unique bytes it would
free. A policy runs (by schedule or by hand) only after its current settings were previewed;
any change clears that mark. Every tag and manifest a run removes is in the audit log.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from appliance.errors import Denied, InvalidName, NotFound
from appliance.lifecycle import records
from appliance.lifecycle.records import manifest_needed
from appliance.lifecycle.rules import Rules
from appliance.metadata import audit, events
from appliance.metadata.changes import repository_topic
from appliance.metadata.db import Database, Tx
from appliance.metadata.leader import Fence, check_fence
from appliance.metadata.store import drop_manifest
from appliance.oci import patterns
from appliance.oci.names import validate_name
from appliance.oci.patterns import TagPattern

log = logging.getLogger("berth.lifecycle")

DAY = 86400.0
TIME_BASES = ("push", "pull")


@dataclass(frozen=True)
class PolicySettings:
    keep_recent: int | None = None
    keep_regex: str | None = None
    remove_regex: str | None = None
    older_than_days: float | None = None
    time_basis: str = "push"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PolicySettings:
        """Validated settings; raises InvalidName (a 400) naming the bad field."""
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise InvalidName(f"unknown policy field(s): {', '.join(sorted(unknown))}")
        keep_recent = data.get("keep_recent")
        if keep_recent is not None and (
            isinstance(keep_recent, bool) or not isinstance(keep_recent, int) or keep_recent < 0
        ):
            raise InvalidName("keep_recent must be a whole number, 0 or more")
        older = data.get("older_than_days")
        if older is not None and (
            isinstance(older, bool)
            or not isinstance(older, int | float)
            or not 0 <= older < float("inf")  # also refuses NaN
        ):
            raise InvalidName("older_than_days must be a number of days, 0 or more")
        for name in ("keep_regex", "remove_regex"):
            value = data.get(name)
            if value is not None:
                patterns.compile_pattern(value, name)
        basis = data.get("time_basis", "push")
        if basis not in TIME_BASES:
            raise InvalidName("time_basis must be 'push' or 'pull'")
        if keep_recent is None and older is None:
            raise InvalidName("a policy needs keep_recent or older_than_days (or both)")
        return cls(
            keep_recent=keep_recent,
            keep_regex=data.get("keep_regex"),
            remove_regex=data.get("remove_regex"),
            older_than_days=None if older is None else float(older),
            time_basis=basis,
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @functools.cached_property
    def keep(self) -> TagPattern | None:
        return None if self.keep_regex is None else patterns.stored(self.keep_regex, "keep_regex")

    @functools.cached_property
    def remove(self) -> TagPattern | None:
        if self.remove_regex is None:
            return None
        return patterns.stored(self.remove_regex, "remove_regex")

    @property
    def problem(self) -> str | None:
        """Why a stored pattern cannot be used, or None. Such a policy removes nothing: a
        `keep_regex` that matched nothing would remove the very tags it was meant to keep."""
        for found in (self.keep, self.remove):
            if found is not None and found.error is not None:
                return found.error
        return None


@dataclass(frozen=True)
class Policy:
    id: int
    scope: str
    settings: PolicySettings
    enabled: bool
    created_by: str
    created_at: float
    updated_at: float
    previewed_at: float | None
    last_run_at: float | None
    last_result: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["settings"] = self.settings.as_json()
        if self.settings.problem is not None:
            out["problem"] = self.settings.problem
        return out


@dataclass
class PlanResult:
    """What a run removes (or, for a preview, would remove)."""

    policy: int
    tags: list[dict[str, Any]] = field(default_factory=list)  # repository, tag, digest, time
    protected: list[dict[str, Any]] = field(default_factory=list)  # kept by an immutable rule
    manifests: int = 0
    blobs: int = 0
    unique_bytes: int = 0
    problem: str | None = None  # why the policy removed nothing (a stored pattern RE2 refuses)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        return {
            "tags": len(self.tags),
            "manifests": self.manifests,
            "blobs": self.blobs,
            "unique_bytes": self.unique_bytes,
            "protected": len(self.protected),
        }


class _Rollback(Exception):  # a control-flow signal, not an error
    def __init__(self, result: PlanResult) -> None:
        super().__init__("preview")
        self.result = result


def _policy(row: tuple[Any, ...]) -> Policy:
    return Policy(
        int(row[0]),
        row[1],
        PolicySettings(**json.loads(row[2])),
        bool(row[3]),
        row[4],
        float(row[5]),
        float(row[6]),
        None if row[7] is None else float(row[7]),
        None if row[8] is None else float(row[8]),
        None if row[9] is None else json.loads(row[9]),
    )


def list_policies(tx: Tx, scope: str | None = None) -> list[Policy]:
    return [_policy(r) for r in records.policy_rows(tx, scope)]


def get_policy(tx: Tx, policy_id: int) -> Policy:
    row = records.policy_row(tx, policy_id)
    if row is None:
        raise NotFound(f"no cleanup policy {policy_id}")
    return _policy(row)


def scope_namespace(scope: str) -> str:
    return scope.split("/", 1)[0]


class Policies:
    """Cleanup policies over one database: changes, previews and runs.

    `clock` is the wall clock every age is measured on (tests inject one). `delay` is
    `gc.delay` (when the blobs of removed manifests are reviewed); `referrers` is
    `gc.referrers`.
    """

    def __init__(
        self,
        db: Database,
        rules: Rules,
        clock: Callable[[], float],
        *,
        delay: float = 86400.0,
        referrers: bool = True,
    ) -> None:
        self.db = db
        self.rules = rules
        self.clock = clock
        self.delay = delay
        self.referrers = referrers

    # -- changes -------------------------------------------------------------------------

    async def create(
        self, actor: str, scope: str, settings: dict[str, Any], enabled: bool = True
    ) -> Policy:
        validate_name(scope)
        parsed = PolicySettings.from_json(settings)
        now = self.clock()

        def fn(tx: Tx) -> Policy:
            policy_id = records.insert_policy(
                tx,
                {
                    "scope": scope,
                    "settings": json.dumps(parsed.as_json(), sort_keys=True),
                    "enabled": int(enabled),
                    "by": actor,
                    "now": now,
                },
            )
            audit.record(
                tx,
                actor,
                "policy.create",
                scope,
                at=now,
                policy=policy_id,
                settings=parsed.as_json(),
                enabled=enabled,
            )
            return get_policy(tx, policy_id)

        return await self.db.write(fn)

    async def update(
        self,
        actor: str,
        policy_id: int,
        settings: dict[str, Any] | None = None,
        enabled: bool | None = None,
    ) -> Policy:
        """Change a policy's settings (which clears its preview) or switch it on or off."""
        parsed = None if settings is None else PolicySettings.from_json(settings)
        now = self.clock()

        def fn(tx: Tx) -> Policy:
            current = get_policy(tx, policy_id)
            if parsed is not None and parsed != current.settings:
                records.set_policy_settings(
                    tx, policy_id, json.dumps(parsed.as_json(), sort_keys=True), now
                )
            if enabled is not None:
                records.set_policy_enabled(tx, policy_id, enabled, now)
            audit.record(
                tx,
                actor,
                "policy.update",
                current.scope,
                at=now,
                policy=policy_id,
                settings=None if parsed is None else parsed.as_json(),
                enabled=enabled,
            )
            return get_policy(tx, policy_id)

        return await self.db.write(fn)

    async def delete(self, actor: str, policy_id: int) -> None:
        now = self.clock()

        def fn(tx: Tx) -> None:
            current = get_policy(tx, policy_id)
            records.delete_policy(tx, policy_id)
            audit.record(tx, actor, "policy.delete", current.scope, at=now, policy=policy_id)

        await self.db.write(fn)

    async def get(self, policy_id: int) -> Policy:
        return await self.db.read(lambda tx: get_policy(tx, policy_id))

    async def all(self, scope: str | None = None) -> list[Policy]:
        return await self.db.read(lambda tx: list_policies(tx, scope))

    # -- preview and run -----------------------------------------------------------------

    async def preview(self, actor: str, policy_id: int) -> PlanResult:
        """Exactly what running the policy now would remove; marks the policy previewed."""
        now = self.clock()

        def fn(tx: Tx) -> None:
            policy = get_policy(tx, policy_id)
            raise _Rollback(self._apply(tx, policy, now, actor))

        try:
            await self.db.write(fn)
        except _Rollback as done:
            result = done.result
        else:  # pragma: no cover - fn always raises
            raise AssertionError("unreachable")

        def mark(tx: Tx) -> None:
            records.policy_previewed(tx, policy_id, now)
            audit.record(tx, actor, "policy.preview", str(policy_id), at=now, **result.summary())

        await self.db.write(mark)
        return result

    async def run(self, actor: str, policy_id: int, fence: Fence | None = None) -> PlanResult:
        """Run one policy now. Raises Denied when its current settings were never previewed."""
        now = self.clock()

        def fn(tx: Tx) -> PlanResult:
            if fence is not None:
                check_fence(tx, fence)
            policy = get_policy(tx, policy_id)
            if policy.previewed_at is None:
                raise Denied(
                    f"cleanup policy {policy_id} has not been previewed since it was last "
                    "changed: preview it first"
                )
            result = self._apply(tx, policy, now, actor)
            records.policy_ran(tx, policy_id, now, json.dumps(result.summary()))
            audit.record(
                tx, actor, "policy.run", policy.scope, at=now, policy=policy_id, **result.summary()
            )
            return result

        return await self.db.write(fn)

    async def run_all(
        self, fence: Fence | None = None, every: float | None = None
    ) -> list[PlanResult]:
        """Run every enabled, previewed policy (the scheduled job); with `every`, only those
        that have not run for that many seconds (so a restart does not delay them)."""
        now = self.clock()
        results = []
        for policy in await self.all():
            if not policy.enabled or policy.previewed_at is None:
                continue
            ran = policy.last_run_at
            if every is not None and ran is not None and now - ran < every:
                continue
            results.append(await self.run("system", policy.id, fence))
        return results

    # -- the one plan, for preview and run ------------------------------------------------

    def _chosen(self, policy: Policy, tags: list[tuple[Any, ...]], now: float) -> list[int]:
        """Indexes into `tags` (name, manifest_id, digest, pushed, pulled) of those to go."""
        s = policy.settings

        def when(t: tuple[Any, ...]) -> float:
            if s.time_basis == "pull" and t[4] is not None:
                return float(t[4])
            return float(t[3])

        order = sorted(range(len(tags)), key=lambda i: (-when(tags[i]), tags[i][0]))
        cutoff = None if s.older_than_days is None else now - s.older_than_days * DAY
        going = []
        for rank, i in enumerate(order):
            name = tags[i][0]
            if s.keep_recent is not None and rank < s.keep_recent:
                continue
            if s.keep is not None and s.keep.fullmatch(name):
                continue
            if s.remove is not None and not s.remove.fullmatch(name):
                continue
            if cutoff is not None and when(tags[i]) >= cutoff:
                continue
            going.append(i)
        return going

    def _apply(self, tx: Tx, policy: Policy, now: float, actor: str) -> PlanResult:
        result = PlanResult(policy.id)
        if policy.settings.problem is not None:
            log.warning("cleanup policy %d removes nothing: %s", policy.id, policy.settings.problem)
            result.problem = (
                f"{policy.settings.problem}; the policy removes nothing until it is changed"
            )
            return result
        repos = records.repositories_in_scope(tx, policy.scope)
        touched: list[int] = []
        for repo_id, repo in repos:
            tags = records.tags_with_times(tx, repo_id)
            for i in self._chosen(policy, tags, now):
                name, manifest_id, digest, pushed, pulled = tags[i]
                entry = {
                    "repository": repo,
                    "tag": name,
                    "digest": digest,
                    "pushed_at": pushed,
                    "pulled_at": pulled,
                }
                rule = self.rules.immutable_rule(tx, repo, name)
                if rule is not None:
                    result.protected.append({**entry, "rule": rule.id})
                    continue
                records.delete_tag(tx, repo_id, name)
                tx.touch(repository_topic(repo))
                audit.record(
                    tx,
                    actor,
                    "tag.delete",
                    f"{repo}:{name}",
                    at=now,
                    policy=policy.id,
                    digest=digest,
                )
                events.emit(
                    tx,
                    "delete",
                    repository=repo,
                    tag=name,
                    digest=digest,
                    actor=actor,
                    policy=policy.id,
                )
                result.tags.append(entry)
                touched.append(int(manifest_id))
        # Manifests that lost their last tag go too, with what only they needed.
        layers: set[str] = set()
        pending = list(dict.fromkeys(touched))
        while pending:
            manifest_id = pending.pop()
            if manifest_needed(tx, manifest_id, self.referrers):
                continue
            row = records.manifest_name(tx, manifest_id)
            assert row is not None
            layers.update(records.layers_of(tx, manifest_id))
            follow = records.dependents(tx, manifest_id)
            generated = drop_manifest(tx, manifest_id, now + self.delay)
            for gone in [row[1], *generated]:
                audit.record(
                    tx, actor, "manifest.delete", f"{row[0]}@{gone}", at=now, policy=policy.id
                )
                events.emit(
                    tx, "delete", repository=row[0], digest=gone, actor=actor, policy=policy.id
                )
            result.manifests += 1 + len(generated)
            pending.extend(follow)
        for digest in sorted(layers):
            if not records.layer_in_use(tx, digest):
                result.blobs += 1
                result.unique_bytes += records.blob_size(tx, digest)
        return result
