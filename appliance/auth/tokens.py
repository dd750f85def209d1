"""Registry bearer tokens: ES256 JWTs signed with the registry's own keys, and their check.

The signing keys live in the metadata database (`signing_keys`), each private key sealed with
AES-256-GCM under a key derived from the server secret every host shares (auth/secrets.py), so
every host signs and verifies with the same keys and the database alone signs nothing. The
newest key signs, once it is `PUBLISH_DELAY` seconds old (until then the one before it does:
every host has heard of a key before any token signed with it reaches one); every key in the
table verifies. `berth keys rotate` (from any host) adds a key and drops keys whose successor
is older than the overlap (the token lifetime plus a margin), so tokens signed just before a
rotation stay valid until they expire. Each process keeps the keys in memory and reads them
again when the `keys` change stamp moves (metadata/changes.py): a rotation reaches every host
within milliseconds. Keys an older Berth kept in `<data_dir>/keys/*.pem` are imported once, at
start, and their files removed, so tokens issued before the upgrade keep verifying.

`TokenVerifier.verify()` is on the hot path of every registry request: the signature is checked
once per distinct token and the decoded claims cached; each call after that is a dictionary
lookup plus a time-window check against the injected clock. A token also names, in the
private claim `crd`, the credential it was minted with (`auth/credentials.py`); the registry's
guard checks on every request that it still works.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.auth import records
from appliance.auth.records import stored_keys
from appliance.auth.secrets import ServerSecret
from appliance.errors import BerthError
from appliance.metadata import audit
from appliance.metadata.changes import KEYS
from appliance.metadata.db import Database, Tx

log = logging.getLogger("berth.auth")

ALGORITHM = "ES256"
CACHE_LIMIT = 20_000
PUBLISH_DELAY = 2.0  # seconds a new key is known before it signs
RELOAD_EVERY = 1.0  # at most one unprompted reload a second for a token naming an unknown key


class InvalidToken(BerthError):
    """The token is malformed, forged, for someone else, or outside its time window."""


class ExpiredToken(InvalidToken):
    pass


class UnknownKey(InvalidToken):
    """The token names a key this process does not hold (forged, or a key it has not read)."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    created: int
    private: ec.EllipticCurvePrivateKey

    @property
    def public(self) -> ec.EllipticCurvePublicKey:
        return self.private.public_key()


def _kid(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _context(kid: str) -> str:
    return f"signing key {kid}"  # a sealed key opens only under its own kid


def _insert(tx: Tx, kid: str, created: float, sealed: str) -> bool:
    added = records.insert_signing_key(tx, kid, created, sealed)
    if added:
        tx.touch(KEYS)
    return added


class KeyRing:
    """The signing keys of the database, as this process last read them (see the module
    docstring). `clock` is the wall clock key ages are measured on."""

    def __init__(
        self, db: Database, secret: ServerSecret, clock: Callable[[], float], overlap: float
    ) -> None:
        self.db = db
        self.secret = secret
        self.clock = clock
        self.overlap = overlap
        self.keys: list[SigningKey] = []
        self._stamp: int | None = None
        self._loaded_at = -float("inf")  # time.monotonic() of the last read
        self._opened: dict[str, SigningKey] = {}  # kid -> key: each key is unsealed once

    # -- reading -----------------------------------------------------------------------------

    def _set(self, rows: list[tuple[str, float, str]], stamp: int) -> None:
        keys = []
        for kid, created, sealed in rows:
            key = self._opened.get(kid)
            if key is None:
                der = self.secret.unseal(sealed, _context(kid))  # raises SealBroken
                private = serialization.load_der_private_key(der, password=None)
                if not isinstance(private, ec.EllipticCurvePrivateKey) or _kid(private) != kid:
                    raise BerthError(
                        f"signing key {kid} in the database is not an EC key of its id"
                    )
                key = self._opened[kid] = SigningKey(kid, int(created), private)
            keys.append(key)
        self._opened = {k.kid: k for k in keys}
        self.keys = keys
        self._stamp = stamp
        self._loaded_at = time.monotonic()

    def load_sync(self) -> None:
        """Read the keys (blocking). Raises SealBroken when this host's secret is not the one
        that sealed them."""
        stamp = self.db.changes.stamp(KEYS)  # before the read
        self._set(self.db.run_sync_read(stored_keys), stamp)

    async def reload(self) -> None:
        stamp = self.db.changes.stamp(KEYS)
        self._set(await self.db.read(stored_keys), stamp)

    async def refresh(self) -> None:
        """Read the keys again if a rotation anywhere may have changed them."""
        if self._stamp != self.db.changes.stamp(KEYS):
            await self.reload()

    async def reload_for_unknown(self) -> bool:
        """A token names a key this process does not hold: read the keys again when they may
        have changed, or at most once every `RELOAD_EVERY` seconds otherwise (a flood of
        forged key ids costs at most that). Returns whether it read them."""
        unchanged = self._stamp == self.db.changes.stamp(KEYS)
        if unchanged and time.monotonic() - self._loaded_at < RELOAD_EVERY:
            return False
        await self.reload()
        return True

    # -- changing ----------------------------------------------------------------------------

    def _sealed_new_key(self) -> tuple[SigningKey, str]:
        private = ec.generate_private_key(ec.SECP256R1())
        kid = _kid(private)
        return SigningKey(kid, 0, private), self.secret.seal(_pkcs8(private), _context(kid))

    def ensure_sync(self) -> None:
        """Load the keys, making the first one if there is none (blocking)."""
        key, sealed = self._sealed_new_key()
        now = self.clock()

        def fn(tx: Tx) -> None:
            if records.count_signing_keys(tx) == 0:
                _insert(tx, key.kid, now, sealed)

        self.db.run_sync_write(fn)
        self.load_sync()

    def rotate_sync(self, actor: str = "system") -> SigningKey:
        """Add a new signing key; drop keys superseded more than `overlap` seconds ago
        (blocking, audited). Returns the new key."""
        key, sealed = self._sealed_new_key()
        now = self.clock()

        def fn(tx: Tx) -> None:
            rows = stored_keys(tx)
            created = max([now, *[at + 1 for _, at, _ in rows]])
            _insert(tx, key.kid, created, sealed)
            dates = [(kid, at) for kid, at, _ in rows] + [(key.kid, created)]
            dropped = [
                older
                for (older, _), (_, successor) in itertools.pairwise(dates)
                if successor + self.overlap < now
            ]
            for kid in dropped:
                records.delete_signing_key(tx, kid)
            tx.touch(KEYS)
            audit.record(tx, actor, "keys.rotate", key.kid, at=now, dropped=dropped)

        self.db.run_sync_write(fn)
        self.load_sync()
        return next(k for k in self.keys if k.kid == key.kid)

    def import_directory(self, directory: Path) -> int:
        """Copy the `<created>-<kid>.pem` keys an older Berth kept in `directory` into the
        database (blocking); returns how many were new. The files stay: during a rolling
        upgrade a host of the previous version still signs with them, and the tokens it signs
        must verify here too (removing them is a contract step, left to the administrator once
        every host runs this version)."""
        found: list[tuple[str, float, str]] = []
        files = sorted(directory.glob("*.pem")) if directory.is_dir() else []
        for path in files:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(private, ec.EllipticCurvePrivateKey):
                raise BerthError(f"{path} is not an EC private key")
            created = path.stem.partition("-")[0]
            at = float(created) if created.isdigit() else path.stat().st_mtime
            kid = _kid(private)
            found.append((kid, at, self.secret.seal(_pkcs8(private), _context(kid))))
        if not found:
            return 0

        def fn(tx: Tx) -> int:
            return sum(_insert(tx, kid, at, sealed) for kid, at, sealed in found)

        added: int = self.db.run_sync_write(fn)
        if added:
            log.warning(
                "copied %d signing key(s) from %s into the database (sealed with the server "
                "secret); remove the files once no host of an earlier Berth version serves",
                added,
                directory,
            )
        return added

    # -- using -------------------------------------------------------------------------------

    @property
    def active(self) -> SigningKey:
        """The key that signs: the newest one every host has had time to hear of (when all
        are that new, the oldest)."""
        published = self.clock() - PUBLISH_DELAY
        ready = [k for k in self.keys if k.created <= published]
        return ready[-1] if ready else self.keys[0]

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        key = self._opened.get(kid)
        return None if key is None else key.public


Access = Mapping[tuple[str, str], frozenset[str]]


@dataclass(frozen=True)
class Claims:
    """What a verified token says: who, what they may do, until when."""

    subject: str
    access: Access
    not_before: float
    expires: float
    scopes: frozenset[str] | None  # the PAT scopes the grant was limited by, if any
    credential: str | None = None  # what it was minted with (`crd`); None only for anonymous

    def allows(self, kind: str, name: str, action: str) -> bool:
        actions = self.access.get((kind, name))
        return actions is not None and (action in actions or "*" in actions)


def access_claim(access: Iterable[tuple[str, str, Iterable[str]]]) -> list[dict[str, Any]]:
    return [{"type": t, "name": n, "actions": sorted(a)} for t, n, a in access]


class TokenIssuer:
    def __init__(
        self, keys: KeyRing, issuer: str, service: str, ttl: float, clock: Callable[[], float]
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.service = service
        self.ttl = ttl
        self.clock = clock

    def issue(
        self,
        subject: str,
        access: list[dict[str, Any]],
        scopes: frozenset[str] | None = None,
        *,
        credential: str | None = None,
        not_after: float | None = None,
    ) -> tuple[str, int, int]:
        """A signed token naming `credential`, expiring after the configured lifetime or at
        `not_after` (the credential's own expiry), whichever is first; returns (token,
        issued_at, expires_in). The caller keeps the keys current (`KeyRing.refresh`)."""
        key = self.keys.active
        now = int(self.clock())
        ttl = int(self.ttl)
        if not_after is not None:
            ttl = max(0, min(ttl, int(not_after) - now))
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + ttl,
            "nbf": now,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        if scopes is not None:
            claims["scp"] = sorted(scopes)
        if credential is not None:
            claims["crd"] = credential
        token = jwt.encode(claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid})
        return token, now, ttl


def _parse_access(raw: object) -> Access:
    if not isinstance(raw, list):
        raise InvalidToken("the access claim is not a list")
    out: dict[tuple[str, str], frozenset[str]] = {}
    for entry in raw:
        if not isinstance(entry, dict):
            raise InvalidToken("malformed access entry")
        kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
        if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(actions, list):
            raise InvalidToken("malformed access entry")
        out[(kind, name)] = out.get((kind, name), frozenset()) | frozenset(map(str, actions))
    return out


class TokenVerifier:
    """Checks signature, issuer, audience and time window; caches what it verified."""

    def __init__(
        self, keys: KeyRing, issuer: str, service: str, clock: Callable[[], float]
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.service = service
        self.clock = clock
        self._cache: dict[str, Claims] = {}

    def verify(self, token: str) -> Claims:
        claims = self._cache.get(token)
        if claims is None:
            claims = self._decode(token)
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = claims
        now = self.clock()
        if now >= claims.expires:
            raise ExpiredToken("the token has expired")
        if now < claims.not_before:
            raise InvalidToken("the token is not valid yet")
        return claims

    def _decode(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidToken(f"malformed token: {e}") from e
        if header.get("alg") != ALGORITHM:
            raise InvalidToken("the token is not signed with ES256")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("the token names no key")
        key = self.keys.public_key(kid)
        if key is None:
            raise UnknownKey("the token was not signed by this registry")
        try:
            raw = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.service,
                issuer=self.issuer,
                options={
                    # The time window is checked against the injected clock, every time.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"],
                },
            )
        except jwt.PyJWTError as e:
            raise InvalidToken(f"invalid token: {e}") from e
        scp = raw.get("scp")
        crd = raw.get("crd")
        try:
            return Claims(
                subject=str(raw["sub"]),
                access=_parse_access(raw["access"]),
                not_before=float(raw["nbf"]),
                expires=float(raw["exp"]),
                scopes=None if scp is None else frozenset(map(str, scp)),
                credential=None if crd is None else str(crd),
            )
        except (TypeError, ValueError) as e:
            raise InvalidToken("malformed claims") from e


def random_password() -> str:
    """A generated password for the first admin (about 120 bits)."""
    return secrets.token_urlsafe(15)


def key_directory(data_dir: Path) -> Path:
    """Where an older Berth kept its signing keys (imported into the database at start)."""
    return Path(os.path.join(data_dir, "keys"))
