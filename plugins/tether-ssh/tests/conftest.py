"""Fixtures the SSH plugin's tests share."""

from __future__ import annotations

import pwd
from collections.abc import Iterator

import pytest

from tether.testing.accounts import os_account


@pytest.fixture(scope="module")
def os_user() -> Iterator[pwd.struct_passwd]:
    """The ``visitor`` account sessions run as; created (and removed) here unless it exists."""
    with os_account("visitor") as account:
        yield account
