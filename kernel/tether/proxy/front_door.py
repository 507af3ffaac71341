"""The front door: the client <-> proxy exchange on the ALPN ids of every protocol that
reaches targets (``tether-ssh/1``, ...), and its twin for a route name.

The client presents its X.509 user certificate in the TLS handshake and sends one JSON line
(:class:`tether.dial.DialRequest`): ``dial``, ``list`` or ``host_cas``. The proxy answers with
one line; after a ``dialed`` answer the connection belongs to the protocol's ``relay`` (for
SSH, bytes copied both ways: the session runs end to end between the client and the target,
which authenticates the user itself, so the proxy never holds a key that could open one).
Every refusal is a one-line ``error`` answer (what is wrong and what to do, as the class the
error has wherever it was raised: here, at a leaf or at an agent), never a crash.

A client that asked for a route name (:mod:`tether.proxy.server_names`) sends no line and
reads none: the dial request is the name's (:func:`serve_route_name`), routed the same way
by the same :class:`~tether.proxy.routing.Router`, and a refusal goes to the protocol's
``refuse``, which says it in the protocol's own framing.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from typing import Any

import trio

from tether import pki
from tether.dial import (
    DIAL,
    HOST_CAS,
    LIST,
    DialRequest,
    error_answer,
    host_cas_answer,
    targets_answer,
)
from tether.errors import TetherError
from tether.protocols import DialedConnection, ProtocolHandler, ProxyConnection
from tether.proxy.routing import Routed, Router
from tether.route_names import RouteName
from tether.tunnel.control import ControlChannel

__all__ = ["REQUEST_TIMEOUT", "serve_front_door", "serve_route_name"]

log = logging.getLogger(__name__)

#: How long a client may take to say what it wants.
REQUEST_TIMEOUT = 10.0


async def serve_front_door(handler: ProtocolHandler, router: Router, conn: ProxyConnection) -> None:
    """Serve one connection on ``handler``'s ALPN: answer its request, and after a dial hand
    the connection to the protocol."""
    channel = ControlChannel(conn.stream)
    try:
        with trio.fail_after(REQUEST_TIMEOUT):
            message = await channel.receive()
        if message is None:
            return
        identity, request = _from_client(conn, DialRequest.from_fields(message))
        if request.op == LIST:
            await _answer(channel, targets_answer(await router.list_targets(handler, request)))
            return
        if request.op == HOST_CAS:
            await _answer(channel, host_cas_answer(await router.host_cas(request)))
            return
        assert request.op == DIAL
        routed = await router.open(handler, request, user=identity.username)
    except trio.TooSlowError:
        log.debug("%s front door: %s sent no request in time", handler.name, conn.peer)
        return
    except TetherError as exc:
        _log_refused(handler, conn, exc)
        await _answer(channel, error_answer(exc))
        return
    _log_routed(handler, conn, identity, request, routed)
    try:
        await channel.send(routed.dialed.answer())
        leftover = channel.take_buffered()
        if leftover:
            await routed.stream.send_all(leftover)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await trio.aclose_forcefully(routed.stream)
        return
    await _relay(handler, conn, identity, routed)


async def serve_route_name(
    handler: ProtocolHandler, router: Router, route: RouteName, conn: ProxyConnection
) -> None:
    """Serve one connection that asked for a route name of ``handler``'s: dial the target the
    name carries, as a dial request on the ALPN would, and hand the connection to the
    protocol; no line is read or written. A refusal goes to ``handler.refuse``, or closes the
    connection."""
    try:
        request = DialRequest(op=DIAL, cluster=route.cluster, target=route.target)
        identity, request = _from_client(conn, request)
        routed = await router.open(handler, request, user=identity.username)
    except TetherError as exc:
        _log_refused(handler, conn, exc)
        if handler.refuse is not None:
            await handler.refuse(conn, exc)
        return
    _log_routed(handler, conn, identity, request, routed)
    await _relay(handler, conn, identity, routed)


def _from_client(conn: ProxyConnection, request: DialRequest) -> tuple[pki.Identity, DialRequest]:
    """The caller's verified identity, and ``request`` with the user's address and
    certificate as this proxy saw them, never as the client says.

    :raises AccessDenied: no client certificate.
    :raises TrustError: a certificate that is no valid identity of a trusted CA.
    """
    identity = conn.identity()
    return identity, request.from_client(
        conn.peer, base64.b64encode(conn.certificate_der()).decode()
    )


def _log_refused(handler: ProtocolHandler, conn: ProxyConnection, error: TetherError) -> None:
    log.info("%s front door: refused %s: %s", handler.name, conn.peer, error.message)


def _log_routed(
    handler: ProtocolHandler,
    conn: ProxyConnection,
    identity: pki.Identity,
    request: DialRequest,
    routed: Routed,
) -> None:
    dialed = routed.dialed
    log.info(
        "%s front door: %s (%s) -> %s %s of %s (%s)",
        handler.name,
        identity.label,
        conn.peer,
        dialed.kind,
        dialed.name,
        request.cluster,
        "tunnel" if dialed.use_tunnel else dialed.addr,
    )


async def _relay(
    handler: ProtocolHandler, conn: ProxyConnection, identity: pki.Identity, routed: Routed
) -> None:
    """Hand the routed connection to the protocol, once the bytes the target sent with a
    leaf's answer are on their way to the client."""
    try:
        if routed.early:
            await conn.stream.send_all(routed.early)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await trio.aclose_forcefully(routed.stream)
        return
    await handler.relay(
        DialedConnection(
            client=conn.stream,
            target=routed.stream,
            identity=identity,
            dialed=routed.dialed,
            conn=conn,
        )
    )


async def _answer(channel: ControlChannel, message: dict[str, Any]) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await channel.send(message)
