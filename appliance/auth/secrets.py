"""High-entropy secrets: the server secret every host shares, and what is made from it.

The server secret is the one piece of key material that every host of a registry must hold
alike (`server.secret_file`, by default `<data_dir>/secret`, made 0600 on first start when it
is that default). From it come, each through its own HKDF label, so that no use can stand in
for another:

- the HMAC key of stored tokens: personal access tokens, robot secrets, refresh tokens and
  console session ids carry 256 random bits, so a keyed hash is as safe to store as argon2 and
  costs microseconds to check. A token looks like `berth_pat_<43 chars>`; the prefix says what
  it is, so a leaked one is easy to recognise (secret scanners);
- the AES-256-GCM key that seals the token-signing keys kept in the database (auth/tokens.py);
- the fingerprint hosts publish so that `berth ctl doctor` can tell they hold the same secret
  (a one-way value: it reveals nothing of the secret).

The file holds at least 32 random bytes: either as hex text (what Berth writes, and what
`openssl rand -hex 32` prints), or as raw bytes (`head -c 32 /dev/urandom`). A file shorter
than that, or one other users may read, is refused with one line saying what to do.

The HMAC key is the secret's bytes themselves (the form every token hash stored so far was
made with), so upgrading changes no stored hash.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import string
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.errors import BerthError, ConfigError

PREFIXES = {"pat": "berth_pat_", "robot": "berth_robot_", "refresh": "berth_refresh_"}
TOKEN_PREFIX = "berth_"  # noqa: S105 (a prefix, not a secret)
MIN_SECRET_BYTES = 32
_NONCE = 12
_HEX = frozenset(string.hexdigits)


class SealBroken(BerthError):
    """A sealed value does not open with this secret: another secret sealed it, or it was
    altered."""


def write_private(path: Path, data: bytes) -> None:
    """Create `path` readable only by this user, whole or not at all: another process never
    reads it empty or half written (the serving processes of a first start all make the
    server secret at once, and a loser read the winner's file before its bytes were in).
    Refuses to overwrite (FileExistsError)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(draft, path)  # fails if `path` exists; no rename: it would replace it
    finally:
        draft.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the new name is durable too
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def key_material(raw: bytes) -> bytes:
    """The secret a file's content stands for: hex text decoded, anything else as it is."""
    text = raw.strip()
    if text and len(text) % 2 == 0 and all(chr(c) in _HEX for c in text):
        return bytes.fromhex(text.decode("ascii"))
    return raw


def read_secret_file(path: Path) -> bytes:
    """The key material of the secret file at `path`. Raises ConfigError, in one line, for a
    missing or unreadable file, one other users may read, or one too short."""
    setting = "server.secret_file"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{setting}: cannot read {path}: {e.strerror}") from e
    if mode & 0o007:
        raise ConfigError(
            f"{setting}: {path} may be read by other users (mode {mode:04o}); "
            f"run `chmod 600 {path}` (or 640 with the service's group)"
        )
    material = key_material(raw)
    if len(material) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{setting}: {path} holds {len(material)} bytes of secret, fewer than "
            f"{MIN_SECRET_BYTES}; make it with `openssl rand -hex 32 > {path}`"
        )
    return material


def _derive(secret: bytes, label: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"berth {label}".encode()
    ).derive(secret)


class ServerSecret:
    """The shared secret, and the keys derived from it (see the module docstring)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._sealing = AESGCM(_derive(key, "sealing v1"))
        self.fingerprint = _derive(key, "fingerprint v1").hex()[:16]

    @classmethod
    def load(cls, path: Path, *, create: bool = False) -> ServerSecret:
        """The secret in `path`; with `create`, a new one is written there first when there
        is none (the default place of a single host). Raises ConfigError."""
        if create and not path.exists():
            with contextlib.suppress(FileExistsError):  # another process made it first
                write_private(path, secrets.token_bytes(MIN_SECRET_BYTES).hex().encode())
        return cls(read_secret_file(path))

    @classmethod
    def load_or_create(cls, path: Path) -> ServerSecret:
        return cls.load(path, create=True)

    def digest(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()

    def new_token(self, kind: str) -> tuple[str, str]:
        """A fresh token of `kind` (pat, robot, refresh) and its stored hash."""
        raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        token = PREFIXES[kind] + raw
        return token, self.digest(token)

    def seal(self, plaintext: bytes, context: str) -> str:
        """`plaintext` encrypted and authenticated (AES-256-GCM), bound to `context` (it opens
        only with the same one), as text for a database column."""
        nonce = os.urandom(_NONCE)
        sealed = self._sealing.encrypt(nonce, plaintext, context.encode())
        return base64.b64encode(nonce + sealed).decode("ascii")

    def unseal(self, text: str, context: str) -> bytes:
        """What `seal` sealed; raises SealBroken."""
        try:
            blob = base64.b64decode(text.encode("ascii"), validate=True)
            return self._sealing.decrypt(blob[:_NONCE], blob[_NONCE:], context.encode())
        except (InvalidTag, ValueError) as e:
            raise SealBroken(
                f"a value sealed in the database does not open with this host's server secret "
                f"(fingerprint {self.fingerprint}): every host must read the same "
                "server.secret_file"
            ) from e


def looks_like_token(text: str) -> bool:
    return text.startswith(TOKEN_PREFIX) and len(text) > 40
