"""The PostgreSQL backend passes the conformance suite every storage backend passes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tether_postgres import open_postgres

from tether.api import Backend
from tether.testing.backend_conformance import BackendConformance


class TestPostgresConformance(BackendConformance):
    # the TTL tests really sleep: expiry follows the database server's clock, not one a test
    # can move
    watch_overflow_events = 200
    expiry_event_timeout = 3.0

    @pytest.fixture
    async def backend(self, pg_url: str) -> AsyncIterator[Backend]:
        # reap_interval is small, so expiry events arrive soon after the key expires
        async with open_postgres(pg_url, reap_interval=0.1, watch_buffer=100) as backend:
            yield backend
