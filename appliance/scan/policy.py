"""Pull policy per namespace: its records (each change audited) and the gate the manifest GET
path asks.

A namespace's policy refuses pulls of images with a finding at or above `block_severity`,
except for advisories on its allow-list, each until its own expiry. Images without a report
(not scanned yet, or the scan failed) follow `unscanned`: `allow`, `deny`, or `default` (the
`scan.unscanned` setting). An image whose scan was cut by a bound (`incomplete`) is refused
for what was found, and otherwise follows `unscanned` too: what was not read may hide more.

The manifest GET path is hot, so the gate keeps everything it needs in memory: the policies
(all of them: they are few), and per manifest digest the worst-first list of its findings.
With no policy for the namespace it returns at once. Imports, policy changes and finished
scans bump one counter (`scan_generation`) and touch the `scan` change stamp
(metadata/changes.py); when the stamp moved, the gate reads the counter, and when that moved,
the cache is dropped. So a change made by any process of the host is seen by the next pull on
every worker, and on other hosts within milliseconds.
"""

from __future__ import annotations

import json
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import Denied, InvalidInput
from appliance.metadata import audit, identity
from appliance.metadata.db import Database, Tx
from appliance.oci import mediatypes as mt
from appliance.oci.names import namespace_of
from appliance.scan import records, vulndb
from appliance.scan.matching import RANK, SEVERITIES
from appliance.scan.vulndb import SCAN_TOPIC

UNSCANNED = ("default", "allow", "deny")
CACHE_SIZE = 10_000


class PullDenied(Denied):
    """A pull refused by the namespace's vulnerability policy."""


@dataclass(frozen=True)
class Policy:
    namespace: str
    block_severity: str
    unscanned: str
    exceptions: dict[str, float | None] = field(default_factory=dict)

    def excepted(self, advisory_id: str, now: float) -> bool:
        if advisory_id not in self.exceptions:
            return False
        expiry = self.exceptions[advisory_id]
        return expiry is None or now < expiry

    def as_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "block_severity": self.block_severity,
            "unscanned": self.unscanned,
            "exceptions": [
                {"advisory": a, "expires_at": e} for a, e in sorted(self.exceptions.items())
            ],
        }


@dataclass(frozen=True)
class Worst:
    """A finding as the gate keeps it."""

    rank: int
    advisory_id: str
    severity: str
    package: str
    installed: str
    fixed: str | None


def load_policies(tx: Tx) -> dict[str, Policy]:
    exceptions: dict[str, dict[str, float | None]] = {}
    for ns, advisory, expires in records.exceptions(tx):
        exceptions.setdefault(ns, {})[advisory] = None if expires is None else float(expires)
    return {
        str(ns): Policy(str(ns), str(sev), str(unscanned), exceptions.get(ns, {}))
        for ns, sev, unscanned in records.policies(tx)
    }


def policy_of(tx: Tx, namespace: str) -> Policy | None:
    """The namespace's policy with its exceptions; None when it has none."""
    return load_policies(tx).get(namespace)


def set_policy(  # noqa: PLR0917 (one per field)
    tx: Tx, actor: str, namespace: str, block_severity: str, unscanned: str, now: float
) -> None:
    """Create or change a namespace's policy (audited). Raises InvalidInput for bad values."""
    if block_severity.lower() not in SEVERITIES:
        raise InvalidInput(f"block_severity must be one of {', '.join(SEVERITIES)}")
    if unscanned not in UNSCANNED:
        raise InvalidInput(f"unscanned must be one of {', '.join(UNSCANNED)}")
    identity.require_namespace(tx, namespace)
    records.put_policy(tx, namespace, block_severity.lower(), unscanned, now)
    audit.record(
        tx,
        actor,
        "scan.policy.set",
        namespace,
        at=now,
        block_severity=block_severity.lower(),
        unscanned=unscanned,
    )
    vulndb.bump_generation(tx)


def delete_policy(tx: Tx, actor: str, namespace: str, now: float) -> bool:
    gone = records.delete_policy(tx, namespace)
    if gone:
        audit.record(tx, actor, "scan.policy.delete", namespace, at=now)
        vulndb.bump_generation(tx)
    return bool(gone)


def set_exception(  # noqa: PLR0917 (one per field)
    tx: Tx,
    actor: str,
    namespace: str,
    advisory_id: str,
    expires_at: float | None,
    reason: str,
    now: float,
) -> None:
    """Accept `advisory_id` in `namespace` until `expires_at` (audited)."""
    if not advisory_id or len(advisory_id) > 200:
        raise InvalidInput("an advisory id is required (at most 200 characters)")
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at is in the past")
    if not records.has_policy(tx, namespace):
        raise InvalidInput(f"namespace {namespace} has no vulnerability policy")
    records.put_exception(tx, namespace, advisory_id, expires_at, reason[:500], now, actor)
    audit.record(
        tx,
        actor,
        "scan.exception.set",
        f"{namespace}:{advisory_id}",
        at=now,
        expires_at=expires_at,
        reason=reason[:500],
    )
    vulndb.bump_generation(tx)


def delete_exception(tx: Tx, actor: str, namespace: str, advisory_id: str, now: float) -> bool:
    gone = records.delete_exception(tx, namespace, advisory_id)
    if gone:
        audit.record(tx, actor, "scan.exception.delete", f"{namespace}:{advisory_id}", at=now)
        vulndb.bump_generation(tx)
    return bool(gone)


def generation(tx: Tx) -> int:
    return records.generation(tx)


@dataclass(frozen=True)
class Scanned:
    """What the gate knows of a manifest: its findings, worst first, and whether every image
    of it was read whole (False: a scan was cut by a bound)."""

    findings: list[Worst]
    complete: bool


def findings_for(tx: Tx, digests: list[str]) -> Scanned | None:
    """The findings of these image digests; None when any has no report with findings."""
    out: list[Worst] = []
    complete = True
    for digest in digests:
        status = records.report_status(tx, digest)
        if status not in ("ok", "incomplete"):
            return None
        complete = complete and status == "ok"
        out.extend(
            Worst(int(r[0]), r[1], r[2], r[3], r[4], r[5])
            for r in records.ranked_findings(tx, digest)
        )
    out.sort(key=lambda w: (-w.rank, w.advisory_id, w.package))
    return Scanned(out, complete)


_GATES: weakref.WeakKeyDictionary[Database, list[PullGate]] = weakref.WeakKeyDictionary()


def invalidate(db: Database) -> None:
    """Drop the cached verdicts of every gate of this process on `db` (after a change)."""
    for gate in _GATES.get(db, []):
        gate.invalidate()


class PullGate:
    """Decides whether a manifest may be pulled; cheap when nothing has changed."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float],
        *,
        unscanned_default: str = "allow",
    ) -> None:
        self.db = db
        self.clock = clock
        self.unscanned_default = unscanned_default
        self._policies: dict[str, Policy] | None = None
        self._generation = -1
        self._stamp: int | None = None
        self._findings: OrderedDict[str, Scanned | None] = OrderedDict()
        _GATES.setdefault(db, []).append(self)

    def invalidate(self) -> None:
        self._policies = None
        self._stamp = None
        self._findings.clear()

    async def _current(self) -> dict[str, Policy]:
        stamp = self.db.changes.stamp(SCAN_TOPIC)  # before the read: a change meanwhile shows
        if self._policies is not None and stamp == self._stamp:
            return self._policies

        def fn(tx: Tx) -> tuple[int, dict[str, Policy] | None]:
            gen = generation(tx)
            if gen == self._generation and self._policies is not None:
                return gen, None
            return gen, load_policies(tx)

        gen, policies = await self.db.read(fn)
        self._stamp = stamp
        if policies is not None:
            self._policies = policies
            self._findings.clear()
        self._generation = gen
        assert self._policies is not None
        return self._policies

    async def check(self, repository: str, digest: str, media_type: str, payload: bytes) -> None:
        """Raise PullDenied when the namespace's policy refuses this manifest."""
        policies = await self._current()
        policy = policies.get(namespace_of(repository))
        if policy is None:
            return
        if media_type not in mt.MANIFESTS:
            return  # an artifact (a signature, an SBOM): nothing to scan
        scanned = await self._findings_of(digest, media_type, payload)
        threshold = RANK[policy.block_severity]
        now = self.clock()
        for worst in scanned.findings if scanned is not None else []:
            if worst.rank < threshold:
                break
            if policy.excepted(worst.advisory_id, now):
                continue
            fixed = f" (fixed in {worst.fixed})" if worst.fixed else " (no fix yet)"
            raise PullDenied(
                f"{repository}@{digest} has {worst.advisory_id} ({worst.severity}) in "
                f"{worst.package} {worst.installed}{fixed}; namespace {policy.namespace} "
                f"refuses pulls of images with {policy.block_severity} or worse findings",
                {
                    "advisory": worst.advisory_id,
                    "severity": worst.severity,
                    "package": worst.package,
                    "installed": worst.installed,
                    "fixed": worst.fixed,
                },
            )
        if scanned is None or not scanned.complete:
            mode = policy.unscanned if policy.unscanned != "default" else self.unscanned_default
            if mode == "deny":
                what = "been scanned" if scanned is None else "been scanned whole (a bound cut it)"
                raise PullDenied(
                    f"{repository}@{digest} has not {what} for vulnerabilities, and "
                    f"namespace {policy.namespace} refuses unscanned images",
                    {"policy": policy.namespace},
                )

    async def _findings_of(self, digest: str, media_type: str, payload: bytes) -> Scanned | None:
        if digest in self._findings:
            self._findings.move_to_end(digest)
            return self._findings[digest]
        digests = [digest]
        if media_type in mt.INDEXES:
            try:
                doc = json.loads(payload)
                digests = [str(m["digest"]) for m in doc.get("manifests", [])]
            except (ValueError, KeyError, TypeError):
                digests = [digest]
        found = await self.db.read(lambda tx: findings_for(tx, digests))
        self._findings[digest] = found
        if len(self._findings) > CACHE_SIZE:
            self._findings.popitem(last=False)
        return found
