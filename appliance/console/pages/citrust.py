"""A namespace's CI trust rules (which CI identity tokens may pull or push), for its
maintainers: list, add from a template, remove, and "test this token", which says which rule
would match and why each other one does not. Changes go through `auth.citrust`, audited in
their transaction."""

from __future__ import annotations

from quart import Response

from appliance.api.inputs import path_id
from appliance.auth.citrust import TEMPLATES, RuleSpec, parse_claims
from appliance.console.framework import BadRequest, PageContext, PageNotFound, page
from appliance.metadata import citrust as records
from appliance.metadata import identity
from appliance.metadata.db import Tx

MAX_TOKEN = 16 * 1024


@page("/namespaces/<ns>/ci-trust", methods=("GET", "POST"))
async def ci_trust(ctx: PageContext, ns: str) -> Response:
    found = await ctx.access.db.read(lambda tx: identity.namespace_by_name(tx, ns))
    if found is None:
        raise PageNotFound(f"no namespace {ns!r}")
    ctx.require_role(ns, "maintainer")
    evaluation = None
    token_given = False
    if ctx.method == "POST":
        form = await ctx.form()
        action = form.get("action", "")
        now = ctx.access.clock()
        trust = ctx.access.ci
        if action == "add":
            spec = RuleSpec(
                namespace=ns,
                issuer=form.get("issuer", ""),
                audience=form.get("audience", ""),
                claims=parse_claims(form.get("claims", "").splitlines()),
                access=form.get("access", ""),
                repository=form.get("repository", ""),
                jwks=form.get("jwks") or None,
                template=form.get("template") or None,
                description=form.get("description", ""),
            )
            admin = ctx.principal.admin
            rule = await ctx.change(lambda tx: trust.add(tx, ctx.actor, spec, now, admin=admin))
            return await ctx.redirect(f"/namespaces/{ns}/ci-trust", f"Rule {rule.id} added.")
        if action == "remove":
            rule_id = path_id(form.get("rule", ""))
            if rule_id is None:
                raise BadRequest("which rule?")

            def remove(tx: Tx) -> None:
                rule = records.get(tx, rule_id)
                if rule is None or rule.namespace != ns:
                    raise PageNotFound(f"no CI trust rule {rule_id} in {ns}")
                trust.remove(tx, ctx.actor, rule, now)

            await ctx.change(remove)
            return await ctx.redirect(f"/namespaces/{ns}/ci-trust", f"Rule {rule_id} removed.")
        if action != "test":
            raise BadRequest(f"unknown action {action[:50]!r}")
        token = form.get("token", "").strip()
        if len(token) > MAX_TOKEN:
            raise BadRequest("that is too long for an identity token")
        token_given = bool(token)
        rules = await ctx.access.db.read(lambda tx: records.listed(tx, ns))
        evaluation = await trust.evaluate(token, rules)
    rules = await ctx.access.db.read(lambda tx: records.listed(tx, ns))
    return await ctx.render(
        "citrust.html",
        title=f"CI trust: {ns}",
        ns=found,
        rules=rules,
        templates=list(TEMPLATES.values()),
        evaluation=evaluation,
        token_given=token_given,
        maintainer_issuers=sorted(ctx.access.ci.maintainer_issuers),
        admin=ctx.principal.admin,
    )
