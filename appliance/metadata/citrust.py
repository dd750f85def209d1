"""CI trust rule records (table `ci_trust_rules`): pieces of a unit of work, portable SQL.

The rules' meaning and their checks live in `auth/citrust.py`; here they are rows. The lookup
on the hot path is by issuer (indexed), joined to the namespace's name.

A rule is never edited, only added or removed, and its id is never given to another rule: a
registry token issued from a CI identity token names the rules that matched by id, and works
only while they exist (`auth/credentials.py`). So removing a rule touches the `AUTH` change
topic, like revoking a token, and every process's credential caches reload on their next
request. Adding one touches it too: a job signed in with its identity token as Basic
credentials on `/v2` is cached with the grants of the rules it matched then, and a new rule
may grant it more.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from appliance.errors import NotFound
from appliance.metadata import identity
from appliance.metadata.db import Tx


class RuleNotFound(NotFound):
    pass


@dataclass(frozen=True)
class TrustRule:
    id: int
    namespace: str
    issuer: str
    audience: str
    claims: tuple[tuple[str, str], ...]
    access: str
    repository: str
    jwks: str | None  # a JWKS document (JSON) for offline sites
    template: str | None
    description: str
    created_by: str
    created_at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "namespace": self.namespace,
            "issuer": self.issuer,
            "audience": self.audience,
            "claims": dict(self.claims),
            "access": self.access,
            "repository": self.repository,
            "jwks": self.jwks is not None,
            "template": self.template,
            "description": self.description,
            "created_by": self.created_by,
            "created_at": self.created_at,
        }


_SELECT = (
    "SELECT r.id, n.name, r.issuer, r.audience, r.claims, r.access, r.repository, r.jwks, "
    "r.template, r.description, r.created_by, r.created_at "
    "FROM ci_trust_rules r JOIN namespaces n ON n.id = r.namespace_id "
)


def _rule(row: tuple[Any, ...]) -> TrustRule:
    claims = json.loads(row[4])
    return TrustRule(
        int(row[0]),
        str(row[1]),
        str(row[2]),
        str(row[3]),
        tuple(sorted((str(k), str(v)) for k, v in claims.items())),
        str(row[5]),
        str(row[6]),
        row[7],
        row[8],
        str(row[9]),
        str(row[10]),
        float(row[11]),
    )


def add(  # noqa: PLR0917
    tx: Tx,
    namespace: str,
    issuer: str,
    audience: str,
    claims: dict[str, str],
    access: str,
    repository: str,
    *,
    jwks: str | None,
    template: str | None,
    description: str,
    created_by: str,
    now: float,
) -> TrustRule:
    ns = identity.require_namespace(tx, namespace)
    tx.touch(identity.AUTH)  # cached Basic sign-ins of CI jobs: this rule may match them too
    rule_id = int(
        tx.scalar(
            "INSERT INTO ci_trust_rules (namespace_id, issuer, audience, claims, access, "
            "repository, jwks, template, description, created_by, created_at) VALUES (:ns, "
            ":issuer, :audience, :claims, :access, :repository, :jwks, :template, "
            ":description, :by, :now) RETURNING id",
            {
                "ns": ns.id,
                "issuer": issuer,
                "audience": audience,
                "claims": json.dumps(claims, sort_keys=True),
                "access": access,
                "repository": repository,
                "jwks": jwks,
                "template": template,
                "description": description,
                "by": created_by,
                "now": now,
            },
        )
    )
    return require(tx, rule_id)


def get(tx: Tx, rule_id: int) -> TrustRule | None:
    row = tx.one(_SELECT + "WHERE r.id = :id", {"id": rule_id})
    return None if row is None else _rule(row)


def require(tx: Tx, rule_id: int) -> TrustRule:
    found = get(tx, rule_id)
    if found is None:
        raise RuleNotFound(f"no CI trust rule {rule_id}")
    return found


def by_ids(tx: Tx, rule_ids: Iterable[int]) -> list[TrustRule]:
    """The rules of `rule_ids` that exist, by id (one query)."""
    params = {f"id{i}": int(rule_id) for i, rule_id in enumerate(sorted(set(rule_ids)))}
    if not params:
        return []
    names = ", ".join(f":{name}" for name in params)
    rows = tx.execute(_SELECT + f"WHERE r.id IN ({names}) ORDER BY r.id", params)
    return [_rule(r) for r in rows]


def for_issuer(tx: Tx, issuer: str) -> list[TrustRule]:
    rows = tx.execute(_SELECT + "WHERE r.issuer = :issuer ORDER BY r.id", {"issuer": issuer})
    return [_rule(r) for r in rows]


def listed(tx: Tx, namespace: str | None = None) -> list[TrustRule]:
    """Every rule, or a namespace's (raises NamespaceNotFound for an unknown one)."""
    if namespace is None:
        rows = tx.execute(_SELECT + "ORDER BY n.name, r.id")
    else:
        identity.require_namespace(tx, namespace)
        rows = tx.execute(_SELECT + "WHERE n.name = :ns ORDER BY r.id", {"ns": namespace})
    return [_rule(r) for r in rows]


def delete(tx: Tx, rule_id: int) -> None:
    """Remove a rule; what was signed in with it stops working on its next request."""
    tx.execute("DELETE FROM ci_trust_rules WHERE id = :id", {"id": rule_id})
    tx.touch(identity.AUTH)


def count(tx: Tx) -> int:
    """How many rules there are (the status page)."""
    return int(tx.scalar("SELECT COUNT(*) FROM ci_trust_rules"))
