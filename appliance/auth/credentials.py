"""What a credential reference names, whether it still works, and what it may mint.

Every sign-in is made with a credential, and what it mints names that credential (a registry
JWT's private `crd` claim, a token row's `minted_by`), so that it works only while the
credential does:

    token:<id>                        a personal access token, robot token or refresh token
                                      (and, through its own `minted_by`, whatever minted it)
    <via>:<user id>:<generation>      a sign-in with the user's own credentials: `password`,
                                      `ldap`, `saml`, `oidc:<provider>`; the generation moves
                                      on when the password changes or the user is disabled
                                      (metadata/identity.py)
    ci:<expiry>:<rule ids>:<subject>  a CI job's identity token that matched those trust rules
                                      (auth/citrust.py): works until the identity token's
                                      expiry, while any of the rules exists, with their grants

`resolve(tx, ref, now)` says who a credential stands for *now* (the user's current roles and
admin flag, the token's scopes, the CI job's current grants) and until when, or None once it
no longer works: revoked, expired, its user disabled or their password changed, its robot
deleted, its trust rules removed, or anything up its chain of minters gone the same way.

`MintLimits` is the one rule for everything a credential creates (personal access tokens,
robots, refresh tokens, registry JWTs): never a scope or a role the creator lacks, never a
later expiry than the creator's, and, when the creator is itself a token (narrower than a full
sign-in), bound to it: revoking the creator ends what it made.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from appliance.auth import citrust
from appliance.auth.policy import ROLE_ACTIONS, SCOPE_ACTIONS, Principal
from appliance.errors import Denied
from appliance.metadata import identity
from appliance.metadata.db import Tx
from appliance.metadata.identity import TokenRecord, UserRecord

MAX_CHAIN = 8  # minters followed before a chain is refused (it never grows this long)


def of_token(token_id: int) -> str:
    return f"token:{token_id}"


def of_sign_in(via: str, user: UserRecord) -> str:
    return f"{via}:{user.id}:{user.generation}"


def _sign_in_parts(ref: str) -> tuple[str, int, int] | None:
    """(via, user id, generation) of a sign-in reference; the via may hold a colon itself
    (`oidc:<provider>`), so the numbers are read from the right."""
    rest, _, generation = ref.rpartition(":")
    via, _, user_id = rest.rpartition(":")
    if not via or not user_id.isdigit() or not generation.isdigit():
        return None
    return via, int(user_id), int(generation)


def earliest(a: float | None, b: float | None) -> float | None:
    """The earlier of two expiries, None meaning never."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


@dataclass(frozen=True)
class Resolved:
    """Who a credential stands for now, and until when it works (None: no end)."""

    principal: Principal
    until: float | None


def user_principal(  # noqa: PLR0917
    tx: Tx,
    user: UserRecord,
    via: str,
    credential: str | None,
    scopes: frozenset[str] | None = None,
    until: float | None = None,
) -> Principal:
    return Principal(
        "user",
        user.name,
        user.id,
        user.is_admin,
        identity.roles_of(tx, user.id),
        scopes,
        via,
        credential,
        until,
    )


def resolve(tx: Tx, ref: str, now: float, depth: int = 0) -> Resolved | None:
    """The current holder of credential `ref`, or None when it no longer works."""
    kind, _, rest = ref.partition(":")
    if kind == "token":
        if not rest.isdigit():
            return None
        return resolve_token(tx, identity.token_by_id(tx, int(rest)), now, depth)
    if kind == citrust.CREDENTIAL:
        job = citrust.holder(tx, ref, now)
        return None if job is None else Resolved(job, job.expires_at)
    parts = _sign_in_parts(ref)
    if parts is None:
        return None
    via, user_id, generation = parts
    user = identity.user_by_id(tx, user_id)
    if user is None or user.disabled or user.generation != generation:
        return None
    return Resolved(user_principal(tx, user, via, ref), None)


def resolve_token(
    tx: Tx, record: TokenRecord | None, now: float, depth: int = 0
) -> Resolved | None:
    """`resolve` for a token row already read (a sign-in looks it up by its hash)."""
    if record is None or not record.usable(now) or depth > MAX_CHAIN:
        return None
    until = record.expires_at
    parent: Resolved | None = None
    if record.minted_by is not None:
        parent = resolve(tx, record.minted_by, now, depth + 1)
        if parent is None:
            return None
        until = earliest(until, parent.until)
    ref = of_token(record.id)
    if record.kind in ("pat", "refresh") and record.user_id is not None:
        user = identity.user_by_id(tx, record.user_id)
        if user is None or user.disabled:
            return None
        if parent is not None and parent.principal.user_id != user.id:
            return None  # minted for one account by another's credential: never valid
        scopes = frozenset(record.scopes) if record.scopes else None
        if parent is not None and parent.principal.scopes is not None:
            scopes = parent.principal.scopes & (scopes or parent.principal.scopes)
        return Resolved(user_principal(tx, user, record.kind, ref, scopes, until), until)
    if record.kind == "robot" and record.robot_id is not None:
        robot = identity.robot_by_id(tx, record.robot_id)
        if robot is None:
            return None
        principal = Principal(
            "robot",
            robot.account,
            None,
            False,
            {robot.namespace: robot.role},
            None,
            "robot",
            ref,
            until,
        )
        return Resolved(principal, until)
    return None


def describe(ref: str | None) -> dict[str, object] | None:
    """How listings show what minted a token (never the generation, which means nothing to a
    reader)."""
    if ref is None:
        return None
    kind, _, rest = ref.partition(":")
    if kind == "token":
        return {"kind": "token", "id": int(rest) if rest.isdigit() else None}
    parts = None if kind == citrust.CREDENTIAL else _sign_in_parts(ref)
    return {"kind": kind if parts is None else parts[0]}


def token_json(tx: Tx, record: TokenRecord, now: float) -> dict[str, object]:
    """A token as listings show it: its record, what minted it, and whether it works now."""
    return {
        **record.as_json(),
        "minted_by": describe(record.minted_by),
        "usable": resolve_token(tx, record, now) is not None,
    }


@dataclass(frozen=True)
class MintLimits:
    """What a credential may create: at most `scopes` (None: any), expiring no later than
    `expires_at` (None: no limit), bound to `minted_by` (None: independent of its creator)."""

    scopes: frozenset[str] | None = None
    expires_at: float | None = None
    minted_by: str | None = None

    @classmethod
    def of(cls, principal: Principal) -> MintLimits:
        """A full sign-in (password, directory, console session) creates freely; a token (or
        a CI job's identity token) creates only within itself, and what it creates dies with
        it."""
        credential = principal.credential
        if credential is None or not credential.startswith(("token:", f"{citrust.CREDENTIAL}:")):
            return cls()
        return cls(principal.scopes, principal.expires_at, credential)

    def check_scopes(self, wanted: Iterable[str]) -> None:
        """Raise Denied for a scope the creator does not hold."""
        if self.scopes is None:
            return
        extra = sorted(set(wanted) - self.scopes)
        if extra:
            raise Denied(
                f"a token cannot grant more than the token that creates it: this one lacks "
                f"{', '.join(extra)}",
                {"missing_scopes": extra},
            )

    def check_role(self, role: str) -> None:
        """Raise Denied when a robot of `role` could do what the creator's scopes forbid."""
        if self.scopes is None:
            return
        allowed: frozenset[str] = frozenset()
        for scope in self.scopes:
            allowed |= SCOPE_ACTIONS.get(scope, frozenset())
        extra = sorted(ROLE_ACTIONS.get(role, frozenset()) - allowed)
        if extra:
            raise Denied(
                f"a token cannot create a robot that may do more than itself: a {role} robot "
                f"may {', '.join(extra)}, which this token's scopes do not allow",
                {"role": role, "missing_actions": extra},
            )

    def expiry(self, wanted: float | None) -> float | None:
        """The expiry a new credential gets: what was asked for, capped at the creator's."""
        return earliest(wanted, self.expires_at)
