"""High-entropy secrets: the server's HMAC key, and tokens stored as HMAC-SHA-256.

Personal access tokens, robot secrets and refresh tokens carry 256 random bits, so a keyed hash
is as safe to store as argon2 and costs microseconds to check. The key lives in
`<data_dir>/secret` (0600), made on first start. A token looks like `berth_pat_<43 chars>`;
the prefix says what it is, so a leaked one is easy to recognise (secret scanners).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

PREFIXES = {"pat": "berth_pat_", "robot": "berth_robot_", "refresh": "berth_refresh_"}
TOKEN_PREFIX = "berth_"  # noqa: S105 (a prefix, not a secret)


def write_private(path: Path, data: bytes) -> None:
    """Create `path` readable only by this user; refuses to overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class ServerSecret:
    """The key every stored token hash is made with."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def load_or_create(cls, path: Path) -> ServerSecret:
        if not path.exists():
            with contextlib.suppress(FileExistsError):  # another process made it first
                write_private(path, secrets.token_bytes(32).hex().encode())
        return cls(bytes.fromhex(path.read_text().strip()))

    def digest(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()

    def new_token(self, kind: str) -> tuple[str, str]:
        """A fresh token of `kind` (pat, robot, refresh) and its stored hash."""
        raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        token = PREFIXES[kind] + raw
        return token, self.digest(token)


def looks_like_token(text: str) -> bool:
    return text.startswith(TOKEN_PREFIX) and len(text) > 40
