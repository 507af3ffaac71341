"""The etcd backend passes the conformance suite every storage backend passes, against a
real etcd member."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tether_etcd import open_etcd

from tether.api import Backend
from tether.testing.backend_conformance import BackendConformance


class TestEtcdConformance(BackendConformance):
    # the TTL tests really sleep: leases expire by etcd's clock, in whole seconds
    watch_overflow_events = 300
    expiry_event_timeout = 5.0

    @pytest.fixture
    async def backend(self, etcd_url: str) -> AsyncIterator[Backend]:
        async with open_etcd(etcd_url, watch_buffer=200) as backend:
            yield backend
