"""CI trust rule routes of the management API: list, add, remove, and test a token.

Bodies are read by `reply.json_body` and their fields taken with the typed getters of
`api/inputs.py`, rule ids with `inputs.path_id`. Instance admins and a namespace's maintainers
manage its rules; maintainers may name only the issuers of `ci_trust.issuers` unless they
bring the issuer's keys (`auth/citrust.py`).
"""

from __future__ import annotations

import json

from quart import Response

from appliance.api import inputs
from appliance.api.manage.reply import error, forbidden, json_body, json_response
from appliance.api.manage.routing import Routes, S
from appliance.auth.citrust import TEMPLATES, RuleSpec
from appliance.auth.policy import Principal, may_manage
from appliance.auth.service import AccessControl
from appliance.errors import InvalidInput
from appliance.metadata import citrust as records
from appliance.metadata.db import Tx

MAX_TOKEN = 16 * 1024

routes: Routes[AccessControl] = Routes()


@routes("/ci-trust/templates", "GET", "Ready-made claim names of CI systems for trust rules")
async def templates(access: AccessControl, who: Principal) -> Response:
    return json_response(
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


@routes("/namespaces/{ns}/ci-trust", "GET", "CI trust rules of a namespace (maintainers)")
async def list_rules(access: AccessControl, who: Principal, ns: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    found = await access.db.read(lambda tx: records.listed(tx, ns))
    return json_response([r.as_json() for r in found])


@routes(
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
async def add_rule(access: AccessControl, who: Principal, ns: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
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
    rule = await access.change(lambda tx: access.ci.add(tx, who.actor, spec, now, admin=who.admin))
    return json_response(rule.as_json(), 201)


@routes("/namespaces/{ns}/ci-trust/{rule_id}", "DELETE", "Remove a CI trust rule (maintainers)")
async def remove_rule(access: AccessControl, who: Principal, ns: str, rule_id: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    number = inputs.path_id(rule_id)
    if number is None:
        return error(404, "no such rule")
    now = access.clock()

    def fn(tx: Tx) -> bool:
        rule = records.get(tx, number)
        if rule is None or rule.namespace != ns:
            return False
        access.ci.remove(tx, who.actor, rule, now)
        return True

    if not await access.change(fn):
        return error(404, "no such rule")
    return json_response({})


@routes(
    "/namespaces/{ns}/ci-trust/test",
    "POST",
    "Which rule of the namespace would accept this identity token, and why the others "
    "would not (maintainers; nothing is signed in)",
    {"token": S},
)
async def test_token(access: AccessControl, who: Principal, ns: str) -> Response:
    if not may_manage(who, ns, "maintainer"):
        return forbidden()
    token = (inputs.text(await json_body(), "token", "") or "").strip()
    if len(token) > MAX_TOKEN:
        raise InvalidInput("that is too long for an identity token", {"field": "token"})
    rules = await access.db.read(lambda tx: records.listed(tx, ns))
    return json_response((await access.ci.evaluate(token, rules)).as_json())
