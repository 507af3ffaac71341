"""Fixtures of the tether-db tests: the private database servers they run against."""

from postgres_server import *  # noqa
