"""Fixtures of the tether-db tests: the private database servers they run against."""

from mariadb_server import *  # noqa: F403
from postgres_server import *  # noqa: F403
