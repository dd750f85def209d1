"""CI trust rules in the management API (`/api/v1`): list, add, remove, and test a token.

Registered through `api.manage`'s `route` decorator (its sign-in, error answers and OpenAPI
entries). Instance admins and a namespace's maintainers manage its rules; maintainers may name
only the issuers of `ci_trust.issuers` unless they bring the issuer's keys (`auth/citrust.py`).
"""

from __future__ import annotations

import json
from typing import Any

from quart import Response, request

from appliance.api.manage import RouteDecorator, _error, _json
from appliance.auth.citrust import TEMPLATES, RuleSpec
from appliance.auth.policy import Principal, may_manage
from appliance.auth.service import AccessControl
from appliance.metadata import citrust as records
from appliance.metadata.db import Tx

S = {"type": "string"}
MAX_TOKEN = 16 * 1024


def register(route: RouteDecorator, access: AccessControl) -> None:
    trust = access.ci

    async def body() -> dict[str, Any]:
        data = await request.get_json(force=True, silent=True)
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")  # noqa: TRY004 (a 400)
        return data

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
        data = await body()
        claims = data.get("claims", {})
        if not isinstance(claims, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in claims.items()
        ):
            return _error(400, "claims must be an object of strings")
        document = data.get("jwks")
        spec = RuleSpec(
            namespace=ns,
            issuer=str(data.get("issuer", "")),
            audience=str(data.get("audience", "")),
            claims=claims,
            access=str(data.get("access", "")),
            repository=str(data.get("repository", "**")),
            jwks=None if document is None else json.dumps(document),
            template=str(data["template"]) if data.get("template") else None,
            description=str(data.get("description", "")),
        )
        now = access.clock()
        rule = await access.change(lambda tx: trust.add(tx, who.actor, spec, now, admin=who.admin))
        return _json(rule.as_json(), 201)

    @route("/namespaces/{ns}/ci-trust/{rule_id}", "DELETE", "Remove a CI trust rule (maintainers)")
    async def remove_rule(who: Principal, ns: str, rule_id: str) -> Response:
        if not may_manage(who, ns, "maintainer"):
            return _error(403, "you may not do this")
        if not rule_id.isdigit():
            return _error(404, "no such rule")
        now = access.clock()

        def fn(tx: Tx) -> bool:
            rule = records.get(tx, int(rule_id))
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
        token = str((await body()).get("token", "")).strip()
        if len(token) > MAX_TOKEN:
            return _error(400, "that is too long for an identity token")
        rules = await access.db.read(lambda tx: records.listed(tx, ns))
        return _json((await trust.evaluate(token, rules)).as_json())
