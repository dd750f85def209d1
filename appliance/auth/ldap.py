"""LDAP sign-in with ldap3: service bind, search with escaped filters, user bind, groups.

Synchronous (ldap3 blocks): call in a worker thread. Every connection has a connect and a
receive timeout, so an unreachable directory fails within `timeout` seconds. ldap3 errors are
translated here: `DirectoryUnavailable` when the directory cannot be asked, `None` or False
when it answered no. An empty password is refused before any bind (an empty-password simple
bind is an anonymous bind that "succeeds").

Group → role mapping (`ldap.group_roles`): `GROUP=NAMESPACE:ROLE` items separated by `;` or
new lines, GROUP being the group's `cn`; `GROUP=*:admin` makes members instance admins.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from appliance.auth.policy import ROLES
from appliance.errors import BerthError, ConfigError


class DirectoryUnavailable(BerthError):
    """The LDAP directory could not be reached or refused the service account."""


@dataclass(frozen=True)
class DirectoryUser:
    dn: str
    uid: str
    email: str | None
    display_name: str | None
    groups: frozenset[str]


@dataclass(frozen=True)
class GroupRole:
    group: str
    namespace: str  # `*` with role `admin`: instance admin
    role: str


def parse_group_roles(text: str) -> list[GroupRole]:
    out = []
    for raw in text.replace("\n", ";").split(";"):
        item = raw.strip()
        if not item:
            continue
        group, eq, target = item.partition("=")
        namespace, colon, role = target.strip().rpartition(":")
        group, namespace, role = group.strip(), namespace.strip(), role.strip()
        valid = eq and colon and group and namespace
        if not valid or (role not in ROLES and not (namespace == "*" and role == "admin")):
            raise ConfigError(
                f"ldap.group_roles: {item!r} is not GROUP=NAMESPACE:ROLE "
                f"(ROLE one of {', '.join(ROLES)}, or GROUP=*:admin)"
            )
        out.append(GroupRole(group, namespace, role))
    return out


def mapped_roles(rules: Iterable[GroupRole], groups: frozenset[str]) -> tuple[dict[str, str], bool]:
    """(namespace → highest role the groups map to, admin?): the one reading of a group → role
    mapping, for LDAP, SAML and OpenID Connect alike."""
    roles: dict[str, str] = {}
    admin = False
    for rule in rules:
        if rule.group not in groups:
            continue
        if rule.role == "admin":
            admin = True
        elif rule.namespace not in roles or ROLES.index(rule.role) > ROLES.index(
            roles[rule.namespace]
        ):
            roles[rule.namespace] = rule.role
    return roles, admin


def _first(entry: Any, attribute: str) -> str | None:
    values = entry["attributes"].get(attribute) if attribute else None
    if isinstance(values, list):
        return str(values[0]) if values else None
    return None if values in (None, "") else str(values)


@dataclass
class LdapSettings:
    url: str
    bind_dn: str
    bind_password: str
    user_base: str
    user_filter: str
    uid_attribute: str
    email_attribute: str
    name_attribute: str
    group_base: str
    group_filter: str
    start_tls: bool
    ca_file: str
    timeout: float
    group_roles: list[GroupRole]


class LdapDirectory:
    """One LDAP server, asked with a service account."""

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        s = settings
        # ldap3 packs socket timeouts as whole seconds (a float fails inside it).
        self.timeout = max(1, math.ceil(s.timeout))
        tls = None
        if s.url.startswith("ldaps://") or s.start_tls:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED,
                ca_certs_file=s.ca_file or None,
            )
        self.server = ldap3.Server(
            s.url,
            get_info=ldap3.NONE,  # reading the schema costs ~40 ms per connection
            connect_timeout=self.timeout,
            tls=tls,
            use_ssl=s.url.startswith("ldaps://"),
        )

    def _connection(self, user: str | None, password: str | None) -> ldap3.Connection:
        conn = ldap3.Connection(
            self.server,
            user=user,
            password=password,
            receive_timeout=self.timeout,
            raise_exceptions=False,
            auto_bind=ldap3.AUTO_BIND_NONE,
        )
        conn.open()
        if self.settings.start_tls and not self.settings.url.startswith("ldaps://"):
            conn.start_tls()
        return conn

    def _service(self) -> ldap3.Connection:
        conn = self._connection(self.settings.bind_dn or None, self.settings.bind_password or None)
        if not conn.bind():
            conn.unbind()
            raise DirectoryUnavailable("the LDAP service account was refused")
        return conn

    def _find(self, conn: ldap3.Connection, username: str) -> DirectoryUser | None:
        s = self.settings
        query = s.user_filter.replace("{username}", escape_filter_chars(username))
        attributes = [a for a in (s.uid_attribute, s.email_attribute, s.name_attribute) if a]
        conn.search(s.user_base, query, ldap3.SUBTREE, attributes=attributes, size_limit=2)
        entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
        if len(entries) != 1:
            return None  # unknown, or ambiguous: fail closed
        entry = entries[0]
        uid = _first(entry, s.uid_attribute) or username
        groups: set[str] = set()
        if s.group_base:
            group_query = s.group_filter.replace("{dn}", escape_filter_chars(entry["dn"]))
            conn.search(s.group_base, group_query, ldap3.SUBTREE, attributes=["cn"])
            for g in conn.response or []:
                if g.get("type") == "searchResEntry":
                    cn = _first(g, "cn")
                    if cn:
                        groups.add(cn)
        return DirectoryUser(
            dn=str(entry["dn"]),
            uid=uid,
            email=_first(entry, s.email_attribute),
            display_name=_first(entry, s.name_attribute),
            groups=frozenset(groups),
        )

    def authenticate(self, username: str, password: str) -> DirectoryUser | None:
        """The directory's user if `password` is theirs; None otherwise."""
        if not password or not username:
            return None
        try:
            conn = self._service()
            try:
                found = self._find(conn, username)
            finally:
                conn.unbind()
            if found is None:
                return None
            user_conn = self._connection(found.dn, password)
            try:
                ok = user_conn.bind()
            finally:
                user_conn.unbind()
        except LDAPException as e:
            raise DirectoryUnavailable(f"LDAP: {type(e).__name__}: {e}") from e
        except OSError as e:
            raise DirectoryUnavailable(f"LDAP: {e}") from e
        return found if ok else None

    def lookup(self, username: str) -> DirectoryUser | None:
        """The directory's user named `username` (for the group re-sync); None if gone."""
        try:
            conn = self._service()
            try:
                return self._find(conn, username)
            finally:
                conn.unbind()
        except LDAPException as e:
            raise DirectoryUnavailable(f"LDAP: {type(e).__name__}: {e}") from e
        except OSError as e:
            raise DirectoryUnavailable(f"LDAP: {e}") from e

    def roles_for(self, user: DirectoryUser) -> tuple[dict[str, str], bool]:
        """(namespace → highest mapped role, admin?) for the user's groups."""
        return mapped_roles(self.settings.group_roles, user.groups)
