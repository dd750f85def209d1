"""Registry bearer tokens: ES256 JWTs signed with the appliance's own key, and their check.

Keys live in `<data_dir>/keys/` as `<created>-<kid>.pem` (0600). The newest key signs; every
key still on disk verifies. `KeyRing.rotate()` (`berth keys rotate`) adds a new key and removes
keys whose successor is older than the overlap (the token lifetime plus a margin), so tokens
signed just before a rotation stay valid until they expire. A running server notices a new key
by the directory's modification time.

`TokenVerifier.verify()` is on the hot path of every registry request: the signature is checked
once per distinct token and the decoded claims cached; each call after that is a dictionary
lookup plus a time-window check against the injected clock. A token also names, in the
private claim `crd`, the credential it was minted with (`auth/credentials.py`); the registry's
guard checks on every request that it still works.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.auth.secrets import write_private
from appliance.errors import BerthError

ALGORITHM = "ES256"
CACHE_LIMIT = 20_000
RELOAD_EVERY = 2.0  # seconds between looks at the key directory for an unknown kid


class InvalidToken(BerthError):
    """The token is malformed, forged, for someone else, or outside its time window."""


class ExpiredToken(InvalidToken):
    pass


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


class KeyRing:
    """The signing keys in `directory`."""

    def __init__(self, directory: Path, clock: Callable[[], float], overlap: float) -> None:
        self.directory = directory
        self.clock = clock
        self.overlap = overlap
        self.keys: list[SigningKey] = []
        self._mtime = -1.0
        self._checked = -1e18

    def load(self) -> None:
        keys = []
        for path in sorted(self.directory.glob("*.pem")):
            created, _, _ = path.stem.partition("-")
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(private, ec.EllipticCurvePrivateKey):
                raise BerthError(f"{path} is not an EC private key")
            keys.append(SigningKey(_kid(private), int(created), private))
        keys.sort(key=lambda k: k.created)
        self.keys = keys
        self._mtime = self.directory.stat().st_mtime if self.directory.exists() else -1.0

    def ensure(self) -> None:
        """Load the keys, making the first one if there is none."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.load()
        if not self.keys:
            self.rotate()

    def rotate(self) -> SigningKey:
        """Add a new signing key; drop keys superseded more than `overlap` seconds ago."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.load()
        now = int(self.clock())
        created = max([now, *[k.created + 1 for k in self.keys]])
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_private(self.directory / f"{created:012d}-{_kid(private)}.pem", pem)
        self.load()
        for older, successor in zip(self.keys, self.keys[1:], strict=False):
            if successor.created + self.overlap < now:
                (self.directory / f"{older.created:012d}-{older.kid}.pem").unlink(missing_ok=True)
        self.load()
        return self.keys[-1]

    def maybe_reload(self, force: bool = False) -> None:
        """Reload when the directory changed (a rotation by another process)."""
        now = self.clock()
        if not force and now - self._checked < RELOAD_EVERY:
            return
        self._checked = now
        try:
            mtime = self.directory.stat().st_mtime
        except OSError:
            return
        if mtime != self._mtime:
            self.load()

    @property
    def active(self) -> SigningKey:
        return self.keys[-1]

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        for key in self.keys:
            if key.kid == kid:
                return key.public
        return None


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
        issued_at, expires_in)."""
        self.keys.maybe_reload()
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
            self.keys.maybe_reload()
            key = self.keys.public_key(kid)
        if key is None:
            raise InvalidToken("the token was not signed by this registry")
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
    return Path(os.path.join(data_dir, "keys"))
