"""Where webhook events go: the endpoints of the configuration and of namespaces (registered,
listed, removed, each change audited), and where a namespace's endpoint may point.

A namespace's maintainer chooses its URL, so delivery resolves it and refuses any address inside
the network Berth runs in (loopback, private, link-local where cloud metadata answers, ...):
`check_target` decides, `pinned_request` sends the request to the address it checked. The
endpoints of the configuration are the operator's own and may point anywhere.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from appliance.config import Config
from appliance.errors import BerthError, ConfigError, NotFound
from appliance.metadata import audit
from appliance.metadata.db import Tx
from appliance.metadata.events import ACTIONS
from appliance.webhooks import records


@dataclass(frozen=True)
class Endpoint:
    """Where events go. `key` names it in the cursor and delivery tables; `namespace` None:
    every event of the instance."""

    key: str
    url: str
    secret: str
    actions: frozenset[str]
    namespace: str | None = None
    id: int | None = None


def config_endpoints(config: Config) -> list[Endpoint]:
    """The instance-wide endpoints of `webhooks.endpoints` (URLs separated by spaces or
    commas), all signed with `webhooks.secret`."""
    secret = config["webhooks.secret"]
    actions = parse_actions(config["webhooks.actions"])
    out = []
    for url in re.split(r"[\s,]+", config["webhooks.endpoints"].strip()):
        if url:
            check_url(url)
            key = "config:" + hashlib.sha256(url.encode()).hexdigest()[:16]
            out.append(Endpoint(key, url, secret, actions))
    return out


def parse_actions(text: str) -> frozenset[str]:
    actions = frozenset(a.strip() for a in text.split(",") if a.strip())
    unknown = actions - set(ACTIONS)
    if unknown or not actions:
        raise ConfigError(f"webhook actions must be some of {', '.join(ACTIONS)}, not {text!r}")
    return actions


def check_url(url: str) -> str:
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"a webhook endpoint must be an http(s):// URL, not {url[:200]!r}")
    return url


# -- where namespace endpoints may point ----------------------------------------------------

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
"""Resolves a host name (and port) to its addresses, blocking; raises OSError when it cannot.
Delivery takes it as a parameter, so tests can answer what DNS would (a rebinding name)."""

# Ranges `ipaddress`'s `is_global` calls global (in the Python versions Berth runs on) that a
# webhook must not reach: what they lead to is not a public host, or is decided by routing
# the host may have (a 6to4 tunnel turns 2002:7f00:1:: into 127.0.0.1).
_ALSO_INTERNAL = (
    (ipaddress.ip_network("192.0.0.0/24"), "IETF protocol assignments (192.0.0.0/24)"),
    (ipaddress.ip_network("192.88.99.0/24"), "the 6to4 relay range (192.88.99.0/24)"),
    (ipaddress.ip_network("2002::/16"), "a 6to4 address (2002::/16)"),
    (ipaddress.ip_network("64:ff9b:1::/48"), "local-use NAT64 (64:ff9b:1::/48)"),
    (ipaddress.ip_network("fec0::/10"), "site-local (fec0::/10)"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64: an IPv4 address inside
_SHARED = ipaddress.ip_network("100.64.0.0/10")


def internal_reason(address: Address) -> str | None:
    """Why a namespace's webhook may not call `address`, or None when it is a public address.
    IPv4 inside IPv6 (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) is judged by the
    IPv4 address it reaches; everything else must be `is_global` and in none of the ranges
    `is_global` misses (6to4, multicast, ...)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped
        if inner is None and address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None:
            why = internal_reason(inner)
            return None if why is None else f"{why}, as {inner}"
    for network, name in _ALSO_INTERNAL:
        if address in network:
            return name
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:  # IPv4-compatible IPv6 (::a.b.c.d) among them
        return "reserved"
    if address.is_global:
        return None
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (where cloud metadata services answer)"
    if address.is_unspecified:
        return "unspecified"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED:
        return "shared address space (100.64.0.0/10: carrier-grade NAT, some cloud metadata)"
    if address.is_private:
        return "private"
    return "not globally reachable"


class TargetRefused(BerthError):
    """A namespace's webhook URL leads to an address it may not call (`internal`), or its
    host cannot be resolved."""

    def __init__(self, message: str, *, internal: bool = False) -> None:
        super().__init__(message)
        self.internal = internal


def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, each once, in its order."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve(url: str, resolver: Resolver = system_resolver) -> list[Address]:
    """The addresses of `url`'s host: itself when it is one, else what `resolver` answers.
    Raises TargetRefused when it cannot be resolved. Blocking."""
    parts = httpx.URL(url)
    try:
        return [ipaddress.ip_address(parts.host)]
    except ValueError:
        pass
    try:
        found = resolver(parts.host, parts.port or (443 if parts.scheme == "https" else 80))
        addresses = [ipaddress.ip_address(a) for a in found]
    except (OSError, UnicodeError, ValueError) as e:
        raise TargetRefused(f"cannot resolve {parts.host[:100]!r}: {e}") from None
    if not addresses:
        raise TargetRefused(f"{parts.host[:100]!r} has no address")
    return addresses


def check_target(url: str, resolver: Resolver = system_resolver) -> str:
    """The address to connect to for `url`: its host resolved once and every address it has
    checked (one internal address refuses the name: DNS may answer either). Raises
    TargetRefused naming the address and why. Blocking (resolves)."""
    addresses = resolve(url, resolver)
    for address in addresses:
        why = internal_reason(address)
        if why is not None:
            host = httpx.URL(url).host
            shown = "the URL" if host == str(address) else host[:100]
            raise TargetRefused(
                f"{shown} leads to {address}, an internal address ({why})", internal=True
            )
    return str(addresses[0])


def private_target(url: str, resolver: Resolver = system_resolver) -> str | None:
    """Why `url` may not be a namespace's webhook target (it leads to a loopback, private,
    link-local or otherwise internal address: a maintainer must not make Berth call into the
    network it runs in, or a cloud metadata service), or None. Blocking: resolves the host."""
    try:
        check_target(url, resolver)
    except TargetRefused as e:
        return e.message
    return None


def pinned_request(url: str, address: str) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """The request for `url` sent to `address` (checked), not to whatever the name resolves
    to when the connection is made: the URL with the address as its host, the `Host` header
    of the original name, and (https) the name for TLS SNI and certificate checking."""
    parts = httpx.URL(url)
    extensions: dict[str, Any] = {}
    if parts.scheme == "https":
        extensions["sni_hostname"] = parts.host
    return parts.copy_with(host=address), {"host": parts.netloc.decode("ascii")}, extensions


def namespace_endpoints(tx: Tx, namespace: str | None = None) -> list[Endpoint]:
    """Endpoints registered for namespaces (one namespace, or all)."""
    return [
        Endpoint(f"ns:{r[0]}", r[1], r[2], parse_actions(r[3]), r[4], int(r[0]))
        for r in records.endpoint_rows(tx, namespace)
    ]


def endpoint_listing(tx: Tx, namespace: str) -> list[dict[str, Any]]:
    """The namespace's endpoints as the management API lists them: the URL redacted, and each
    one's delivery state (how far delivered, failures, next attempt, last error)."""
    states = records.cursor_states(tx)
    out = []
    for e in namespace_endpoints(tx, namespace):
        state = states.get(e.key)
        out.append(
            {
                "id": e.id,
                "url": redact_url(e.url),
                "actions": ",".join(sorted(e.actions)),
                "delivered_through": state[0] if state else None,
                "failures": state[1] if state else 0,
                "next_attempt_at": state[2] if state else None,
                "last_error": state[3] if state else None,
            }
        )
    return out


def add_endpoint(
    tx: Tx, actor: str, namespace: str, url: str, *, actions: str, secret: str | None = None
) -> tuple[int, str]:
    """Register an endpoint for `namespace` (audited); returns its id and signing secret.
    Delivery starts with the events queued after this."""
    check_url(url)
    parse_actions(actions)
    secret = secret or secrets.token_urlsafe(32)
    endpoint_id = records.insert_endpoint(tx, actor, namespace, url, actions=actions, secret=secret)
    audit.record(
        tx,
        actor,
        "webhook.create",
        f"{namespace}/{endpoint_id}",
        url=redact_url(url),
        actions=actions,
    )
    return endpoint_id, secret


def remove_endpoint(tx: Tx, actor: str, namespace: str, endpoint_id: int) -> None:
    url = records.delete_endpoint(tx, namespace, endpoint_id)
    if url is None:
        raise NotFound(f"webhook {endpoint_id} is not registered for namespace {namespace}")
    audit.record(tx, actor, "webhook.delete", f"{namespace}/{endpoint_id}", url=redact_url(url))


def redact_url(url: str) -> str:
    """`url` without user information or query (either may carry a credential)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}"
