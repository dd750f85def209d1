"""Identity records: users, namespaces, memberships, robots and hashed tokens.

Every function is a piece of a unit of work: it takes the caller's `Tx` and runs portable
`:name` SQL, so the API, the CLI and the LDAP sync compose them into one transaction together
with the audit row that describes the change (`metadata.audit.record`). Nothing here hashes or
checks a secret: callers pass hashes in (see `auth.passwords`, `auth.secrets`).

Every change to a fact a credential check rests on (a user's password, admin flag or
disabled flag, memberships, public namespaces, robots, revoked tokens) touches the `AUTH`
topic in its transaction (metadata/changes.py), so every process's access caches reload on
their next request; and a change that takes rights away (disabled, password changed, admin
flag or a role lowered) ends the user's console sessions in that same transaction. Creating
a credential touches nothing (no cache can hold what did not exist), nor does bookkeeping
(`touch_token`, `last_login_at`), which runs on every sign-in.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.errors import Conflict, NotFound
from appliance.metadata.db import Tx

AUTH = "auth"  # the change topic of identity facts (metadata/changes.py)
ROLES = ("reader", "developer", "maintainer", "owner")  # each includes the one before


def role_rank(role: str | None) -> int:
    return ROLES.index(role) + 1 if role in ROLES else 0


class UserNotFound(NotFound):
    pass


class NamespaceNotFound(NotFound):
    pass


class RobotNotFound(NotFound):
    pass


class TokenNotFound(NotFound):
    pass


@dataclass(frozen=True)
class UserRecord:
    id: int
    name: str
    email: str | None
    display_name: str | None
    password_hash: str | None
    source: str
    external_id: str | None
    is_admin: bool
    disabled: bool
    created_at: float
    last_login_at: float | None
    generation: int = 0  # bumped when the password changes or the user is disabled

    def public(self) -> dict[str, object]:
        return {
            "name": self.name,
            "email": self.email,
            "display_name": self.display_name,
            "source": self.source,
            "admin": self.is_admin,
            "disabled": self.disabled,
            "created_at": self.created_at,
            "last_login_at": self.last_login_at,
        }


@dataclass(frozen=True)
class NamespaceRecord:
    id: int
    name: str
    public: bool
    personal_of: str | None
    created_at: float

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "public": self.public,
            "personal": self.personal_of is not None,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class RobotRecord:
    id: int
    namespace: str
    name: str
    role: str
    description: str
    created_by: str
    created_at: float

    @property
    def account(self) -> str:
        """The user name a robot signs in with: `<namespace>+<name>`."""
        return f"{self.namespace}+{self.name}"

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "account": self.account,
            "namespace": self.namespace,
            "role": self.role,
            "description": self.description,
            "created_by": self.created_by,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class TokenRecord:
    id: int
    kind: str
    user_id: int | None
    robot_id: int | None
    name: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    revoked_at: float | None
    minted_by: str | None = None  # the credential this token dies with (auth/credentials.py)

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
        }


_USER_COLUMNS = (
    "id, name, email, display_name, password_hash, source, external_id, is_admin, disabled, "
    "created_at, last_login_at, credential_generation"
)
_TOKEN_COLUMNS = (
    "id, kind, user_id, robot_id, name, scopes, created_at, expires_at, last_used_at, revoked_at, "  # noqa: S105 (column names)
    "minted_by"
)


def _user(row: tuple[object, ...]) -> UserRecord:
    r = list(row)
    r[7] = bool(r[7])
    r[8] = bool(r[8])
    r[11] = r[11] or 0
    return UserRecord(*r)  # type: ignore[arg-type]


def _token(row: tuple[object, ...]) -> TokenRecord:
    r = list(row)
    r[5] = tuple(str(r[5]).split())
    return TokenRecord(*r)  # type: ignore[arg-type]


# -- users -------------------------------------------------------------------------------


def count_users(tx: Tx) -> int:
    return int(tx.scalar("SELECT COUNT(*) FROM users"))


def user_by_name(tx: Tx, name: str) -> UserRecord | None:
    row = tx.one(f"SELECT {_USER_COLUMNS} FROM users WHERE name = :name", {"name": name})  # noqa: S608
    return None if row is None else _user(row)


def user_by_id(tx: Tx, user_id: int) -> UserRecord | None:
    row = tx.one(f"SELECT {_USER_COLUMNS} FROM users WHERE id = :id", {"id": user_id})  # noqa: S608
    return None if row is None else _user(row)


def require_user(tx: Tx, name: str) -> UserRecord:
    user = user_by_name(tx, name)
    if user is None:
        raise UserNotFound(f"no user {name!r}")
    return user


def list_users(tx: Tx, source: str | None = None) -> list[UserRecord]:
    if source is None:
        rows = tx.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name")  # noqa: S608
    else:
        rows = tx.execute(
            f"SELECT {_USER_COLUMNS} FROM users WHERE source = :source ORDER BY name",  # noqa: S608
            {"source": source},
        )
    return [_user(r) for r in rows]


def namespace_by_name(tx: Tx, name: str) -> NamespaceRecord | None:
    row = tx.one(
        "SELECT n.id, n.name, n.public, u.name, n.created_at FROM namespaces n "
        "LEFT JOIN users u ON u.id = n.owner_user WHERE n.name = :name",
        {"name": name},
    )
    if row is None:
        return None
    return NamespaceRecord(int(row[0]), row[1], bool(row[2]), row[3], float(row[4]))


def require_namespace(tx: Tx, name: str) -> NamespaceRecord:
    ns = namespace_by_name(tx, name)
    if ns is None:
        raise NamespaceNotFound(f"no namespace {name!r}")
    return ns


def create_user(
    tx: Tx,
    name: str,
    now: float,
    *,
    password_hash: str | None = None,
    admin: bool = False,
    source: str = "local",
    email: str | None = None,
    display_name: str | None = None,
    external_id: str | None = None,
) -> UserRecord:
    """Create a user and their personal namespace (`name`, owned by them).

    Raises Conflict when the user or a namespace of that name exists already.
    """
    if user_by_name(tx, name) is not None:
        raise Conflict(f"a user named {name!r} exists already")
    if namespace_by_name(tx, name) is not None:
        raise Conflict(
            f"cannot create user {name!r}: a namespace of that name exists, and every user "
            "gets a personal namespace of their own name"
        )
    user_id = int(
        tx.scalar(
            "INSERT INTO users (name, email, display_name, password_hash, source, external_id, "
            "is_admin, created_at) VALUES (:name, :email, :display, :hash, :source, :ext, "
            ":admin, :now) RETURNING id",
            {
                "name": name,
                "email": email,
                "display": display_name,
                "hash": password_hash,
                "source": source,
                "ext": external_id,
                "admin": int(admin),
                "now": now,
            },
        )
    )
    ns_id = int(
        tx.scalar(
            "INSERT INTO namespaces (name, owner_user, created_at) VALUES (:name, :uid, :now) "
            "RETURNING id",
            {"name": name, "uid": user_id, "now": now},
        )
    )
    tx.execute(
        "INSERT INTO memberships (namespace_id, user_id, role, source, created_at) "
        "VALUES (:ns, :uid, 'owner', 'personal', :now)",
        {"ns": ns_id, "uid": user_id, "now": now},
    )
    tx.touch(AUTH)
    user = user_by_id(tx, user_id)
    assert user is not None
    return user


def update_user(tx: Tx, name: str, **fields: object) -> UserRecord:
    """Set some of: password_hash, is_admin, disabled, email, display_name, external_id,
    last_login_at.

    A new password or disabling moves the user's credential generation on (what their
    sign-ins minted stops working); either, or losing the admin flag, ends their console
    sessions. Only a change to a fact access checks rest on touches the `AUTH` topic.
    """
    allowed = {
        "password_hash",
        "is_admin",
        "disabled",
        "email",
        "display_name",
        "external_id",
        "last_login_at",
    }
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown user fields {sorted(unknown)}")
    user = require_user(tx, name)
    changed = {k: v for k, v in fields.items() if getattr(user, k) != v}
    if not changed:
        return user
    assignments = ", ".join(f"{k} = :{k}" for k in sorted(changed))
    params = {k: int(v) if isinstance(v, bool) else v for k, v in changed.items()}
    new_generation = "password_hash" in changed or changed.get("disabled") is True
    if new_generation:
        assignments += ", credential_generation = credential_generation + 1"
    tx.execute(
        f"UPDATE users SET {assignments} WHERE id = :id",  # noqa: S608 (keys are checked)
        {**params, "id": user.id},
    )
    if changed.keys() - {"last_login_at", "email", "display_name", "external_id"}:
        tx.touch(AUTH)
    if new_generation or changed.get("is_admin") is False:
        end_sessions(tx, user.id)
    return require_user(tx, name)


def end_sessions(tx: Tx, user_id: int) -> None:
    """Sign the user out of the console everywhere (their rights were just narrowed)."""
    tx.execute("DELETE FROM console_sessions WHERE user_id = :uid", {"uid": user_id})


def roles_of(tx: Tx, user_id: int) -> dict[str, str]:
    rows = tx.execute(
        "SELECT n.name, m.role FROM memberships m JOIN namespaces n ON n.id = m.namespace_id "
        "WHERE m.user_id = :uid",
        {"uid": user_id},
    )
    return {str(r[0]): str(r[1]) for r in rows}


# -- namespaces and members ------------------------------------------------------------------


def create_namespace(tx: Tx, name: str, now: float, *, public: bool = False) -> NamespaceRecord:
    if namespace_by_name(tx, name) is not None or user_by_name(tx, name) is not None:
        raise Conflict(f"the name {name!r} is taken (by a namespace or a user)")
    tx.execute(
        "INSERT INTO namespaces (name, public, created_at) VALUES (:name, :public, :now)",
        {"name": name, "public": int(public), "now": now},
    )
    tx.touch(AUTH)
    return require_namespace(tx, name)


def set_namespace_public(tx: Tx, name: str, public: bool) -> NamespaceRecord:
    ns = require_namespace(tx, name)
    tx.execute("UPDATE namespaces SET public = :p WHERE id = :id", {"p": int(public), "id": ns.id})
    tx.touch(AUTH)
    return require_namespace(tx, name)


def delete_namespace(tx: Tx, name: str) -> None:
    ns = require_namespace(tx, name)
    if ns.personal_of is not None:
        raise Conflict(f"{name!r} is the personal namespace of a user; it goes with the user")
    tx.execute("DELETE FROM namespaces WHERE id = :id", {"id": ns.id})
    tx.touch(AUTH)


def list_namespaces(tx: Tx) -> list[NamespaceRecord]:
    rows = tx.execute(
        "SELECT n.id, n.name, n.public, u.name, n.created_at FROM namespaces n "
        "LEFT JOIN users u ON u.id = n.owner_user ORDER BY n.name"
    )
    return [NamespaceRecord(int(r[0]), r[1], bool(r[2]), r[3], float(r[4])) for r in rows]


def public_namespaces(tx: Tx) -> frozenset[str]:
    return frozenset(str(r[0]) for r in tx.execute("SELECT name FROM namespaces WHERE public = 1"))


def members(tx: Tx, namespace: str) -> list[dict[str, object]]:
    ns = require_namespace(tx, namespace)
    rows = tx.execute(
        "SELECT u.name, m.role, m.source FROM memberships m JOIN users u ON u.id = m.user_id "
        "WHERE m.namespace_id = :ns ORDER BY u.name",
        {"ns": ns.id},
    )
    return [{"user": r[0], "role": r[1], "source": r[2]} for r in rows]


def set_member(  # noqa: PLR0917
    tx: Tx, namespace: str, user: str, role: str, now: float, source: str = "manual"
) -> None:
    """Give `user` `role` in `namespace`; a lower role than before ends their console
    sessions."""
    ns = require_namespace(tx, namespace)
    u = require_user(tx, user)
    before = tx.one(
        "SELECT role, source FROM memberships WHERE namespace_id = :ns AND user_id = :uid",
        {"ns": ns.id, "uid": u.id},
    )
    if before is not None and (before[0], before[1]) == (role, source):
        return
    tx.execute(
        "INSERT INTO memberships (namespace_id, user_id, role, source, created_at) "
        "VALUES (:ns, :uid, :role, :source, :now) ON CONFLICT (namespace_id, user_id) "
        "DO UPDATE SET role = excluded.role, source = excluded.source",
        {"ns": ns.id, "uid": u.id, "role": role, "source": source, "now": now},
    )
    tx.touch(AUTH)
    if before is not None and role_rank(role) < role_rank(str(before[0])):
        end_sessions(tx, u.id)


def remove_member(tx: Tx, namespace: str, user: str) -> bool:
    ns = require_namespace(tx, namespace)
    u = require_user(tx, user)
    gone = tx.execute(
        "DELETE FROM memberships WHERE namespace_id = :ns AND user_id = :uid RETURNING role",
        {"ns": ns.id, "uid": u.id},
    )
    if gone:
        tx.touch(AUTH)
        end_sessions(tx, u.id)
    return bool(gone)


def memberships_from(tx: Tx, user_id: int, source: str) -> dict[str, str]:
    rows = tx.execute(
        "SELECT n.name, m.role FROM memberships m JOIN namespaces n ON n.id = m.namespace_id "
        "WHERE m.user_id = :uid AND m.source = :source",
        {"uid": user_id, "source": source},
    )
    return {str(r[0]): str(r[1]) for r in rows}


# -- robots --------------------------------------------------------------------------------


def _robot(row: tuple[object, ...]) -> RobotRecord:
    return RobotRecord(*row)  # type: ignore[arg-type]


_ROBOT_SELECT = (
    "SELECT r.id, n.name, r.name, r.role, r.description, r.created_by, r.created_at "
    "FROM robots r JOIN namespaces n ON n.id = r.namespace_id "
)


def create_robot(  # noqa: PLR0917
    tx: Tx, namespace: str, name: str, role: str, created_by: str, now: float, description: str = ""
) -> RobotRecord:
    ns = require_namespace(tx, namespace)
    if robot(tx, namespace, name) is not None:
        raise Conflict(f"namespace {namespace!r} has a robot named {name!r} already")
    tx.execute(
        "INSERT INTO robots (namespace_id, name, role, description, created_by, created_at) "
        "VALUES (:ns, :name, :role, :description, :by, :now)",
        {
            "ns": ns.id,
            "name": name,
            "role": role,
            "description": description,
            "by": created_by,
            "now": now,
        },
    )
    made = robot(tx, namespace, name)
    assert made is not None
    return made


def robot(tx: Tx, namespace: str, name: str) -> RobotRecord | None:
    row = tx.one(
        _ROBOT_SELECT + "WHERE n.name = :ns AND r.name = :name", {"ns": namespace, "name": name}
    )
    return None if row is None else _robot(row)


def robot_by_id(tx: Tx, robot_id: int) -> RobotRecord | None:
    row = tx.one(_ROBOT_SELECT + "WHERE r.id = :id", {"id": robot_id})
    return None if row is None else _robot(row)


def robots(tx: Tx, namespace: str) -> list[RobotRecord]:
    require_namespace(tx, namespace)
    rows = tx.execute(_ROBOT_SELECT + "WHERE n.name = :ns ORDER BY r.name", {"ns": namespace})
    return [_robot(r) for r in rows]


def delete_robot(tx: Tx, namespace: str, name: str) -> None:
    found = robot(tx, namespace, name)
    if found is None:
        raise RobotNotFound(f"no robot {name!r} in namespace {namespace!r}")
    tx.execute("DELETE FROM robots WHERE id = :id", {"id": found.id})
    tx.touch(AUTH)


# -- tokens --------------------------------------------------------------------------------


def create_token(
    tx: Tx,
    kind: str,
    secret_hash: str,
    now: float,
    *,
    user_id: int | None = None,
    robot_id: int | None = None,
    name: str = "",
    scopes: tuple[str, ...] = (),
    expires_at: float | None = None,
    minted_by: str | None = None,
) -> TokenRecord:
    token_id = int(
        tx.scalar(
            "INSERT INTO tokens (kind, user_id, robot_id, name, scopes, secret_hash, created_at, "
            "expires_at, minted_by) VALUES (:kind, :uid, :rid, :name, :scopes, :hash, :now, "
            ":exp, :minted) RETURNING id",
            {
                "kind": kind,
                "uid": user_id,
                "rid": robot_id,
                "name": name,
                "scopes": " ".join(scopes),
                "hash": secret_hash,
                "now": now,
                "exp": expires_at,
                "minted": minted_by,
            },
        )
    )
    found = token_by_id(tx, token_id)
    assert found is not None
    return found


def token_by_hash(tx: Tx, secret_hash: str) -> TokenRecord | None:
    row = tx.one(
        f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE secret_hash = :h",  # noqa: S608
        {"h": secret_hash},
    )
    return None if row is None else _token(row)


def token_by_id(tx: Tx, token_id: int) -> TokenRecord | None:
    row = tx.one(
        f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = :id",  # noqa: S608
        {"id": token_id},
    )
    return None if row is None else _token(row)


def tokens_of_user(tx: Tx, user_id: int, kind: str | None = "pat") -> list[TokenRecord]:
    """The user's tokens of `kind` (pat, refresh; None: both), oldest first."""
    which, params = (
        ("", {"uid": user_id})
        if kind is None
        else (
            "AND kind = :kind ",
            {"uid": user_id, "kind": kind},
        )
    )
    rows = tx.execute(
        f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE user_id = :uid {which}ORDER BY id",  # noqa: S608
        params,
    )
    return [_token(r) for r in rows]


def tokens_of_robot(tx: Tx, robot_id: int) -> list[TokenRecord]:
    rows = tx.execute(
        f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE robot_id = :rid ORDER BY id",  # noqa: S608
        {"rid": robot_id},
    )
    return [_token(r) for r in rows]


def revoke_token(tx: Tx, token_id: int, now: float) -> None:
    tx.execute(
        "UPDATE tokens SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL",
        {"id": token_id, "now": now},
    )
    tx.touch(AUTH)


def revoke_refresh_tokens(tx: Tx, user_id: int, now: float) -> int:
    """Revoke every refresh token of the user (they were disabled); returns how many."""
    gone = tx.execute(
        "UPDATE tokens SET revoked_at = :now WHERE user_id = :uid AND kind = 'refresh' "
        "AND revoked_at IS NULL RETURNING id",
        {"uid": user_id, "now": now},
    )
    if gone:
        tx.touch(AUTH)
    return len(gone)


def touch_token(tx: Tx, token_id: int, now: float) -> None:
    """Last-used bookkeeping, on every sign-in: deliberately touches no change topic, which
    would make every process reload its access caches after each sign-in."""
    tx.execute("UPDATE tokens SET last_used_at = :now WHERE id = :id", {"id": token_id, "now": now})
