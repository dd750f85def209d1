"""SAML 2.0 sign-in: Berth as a service provider (python3-saml), knowing nothing of HTTP.

- The IdP is described by its metadata, read from `saml.idp_metadata_url` (fetched on first
  use and again every `METADATA_TTL` seconds) or `saml.idp_metadata_file`.
- Assertions must be signed (`wantAssertionsSigned`); python3-saml checks the signature
  against the IdP's certificate, the audience (our entity id), the destination (our ACS), the
  time window and, in strict mode, everything else the profile asks.
- Every AuthnRequest is remembered in `saml_requests` for `REQUEST_TTL` seconds; a response must
  answer one of them, and each only once (no IdP-initiated sign-in, no replay).
- The user name comes from `saml.username_attribute` (else the NameID, before any `@`),
  normalized to the repository-name grammar; email, display name and groups from their
  attributes. Groups map to namespace roles with `saml.group_roles` (the LDAP syntax).
  The account is created at first sign-in (source `saml`, no password: SAML users make
  personal access tokens in the console for `docker login`).

xmlsec/lxml errors stay in here: callers see `SamlError` with a message fit for a person.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.auth import records
from appliance.auth.ldap import GroupRole, mapped_roles, parse_group_roles
from appliance.config import Config
from appliance.errors import BerthError, ConfigError, Conflict
from appliance.metadata import audit, identity
from appliance.metadata.db import Tx
from appliance.metadata.identity import UserRecord
from appliance.oci.names import normalize_component

METADATA_TTL = 3600.0
REQUEST_TTL = 600.0
POST_BINDING = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
REDIRECT_BINDING = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"


class SamlError(BerthError):
    """A SAML response that does not sign anyone in (bad signature, unknown request, ...)."""


@dataclass(frozen=True)
class SamlIdentity:
    name: str
    email: str | None
    display_name: str | None
    groups: frozenset[str]
    name_id: str


@dataclass(frozen=True)
class RequestInfo:
    """What python3-saml needs to know of the HTTP request (or of the public URL)."""

    https: bool
    host: str  # host[:port]
    path: str
    get: dict[str, str]
    post: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        host, _, port = self.host.partition(":")
        return {
            "https": "on" if self.https else "off",
            "http_host": host,
            "server_port": port or ("443" if self.https else "80"),
            "script_name": self.path,
            "get_data": self.get,
            "post_data": self.post,
        }


class SamlProvider:
    def __init__(
        self,
        *,
        metadata_url: str,
        metadata_file: str,
        entity_id: str,
        username_attribute: str,
        email_attribute: str,
        name_attribute: str,
        groups_attribute: str,
        group_roles: list[GroupRole],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metadata_url = metadata_url
        self.metadata_file = metadata_file
        self.entity_id = entity_id
        self.username_attribute = username_attribute
        self.email_attribute = email_attribute
        self.name_attribute = name_attribute
        self.groups_attribute = groups_attribute
        self.group_roles = group_roles
        self.clock = clock
        self._idp: tuple[float, dict[str, Any]] | None = None

    # -- settings ------------------------------------------------------------------------

    def idp(self) -> dict[str, Any]:
        """The IdP's part of the settings, from its metadata (blocking: run in a thread)."""
        from onelogin.saml2.idp_metadata_parser import (  # noqa: PLC0415
            OneLogin_Saml2_IdPMetadataParser as Parser,
        )

        now = self.clock()
        if self._idp is not None and (self.metadata_file or self._idp[0] > now):
            return self._idp[1]
        try:
            if self.metadata_file:
                xml = Path(self.metadata_file).read_text()
            else:
                with urllib.request.urlopen(self.metadata_url, timeout=10) as r:  # noqa: S310
                    xml = r.read().decode()
            parsed = Parser.parse(xml, required_sso_binding=REDIRECT_BINDING)
        except OSError as e:
            raise SamlError(f"cannot read the SAML IdP metadata: {e}") from e
        except Exception as e:
            raise SamlError(f"the SAML IdP metadata is not usable: {e}") from e
        idp = parsed.get("idp")
        if not isinstance(idp, dict) or "singleSignOnService" not in idp:
            raise SamlError("the SAML IdP metadata names no single sign-on service")
        self._idp = (now + METADATA_TTL, idp)
        return idp

    def settings(self, base_url: str, with_idp: bool = True) -> dict[str, Any]:
        entity_id = self.entity_id or f"{base_url}/saml/metadata"
        return {
            "strict": True,
            "debug": False,
            "sp": {
                "entityId": entity_id,
                "assertionConsumerService": {
                    "url": f"{base_url}/saml/acs",
                    "binding": POST_BINDING,
                },
                "NameIDFormat": "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
                "x509cert": "",
                "privateKey": "",
            },
            "idp": self.idp()
            if with_idp
            else {"entityId": "", "singleSignOnService": {"url": ""}, "x509cert": ""},
            "security": {
                "wantAssertionsSigned": True,
                "wantMessagesSigned": False,
                "wantNameId": True,
                "authnRequestsSigned": False,
                "rejectDeprecatedAlgorithm": True,
                "requestedAuthnContext": False,
            },
        }

    def metadata(self, base_url: str) -> str:
        """Our SP metadata XML, for the IdP's administrator."""
        from onelogin.saml2.settings import OneLogin_Saml2_Settings  # noqa: PLC0415

        settings = OneLogin_Saml2_Settings(
            self.settings(base_url, with_idp=False), sp_validation_only=True
        )
        xml = settings.get_sp_metadata()
        return xml.decode() if isinstance(xml, bytes) else str(xml)

    # -- the flow ------------------------------------------------------------------------

    def login_url(self, base_url: str, info: RequestInfo, relay_state: str) -> tuple[str, str]:
        """(URL to send the browser to, the AuthnRequest id to remember)."""
        from onelogin.saml2.auth import OneLogin_Saml2_Auth  # noqa: PLC0415

        try:
            auth = OneLogin_Saml2_Auth(info.as_dict(), self.settings(base_url))
            url = auth.login(return_to=relay_state)
        except SamlError:
            raise
        except Exception as e:
            raise SamlError(f"cannot start SAML sign-in: {e}") from e
        return str(url), str(auth.get_last_request_id())

    def consume(self, base_url: str, info: RequestInfo) -> tuple[SamlIdentity, str]:
        """Check a posted SAMLResponse; (who it signs in, the request id it answers).
        Raises SamlError. The caller must check (and consume) the request id."""
        from onelogin.saml2.auth import OneLogin_Saml2_Auth  # noqa: PLC0415

        try:
            auth = OneLogin_Saml2_Auth(info.as_dict(), self.settings(base_url))
            auth.process_response()
        except SamlError:
            raise
        except Exception as e:
            raise SamlError(f"the SAML response is not valid: {e}") from e
        errors = auth.get_errors()
        if errors or not auth.is_authenticated():
            reason = auth.get_last_error_reason() or ", ".join(errors) or "not authenticated"
            raise SamlError(f"the SAML response is not valid: {reason}")
        answers = auth.get_last_response_in_response_to()
        if not answers:
            raise SamlError("unsolicited SAML responses are not accepted; start at Berth")
        attributes: dict[str, list[str]] = auth.get_attributes() or {}
        name_id = str(auth.get_nameid() or "")
        return self._identity(name_id, attributes), str(answers)

    def _identity(self, name_id: str, attributes: dict[str, list[str]]) -> SamlIdentity:
        def first(attribute: str) -> str | None:
            values = attributes.get(attribute) if attribute else None
            return str(values[0]) if values else None

        raw = first(self.username_attribute) or name_id.split("@", 1)[0]
        name = normalize_component(raw) if raw else ""
        if not name:
            raise SamlError("the SAML assertion names no user")
        email = first(self.email_attribute) or (name_id if "@" in name_id else None)
        groups = frozenset(str(g) for g in attributes.get(self.groups_attribute, []) or [])
        return SamlIdentity(name, email, first(self.name_attribute), groups, name_id)

    def roles_for(self, who: SamlIdentity) -> tuple[dict[str, str], bool]:
        """(namespace → highest mapped role, admin?) for the user's groups."""
        return mapped_roles(self.group_roles, who.groups)


def remember_request(tx: Tx, request_id: str, now: float) -> None:
    records.drop_expired_saml_requests(tx, now)
    records.insert_saml_request(tx, request_id, now, now + REQUEST_TTL)


def consume_request(tx: Tx, request_id: str, now: float) -> bool:
    """Whether `request_id` was ours and still pending; it is pending no more."""
    expires = records.take_saml_request(tx, request_id)
    return expires is not None and expires >= now


def sign_in_user(tx: Tx, provider: SamlProvider, who: SamlIdentity, now: float) -> UserRecord:
    """Create or update the SAML user's record and apply their group roles (in `tx`)."""
    from appliance.auth.service import apply_ldap_roles  # noqa: PLC0415

    roles, admin = provider.roles_for(who)
    has_admin_rule = any(r.role == "admin" for r in provider.group_roles)
    user = identity.user_by_name(tx, who.name)
    if user is None:
        try:
            user = identity.create_user(
                tx,
                who.name,
                now,
                source="saml",
                email=who.email,
                display_name=who.display_name,
                external_id=who.name_id,
                admin=admin and has_admin_rule,
            )
        except Conflict as e:
            raise SamlError(f"cannot create the account {who.name!r}: {e.message}") from e
        audit.record(tx, "system", "user.create", who.name, at=now, source="saml")
    elif user.source != "saml":
        raise SamlError(
            f"the account {who.name!r} exists and signs in with {user.source}, not SAML"
        )
    else:
        fields: dict[str, object] = {
            "email": who.email,
            "display_name": who.display_name,
            "external_id": who.name_id,
        }
        if has_admin_rule:
            fields["is_admin"] = admin
        user = identity.update_user(tx, who.name, **fields)
    if user.disabled:
        raise SamlError(f"the account {who.name!r} is disabled")
    apply_ldap_roles(tx, user, roles, now, source="saml")
    identity.update_user(tx, user.name, last_login_at=now)
    audit.record(tx, user.name, "signin.success", user.name, at=now, via="saml")
    return user


def provider_from_config(config: Config) -> SamlProvider | None:
    url = config["saml.idp_metadata_url"]
    path = config["saml.idp_metadata_file"]
    if not url and not path:
        return None
    if url and path:
        raise ConfigError("set saml.idp_metadata_url or saml.idp_metadata_file, not both")
    try:
        roles = parse_group_roles(config["saml.group_roles"])
    except ConfigError as e:
        raise ConfigError(str(e).replace("ldap.group_roles", "saml.group_roles")) from e
    return SamlProvider(
        metadata_url=url,
        metadata_file=path,
        entity_id=config["saml.sp_entity_id"],
        username_attribute=config["saml.username_attribute"],
        email_attribute=config["saml.email_attribute"],
        name_attribute=config["saml.name_attribute"],
        groups_attribute=config["saml.groups_attribute"],
        group_roles=roles,
    )
