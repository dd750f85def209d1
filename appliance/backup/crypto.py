"""The secrets bundle of a backup: the config file, the server secret and the signing keys.

A bundle is a JSON object of file names to base64 contents. With a passphrase (from
`backup.passphrase`, `backup.passphrase_file` or the CLI) it is sealed with AES-256-GCM under a
key derived by scrypt from the passphrase and a random salt:

    b"BERTHSEAL1" | salt (16) | nonce (12) | ciphertext with its 16-byte tag

Without one it is stored as plain JSON (the target's files are then as sensitive as the data
directory, and `berth backup create` says so). A wrong passphrase or a changed byte fails the
tag check: nothing is returned but an error.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from appliance.backup import BackupCorrupt, BackupError
from appliance.config import Config
from appliance.errors import ConfigError

MAGIC = b"BERTHSEAL1"
SCRYPT_N = 2**15


def _key(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=8, p=1).derive(passphrase.encode())


def pack(files: dict[str, bytes]) -> bytes:
    return json.dumps(
        {name: base64.b64encode(data).decode() for name, data in sorted(files.items())}
    ).encode()


def unpack(raw: bytes) -> dict[str, bytes]:
    try:
        data = json.loads(raw)
        return {str(k): base64.b64decode(v) for k, v in data.items()}
    except (ValueError, AttributeError, TypeError) as e:
        raise BackupCorrupt(f"the secrets bundle is unreadable ({e})") from e


def is_sealed(raw: bytes) -> bool:
    return raw.startswith(MAGIC)


def seal(plain: bytes, passphrase: str) -> bytes:
    salt, nonce = os.urandom(16), os.urandom(12)
    return MAGIC + salt + nonce + AESGCM(_key(passphrase, salt)).encrypt(nonce, plain, MAGIC)


def unseal(sealed: bytes, passphrase: str | None) -> bytes:
    if not is_sealed(sealed):
        return sealed
    if not passphrase:
        raise BackupError(
            "the backup's secrets are encrypted: give the passphrase (--passphrase-file, "
            "backup.passphrase_file or BERTH_BACKUP_PASSPHRASE)"
        )
    body = sealed[len(MAGIC) :]
    salt, nonce, ciphertext = body[:16], body[16:28], body[28:]
    try:
        return AESGCM(_key(passphrase, salt)).decrypt(nonce, ciphertext, MAGIC)
    except InvalidTag as e:
        raise BackupError(
            "cannot decrypt the backup's secrets: wrong passphrase, or the file was changed"
        ) from e


def passphrase_from(config: Config, path: Path | None = None) -> str | None:
    """The passphrase: from `path` when given, else `backup.passphrase(_file)`; None if unset."""
    value: str = config["backup.passphrase"]
    file: str = str(path) if path is not None else config["backup.passphrase_file"]
    if path is None and value and file:
        raise ConfigError("set backup.passphrase or backup.passphrase_file, not both")
    if file:
        try:
            value = Path(file).expanduser().read_text().rstrip("\r\n")
        except OSError as e:
            raise ConfigError(f"cannot read the backup passphrase file {file}: {e.strerror}") from e
        if not value:
            raise ConfigError(f"the backup passphrase file {file} is empty")
    return value or None
