"""Who may do what. Pure functions over a `Principal`; no I/O.

A repository `team/app/web` belongs to namespace `team` (its first path segment). Roles per
namespace, each including the one before: reader (pull), developer (push), maintainer (delete,
policies), owner (members, robots, settings). Instance admins may do everything. A public
namespace lets anyone pull. A robot acts only in its own namespace, with the role it was given.
A personal access token narrows its user's rights to its scopes: `read_registry` (pull),
`write_registry` (pull, push, delete), `api` (the management API). A CI job signed in with its
identity token (kind `ci`) holds only the grants of the trust rules its token matched: pull or
push on the repositories of one namespace whose path matches a glob.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from appliance.auth.globs import glob_match
from appliance.errors import InvalidName
from appliance.metadata import identity
from appliance.oci.names import namespace_of, validate_name

ROLES = identity.ROLES
role_rank = identity.role_rank

ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "reader": frozenset({"pull"}),
    "developer": frozenset({"pull", "push"}),
    "maintainer": frozenset({"pull", "push", "delete"}),
    "owner": frozenset({"pull", "push", "delete"}),
}
ALL_ACTIONS = frozenset({"pull", "push", "delete"})
TOKEN_SCOPES = ("read_registry", "write_registry", "api")
SCOPE_ACTIONS: dict[str, frozenset[str]] = {
    "read_registry": frozenset({"pull"}),
    "write_registry": frozenset({"pull", "push", "delete"}),
    "api": frozenset(),
}
ROBOT_ROLES = ("reader", "developer", "maintainer")


@dataclass(frozen=True)
class RepositoryGrant:
    """Actions on the repositories of `namespace` whose path below it matches `pattern` (a glob
    of `auth/globs.py`): what a CI trust rule grants."""

    namespace: str
    pattern: str
    actions: frozenset[str]

    def covers(self, repository: str) -> bool:
        head, sep, rest = repository.partition("/")
        return bool(sep) and head == self.namespace and glob_match(self.pattern, rest)


@dataclass(frozen=True)
class Principal:
    """Someone (or no one) making a request.

    `kind` is anonymous, user, robot or ci; `name` the user name, the robot account
    (`<namespace>+<robot>`) or the CI identity token's subject; `roles` maps namespace → role;
    `scopes` limits the rights when the caller signed in with a personal access token (None:
    not limited); `grants` are a CI job's rights (the trust rules its token matched).
    `credential` names what the caller signed in with (`auth/credentials.py`), and
    `expires_at` when that stops working (for a CI job, the identity token's expiry); a token
    the caller mints is bound by both (`credentials.MintLimits`).
    """

    kind: str
    name: str = ""
    user_id: int | None = None
    admin: bool = False
    roles: Mapping[str, str] = field(default_factory=dict)
    scopes: frozenset[str] | None = None
    via: str = "anonymous"
    credential: str | None = None
    expires_at: float | None = None
    grants: tuple[RepositoryGrant, ...] = ()

    @property
    def anonymous(self) -> bool:
        return self.kind == "anonymous"

    @property
    def subject(self) -> str:
        """The token `sub` claim: `user:alice`, `robot:team+ci` or `anonymous`."""
        return "anonymous" if self.anonymous else f"{self.kind}:{self.name}"

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return self.name if self.kind == "user" else self.subject

    def role_in(self, namespace: str) -> str | None:
        if self.admin:
            return "owner"
        return self.roles.get(namespace)

    def has_scope(self, scope: str) -> bool:
        return self.scopes is None or scope in self.scopes


ANONYMOUS = Principal("anonymous")


def repository_actions(principal: Principal, repository: str, public: bool) -> frozenset[str]:
    """The registry actions `principal` may take on `repository`."""
    actions: frozenset[str] = frozenset()
    if principal.admin:
        actions = ALL_ACTIONS
    else:
        role = principal.roles.get(namespace_of(repository))
        if role is not None:
            actions = ROLE_ACTIONS.get(role, frozenset())
    for grant_ in principal.grants:
        if grant_.covers(repository):
            actions |= grant_.actions
    if principal.scopes is not None:
        allowed: frozenset[str] = frozenset()
        for scope in principal.scopes:
            allowed |= SCOPE_ACTIONS.get(scope, frozenset())
        actions &= allowed
    if public:
        actions |= {"pull"}
    return actions


def may_manage(principal: Principal, namespace: str, needed: str) -> bool:
    """Whether `principal` holds at least role `needed` in `namespace` (admins always do)."""
    if principal.anonymous or not principal.has_scope("api"):
        return False
    return principal.admin or role_rank(principal.roles.get(namespace)) >= role_rank(needed)


@dataclass(frozen=True)
class Scope:
    """One requested scope: `repository:team/app:pull,push` or `registry:catalog:*`."""

    type: str
    name: str
    actions: frozenset[str]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Parse scope parameters (each may hold several, space-separated); skip malformed ones."""
    out: list[Scope] = []
    for value in values:
        for item in value.split():
            kind, _, rest = item.partition(":")
            name, sep, actions = rest.rpartition(":")
            kind = kind.split("(", 1)[0]  # `repository(plugin)` → `repository`
            if not sep or not name or not kind:
                continue
            out.append(Scope(kind, name, frozenset(a for a in actions.split(",") if a)))
    return out


def grant(
    principal: Principal, requested: Iterable[Scope], public: frozenset[str]
) -> list[tuple[str, str, frozenset[str]]]:
    """The intersection of the requested scopes and the principal's rights."""
    granted: dict[tuple[str, str], frozenset[str]] = {}
    for scope in requested:
        if scope.type == "repository":
            try:
                validate_name(scope.name)
            except InvalidName:
                continue
            wanted = ALL_ACTIONS if "*" in scope.actions else scope.actions
            may = repository_actions(principal, scope.name, namespace_of(scope.name) in public)
            actions = wanted & may
        elif scope.type == "registry" and scope.name == "catalog":
            # Everyone may ask; the catalog lists only what the caller may see.
            actions = scope.actions & {"*"}
        else:
            continue
        if actions:
            key = (scope.type, scope.name)
            granted[key] = granted.get(key, frozenset()) | actions
    return [(t, n, a) for (t, n), a in granted.items()]
