"""Sealing the CA keys the store holds with a key file every auth server of the cluster holds
(``auth_service.ca_keys_key_file``), so that reading the store is not enough to sign as the
cluster: whoever can read the store and one auth server's key file can.

Pure functions: the record goes in and out as JSON-ready mappings. AES-256-GCM with a random
nonce per seal; the storage key is the associated data, so a sealed record moved under another
key (the declared ``db`` CA's under the kernel's) does not open.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import pathlib
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tether.errors import ConfigError, TrustError

__all__ = [
    "CIPHER",
    "is_sealed",
    "open_record",
    "read_key_file",
    "seal",
]

CIPHER = "aes-256-gcm"
_NONCE_BYTES = 12


def read_key_file(path: pathlib.Path, setting: str = "auth_service.ca_keys_key_file") -> bytes:
    """The 32-byte key in ``path`` (base64, as ``openssl rand -base64 32`` prints it), which
    only its owner may read; ``setting`` names where the configuration gave it."""
    try:
        info = path.stat()
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{setting}: {path} may be read by others", hint=f"chmod 600 {path}")
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(
            f"{setting}: {path} does not hold 32 bytes in base64",
            hint="make one with `openssl rand -base64 32`, and give every auth server a copy",
        )
    return key


def seal(record: Mapping[str, Any], key: bytes, storage_key: str) -> dict[str, str]:
    """``record`` encrypted with ``key``, bound to ``storage_key``."""
    nonce = os.urandom(_NONCE_BYTES)
    data = AESGCM(key).encrypt(nonce, json.dumps(record).encode(), storage_key.encode())
    return {
        "cipher": CIPHER,
        "nonce": base64.b64encode(nonce).decode(),
        "data": base64.b64encode(data).decode(),
    }


def is_sealed(record: Mapping[str, Any]) -> bool:
    return "cipher" in record


def open_record(
    record: Mapping[str, Any], keys: Sequence[tuple[bytes, str]], storage_key: str
) -> tuple[dict[str, Any], int | None]:
    """The record as it was sealed, opened with the first of ``keys`` (each with the file it
    came from) that opens it, and that key's index; ``record`` itself and None when it is
    not sealed. Rotating the key file: the current key first, then the previous ones.

    :raises TrustError: sealed and no key given, or sealed with none of them, or damaged.
    """
    if not is_sealed(record):
        return dict(record), None
    if record.get("cipher") != CIPHER:
        raise TrustError(f"the CA keys at {storage_key} are sealed with {record.get('cipher')!r}")
    if not keys:
        raise TrustError(
            f"the CA keys at {storage_key} in the storage are encrypted",
            hint="set auth_service.ca_keys_key_file to a copy of the other auth servers' key file",
        )
    try:
        nonce = base64.b64decode(str(record["nonce"]), validate=True)
        data = base64.b64decode(str(record["data"]), validate=True)
    except (KeyError, binascii.Error, ValueError) as exc:
        raise TrustError(f"the sealed CA keys at {storage_key} are damaged: {exc}") from None
    for index, (key, _) in enumerate(keys):
        try:
            plain = AESGCM(key).decrypt(nonce, data, storage_key.encode())
        except InvalidTag:
            continue
        try:
            opened = json.loads(plain)
        except ValueError as exc:
            raise TrustError(f"the sealed CA keys at {storage_key} are damaged: {exc}") from None
        if not isinstance(opened, dict):
            raise TrustError(f"the sealed CA keys at {storage_key} are not a JSON object")
        return opened, index
    files = " or ".join(file for _, file in keys)
    raise TrustError(
        f"the CA keys at {storage_key} in the storage do not open with {files}",
        hint="give this auth server the key file the cluster's other auth servers hold "
        "(rotating it: the previous one in auth_service.ca_keys_previous_key_files)",
    )
