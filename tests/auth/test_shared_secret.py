"""The server secret every host shares (`server.secret_file`) and the signing keys sealed with
it in the database: what a secret file must be, what sealing protects, keys an older Berth
kept on disk moving into the database, and a host with another secret refusing to start."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.auth.secrets import SealBroken, ServerSecret
from appliance.auth.tokens import _kid, stored_keys
from appliance.errors import BerthError, ConfigError
from appliance.server import open_services
from tests.api.conftest import FakeClock, make_config


def _file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_a_secret_file_must_be_long_enough_and_private(tmp_path: Path) -> None:
    short = _file(tmp_path / "short", os.urandom(31))
    with pytest.raises(ConfigError) as e:
        ServerSecret.load(short)
    assert "31 bytes of secret, fewer than 32" in e.value.message
    assert "openssl rand -hex 32" in e.value.message
    short_hex = _file(tmp_path / "short-hex", os.urandom(16).hex().encode())  # 32 characters
    with pytest.raises(ConfigError, match="16 bytes of secret"):
        ServerSecret.load(short_hex)
    readable = _file(tmp_path / "readable", os.urandom(32).hex().encode(), 0o644)
    with pytest.raises(ConfigError) as e:
        ServerSecret.load(readable)
    assert "may be read by other users (mode 0644)" in e.value.message
    assert "\n" not in e.value.message
    with pytest.raises(ConfigError, match="cannot read"):
        ServerSecret.load(tmp_path / "missing")  # a configured file is never made up
    assert not (tmp_path / "missing").exists()
    # The service's group may read it (0640).
    ServerSecret.load(_file(tmp_path / "group", os.urandom(32), 0o640))


def test_processes_making_the_secret_at_once_all_read_a_whole_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serving processes of a first start all make the default secret at once. One is
    held just before writing its secret's bytes while another loads: the other must not read
    an empty file (it did: "holds 0 bytes of secret", and the start failed), and both must
    end with the same secret."""
    path = tmp_path / "data" / "secret"
    release = threading.Event()
    real_write = os.write
    first: list[threading.Thread] = []

    def held_write(fd: int, data: bytes) -> int:
        if threading.current_thread() in first:
            release.wait(10)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", held_write)
    loaded: dict[str, ServerSecret | Exception] = {}

    def load(name: str) -> None:
        try:
            loaded[name] = ServerSecret.load_or_create(path)
        except Exception as e:  # reported by the assertions below
            loaded[name] = e

    slow = threading.Thread(target=load, args=("slow",))
    first.append(slow)
    slow.start()
    time.sleep(0.2)  # the slow one is inside its write
    load("quick")
    release.set()
    slow.join(10)
    assert not isinstance(loaded["quick"], Exception), loaded["quick"]
    assert not isinstance(loaded["slow"], Exception), loaded["slow"]
    assert loaded["quick"].fingerprint == loaded["slow"].fingerprint
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no draft left behind


def test_hex_text_and_raw_bytes_are_the_same_secret(tmp_path: Path) -> None:
    raw = os.urandom(48)
    as_hex = ServerSecret.load(_file(tmp_path / "hex", raw.hex().encode() + b"\n"))
    as_raw = ServerSecret.load(_file(tmp_path / "raw", raw))
    other = ServerSecret.load(_file(tmp_path / "other", os.urandom(32)))
    assert as_hex.fingerprint == as_raw.fingerprint != other.fingerprint
    assert as_hex.digest("berth_pat_x") == as_raw.digest("berth_pat_x")
    assert raw.hex()[:16] not in as_hex.fingerprint  # one-way: nothing of the secret shows


def test_a_sealed_value_opens_only_with_its_secret_and_context(tmp_path: Path) -> None:
    secret = ServerSecret.load(_file(tmp_path / "a", os.urandom(32)))
    other = ServerSecret.load(_file(tmp_path / "b", os.urandom(32)))
    sealed = secret.seal(b"private key bytes", "signing key k1")
    assert b"private key bytes" not in sealed.encode()
    assert secret.unseal(sealed, "signing key k1") == b"private key bytes"
    assert secret.seal(b"private key bytes", "signing key k1") != sealed  # a fresh nonce
    for attempt in (
        lambda: other.unseal(sealed, "signing key k1"),  # another host's secret
        lambda: secret.unseal(sealed, "signing key k2"),  # moved to another key's row
        lambda: secret.unseal(sealed[:-4] + "AAAA", "signing key k1"),  # altered
        lambda: secret.unseal("not base64!", "signing key k1"),
    ):
        with pytest.raises(SealBroken) as e:
            attempt()
        assert "server.secret_file" in e.value.message


async def test_keys_an_older_berth_kept_on_disk_move_into_the_database(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    keys = data / "keys"
    keys.mkdir(parents=True)
    old = ec.generate_private_key(ec.SECP256R1())
    pem = old.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _file(keys / f"{1_799_999_000:012d}-{_kid(old)}.pem", pem)
    clock = FakeClock()
    now = int(clock())
    # A token the older Berth signed before the upgrade.
    claims = {
        "iss": "berth",
        "sub": "admin",
        "aud": "berth",
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now - 10,
        "jti": "x",
        "access": [],
        "crd": "password:1:0",
    }
    before = jwt.encode(claims, old, algorithm="ES256", headers={"kid": _kid(old)})
    services = await open_services(make_config(data), clock)
    try:
        # The file stays for a host of the earlier version (a rolling upgrade signs with it).
        assert [p.read_bytes() for p in keys.glob("*.pem")] == [pem]
        stored = await services.db.read(stored_keys)
        assert [kid for kid, _, _ in stored] == [_kid(old)]  # imported, no new key made
        assert stored[0][1] == 1_799_999_000
        assert pem not in stored[0][2].encode()
        verified = await services.access.verify(before)
        assert verified.subject == "admin"
    finally:
        services.close()
    # A second start imports nothing again and makes no key.
    services = await open_services(make_config(data), clock)
    try:
        assert [kid for kid, _, _ in await services.db.read(stored_keys)] == [_kid(old)]
    finally:
        services.close()


async def test_a_host_with_another_secret_refuses_to_start(tmp_path: Path) -> None:
    shared = _file(tmp_path / "shared-secret", os.urandom(32).hex().encode())
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    first = make_config(
        tmp_path / "a", **{"server.secret_file": str(shared), "metadata.url": database}
    )
    services = await open_services(first, FakeClock())
    services.close()
    assert not (tmp_path / "a" / "secret").exists(), "the configured file is the secret"
    wrong = _file(tmp_path / "wrong-secret", os.urandom(32).hex().encode())
    second = make_config(
        tmp_path / "b", **{"server.secret_file": str(wrong), "metadata.url": database}
    )
    with pytest.raises(BerthError) as e:
        await open_services(second, FakeClock())
    assert "does not open with this host's server secret" in e.value.message
    assert ServerSecret.load(wrong).fingerprint in e.value.message
