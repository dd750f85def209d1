"""Lifecycle routes of the management API: usage, quotas, immutable tag rules, cleanup
policies and the collector's dry run.

Rights: a namespace's readers see its usage, quota, rules and policies; its maintainers manage
its immutable tag rules and cleanup policies (preview and run too); instance admins set quotas
and see the whole registry's usage and the collector.
"""

from __future__ import annotations

from typing import Any

from quart import Response

from appliance.api import inputs
from appliance.api.manage.reply import error, forbidden, json_body, json_response
from appliance.api.manage.routing import B, N, Routes, S
from appliance.auth.policy import Principal, may_manage
from appliance.errors import Denied, InvalidInput, InvalidName, NotFound
from appliance.lifecycle import Lifecycle
from appliance.lifecycle.policies import scope_namespace
from appliance.oci.names import namespace_of, validate_component, validate_name

POLICY_FIELDS = {
    "repository": S,
    "keep_recent": N,
    "keep_regex": S,
    "remove_regex": S,
    "older_than_days": N,
    "time_basis": S,
    "enabled": B,
}
SETTING_NAMES = ("keep_recent", "keep_regex", "remove_regex", "older_than_days", "time_basis")
QUOTAS_FOR_ADMINS = "only admins manage quotas"

routes: Routes[Lifecycle] = Routes()


def _may_read(who: Principal, ns: str) -> bool:
    return may_manage(who, ns, "reader")


def _policy_id(text: str) -> int:
    number = inputs.path_id(text)
    if number is None:
        raise NotFound(f"no cleanup policy {text[:20]!r}")
    return number


# -- usage and quotas -----------------------------------------------------------------------


@routes("/usage", "GET", "Blob bytes per namespace and repository, shared vs unique")
async def usage(lifecycle: Lifecycle, who: Principal) -> Response:
    found = await lifecycle.rules.usage()
    return json_response([u for u in found if who.admin or _may_read(who, u["name"])])


@routes("/namespaces/{ns}/usage", "GET", "A namespace's usage and quota (readers)")
async def namespace_usage(lifecycle: Lifecycle, who: Principal, ns: str) -> Response:
    validate_component(ns)
    if not _may_read(who, ns):
        return forbidden()
    return json_response((await lifecycle.rules.usage(ns))[0])


@routes("/quotas", "GET", "Every namespace quota (admins)")
async def quotas(lifecycle: Lifecycle, who: Principal) -> Response:
    if not who.admin:
        return forbidden(QUOTAS_FOR_ADMINS)
    from appliance.lifecycle.rules import list_quotas  # noqa: PLC0415

    found = await lifecycle.rules.db.read(list_quotas)
    return json_response([q.as_json() for q in found])


@routes(
    "/namespaces/{ns}/quota",
    "PUT",
    "Set a namespace's quota in bytes of distinct blobs (admins)",
    {"limit_bytes": N},
)
async def put_quota(lifecycle: Lifecycle, who: Principal, ns: str) -> Response:
    if not who.admin:
        return forbidden(QUOTAS_FOR_ADMINS)
    limit = inputs.whole(await json_body(), "limit_bytes")
    if limit is None:
        raise InvalidInput("limit_bytes is required: a whole number of bytes")
    quota = await lifecycle.rules.set_quota(who.actor, ns, limit)
    return json_response(quota.as_json())


@routes("/namespaces/{ns}/quota", "DELETE", "Remove a namespace's quota (admins)")
async def delete_quota(lifecycle: Lifecycle, who: Principal, ns: str) -> Response:
    if not who.admin:
        return forbidden(QUOTAS_FOR_ADMINS)
    await lifecycle.rules.remove_quota(who.actor, ns)
    return json_response({})


# -- immutable tag rules ----------------------------------------------------------------------


@routes("/namespaces/{ns}/immutable-rules", "GET", "Immutable tag rules (readers)")
async def list_rules(lifecycle: Lifecycle, who: Principal, ns: str) -> Response:
    if not _may_read(who, ns):
        return forbidden()
    from appliance.lifecycle.rules import list_immutable_rules  # noqa: PLC0415

    found = await lifecycle.rules.db.read(lambda tx: list_immutable_rules(tx, ns))
    return json_response([r.as_json() for r in found])


@routes(
    "/namespaces/{ns}/immutable-rules",
    "POST",
    "Make tags matching a regular expression immutable (maintainers)",
    {"pattern": S},
)
async def add_rule(lifecycle: Lifecycle, who: Principal, ns: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    pattern = inputs.required_text(await json_body(), "pattern")
    rule = await lifecycle.rules.add_immutable_rule(who.actor, ns, pattern)
    return json_response(rule.as_json(), 201)


@routes(
    "/namespaces/{ns}/immutable-rules/{rule_id}",
    "DELETE",
    "Remove an immutable tag rule (maintainers)",
)
async def delete_rule(lifecycle: Lifecycle, who: Principal, ns: str, rule_id: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    number = inputs.path_id(rule_id)
    if number is None:
        raise NotFound(f"no immutable tag rule {rule_id[:20]!r} in namespace {ns}")
    await lifecycle.rules.remove_immutable_rule(who.actor, ns, number)
    return json_response({})


# -- cleanup policies -------------------------------------------------------------------------


@routes("/namespaces/{ns}/policies", "GET", "Cleanup policies of a namespace (readers)")
async def list_policies(lifecycle: Lifecycle, who: Principal, ns: str) -> Response:
    if not _may_read(who, ns):
        return forbidden()
    found = await lifecycle.policies.all()
    return json_response([p.as_json() for p in found if scope_namespace(p.scope) == ns])


@routes(
    "/namespaces/{ns}/policies",
    "POST",
    "Create a cleanup policy for the namespace or one of its repositories (maintainers); "
    "it runs only after a preview",
    POLICY_FIELDS,
)
async def create_policy(lifecycle: Lifecycle, who: Principal, ns: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    validate_component(ns)
    data = await json_body()
    scope = inputs.text(data, "repository") or ns
    validate_name(scope)
    if namespace_of(scope) != ns:
        raise InvalidName(f"repository {scope} is not in namespace {ns}")
    unknown = set(data) - set(POLICY_FIELDS)
    if unknown:
        raise InvalidName(f"unknown field(s): {', '.join(sorted(unknown))}")
    settings = {k: data[k] for k in SETTING_NAMES if k in data}
    enabled = inputs.flag(data, "enabled", default=True)
    policy = await lifecycle.policies.create(who.actor, scope, settings, enabled)
    return json_response(policy.as_json(), 201)


async def _owned(lifecycle: Lifecycle, who: Principal, policy_id: str) -> Any:
    """The policy when the caller maintains its namespace; None when they only read it (a
    403); NotFound when they may not even see it."""
    policy = await lifecycle.policies.get(_policy_id(policy_id))
    if not may_manage(who, scope_namespace(policy.scope), "maintainer"):
        if _may_read(who, scope_namespace(policy.scope)):
            return None
        raise NotFound(f"no cleanup policy {policy_id}")
    return policy


@routes("/policies/{policy_id}", "GET", "One cleanup policy (readers)")
async def get_policy(lifecycle: Lifecycle, who: Principal, policy_id: str) -> Response:
    policy = await lifecycle.policies.get(_policy_id(policy_id))
    if not _may_read(who, scope_namespace(policy.scope)):
        return error(404, f"no cleanup policy {policy_id}")
    return json_response(policy.as_json())


@routes(
    "/policies/{policy_id}",
    "PATCH",
    "Change a cleanup policy (maintainers); new settings need a new preview",
    POLICY_FIELDS,
)
async def patch_policy(lifecycle: Lifecycle, who: Principal, policy_id: str) -> Response:
    policy = await _owned(lifecycle, who, policy_id)
    if policy is None:
        return forbidden()
    data = await json_body()
    changed = {k: data[k] for k in SETTING_NAMES if k in data}
    settings = {**policy.settings.as_json(), **changed} if changed else None
    if settings is not None:
        settings = {k: v for k, v in settings.items() if v is not None}
    enabled = inputs.flag(data, "enabled") if data.get("enabled") is not None else None
    updated = await lifecycle.policies.update(who.actor, policy.id, settings, enabled)
    return json_response(updated.as_json())


@routes("/policies/{policy_id}", "DELETE", "Delete a cleanup policy (maintainers)")
async def delete_policy(lifecycle: Lifecycle, who: Principal, policy_id: str) -> Response:
    policy = await _owned(lifecycle, who, policy_id)
    if policy is None:
        return forbidden()
    await lifecycle.policies.delete(who.actor, policy.id)
    return json_response({})


@routes(
    "/policies/{policy_id}/preview",
    "POST",
    "Exactly which tags a run would remove now and the unique bytes it frees (maintainers)",
)
async def preview_policy(lifecycle: Lifecycle, who: Principal, policy_id: str) -> Response:
    policy = await _owned(lifecycle, who, policy_id)
    if policy is None:
        return forbidden()
    await lifecycle.pulls.flush()
    return json_response((await lifecycle.policies.preview(who.actor, policy.id)).as_json())


@routes(
    "/policies/{policy_id}/run",
    "POST",
    "Run a previewed cleanup policy now (maintainers); 409 when not previewed",
)
async def run_policy(lifecycle: Lifecycle, who: Principal, policy_id: str) -> Response:
    policy = await _owned(lifecycle, who, policy_id)
    if policy is None:
        return forbidden()
    await lifecycle.pulls.flush()
    try:
        result = await lifecycle.policies.run(who.actor, policy.id)
    except Denied as e:
        return error(409, e.message)  # not previewed (or changed since): a conflict here
    return json_response(result.as_json())


# -- the collector ----------------------------------------------------------------------------


@routes("/gc", "GET", "What the garbage collector would remove now (admins)")
async def gc_dry_run(lifecycle: Lifecycle, who: Principal) -> Response:
    if not who.admin:
        return forbidden("only admins see the collector")
    return json_response((await lifecycle.collector.dry_run()).as_json())
