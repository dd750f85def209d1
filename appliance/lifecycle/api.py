"""Lifecycle routes of the management API (`/api/v1`): usage, quotas, immutable tag rules,
cleanup policies and the collector's dry run.

Registered through `api.manage`'s `route` decorator (same sign-in, error answers and OpenAPI
document). Rights: a namespace's readers see its usage, quota, rules and policies; its
maintainers manage its immutable tag rules and cleanup policies (preview and run too);
instance admins set quotas and see the whole registry's usage and the collector.
"""

from __future__ import annotations

from typing import Any

from quart import Response

from appliance.api import inputs
from appliance.api.manage import RouteDecorator, _error, _json, json_body
from appliance.auth.policy import Principal, may_manage
from appliance.errors import Denied, InvalidInput, InvalidName, NotFound
from appliance.lifecycle import Lifecycle
from appliance.lifecycle.policies import scope_namespace
from appliance.oci.names import namespace_of, validate_component, validate_name

S = {"type": "string"}
B = {"type": "boolean"}
N = {"type": "number"}
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


def _may_read(who: Principal, ns: str) -> bool:
    return may_manage(who, ns, "reader")


def _policy_id(text: str) -> int:
    number = inputs.path_id(text)
    if number is None:
        raise NotFound(f"no cleanup policy {text[:20]!r}")
    return number


def register(route: RouteDecorator, lifecycle: Lifecycle) -> None:
    rules, policies = lifecycle.rules, lifecycle.policies

    # -- usage and quotas -------------------------------------------------------------------

    @route("/usage", "GET", "Blob bytes per namespace and repository, shared vs unique")
    async def usage(who: Principal) -> Response:
        found = await rules.usage()
        return _json([u for u in found if who.admin or _may_read(who, u["name"])])

    @route("/namespaces/{ns}/usage", "GET", "A namespace's usage and quota (readers)")
    async def namespace_usage(who: Principal, ns: str) -> Response:
        validate_component(ns)
        if not _may_read(who, ns):
            return _error(403, "you may not do this")
        return _json((await rules.usage(ns))[0])

    @route("/quotas", "GET", "Every namespace quota (admins)")
    async def quotas(who: Principal) -> Response:
        if not who.admin:
            return _error(403, "only admins manage quotas")
        from appliance.lifecycle.rules import list_quotas  # noqa: PLC0415

        found = await rules.db.read(list_quotas)
        return _json([q.as_json() for q in found])

    @route(
        "/namespaces/{ns}/quota",
        "PUT",
        "Set a namespace's quota in bytes of distinct blobs (admins)",
        {"limit_bytes": N},
    )
    async def put_quota(who: Principal, ns: str) -> Response:
        if not who.admin:
            return _error(403, "only admins manage quotas")
        limit = inputs.whole(await json_body(), "limit_bytes")
        if limit is None:
            raise InvalidInput("limit_bytes is required: a whole number of bytes")
        quota = await rules.set_quota(who.actor, ns, limit)
        return _json(quota.as_json())

    @route("/namespaces/{ns}/quota", "DELETE", "Remove a namespace's quota (admins)")
    async def delete_quota(who: Principal, ns: str) -> Response:
        if not who.admin:
            return _error(403, "only admins manage quotas")
        await rules.remove_quota(who.actor, ns)
        return _json({})

    # -- immutable tag rules ------------------------------------------------------------------

    @route("/namespaces/{ns}/immutable-rules", "GET", "Immutable tag rules (readers)")
    async def list_rules(who: Principal, ns: str) -> Response:
        if not _may_read(who, ns):
            return _error(403, "you may not do this")
        from appliance.lifecycle.rules import list_immutable_rules  # noqa: PLC0415

        found = await rules.db.read(lambda tx: list_immutable_rules(tx, ns))
        return _json([r.as_json() for r in found])

    @route(
        "/namespaces/{ns}/immutable-rules",
        "POST",
        "Make tags matching a regular expression immutable (maintainers)",
        {"pattern": S},
    )
    async def add_rule(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        pattern = inputs.required_text(await json_body(), "pattern")
        rule = await rules.add_immutable_rule(who.actor, ns, pattern)
        return _json(rule.as_json(), 201)

    @route(
        "/namespaces/{ns}/immutable-rules/{rule_id}",
        "DELETE",
        "Remove an immutable tag rule (maintainers)",
    )
    async def delete_rule(who: Principal, ns: str, rule_id: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        number = inputs.path_id(rule_id)
        if number is None:
            raise NotFound(f"no immutable tag rule {rule_id[:20]!r} in namespace {ns}")
        await rules.remove_immutable_rule(who.actor, ns, number)
        return _json({})

    # -- cleanup policies ---------------------------------------------------------------------

    @route("/namespaces/{ns}/policies", "GET", "Cleanup policies of a namespace (readers)")
    async def list_policies(who: Principal, ns: str) -> Response:
        if not _may_read(who, ns):
            return _error(403, "you may not do this")
        found = await policies.all()
        return _json([p.as_json() for p in found if scope_namespace(p.scope) == ns])

    @route(
        "/namespaces/{ns}/policies",
        "POST",
        "Create a cleanup policy for the namespace or one of its repositories (maintainers); "
        "it runs only after a preview",
        POLICY_FIELDS,
    )
    async def create_policy(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
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
        policy = await policies.create(who.actor, scope, settings, enabled)
        return _json(policy.as_json(), 201)

    async def _owned(who: Principal, policy_id: str) -> Any:
        policy = await policies.get(_policy_id(policy_id))
        if not may_manage(who, scope_namespace(policy.scope), "maintainer"):
            if _may_read(who, scope_namespace(policy.scope)):
                return None
            raise NotFound(f"no cleanup policy {policy_id}")
        return policy

    @route("/policies/{policy_id}", "GET", "One cleanup policy (readers)")
    async def get_policy(who: Principal, policy_id: str) -> Response:
        policy = await policies.get(_policy_id(policy_id))
        if not _may_read(who, scope_namespace(policy.scope)):
            return _error(404, f"no cleanup policy {policy_id}")
        return _json(policy.as_json())

    @route(
        "/policies/{policy_id}",
        "PATCH",
        "Change a cleanup policy (maintainers); new settings need a new preview",
        POLICY_FIELDS,
    )
    async def patch_policy(who: Principal, policy_id: str) -> Response:
        policy = await _owned(who, policy_id)
        if policy is None:
            return _error(403, "you may not do this")
        data = await json_body()
        changed = {k: data[k] for k in SETTING_NAMES if k in data}
        settings = {**policy.settings.as_json(), **changed} if changed else None
        if settings is not None:
            settings = {k: v for k, v in settings.items() if v is not None}
        enabled = inputs.flag(data, "enabled") if data.get("enabled") is not None else None
        updated = await policies.update(who.actor, policy.id, settings, enabled)
        return _json(updated.as_json())

    @route("/policies/{policy_id}", "DELETE", "Delete a cleanup policy (maintainers)")
    async def delete_policy(who: Principal, policy_id: str) -> Response:
        policy = await _owned(who, policy_id)
        if policy is None:
            return _error(403, "you may not do this")
        await policies.delete(who.actor, policy.id)
        return _json({})

    @route(
        "/policies/{policy_id}/preview",
        "POST",
        "Exactly which tags a run would remove now and the unique bytes it frees (maintainers)",
    )
    async def preview_policy(who: Principal, policy_id: str) -> Response:
        policy = await _owned(who, policy_id)
        if policy is None:
            return _error(403, "you may not do this")
        await lifecycle.pulls.flush()
        return _json((await policies.preview(who.actor, policy.id)).as_json())

    @route(
        "/policies/{policy_id}/run",
        "POST",
        "Run a previewed cleanup policy now (maintainers); 409 when not previewed",
    )
    async def run_policy(who: Principal, policy_id: str) -> Response:
        policy = await _owned(who, policy_id)
        if policy is None:
            return _error(403, "you may not do this")
        await lifecycle.pulls.flush()
        try:
            result = await policies.run(who.actor, policy.id)
        except Denied as e:
            return _error(409, e.message)
        return _json(result.as_json())

    # -- the collector --------------------------------------------------------------------

    @route("/gc", "GET", "What the garbage collector would remove now (admins)")
    async def gc_dry_run(who: Principal) -> Response:
        if not who.admin:
            return _error(403, "only admins see the collector")
        return _json((await lifecycle.collector.dry_run()).as_json())
