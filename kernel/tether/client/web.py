"""Anonymous HTTPS calls to a proxy: establishing trust, ping, login and sign-up.

Before a user holds a certificate the client must decide whether to trust the proxy's web
certificate. Three ways, as Teleport's users expect: the system trust store (a publicly signed
certificate), a CA pin given out of band (``--ca-pin``; the client fetches the cluster CA and
checks its public key hash before trusting it), or ``--insecure`` for testing only.

The cluster's CA signs every host's certificate, and each names ``localhost`` and the loopback
addresses; so with the pin the client also checks the certificate's kind: only a proxy (or
whatever the caller expects) may answer, never a node holding a certificate of its own.
"""

from __future__ import annotations

import ssl
from collections.abc import Collection
from typing import Any

import httpx

from tether import pki
from tether.errors import TrustError
from tether.httpclient import request_json

__all__ = ["establish_trust", "proxy_call"]

UNTRUSTED_HINT = (
    "pass --ca-pin=sha256:... (printed by `tetherctl status` and `tetherctl tokens add`) "
    "or use --insecure for testing only"
)


def _unverified() -> ssl.SSLContext:
    return pki.client_ssl_context(trusted_cas=None, insecure=True)


async def proxy_call(
    proxy: str, method: str, path: str, context: ssl.SSLContext, **kwargs: Any
) -> Any:
    """One request to the proxy's web API; errors come back as TetherError subclasses."""
    async with httpx.AsyncClient(base_url=f"https://{proxy}", verify=context, timeout=30) as http:
        return await request_json(http, method, path, untrusted_hint=UNTRUSTED_HINT, **kwargs)


async def establish_trust(
    proxy: str,
    *,
    insecure: bool,
    ca_pin: str | None,
    peer_kinds: Collection[str] = ("proxy",),
) -> ssl.SSLContext:
    """Decide how to verify ``proxy``, prove it with a ping, and return the context to use.

    :param peer_kinds: with ``ca_pin``, the identity kinds the server's certificate may carry
        (a host joining directly expects auth's).
    """
    if ca_pin:
        body = await proxy_call(proxy, "GET", "/webapi/cluster-ca", _unverified())
        cas = [pki.load_cert(pem) for pem in body.get("tls_ca_certs", [])]
        matching = [c for c in cas if pki.ca_pin(c) == ca_pin]
        if not matching:
            found = ", ".join(pki.ca_pin(c) for c in cas) or "none"
            raise TrustError(
                f"the proxy at {proxy} does not present the pinned CA {ca_pin} (it has {found})",
                hint="check the pin with the cluster admin; you may be talking to another server",
            )
        context = pki.client_ssl_context(trusted_cas=matching, peer_kinds=peer_kinds)
    elif insecure:
        context = _unverified()
    else:
        context = pki.client_ssl_context(trusted_cas=None)
    await proxy_call(proxy, "GET", "/webapi/ping", context)
    return context
