"""A host's calls to auth reuse their connection: a node heartbeats every 10 s, and each call
that found its pooled connection expired paid a new mutual-TLS handshake at both ends (29% of
a root's CPU with 500 tunnel nodes, benchmarks/many_nodes.py). Timing, not speed, is what is
checked here: the pool keeps an idle connection across a heartbeat interval, and gives it up
before the server closes it."""

from __future__ import annotations

import ssl

import httpx

from tether.asgi import KEEP_ALIVE_TIMEOUT
from tether.auth.http_client import KEEPALIVE_EXPIRY, AuthClient
from tether.node.agent import HEARTBEAT_INTERVAL


def test_a_node_keeps_its_connection_to_auth_between_heartbeats() -> None:
    assert HEARTBEAT_INTERVAL.total_seconds() < KEEPALIVE_EXPIRY < KEEP_ALIVE_TIMEOUT


async def test_the_auth_client_pools_connections_for_that_long() -> None:
    # one pool per auth server of a cluster that runs several
    servers = ["https://127.0.0.1:1", "https://127.0.0.1:2"]
    client = AuthClient(servers, ssl.create_default_context())
    try:
        assert [str(http.base_url).rstrip("/") for http in client._clients] == servers
        for http in client._clients:
            transport = http._transport
            assert isinstance(transport, httpx.AsyncHTTPTransport)
            assert transport._pool._keepalive_expiry == KEEPALIVE_EXPIRY
    finally:
        await client.aclose()
