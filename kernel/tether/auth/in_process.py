"""The auth API called in this process: a proxy beside its auth service asks it without a socket.

A proxy in the same ``tetherd`` as auth reached it over loopback HTTPS, like any other proxy:
a mutual-TLS connection per concurrent request (two open files each, both ends being this
process) and the encryption both ways, 14% of a root's CPU with 500 tunnel-mode nodes. This
transport hands each request to auth's ASGI application directly, with the proxy's own
certificate as the connection's peer certificate, exactly what auth reads from a TLS
connection (``scope["state"]["tether.peer_cert"]``, see :mod:`tether.asgi`): auth still verifies
it, and every certificate the proxy forwards for its callers, as it does over the network.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tether.asgi import PEER_CERT_STATE

__all__ = ["IN_PROCESS_URL", "InProcessAuth"]

#: the base URL of an :class:`~tether.auth.http_client.AuthClient` on this transport: a name
#: no socket resolves, so that a request meant for it can never leave the process
IN_PROCESS_URL = "http://auth.in-process"

ASGIApp = Callable[..., Any]


class InProcessAuth(httpx.AsyncBaseTransport):
    """An httpx transport to the auth ASGI ``app`` in this process, as the holder of ``cert``.

    :param app: the auth API (:func:`tether.auth.http_api.build_app`), the same object the
        auth listener serves.
    :param cert: the certificate the caller would present over mutual TLS.
    """

    def __init__(self, app: ASGIApp, cert: x509.Certificate) -> None:
        self._der = cert.public_bytes(Encoding.DER)
        self._asgi = httpx.ASGITransport(app=self._as_peer(app), raise_app_exceptions=False)

    def present_certificate(self, cert: x509.Certificate) -> None:
        """Call as the holder of ``cert`` from the next request on (the caller renewed it)."""
        self._der = cert.public_bytes(Encoding.DER)

    def _as_peer(self, app: ASGIApp) -> ASGIApp:
        async def with_peer(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
            scope = {**scope, "state": {PEER_CERT_STATE: self._der}}
            await app(scope, receive, send)

        return with_peer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._asgi.handle_async_request(request)
