"""Password hashing and the failed-login lockout.

argon2id (argon2-cffi) is memory-hard, so a stolen backend costs an attacker real memory per
guess. The lockout counts consecutive failures per user name, for names that do not exist too,
so neither the message nor the lockout tells an attacker which user names are real.
"""

from __future__ import annotations

import functools
import json

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "ATTEMPTS_PREFIX",
    "MIN_PASSWORD_LENGTH",
    "PASSWORD_PREFIX",
    "check_password_strength",
    "hash_password",
    "verify_password",
]

MIN_PASSWORD_LENGTH = 8
#: where a local user's password hash is stored, by user name
PASSWORD_PREFIX = "/secrets/passwords/"
#: where the failed logins at a user name are counted (see :func:`encode_attempts`)
ATTEMPTS_PREFIX = "/secrets/login_attempts/"

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash checked when the user does not exist, so that both paths cost the same time.

    Made on first use, not at import: hashing costs ~150 ms, and every command-line program
    imports this module through the builtin ``local`` connector.
    """
    return _hasher.hash("tether-no-such-user-dummy-password")


def check_password_strength(password: str) -> None:
    """Raise ValueError with what to do when ``password`` is too weak to store."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters long")


def hash_password(password: str) -> str:
    """argon2id hash in PHC string format."""
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; a missing hash still spends the time of a check."""
    try:
        return _hasher.verify(stored_hash or _dummy_hash(), password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def encode_attempts(count: int, locked_until: float | None) -> bytes:
    return json.dumps({"failed": count, "locked_until": locked_until}).encode()


def decode_attempts(raw: bytes | None) -> tuple[int, float | None]:
    if not raw:
        return 0, None
    data = json.loads(raw)
    return int(data.get("failed", 0)), data.get("locked_until")
