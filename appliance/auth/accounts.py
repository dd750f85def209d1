"""Changes to users, namespaces, members, robots and tokens, each audited in its transaction.

Every function here is a synchronous piece of a unit of work (`fn(tx)`), shared by the CLI
(`db.run_sync_write`) and the management API (`await db.write(...)`). Password hashes are made
by the caller, outside the transaction (argon2 is slow); tokens are made here, and returned
once, in clear, to be shown to the user: only their HMAC is stored. A token or robot created
with a token is held to `credentials.MintLimits` (the creator's scopes and expiry at most, and
bound to it). What each change does to caches and console sessions is said in
`metadata/identity.py`.
"""

from __future__ import annotations

from appliance.auth.credentials import MintLimits
from appliance.auth.policy import ROBOT_ROLES, ROLES, TOKEN_SCOPES
from appliance.auth.secrets import ServerSecret
from appliance.errors import Conflict, InvalidName
from appliance.metadata import audit, identity
from appliance.metadata.db import Tx
from appliance.metadata.identity import RobotRecord, TokenRecord, UserRecord
from appliance.oci.names import validate_component


def _check_role(role: str, allowed: tuple[str, ...]) -> str:
    if role not in allowed:
        raise InvalidName(f"unknown role {role!r}: one of {', '.join(allowed)}")
    return role


def add_user(
    tx: Tx,
    actor: str,
    name: str,
    password_hash: str | None,
    now: float,
    *,
    admin: bool = False,
    email: str | None = None,
) -> UserRecord:
    validate_component(name)
    user = identity.create_user(
        tx, name, now, password_hash=password_hash, admin=admin, email=email
    )
    audit.record(tx, actor, "user.create", name, at=now, admin=admin, source="local")
    return user


def set_password(tx: Tx, actor: str, name: str, password_hash: str, now: float) -> None:
    user = identity.require_user(tx, name)
    if user.source != "local":
        raise Conflict(f"{name!r} signs in through {user.source}; its password is kept there")
    identity.update_user(tx, name, password_hash=password_hash)
    audit.record(tx, actor, "user.password", name, at=now)


def set_disabled(tx: Tx, actor: str, name: str, disabled: bool, now: float) -> None:
    """Disabling also revokes the user's refresh tokens, so that enabling them again does
    not bring back what their earlier sign-ins minted (their console sessions end too)."""
    user = identity.update_user(tx, name, disabled=disabled)
    revoked = identity.revoke_refresh_tokens(tx, user.id, now) if disabled else 0
    audit.record(
        tx,
        actor,
        "user.disable" if disabled else "user.enable",
        name,
        at=now,
        **({"refresh_tokens_revoked": revoked} if revoked else {}),
    )


def set_admin(tx: Tx, actor: str, name: str, admin: bool, now: float) -> None:
    identity.update_user(tx, name, is_admin=admin)
    audit.record(tx, actor, "user.admin", name, at=now, admin=admin)


def create_namespace(
    tx: Tx, actor: str, name: str, now: float, *, public: bool = False, owner: str | None = None
) -> identity.NamespaceRecord:
    validate_component(name)
    ns = identity.create_namespace(tx, name, now, public=public)
    if owner is not None:
        identity.set_member(tx, name, owner, "owner", now)
    audit.record(tx, actor, "namespace.create", name, at=now, public=public, owner=owner)
    return ns


def set_public(tx: Tx, actor: str, name: str, public: bool, now: float) -> None:
    identity.set_namespace_public(tx, name, public)
    audit.record(tx, actor, "namespace.visibility", name, at=now, public=public)


def delete_namespace(tx: Tx, actor: str, name: str, now: float) -> None:
    identity.delete_namespace(tx, name)
    audit.record(tx, actor, "namespace.delete", name, at=now)


def set_member(  # noqa: PLR0917
    tx: Tx, actor: str, namespace: str, user: str, role: str, now: float
) -> None:
    identity.set_member(tx, namespace, user, _check_role(role, ROLES), now)
    audit.record(tx, actor, "member.set", f"{namespace}/{user}", at=now, role=role)


def remove_member(tx: Tx, actor: str, namespace: str, user: str, now: float) -> bool:
    ns = identity.require_namespace(tx, namespace)
    if ns.personal_of == user:
        raise Conflict("the owner of a personal namespace cannot be removed from it")
    removed = identity.remove_member(tx, namespace, user)
    if removed:
        audit.record(tx, actor, "member.remove", f"{namespace}/{user}", at=now)
    return removed


def create_robot(  # noqa: PLR0917
    tx: Tx,
    actor: str,
    secret: ServerSecret,
    namespace: str,
    name: str,
    role: str,
    now: float,
    *,
    expires_at: float | None = None,
    description: str = "",
    limits: MintLimits | None = None,
) -> tuple[RobotRecord, str]:
    """A robot account and its secret (shown once). `limits`: those of the creator's
    credential (`MintLimits.of(principal)`); Denied when the robot would exceed them."""
    validate_component(name)
    limits = limits or MintLimits()
    limits.check_role(_check_role(role, ROBOT_ROLES))
    robot = identity.create_robot(tx, namespace, name, role, actor, now, description)
    token, digest = secret.new_token("robot")
    identity.create_token(
        tx,
        "robot",
        digest,
        now,
        robot_id=robot.id,
        expires_at=limits.expiry(expires_at),
        minted_by=limits.minted_by,
    )
    audit.record(tx, actor, "robot.create", robot.account, at=now, role=role)
    return robot, token


def delete_robot(tx: Tx, actor: str, namespace: str, name: str, now: float) -> None:
    identity.delete_robot(tx, namespace, name)
    audit.record(tx, actor, "robot.delete", f"{namespace}+{name}", at=now)


def create_pat(  # noqa: PLR0917
    tx: Tx,
    actor: str,
    secret: ServerSecret,
    user: str,
    name: str,
    scopes: tuple[str, ...],
    now: float,
    *,
    expires_at: float | None = None,
    limits: MintLimits | None = None,
) -> tuple[TokenRecord, str]:
    """A personal access token for `user` and its value (shown once). `limits`: those of the
    creator's credential; Denied for a scope it lacks, and the expiry is capped at its own."""
    unknown = [s for s in scopes if s not in TOKEN_SCOPES]
    if unknown or not scopes:
        raise InvalidName(f"token scopes must be some of {', '.join(TOKEN_SCOPES)}")
    limits = limits or MintLimits()
    limits.check_scopes(scopes)
    owner = identity.require_user(tx, user)
    token, digest = secret.new_token("pat")
    record = identity.create_token(
        tx,
        "pat",
        digest,
        now,
        user_id=owner.id,
        name=name,
        scopes=scopes,
        expires_at=limits.expiry(expires_at),
        minted_by=limits.minted_by,
    )
    audit.record(tx, actor, "token.create", f"{user}/{record.id}", at=now, scopes=list(scopes))
    return record, token


def revoke_token(tx: Tx, actor: str, token: TokenRecord, now: float) -> None:
    identity.revoke_token(tx, token.id, now)
    audit.record(tx, actor, "token.revoke", str(token.id), at=now, kind=token.kind)
