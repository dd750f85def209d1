"""The storage pages: usage per namespace and repository (shared vs unique bytes), quotas
(admins), the collector's queue (admins), and per namespace its immutable tag rules and
cleanup policies, with a preview of exactly what a policy removes before it may run
(maintainers). Every change goes through `lifecycle/` and is audited there."""

from __future__ import annotations

import math
from typing import Any

from quart import Response

from appliance.api.inputs import path_id
from appliance.console.framework import BadRequest, NavEntry, PageContext, PageNotFound, page
from appliance.errors import Denied, InvalidPattern
from appliance.lifecycle import Lifecycle
from appliance.lifecycle.policies import PlanResult, scope_namespace
from appliance.lifecycle.rules import list_immutable_rules
from appliance.oci.names import namespace_of, validate_component

POLICY_FIELDS = ("keep_recent", "keep_regex", "remove_regex", "older_than_days", "time_basis")


def _lifecycle(ctx: PageContext) -> Lifecycle:
    found = ctx.services.extras.get("lifecycle")
    if not isinstance(found, Lifecycle):
        raise PageNotFound("storage management is not available in this process")
    return found


@page("/storage", methods=("GET", "POST"), nav=NavEntry("Storage", "/storage", order=40))
async def storage(ctx: PageContext) -> Response:
    lifecycle = _lifecycle(ctx)
    if ctx.method == "POST":
        ctx.require_admin()
        form = await ctx.form()
        ns = validate_component(form.get("namespace", "").strip())
        limit = form.get("limit", "").strip()
        if form.get("action") == "remove-quota":
            await lifecycle.rules.remove_quota(ctx.actor, ns)
            return await ctx.redirect("/storage", f"Quota of {ns} removed.")
        limit_bytes = path_id(limit) if limit != "0" else 0
        if limit_bytes is None:
            raise BadRequest("the quota is a whole number of bytes (at most 2^63 - 1)")
        await lifecycle.rules.set_quota(ctx.actor, ns, limit_bytes)
        return await ctx.redirect("/storage", f"Quota of {ns} set to {limit_bytes} bytes.")
    usage = [
        u
        for u in await lifecycle.rules.usage()
        if ctx.principal.admin or ctx.principal.role_in(u["name"]) is not None
    ]
    collector = await lifecycle.collector.dry_run() if ctx.principal.admin else None
    return await ctx.render("storage.html", title="Storage", usage=usage, collector=collector)


def _settings(form: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in POLICY_FIELDS:
        value = form.get(name, "").strip()
        if not value:
            continue
        if name == "keep_recent":
            number = path_id(value) if value != "0" else 0
            if number is None:
                raise BadRequest("keep the newest: a whole number")
            out[name] = number
        elif name == "older_than_days":
            try:
                out[name] = float(value)
            except ValueError:
                raise BadRequest("older than: a number of days") from None
            if not math.isfinite(out[name]):
                raise BadRequest("older than: a number of days")
        else:
            out[name] = value
    return out


@page("/storage/<ns>", methods=("GET", "POST"))
async def namespace_storage(ctx: PageContext, ns: str) -> Response:
    lifecycle = _lifecycle(ctx)
    validate_component(ns)
    ctx.require_role(ns, "reader")
    maintainer = ctx.principal.admin or ctx.principal.role_in(ns) in ("maintainer", "owner")
    preview: PlanResult | None = None
    form_error: dict[str, str] | None = None  # which form, and why its pattern was refused
    if ctx.method == "POST":
        ctx.require_role(ns, "maintainer")
        form = await ctx.form()
        action = form.get("action", "")
        here = f"/storage/{ns}"
        try:
            if action == "add-rule":
                rule = await lifecycle.rules.add_immutable_rule(
                    ctx.actor, ns, form.get("pattern", "")
                )
                return await ctx.redirect(here, f"Rule {rule.id} added.")
            if action == "add-policy":
                scope = form.get("repository", "").strip() or ns
                if namespace_of(scope) != ns:
                    raise BadRequest(f"{scope} is not in namespace {ns}")
                policy = await lifecycle.policies.create(ctx.actor, scope, _settings(form))
                return await ctx.redirect(
                    here, f"Policy {policy.id} created: preview it to run it."
                )
        except InvalidPattern as e:
            # Shown next to the form it came from, with what was typed, to be corrected.
            typed = {k: form.get(k, "") for k in ("pattern", "repository", *POLICY_FIELDS)}
            form_error = {"form": action, "message": e.message, **typed}
    if ctx.method == "POST" and form_error is None:
        if action == "remove-rule":
            await lifecycle.rules.remove_immutable_rule(ctx.actor, ns, _int(form, "id"))
            return await ctx.redirect(here, "Rule removed.")
        policy_id = _int(form, "id")
        policy = await lifecycle.policies.get(policy_id)
        if scope_namespace(policy.scope) != ns:
            raise PageNotFound(f"no cleanup policy {policy_id} in {ns}")
        if action == "preview":
            await lifecycle.pulls.flush()
            preview = await lifecycle.policies.preview(ctx.actor, policy_id)
        elif action == "run":
            await lifecycle.pulls.flush()
            try:
                result = await lifecycle.policies.run(ctx.actor, policy_id)
            except Denied as e:
                raise BadRequest(e.message) from None
            s = result.summary()
            return await ctx.redirect(
                here,
                f"Policy {policy_id} removed {s['tags']} tag(s) and {s['manifests']} "
                f"manifest(s); {s['unique_bytes']} bytes will be freed.",
            )
        elif action in ("enable", "disable"):
            await lifecycle.policies.update(ctx.actor, policy_id, enabled=action == "enable")
            return await ctx.redirect(here, f"Policy {policy_id} {action}d.")
        elif action == "delete":
            await lifecycle.policies.delete(ctx.actor, policy_id)
            return await ctx.redirect(here, f"Policy {policy_id} deleted.")
        else:
            raise BadRequest(f"unknown action {action!r}")
    usage = (await lifecycle.rules.usage(ns))[0]
    rules = await lifecycle.rules.db.read(lambda tx: list_immutable_rules(tx, ns))
    policies = [p for p in await lifecycle.policies.all() if scope_namespace(p.scope) == ns]
    return await ctx.render(
        "storage_namespace.html",
        title=f"Storage of {ns}",
        ns=ns,
        usage=usage,
        rules=rules,
        policies=policies,
        maintainer=maintainer,
        preview=preview,
        form_error=form_error,
        status=400 if form_error is not None else 200,
    )


def _int(form: dict[str, str], name: str) -> int:
    value = path_id(form.get(name, ""))
    if value is None:
        raise BadRequest(f"{name} must be a number")
    return value
