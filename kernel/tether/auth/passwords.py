"""Password hashing and the failed-login lockout.

argon2id (argon2-cffi) is memory-hard, so a stolen backend costs an attacker real memory per
guess. It also costs the auth server: 64 MiB and about 0.2 s of a core per hash. The auth
service hashes and checks through :func:`hash_password_in_worker` and
:func:`verify_password_in_worker`, on worker threads (argon2-cffi releases the GIL), at most
one per core at a time: its event loop, which serves every other request and heartbeat,
never stops for a hash, logins use every core, and a flood of logins queues for the cores
rather than taking 64 MiB each at once.

The lockout counts consecutive failures per user name, for names that do not exist too, so
neither the message nor the lockout tells an attacker which user names are real.
"""

from __future__ import annotations

import functools
import json
import os

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "ATTEMPTS_PREFIX",
    "MIN_PASSWORD_LENGTH",
    "PASSWORD_PREFIX",
    "check_password_strength",
    "hash_password",
    "hash_password_in_worker",
    "verify_password",
    "verify_password_in_worker",
]

MIN_PASSWORD_LENGTH = 8
#: where a local user's password hash is stored, by user name
PASSWORD_PREFIX = "/secrets/passwords/"
#: where the failed logins at a user name are counted (see :func:`encode_attempts`)
ATTEMPTS_PREFIX = "/secrets/login_attempts/"

_hasher = PasswordHasher()

#: the hashes a trio run computes at once (see the module's docstring), made per run
_HASHING: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("password_hashing")


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


def _hashing_limiter() -> trio.CapacityLimiter:
    try:
        return _HASHING.get()
    except LookupError:
        limiter = trio.CapacityLimiter(os.cpu_count() or 1)
        _HASHING.set(limiter)
        return limiter


async def hash_password_in_worker(password: str) -> str:
    """:func:`hash_password` on a worker thread, one per core at a time."""
    return await trio.to_thread.run_sync(hash_password, password, limiter=_hashing_limiter())


async def verify_password_in_worker(stored_hash: str | None, password: str) -> bool:
    """:func:`verify_password` on a worker thread, one per core at a time."""
    return await trio.to_thread.run_sync(
        verify_password, stored_hash, password, limiter=_hashing_limiter()
    )
