"""Password hashing with argon2id (argon2-cffi, RFC 9106 low-memory profile).

The functions are synchronous and deliberately slow (tens of milliseconds): call them in a
worker thread (`trio.to_thread.run_sync`). `verify_dummy` spends the same time on a fixed hash,
so a sign-in for a user that does not exist takes as long as a wrong password.
"""

from __future__ import annotations

import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()  # argon2id, t=3, m=64 MiB, p=4
MIN_LENGTH = 8


class WeakPassword(ValueError):
    pass


def check_strength(password: str) -> None:
    """Refuse passwords too short to be worth hashing."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_LENGTH} characters")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """True when `password` matches the argon2 hash `stored`. Never raises for a mismatch."""
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash() -> str:
    # Made on first use, not at import: hashing costs ~0.3 s that start-up need not pay.
    return _HASHER.hash("berth: a password nobody has")


def verify_dummy(password: str) -> bool:
    """Spend the time of one verification and fail (an unknown user)."""
    verify_password(_dummy_hash(), password)
    return False
