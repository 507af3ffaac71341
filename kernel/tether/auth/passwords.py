"""Password hashing and the failed-login lockout.

argon2id (argon2-cffi) is memory-hard, so a stolen backend costs an attacker real memory per
guess. The lockout counts consecutive failures per user name, for names that do not exist too,
so neither the message nor the lockout tells an attacker which user names are real.
"""

from __future__ import annotations

import json

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["MIN_PASSWORD_LENGTH", "check_password_strength", "hash_password", "verify_password"]

MIN_PASSWORD_LENGTH = 8

_hasher = PasswordHasher()

# A hash of a random password, checked when the user does not exist so that both paths cost
# the same time.
_DUMMY_HASH = _hasher.hash("tether-no-such-user-dummy-password")


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
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def encode_attempts(count: int, locked_until: float | None) -> bytes:
    return json.dumps({"failed": count, "locked_until": locked_until}).encode()


def decode_attempts(raw: bytes | None) -> tuple[int, float | None]:
    if not raw:
        return 0, None
    data = json.loads(raw)
    return int(data.get("failed", 0)), data.get("locked_until")
