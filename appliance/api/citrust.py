"""CI trust rules in the management API (`/api/v1`): list, add, remove, and test a token.

Registered through `api.manage`'s `route` decorator (its sign-in, error answers and OpenAPI
entries); bodies are read by `api.manage.json_body` and their fields taken with the typed
getters of `api/inputs.py`, rule ids with `inputs.path_id`. Instance admins and a namespace's
maintainers manage its rules; maintainers may name only the issuers of `ci_trust.issuers`
unless they bring the issuer's keys (`auth/citrust.py`).
"""

from __future__ import annotations

import json

from quart import Response

from appliance.api import inputs
from appliance.api.manage import RouteDecorator, _error, _json, json_body
from appliance.auth.citrust import TEMPLATES, RuleSpec
from appliance.auth.policy import Principal, may_manage
from appliance.auth.service import AccessControl
from appliance.errors import InvalidInput
from appliance.metadata import citrust as records
from appliance.metadata.db import Tx

S = {"type": "string"}
MAX_TOKEN = 16 * 1024


def register(route: RouteDecorator, access: AccessControl) -> None:
    trust = access.ci

    @route("/ci-trust/templates", "GET", "Ready-made claim names of CI systems for trust rules")
    async def templates(who: Principal) -> Response:
        return _json(
            [
                {
                    "name": t.name,
                    "title": t.title,
                    "issuer": t.issuer or None,
                    "project_claim": t.project_claim,
                    "example_claims": dict(t.examples),
                }
                for t in TEMPLATES.values()
            ]
        )

    @route("/namespaces/{ns}/ci-trust", "GET", "CI trust rules of a namespace (maintainers)")
    async def list_rules(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        found = await access.db.read(lambda tx: records.listed(tx, ns))
        return _json([r.as_json() for r in found])

    @route(
        "/namespaces/{ns}/ci-trust",
        "POST",
        "Trust CI identity tokens: issuer, audience, claim conditions, pull or push on "
        "repositories matching a glob (maintainers)",
        {
            "issuer": S,
            "audience": S,
            "claims": {"type": "object", "additionalProperties": S},
            "access": {"type": "string", "enum": ["pull", "push"]},
            "repository": S,
            "jwks": {"type": "object", "description": "the issuer's keys, for offline sites"},
            "template": {"type": "string", "enum": sorted(TEMPLATES)},
            "description": S,
        },
    )
    async def add_rule(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        data = await json_body()
        document = inputs.mapping(data, "jwks")
        spec = RuleSpec(
            namespace=ns,
            issuer=inputs.text(data, "issuer", "") or "",
            audience=inputs.text(data, "audience", "") or "",
            claims=inputs.string_map(data, "claims"),
            access=inputs.text(data, "access", "") or "",
            repository=inputs.text(data, "repository", "**") or "**",
            jwks=None if document is None else json.dumps(document),
            template=inputs.text(data, "template"),
            description=inputs.text(data, "description", "") or "",
        )
        now = access.clock()
        rule = await access.change(lambda tx: trust.add(tx, who.actor, spec, now, admin=who.admin))
        return _json(rule.as_json(), 201)

    @route("/namespaces/{ns}/ci-trust/{rule_id}", "DELETE", "Remove a CI trust rule (maintainers)")
    async def remove_rule(who: Principal, ns: str, rule_id: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        number = inputs.path_id(rule_id)
        if number is None:
            return _error(404, "no such rule")
        now = access.clock()

        def fn(tx: Tx) -> bool:
            rule = records.get(tx, number)
            if rule is None or rule.namespace != ns:
                return False
            trust.remove(tx, who.actor, rule, now)
            return True

        if not await access.change(fn):
            return _error(404, "no such rule")
        return _json({})

    @route(
        "/namespaces/{ns}/ci-trust/test",
        "POST",
        "Which rule of the namespace would accept this identity token, and why the others "
        "would not (maintainers; nothing is signed in)",
        {"token": S},
    )
    async def test_token(who: Principal, ns: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        token = (inputs.text(await json_body(), "token", "") or "").strip()
        if len(token) > MAX_TOKEN:
            raise InvalidInput("that is too long for an identity token", {"field": "token"})
        rules = await access.db.read(lambda tx: records.listed(tx, ns))
        return _json((await trust.evaluate(token, rules)).as_json())
