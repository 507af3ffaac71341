"""The client's half of the front door: reach a target through the proxy, for any protocol.

``tether ssh`` (and later ``tether db``, ``tether kube``, and third-party clients) connect
to the proxy's one port with the protocol's ALPN id, present the user's certificate, and send
one :class:`~tether.dial.DialRequest`; the proxy answers with one line, and after ``dialed``
the connection is a byte stream to the target (see ``docs/tunnel-protocol.md``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from tether import pki
from tether.dial import (
    DIAL,
    HOST_CAS,
    LIST,
    DialedTarget,
    DialRequest,
    parse_error,
    parse_host_cas,
    parse_targets,
)
from tether.errors import AccessDenied, TetherError, TrustError
from tether.httpclient import describe
from tether.tlsstream import TLSStream
from tether.tunnel.control import MAX_LISTING, MAX_MESSAGE, ControlChannel

__all__ = ["cluster_host_cas", "list_targets", "open_target_stream", "serve_local_listener"]

log = logging.getLogger(__name__)

#: How long the proxy may take to answer (it reaches the target first, maybe through a leaf).
ANSWER_TIMEOUT = 20.0


class _Prefixed(trio.abc.Stream):
    """A stream that first yields bytes already read past the proxy's answer."""

    def __init__(self, stream: TLSStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _connect(proxy: str, context: ssl.SSLContext, alpn: str, protocol: str) -> TLSStream:
    host, _, port_text = proxy.rpartition(":")
    try:
        with trio.fail_after(ANSWER_TIMEOUT):
            stream = await TLSStream.connect(
                host.strip("[]"), int(port_text), context, server_hostname=host.strip("[]")
            )
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, pki.UnexpectedPeerKind):
            raise TrustError(
                f"{proxy} is not the cluster's proxy: {cause}",
                hint="check the address; another host of the cluster answers there, which "
                "its administrator should know about",
            ) from None
        raise TetherError(
            f"cannot reach the proxy at {proxy}: "
            + ("timed out" if isinstance(exc, trio.TooSlowError) else describe(exc)),
            hint="check that the proxy is up and reachable from this machine, or log in "
            "again with `tether login`",
        ) from None
    if log.isEnabledFor(logging.DEBUG):  # what benchmarks/ssh_session.py records
        cipher = stream.socket.cipher()
        log.debug(
            "negotiated with the proxy at %s: %s %s",
            proxy,
            stream.version(),
            cipher[0] if cipher else "no cipher",
        )
    if stream.selected_alpn_protocol() != alpn:
        await trio.aclose_forcefully(stream)
        raise TetherError(
            f"the proxy at {proxy} has no {protocol} front door",
            hint=f"install the plugin that serves {protocol} on the proxy",
        )
    return stream


def _refused(proxy: str, exc: BaseException) -> TetherError:
    """What a connection the proxy broke off means. With TLS 1.3 the proxy judges the
    client certificate after the client's handshake ends, so its verdict (an alert)
    arrives on the first read."""
    reason = str(exc.__cause__ or exc)
    if "EXPIRED" in reason.upper():
        return AccessDenied(
            "the proxy refused your certificate: it has expired", hint="run `tether login`"
        )
    return TetherError(
        f"the proxy at {proxy} closed the connection: {reason or 'no reason given'}",
        hint="log in again with `tether login`",
    )


async def _ask(
    proxy: str,
    context: ssl.SSLContext,
    alpn: str,
    protocol: str,
    request: DialRequest,
    *,
    max_answer: int = MAX_MESSAGE,
) -> tuple[TLSStream, ControlChannel, dict[str, Any]]:
    """Connect to the front door, send one request, and read the proxy's answer.

    :raises TetherError: the answer is an error (raised as its kind, with its hint), the
        proxy broke the connection, or it answered something else than a message.
    """
    stream = await _connect(proxy, context, alpn, protocol)
    channel = ControlChannel(stream, max_message=max_answer)
    try:
        await channel.send(request.to_fields())
        with trio.fail_after(ANSWER_TIMEOUT):
            answer = await channel.receive()
        if answer is None:
            raise AccessDenied(
                f"the proxy at {proxy} closed the connection",
                hint="your certificate may have expired: run `tether login`",
            )
        if answer["type"] == "error":
            raise parse_error(answer)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        await trio.aclose_forcefully(stream)
        raise _refused(proxy, exc) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, channel, answer


async def list_targets(
    proxy: str, context: ssl.SSLContext, *, alpn: str, protocol: str, cluster: str
) -> list[dict[str, Any]]:
    """The targets of ``cluster`` (this proxy's or a leaf's) the user may see, as documents.

    :param context: as for :func:`open_target_stream`.
    :param alpn: the protocol's ALPN id; ``protocol`` is its name in messages.
    """
    request = DialRequest(op=LIST, cluster=cluster)
    stream, _, answer = await _ask(proxy, context, alpn, protocol, request, max_answer=MAX_LISTING)
    await trio.aclose_forcefully(stream)
    return parse_targets(answer)


async def cluster_host_cas(
    proxy: str, context: ssl.SSLContext, *, alpn: str, protocol: str, cluster: str
) -> list[str]:
    """The SSH host CA lines of ``cluster`` (this proxy's or a leaf's), from the proxy."""
    request = DialRequest(op=HOST_CAS, cluster=cluster)
    stream, _, answer = await _ask(proxy, context, alpn, protocol, request)
    await trio.aclose_forcefully(stream)
    return parse_host_cas(answer)


async def open_target_stream(
    proxy: str,
    context: ssl.SSLContext,
    *,
    alpn: str,
    protocol: str,
    cluster: str,
    target: str,
    port: int = 0,
) -> tuple[trio.abc.Stream, DialedTarget]:
    """Reach ``target`` of ``cluster`` (this proxy's or a leaf's) through the front door.

    :param context: an ``ssl.SSLContext`` that verifies the proxy, presents the user's X.509
        certificate and offers ``alpn`` (:func:`tether.client.profile.profile_ssl_context`).
    :param protocol: the protocol's name, for messages (``SSH``).
    :returns: the byte stream to the target's server, and which target it is.
    :raises NotFound, AmbiguousTarget, AccessDenied, TargetOffline: what the proxy said
        (or the leaf or agent behind it), with its hint.
    :raises TetherError: the proxy cannot be reached, does not serve the protocol, or the
        target is offline.
    """
    request = DialRequest(op=DIAL, cluster=cluster, target=target, port=port)
    stream, channel, answer = await _ask(proxy, context, alpn, protocol, request)
    try:
        dialed = DialedTarget.from_answer(answer)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return _Prefixed(stream, channel.take_buffered()), dialed


async def serve_local_listener(
    listeners: Sequence[trio.SocketListener],
    open_stream: Callable[[], Awaitable[trio.abc.Stream]],
    *,
    refused: Callable[[trio.abc.Stream, TetherError], Awaitable[None]] | None = None,
) -> None:
    """Carry every connection to ``listeners`` to a stream of its own from ``open_stream``
    (``open_target_stream`` for one target), until cancelled.

    The way in for programs that can offer neither ALPN nor a server name (``psql``,
    ``mysql``, ``nc``): a listener on 127.0.0.1 that presents the user's certificate for them
    (``docs/plugins.md``, "A local listener"). A connection whose stream cannot be opened
    (the proxy refused, the target is offline) is handed to ``refused`` with the error, for
    the protocol to tell the program in its own framing (a PostgreSQL ``ErrorResponse``) and
    the user on standard error; without it the connection is closed. The listener goes on.
    """
    from tether.tunnel.forward import splice  # the tunnel's server side: not at start-up

    async def carry(local: trio.SocketStream) -> None:
        try:
            remote = await open_stream()
        except TetherError as exc:
            try:
                if refused is not None:
                    await refused(local, exc)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the program went away first: nothing left to tell it
            finally:
                await trio.aclose_forcefully(local)
            return
        await splice(local, remote)

    await trio.serve_listeners(carry, list(listeners))
