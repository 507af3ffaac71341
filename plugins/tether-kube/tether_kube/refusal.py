"""What the proxy answers kubectl when routing refuses a connection: a Kubernetes ``Status``.

A connection routed by its TLS server name has no dial exchange to carry a refusal, and
kubectl reads HTTP: so the proxy reads the request's head and answers it as an API server
would (``Error from server (NotFound): Kubernetes cluster 'east' not found in cluster
'leaf' ...``), then closes.
"""

from __future__ import annotations

import logging

import h11
import trio

from tether.api import (
    AccessDenied,
    AmbiguousTarget,
    NotFound,
    ProxyConnection,
    TargetOffline,
    TetherError,
)
from tether_kube.status import status_body

__all__ = ["refuse_at_proxy", "status_code"]

log = logging.getLogger(__name__)

#: How long the proxy waits for the head of the request it refuses.
READ_TIMEOUT = 5.0


def status_code(error: TetherError) -> int:
    """The HTTP code of a routing refusal."""
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, AccessDenied):
        return 403
    if isinstance(error, TargetOffline):
        return 503
    if isinstance(error, AmbiguousTarget):
        return 400
    return 502


async def refuse_at_proxy(conn: ProxyConnection, error: TetherError) -> None:
    """Answer the connection's first request with ``error`` as a ``Status``, then close."""
    message = error.message + (f" ({error.hint})" if error.hint else "")
    code = status_code(error)
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    try:
        with trio.move_on_after(READ_TIMEOUT):
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await conn.stream.receive_some(65536))
                    continue
                break
        if connection.their_state is h11.IDLE or connection.their_state is h11.ERROR:
            return  # no request came: nothing to answer
        body = status_body(code, message)
        head = connection.send(
            h11.Response(
                status_code=code,
                headers=[
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            )
        )
        await conn.stream.send_all((head or b"") + body)
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("kube: could not answer %s's refused connection: %s", conn.peer, exc)
