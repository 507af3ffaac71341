"""Fixtures for the tether-db plugin's tests."""

from mariadb_server import *  # noqa: F403
