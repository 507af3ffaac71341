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
import trio

from tether import pki
from tether.errors import TetherError, TrustError, Unreachable
from tether.httpclient import request_json

__all__ = ["DEFAULT_PROXY_PORTS", "establish_trust", "find_proxy", "proxy_call", "split_proxy"]

#: the ports tried at once for a proxy given without one, as tsh does: 443 where the proxy
#: sits behind a load balancer or owns the HTTPS port, 3080 where it listens by default
DEFAULT_PROXY_PORTS = (443, 3080)

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


def split_proxy(text: str) -> tuple[str, int | None]:
    """``host:port`` -> (host, port); a bare ``host`` (or ``[v6]``) -> (host, None).

    :raises TetherError: the port is not a number from 1 to 65535.
    """
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a bare name, IPv4 address or unbracketed IPv6 address
        host, port_text = text, None
    if not host:
        raise TetherError(f"{text!r} names no proxy host", hint="pass --proxy=HOST[:PORT]")
    if port_text is None:
        return host, None
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise TetherError(
            f"{text!r}: the port must be a number from 1 to 65535", hint="pass --proxy=HOST[:PORT]"
        )
    return host, int(port_text)


def _join(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def find_proxy(
    proxy: str, *, insecure: bool, ca_pin: str | None
) -> tuple[str, ssl.SSLContext]:
    """The proxy's ``host:port`` and the context to verify it with (:func:`establish_trust`).

    A proxy given without a port is tried on every port of :data:`DEFAULT_PROXY_PORTS` at
    once (tsh's "happy eyeballs" for 443 and 3080); the first that answers wins and the
    others are cancelled.

    :raises TetherError: no port answered; the message names each address tried and why it
        failed (a proxy that answered but could not be trusted outranks one that did not).
    """
    host, port = split_proxy(proxy)
    if port is not None:
        addr = _join(host, port)
        return addr, await establish_trust(addr, insecure=insecure, ca_pin=ca_pin)
    found: list[tuple[str, ssl.SSLContext]] = []
    failed: dict[str, TetherError] = {}

    async def attempt(addr: str, nursery: trio.Nursery) -> None:
        try:
            context = await establish_trust(addr, insecure=insecure, ca_pin=ca_pin)
        except TetherError as exc:
            failed[addr] = exc
            return
        found.append((addr, context))
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for default_port in DEFAULT_PROXY_PORTS:
            nursery.start_soon(attempt, _join(host, default_port), nursery)
    if found:
        return found[0]
    unreachable: list[tuple[str, Unreachable]] = []
    for addr in (_join(host, p) for p in DEFAULT_PROXY_PORTS):
        exc = failed[addr]
        if not isinstance(exc, Unreachable):
            raise exc  # a proxy answered there: what went wrong with it says more
        unreachable.append((addr, exc))
    raise Unreachable(
        "no proxy answers at " + " or ".join(f"{addr} ({exc.reason})" for addr, exc in unreachable),
        reason="; ".join(exc.reason for _, exc in unreachable),
        hint="check the host name, or give the port the proxy listens on: "
        f"--proxy={_join(host, 'PORT')}",
    )
