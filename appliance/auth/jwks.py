"""Other issuers' signing keys, and the check of a JWT they signed (OpenID Connect providers,
CI systems such as GitLab CI, GitHub Actions and Forgejo Actions).

- Keys come from the issuer's discovery document (`<issuer>/.well-known/openid-configuration`,
  whose `issuer` must equal the one asked for) and its `jwks_uri`, or from a JWKS document
  given as a file for offline sites. joserfc imports them; Authlib checks the discovery
  metadata. Only public asymmetric signing keys are kept (RSA of 2048 bits or more, EC P-256,
  P-384, P-521, Ed25519/Ed448): a JWKS that carries private or symmetric key material is
  refused whole.
- Every fetch is bounded: https only (http only on a loopback address, and only when the
  caller allows it for a test setup), no redirects, `FETCH_TIMEOUT` seconds in all and
  `FETCH_LIMIT` bytes.
- `IssuerKeys` caches each issuer's keys for `ttl` seconds. A token naming a key id the cache
  lacks triggers a fetch, but at most one per `refresh_interval` per issuer (so a stream of
  made-up key ids cannot make Berth hammer an issuer), and concurrent callers share one fetch.
  When a fetch fails the keys last fetched stay in use for up to `STALE_LIMIT`.
- `verify()` accepts only an algorithm the key's type allows (RS*/PS* for RSA, ES* matching
  an EC key's curve, EdDSA for OKP; the key's own `alg` when it names one): `none`, HMAC and
  algorithm confusion (HS256 keyed with a public key) are refused before any signature check.
  Claims (time window, audience, ...) are the caller's to check.

httpx and joserfc errors stay in here: callers see `ForeignTokenError` and `KeysUnavailable`.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeySet, OKPKey, RSAKey

from appliance.errors import BerthError

FETCH_TIMEOUT = 10.0
FETCH_LIMIT = 256 * 1024
TOKEN_LIMIT = 16 * 1024  # characters of a JWT worth looking at
STALE_LIMIT = 86400.0
WELL_KNOWN = "/.well-known/openid-configuration"
RSA_MIN_BITS = 2048
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_OKP_ALGORITHMS = frozenset({"EdDSA", "Ed25519", "Ed448"})
ASYMMETRIC = _RSA_ALGORITHMS | frozenset(_EC_ALGORITHMS.values()) | _OKP_ALGORITHMS


class KeysUnavailable(BerthError):
    """An issuer's discovery document or keys could not be fetched or are not usable."""


class ForeignTokenError(BerthError):
    """A JWT from another issuer that Berth does not accept; the message says why."""


class UnknownKey(ForeignTokenError):
    """The token names a key id the issuer's current keys do not hold."""


# -- URLs and bounded fetches ------------------------------------------------------------------


def check_url(url: str, *, allow_http_loopback: bool = False, what: str = "URL") -> str:
    """`url` if Berth may fetch it: https with a host, or http on a loopback address when
    `allow_http_loopback`; no user information or fragment. Raises KeysUnavailable."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise KeysUnavailable(f"the {what} {url[:200]!r} is not a URL") from None
    if not host or parts.username or parts.password or parts.fragment:
        raise KeysUnavailable(f"the {what} {url[:200]!r} is not an absolute URL with a host")
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and allow_http_loopback and is_loopback(host):
        return url
    if parts.scheme == "http" and is_loopback(host):
        raise KeysUnavailable(
            f"the {what} {url[:200]!r} is plain http: only https is accepted (http on a "
            "loopback address needs the explicit test setting)"
        )
    raise KeysUnavailable(f"the {what} {url[:200]!r} must be https")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


async def fetch_json(
    client: httpx.AsyncClient,
    url: str,
    *,
    method: str = "GET",
    content: str | None = None,
    headers: Mapping[str, str] | None = None,
    limit: int = FETCH_LIMIT,
) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request, reading at most `limit` bytes within
    `FETCH_TIMEOUT` seconds and following no redirect. Raises KeysUnavailable when the server cannot
    be reached, answers too much or too slowly, or not in JSON. Cancellation leaves nothing
    behind (the response is closed)."""
    body = bytearray()
    try:
        with trio.fail_after(FETCH_TIMEOUT):
            request = client.build_request(method, url, content=content, headers=headers)
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > limit:
                        raise KeysUnavailable(f"{url[:200]} answered more than {limit} bytes")
            finally:
                await response.aclose()
    except trio.TooSlowError:
        raise KeysUnavailable(f"{url[:200]} did not answer within {FETCH_TIMEOUT:g} s") from None
    except httpx.HTTPError as e:
        raise KeysUnavailable(f"cannot reach {url[:200]}: {type(e).__name__}: {e}") from None
    try:
        return response.status_code, json.loads(bytes(body))
    except ValueError:
        raise KeysUnavailable(
            f"{url[:200]} answered {response.status_code} with something other than JSON"
        ) from None


def new_client() -> httpx.AsyncClient:
    """The HTTP client for issuers: TLS verified, no redirects, no proxy from the environment
    (issuers are reached directly), bounded time per phase as well as in all."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(FETCH_TIMEOUT),
        follow_redirects=False,
        trust_env=False,
        headers={"accept": "application/json"},
    )


# -- keys ------------------------------------------------------------------------------------


def key_algorithms(key: Key) -> frozenset[str]:
    """The signature algorithms a public key may verify: by key type (and curve), narrowed
    to the key's own `alg` when it names one."""
    if isinstance(key, RSAKey):
        allowed = _RSA_ALGORITHMS
    elif isinstance(key, ECKey):
        alg = _EC_ALGORITHMS.get(key.curve_name)
        allowed = frozenset({alg} if alg else ())
    elif isinstance(key, OKPKey):
        allowed = _OKP_ALGORITHMS if key.curve_name in ("Ed25519", "Ed448") else frozenset()
    else:
        allowed = frozenset()
    named = key.alg
    if named:
        allowed = allowed & {named}
    return allowed


def parse_key_set(document: object) -> KeySet:
    """The public signing keys of a JWKS document. Raises KeysUnavailable for anything else:
    not a JWKS, private or symmetric key material, weak RSA keys, no usable key."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeysUnavailable('a JWKS is a JSON object with a "keys" array')
    keys: list[Key] = []
    for raw in document["keys"]:
        if not isinstance(raw, dict):
            raise KeysUnavailable("a JWKS key must be a JSON object")
        if raw.get("kty") == "oct" or "d" in raw or "k" in raw:
            raise KeysUnavailable(
                "the JWKS holds private or symmetric key material: give the public keys only"
            )
        if raw.get("use", "sig") != "sig" or raw.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # encryption keys and key types Berth does not verify with
        try:
            key = KeySet.import_key_set({"keys": [raw]}).keys[0]
        except (JoseError, ValueError, TypeError) as e:
            raise KeysUnavailable(f"a JWKS key is not usable: {e}") from None
        if isinstance(key, RSAKey) and key.raw_value.key_size < RSA_MIN_BITS:
            raise KeysUnavailable(f"an RSA key of the JWKS is shorter than {RSA_MIN_BITS} bits")
        if key_algorithms(key):
            keys.append(key)
    if not keys:
        raise KeysUnavailable("the JWKS holds no public signing key Berth can use")
    return KeySet(keys)


@dataclass(frozen=True)
class Verified:
    """A JWT whose signature checked out: its header and claims (not yet checked)."""

    header: dict[str, Any]
    claims: dict[str, Any]


def peek(token: str) -> Verified:
    """The header and claims of `token` WITHOUT checking anything (to find its issuer and key
    id). Raises ForeignTokenError when it is not a compact JWS carrying a JSON object."""
    if len(token) > TOKEN_LIMIT or token.count(".") != 2:
        raise ForeignTokenError("not a JSON Web Token")
    try:
        obj = jws.extract_compact(token.encode("ascii"))
        claims = json.loads(obj.payload)
    except (JoseError, ValueError, UnicodeError) as e:
        raise ForeignTokenError(f"not a JSON Web Token: {e}") from None
    header = dict(obj.headers())
    if not isinstance(claims, dict):
        raise ForeignTokenError("the token's payload is not a JSON object")
    return Verified(header, claims)


def verify(token: str, keys: KeySet, header: dict[str, Any] | None = None) -> Verified:
    """Check the signature of `token` with the issuer's `keys` (`header`: its header, when the
    caller has peeked already). Raises UnknownKey when the token names a key id `keys` lacks,
    ForeignTokenError for anything else wrong."""
    if header is None:
        header = peek(token).header
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ASYMMETRIC:
        raise ForeignTokenError(
            f"the token's algorithm {str(alg)[:20]!r} is not accepted (asymmetric signatures only)"
        )
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ForeignTokenError("the token's key id is not a string")
    if kid is None:
        candidates = [k for k in keys if alg in key_algorithms(k)]
        if len(candidates) != 1:
            raise UnknownKey("the token names no key id, and the issuer has several keys")
        key = candidates[0]
    else:
        found = [k for k in keys if k.kid == kid]
        if not found:
            raise UnknownKey(f"the issuer has no key {kid[:64]!r}")
        key = found[0]
    if alg not in key_algorithms(key):
        raise ForeignTokenError(f"the key {key.kid!r} does not sign with {alg}")
    try:
        decoded = jwt.decode(token, key, algorithms=[alg])
    except JoseError as e:
        raise ForeignTokenError(f"the token's signature is not valid: {e.description}") from None
    return Verified(dict(decoded.header), dict(decoded.claims))


# -- discovery and the cache -------------------------------------------------------------------


def check_discovery(
    document: object, issuer: str, *, full: bool, allow_http: bool
) -> dict[str, Any]:
    """A provider's discovery document, checked: its `issuer` is exactly `issuer` and its URLs
    are ones Berth may use. `full`: the whole OpenID Provider metadata (sign-in needs the
    authorization and token endpoints); otherwise only what key discovery needs (CI systems
    publish a short document). Raises KeysUnavailable."""
    from authlib.oidc.discovery import OpenIDProviderMetadata  # noqa: PLC0415

    if not isinstance(document, dict):
        raise KeysUnavailable("the discovery document is not a JSON object")
    if document.get("issuer") != issuer:
        raise KeysUnavailable(
            f"the discovery document names issuer {str(document.get('issuer'))[:200]!r}, "
            f"not {issuer!r}"
        )
    metadata = OpenIDProviderMetadata(document)
    try:
        if full:
            metadata.validate()
        else:
            metadata.validate_issuer()
            metadata.validate_jwks_uri()
    except ValueError as e:
        raise KeysUnavailable(f"the discovery document is not valid: {e}") from None
    urls = ["jwks_uri"]
    if full:
        urls += ["authorization_endpoint", "token_endpoint", "userinfo_endpoint"]
        urls += ["end_session_endpoint"]
    check_url(issuer, allow_http_loopback=allow_http, what="issuer")
    for name in urls:
        value = document.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise KeysUnavailable(f"the discovery document's {name} is not a string")
            check_url(value, allow_http_loopback=allow_http, what=name)
    return dict(document)


@dataclass
class _Entry:
    discovery: dict[str, Any] | None = None
    from_file: bool = False  # the discovery document was given, not fetched
    keys: KeySet | None = None
    fetched_at: float = -1e18  # when `keys` (and a fetched discovery document) were fetched
    attempted_at: float = -1e18  # when a fetch was last tried
    error: str | None = None
    lock: trio.Lock = field(default_factory=trio.Lock)


@dataclass(frozen=True)
class KeyStatus:
    """What the cache knows of one issuer (for the Status page)."""

    issuer: str
    keys: int
    fetched_at: float | None
    error: str | None


class IssuerKeys:
    """Each issuer's discovery document and keys, fetched on demand and cached.

    `full`: check discovery documents as OpenID Provider metadata (sign-in); otherwise only
    what finding the keys needs (CI systems). `allow_http`: accept http on loopback addresses
    (test setups). Sign-in providers and CI trust each have their own cache, so a document
    checked for one use is never taken for the other.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        ttl: float = 3600.0,
        refresh_interval: float = 60.0,
        full: bool = False,
        allow_http: bool = False,
        client_factory: Callable[[], httpx.AsyncClient] = new_client,
    ) -> None:
        self.clock = clock
        self.ttl = ttl
        self.refresh_interval = refresh_interval
        self.full = full
        self.allow_http = allow_http
        self.client_factory = client_factory
        self._entries: dict[str, _Entry] = {}
        self.fetches = 0  # discovery and JWKS documents fetched (for tests and the Status page)

    def _entry(self, issuer: str) -> _Entry:
        entry = self._entries.get(issuer)
        if entry is None:
            if len(self._entries) > 1000:  # issuers come from settings and rules: few
                self._entries = {i: e for i, e in self._entries.items() if e.from_file}
            entry = self._entries[issuer] = _Entry()
        return entry

    def status(self) -> list[KeyStatus]:
        return [
            KeyStatus(
                issuer,
                len(e.keys.keys) if e.keys is not None else 0,
                e.fetched_at if e.keys is not None else None,
                e.error,
            )
            for issuer, e in sorted(self._entries.items())
        ]

    def preload(self, issuer: str, discovery: object) -> None:
        """Use this discovery document (read from a file) for `issuer` instead of fetching
        it; the keys are still fetched from its jwks_uri. Raises KeysUnavailable."""
        entry = self._entry(issuer)
        entry.discovery = check_discovery(
            discovery, issuer, full=self.full, allow_http=self.allow_http
        )
        entry.from_file = True

    async def discovery(self, issuer: str) -> dict[str, Any]:
        """The issuer's checked discovery document. Raises KeysUnavailable."""
        entry = self._entry(issuer)
        if entry.discovery is None or (
            not entry.from_file and self.clock() >= entry.fetched_at + self.ttl
        ):
            await self._fetch_when_due(issuer, entry)
        if entry.discovery is None:
            raise KeysUnavailable(entry.error or f"no discovery document for {issuer}")
        return entry.discovery

    def cached(self, issuer: str, kid: str | None = None) -> KeySet | None:
        """The issuer's keys if they are fresh and hold `kid` (no fetch, no waiting)."""
        entry = self._entries.get(issuer)
        if entry is None or entry.keys is None or self.clock() >= entry.fetched_at + self.ttl:
            return None
        if kid is not None and not any(k.kid == kid for k in entry.keys):
            return None
        return entry.keys

    async def keys(self, issuer: str, kid: str | None = None) -> KeySet:
        """The issuer's keys; fetched again when older than `ttl` or lacking `kid`, but at
        most once per `refresh_interval`. Raises KeysUnavailable."""
        entry = self._entry(issuer)
        fresh = entry.keys is not None and self.clock() < entry.fetched_at + self.ttl
        known = entry.keys is not None and (kid is None or any(k.kid == kid for k in entry.keys))
        if not (fresh and known):
            await self._fetch_when_due(issuer, entry)
        if entry.keys is None or self.clock() >= entry.fetched_at + STALE_LIMIT:
            raise KeysUnavailable(entry.error or f"no keys for {issuer}")
        return entry.keys

    async def _fetch_when_due(self, issuer: str, entry: _Entry) -> None:
        """Fetch unless a fetch was tried less than `refresh_interval` ago; concurrent callers
        wait for the fetch under way and share its result."""
        seen = entry.attempted_at
        if entry.lock.locked():
            async with entry.lock:
                return  # another task was fetching: its result is in `entry` now
        if self.clock() < seen + self.refresh_interval:
            return
        async with entry.lock:
            if entry.attempted_at != seen:
                return  # fetched by another task while this one waited
            entry.attempted_at = self.clock()
            try:
                discovery, keys = await self._fetch(issuer, entry)
            except KeysUnavailable as e:
                entry.error = e.message
                return
            entry.discovery = discovery
            entry.keys = keys
            entry.fetched_at = self.clock()
            entry.error = None

    async def _fetch(self, issuer: str, entry: _Entry) -> tuple[dict[str, Any], KeySet]:
        async with self.client_factory() as client:
            discovery = entry.discovery
            if discovery is None or not entry.from_file:
                discovery = await self._discover(client, issuer)
            url = check_url(
                str(discovery.get("jwks_uri", "")),
                allow_http_loopback=self.allow_http,
                what="jwks_uri",
            )
            self.fetches += 1
            status, document = await fetch_json(client, url)
        if status != 200:
            raise KeysUnavailable(f"{url[:200]} answered {status}")
        return discovery, parse_key_set(document)

    async def _discover(self, client: httpx.AsyncClient, issuer: str) -> dict[str, Any]:
        url = check_url(
            issuer.rstrip("/") + WELL_KNOWN, allow_http_loopback=self.allow_http, what="issuer"
        )
        self.fetches += 1
        status, document = await fetch_json(client, url)
        if status != 200:
            raise KeysUnavailable(f"{url[:200]} answered {status}")
        return check_discovery(document, issuer, full=self.full, allow_http=self.allow_http)
