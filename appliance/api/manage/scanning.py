"""Scanning routes of the management API: vulnerability reports, the advisory data's status,
and each namespace's pull policy with its exceptions (readers see it, maintainers change it).
"""

from __future__ import annotations

from quart import Response, request

from appliance.api import inputs
from appliance.api.manage.reply import error, forbidden, json_body, json_response
from appliance.api.manage.routing import N, Routes, S
from appliance.auth.policy import Principal, may_manage
from appliance.auth.service import AccessControl
from appliance.metadata import identity
from appliance.oci.names import namespace_of, validate_name
from appliance.scan import vulndb
from appliance.scan.policy import (
    delete_exception,
    delete_policy,
    invalidate,
    policy_of,
    set_exception,
    set_policy,
)
from appliance.scan.service import report_in

routes: Routes[AccessControl] = Routes()


@routes("/vulndb", "GET", "Imported advisory data: version, counts, recent imports")
async def vulndb_status(access: AccessControl, who: Principal) -> Response:
    return json_response(await access.db.read(vulndb.status))


@routes(
    "/scan/reports",
    "GET",
    "Vulnerability report of an image: ?repository=NAME&digest=sha256:... (pull rights)",
)
async def report(access: AccessControl, who: Principal) -> Response:
    repository = request.args.get("repository", "")
    digest = request.args.get("digest", "")
    validate_name(repository)  # InvalidName: a 400 with its message
    ns = namespace_of(repository)
    public = await access.db.read(identity.public_namespaces)
    if not (who.admin or ns in who.roles or ns in public):
        return error(404, f"no repository {repository!r}")
    held, found = await access.db.read(lambda tx: report_in(tx, repository, digest))
    if not held:
        return error(404, f"no manifest {digest[:80]!r} in {repository}")
    if found is None:
        return error(404, f"{repository}@{digest} has no vulnerability report yet")
    return json_response(found.as_json())


@routes("/namespaces/{ns}/scan-policy", "GET", "The namespace's pull policy (readers)")
async def get_policy(access: AccessControl, who: Principal, ns: str) -> Response:
    if not may_manage(who, ns, "reader"):
        return forbidden()
    found = await access.db.read(lambda tx: policy_of(tx, ns))
    if found is None:
        return error(404, f"namespace {ns} has no vulnerability policy")
    return json_response(found.as_json())


@routes(
    "/namespaces/{ns}/scan-policy",
    "PUT",
    "Refuse pulls of images with findings at or above a severity (maintainers)",
    {"block_severity": S, "unscanned": S},
)
async def put_policy(access: AccessControl, who: Principal, ns: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    data = await json_body()
    severity = inputs.text(data, "block_severity", "critical") or "critical"
    unscanned = inputs.text(data, "unscanned", "default") or "default"
    now = access.clock()
    await access.db.write(lambda tx: set_policy(tx, who.actor, ns, severity, unscanned, now))
    invalidate(access.db)
    found = await access.db.read(lambda tx: policy_of(tx, ns))
    assert found is not None
    return json_response(found.as_json())


@routes("/namespaces/{ns}/scan-policy", "DELETE", "Remove the pull policy (maintainers)")
async def remove_policy(access: AccessControl, who: Principal, ns: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    now = access.clock()
    if not await access.db.write(lambda tx: delete_policy(tx, who.actor, ns, now)):
        return error(404, f"namespace {ns} has no vulnerability policy")
    invalidate(access.db)
    return json_response({})


@routes(
    "/namespaces/{ns}/scan-policy/exceptions/{advisory}",
    "PUT",
    "Accept an advisory until expires_at (epoch seconds; null: until removed)",
    {"expires_at": N, "reason": S},
)
async def put_exception(access: AccessControl, who: Principal, ns: str, advisory: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    data = await json_body()
    expires = inputs.number(data, "expires_at")
    reason = inputs.text(data, "reason", "") or ""
    now = access.clock()
    await access.db.write(
        lambda tx: set_exception(tx, who.actor, ns, advisory, expires, reason, now)
    )
    invalidate(access.db)
    found = await access.db.read(lambda tx: policy_of(tx, ns))
    assert found is not None
    return json_response(found.as_json())


@routes(
    "/namespaces/{ns}/scan-policy/exceptions/{advisory}",
    "DELETE",
    "Stop accepting an advisory",
)
async def remove_exception(
    access: AccessControl, who: Principal, ns: str, advisory: str
) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    now = access.clock()
    if not await access.db.write(lambda tx: delete_exception(tx, who.actor, ns, advisory, now)):
        return error(404, f"no exception for {advisory} in {ns}")
    invalidate(access.db)
    return json_response({})
