"""The scanning part of the management API (`/api/v1`): reports, advisory data status, and
each namespace's pull policy with its exceptions."""

from __future__ import annotations

import json
from typing import Any

from quart import Response, request

from appliance.api import inputs
from appliance.api.manage import RouteDecorator, json_body
from appliance.auth.policy import Principal, may_manage
from appliance.auth.service import AccessControl
from appliance.errors import InvalidInput, InvalidName
from appliance.metadata import audit, identity
from appliance.metadata.db import Tx
from appliance.oci.names import namespace_of, validate_name
from appliance.scan import vulndb
from appliance.scan.matching import SEVERITIES
from appliance.scan.policy import UNSCANNED, Policy, invalidate, load_policies
from appliance.scan.service import Report, read_report

S = {"type": "string"}
N = {"type": "number"}


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value), status=status, content_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def set_policy(  # noqa: PLR0917 (one per field)
    tx: Tx, actor: str, namespace: str, block_severity: str, unscanned: str, now: float
) -> None:
    """Create or change a namespace's policy (audited). Raises InvalidInput for bad values."""
    if block_severity.lower() not in SEVERITIES:
        raise InvalidInput(f"block_severity must be one of {', '.join(SEVERITIES)}")
    if unscanned not in UNSCANNED:
        raise InvalidInput(f"unscanned must be one of {', '.join(UNSCANNED)}")
    identity.require_namespace(tx, namespace)
    tx.execute(
        "INSERT INTO scan_policies (namespace, block_severity, unscanned, updated_at) "
        "VALUES (:ns, :sev, :u, :now) ON CONFLICT (namespace) DO UPDATE SET "
        "block_severity = excluded.block_severity, unscanned = excluded.unscanned, "
        "updated_at = excluded.updated_at",
        {"ns": namespace, "sev": block_severity.lower(), "u": unscanned, "now": now},
    )
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
    gone = tx.execute(
        "DELETE FROM scan_policies WHERE namespace = :ns RETURNING namespace", {"ns": namespace}
    )
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
    if tx.scalar("SELECT 1 FROM scan_policies WHERE namespace = :ns", {"ns": namespace}) is None:
        raise InvalidInput(f"namespace {namespace} has no vulnerability policy")
    tx.execute(
        "INSERT INTO scan_exceptions (namespace, advisory_id, expires_at, reason, created_at, "
        "created_by) VALUES (:ns, :a, :e, :r, :now, :by) ON CONFLICT (namespace, advisory_id) "
        "DO UPDATE SET expires_at = excluded.expires_at, reason = excluded.reason, "
        "created_at = excluded.created_at, created_by = excluded.created_by",
        {
            "ns": namespace,
            "a": advisory_id,
            "e": expires_at,
            "r": reason[:500],
            "now": now,
            "by": actor,
        },
    )
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
    gone = tx.execute(
        "DELETE FROM scan_exceptions WHERE namespace = :ns AND advisory_id = :a "
        "RETURNING advisory_id",
        {"ns": namespace, "a": advisory_id},
    )
    if gone:
        audit.record(tx, actor, "scan.exception.delete", f"{namespace}:{advisory_id}", at=now)
        vulndb.bump_generation(tx)
    return bool(gone)


def report_in(tx: Tx, repository: str, digest: str) -> tuple[bool, Report | None]:
    """(whether `repository` holds manifest `digest`, its report if scanned). Reports are kept
    per digest: without the first check a caller could read any namespace's report by naming
    a repository of their own."""
    held = tx.scalar(
        "SELECT 1 FROM manifests m JOIN repositories r ON r.id = m.repository_id "
        "WHERE r.name = :name AND m.digest = :digest",
        {"name": repository, "digest": digest},
    )
    if held is None:
        return False, None
    return True, read_report(tx, digest)


def policy_of(tx: Tx, namespace: str) -> Policy | None:
    return load_policies(tx).get(namespace)


def register_scan_api(route: RouteDecorator, access: AccessControl) -> None:
    """Add the scanning routes with the management API's `route` decorator."""
    db = access.db

    @route("/vulndb", "GET", "Imported advisory data: version, counts, recent imports")
    async def vulndb_status(who: Principal) -> Response:
        return _json(await db.read(vulndb.status))

    @route(
        "/scan/reports",
        "GET",
        "Vulnerability report of an image: ?repository=NAME&digest=sha256:... (pull rights)",
    )
    async def report(who: Principal) -> Response:
        repository = request.args.get("repository", "")
        digest = request.args.get("digest", "")
        try:
            validate_name(repository)
        except InvalidName as e:
            return _error(400, e.message)
        ns = namespace_of(repository)
        public = await db.read(identity.public_namespaces)
        if not (who.admin or ns in who.roles or ns in public):
            return _error(404, f"no repository {repository!r}")
        held, found = await db.read(lambda tx: report_in(tx, repository, digest))
        if not held:
            return _error(404, f"no manifest {digest[:80]!r} in {repository}")
        if found is None:
            return _error(404, f"{repository}@{digest} has no vulnerability report yet")
        return _json(found.as_json())

    @route("/namespaces/{ns}/scan-policy", "GET", "The namespace's pull policy (readers)")
    async def get_policy(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "reader"):
            return _error(403, "you may not do this")
        found = await db.read(lambda tx: policy_of(tx, ns))
        if found is None:
            return _error(404, f"namespace {ns} has no vulnerability policy")
        return _json(found.as_json())

    @route(
        "/namespaces/{ns}/scan-policy",
        "PUT",
        "Refuse pulls of images with findings at or above a severity (maintainers)",
        {"block_severity": S, "unscanned": S},
    )
    async def put_policy(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        data = await json_body()
        severity = inputs.text(data, "block_severity", "critical") or "critical"
        unscanned = inputs.text(data, "unscanned", "default") or "default"
        now = access.clock()
        await db.write(lambda tx: set_policy(tx, who.actor, ns, severity, unscanned, now))
        invalidate(db)
        found = await db.read(lambda tx: policy_of(tx, ns))
        assert found is not None
        return _json(found.as_json())

    @route("/namespaces/{ns}/scan-policy", "DELETE", "Remove the pull policy (maintainers)")
    async def delete_policy_view(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        now = access.clock()
        if not await db.write(lambda tx: delete_policy(tx, who.actor, ns, now)):
            return _error(404, f"namespace {ns} has no vulnerability policy")
        invalidate(db)
        return _json({})

    @route(
        "/namespaces/{ns}/scan-policy/exceptions/{advisory}",
        "PUT",
        "Accept an advisory until expires_at (epoch seconds; null: until removed)",
        {"expires_at": N, "reason": S},
    )
    async def put_exception(who: Principal, ns: str, advisory: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        data = await json_body()
        expires = inputs.number(data, "expires_at")
        reason = inputs.text(data, "reason", "") or ""
        now = access.clock()
        await db.write(lambda tx: set_exception(tx, who.actor, ns, advisory, expires, reason, now))
        invalidate(db)
        found = await db.read(lambda tx: policy_of(tx, ns))
        assert found is not None
        return _json(found.as_json())

    @route(
        "/namespaces/{ns}/scan-policy/exceptions/{advisory}",
        "DELETE",
        "Stop accepting an advisory",
    )
    async def delete_exception_view(who: Principal, ns: str, advisory: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        now = access.clock()
        if not await db.write(lambda tx: delete_exception(tx, who.actor, ns, advisory, now)):
            return _error(404, f"no exception for {advisory} in {ns}")
        invalidate(db)
        return _json({})
