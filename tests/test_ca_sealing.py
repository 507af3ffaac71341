"""Sealing the stored CA keys with the auth servers' key file: what opens, and what does not."""

from __future__ import annotations

import base64
import os
import pathlib

import pytest

from tether.auth.ca_sealing import is_sealed, open_record, read_key_file, seal
from tether.errors import ConfigError, TrustError

RECORD = {"cluster": "main", "tls_key": "-----BEGIN PRIVATE KEY-----..."}
KEY = os.urandom(32)


def test_a_sealed_record_opens_with_its_key_under_its_storage_key() -> None:
    sealed = seal(RECORD, KEY, "/ca_keys/cluster")
    assert is_sealed(sealed) and "PRIVATE KEY" not in str(sealed)
    assert open_record(sealed, [(KEY, "k")], "/ca_keys/cluster") == (RECORD, 0)


def test_a_sealed_record_does_not_open_with_another_key_nor_under_another_storage_key() -> None:
    sealed = seal(RECORD, KEY, "/ca_keys/cluster")
    with pytest.raises(TrustError, match="do not open with other-key"):
        open_record(sealed, [(os.urandom(32), "other-key")], "/ca_keys/cluster")
    # moved where the declared db CA is kept, it is refused rather than used as that CA
    with pytest.raises(TrustError, match="do not open"):
        open_record(sealed, [(KEY, "k")], "/ca_keys/declared/db")


def test_a_sealed_record_without_a_key_file_says_which_setting_is_missing() -> None:
    sealed = seal(RECORD, KEY, "/ca_keys/cluster")
    with pytest.raises(TrustError, match="are encrypted") as refused:
        open_record(sealed, [], "/ca_keys/cluster")
    assert "auth_service.ca_keys_key_file" in str(refused.value)


def test_a_record_stored_plain_opens_as_it_is() -> None:
    assert open_record(RECORD, [], "/ca_keys/cluster") == (RECORD, None)


def test_while_the_key_file_is_rotated_a_record_opens_with_the_previous_key_too() -> None:
    sealed = seal(RECORD, KEY, "/ca_keys/cluster")
    new = os.urandom(32)
    keys = [(new, "new.key"), (KEY, "old.key")]
    assert open_record(sealed, keys, "/ca_keys/cluster") == (RECORD, 1)  # the previous one
    assert open_record(seal(RECORD, new, "/ca_keys/cluster"), keys, "/ca_keys/cluster") == (
        RECORD,
        0,
    )
    with pytest.raises(TrustError, match=r"do not open with new\.key or other\.key"):
        open_record(sealed, [(new, "new.key"), (os.urandom(32), "other.key")], "/ca_keys/cluster")


def test_a_key_file_others_can_read_or_of_the_wrong_size_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ca.key"
    path.write_text("c2hvcnQ=\n")  # "short"
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="does not hold 32 bytes"):
        read_key_file(path)
    path.write_text(base64.b64encode(KEY).decode() + "\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="may be read by others"):
        read_key_file(path)
    path.chmod(0o600)
    assert read_key_file(path) == KEY
