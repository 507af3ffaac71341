"""HTTPS+JSON requests to Tether servers, with failures turned into one-line errors.

Both the auth API client and the anonymous proxy client go through :func:`request_json`, so a
user sees the same clear message whichever path failed: an untrusted server certificate, a
client certificate the server refused (expired, foreign CA, missing: the server's TLS alert
says which), an unreachable address, or an error the server reported (rebuilt as the same
:class:`~tether.errors.TetherError` class by :func:`tether.wire.error_from_json`).
"""

from __future__ import annotations

import json
import re
import ssl
from typing import TYPE_CHECKING, Any

from tether.errors import ConnectionLost, TetherError, TrustError, Unreachable
from tether.pki import UnexpectedPeerKind
from tether.wire import error_from_json

if TYPE_CHECKING:  # `tether ssh` reads describe() and sends no HTTP: it need not load httpx
    import httpx

__all__ = ["describe", "json_or_none", "request_body", "request_json", "root_cause"]

#: TLS alerts a Tether server sends when it refuses a client certificate: (why, what to do)
_REFUSALS = {
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": ("it has expired", "run `tether login` again"),
    "TLSV1_ALERT_UNKNOWN_CA": (
        "it was signed by a CA the server does not trust",
        "log in to this cluster with `tether login`",
    ),
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": ("none was presented", "run `tether login` first"),
}


def root_cause(
    exc: BaseException, kind: type[BaseException] = BaseException
) -> BaseException | None:
    """The first cause of type ``kind`` in ``exc``'s chain, or (for the default ``kind``) the
    innermost cause with a message. httpx under trio wraps ssl errors several levels deep with
    empty messages on the way, and trio's connect puts the error of each address tried in an
    exception group: the chain goes on through the group's first error, so that a user reads
    "Connection refused", never "(1 sub-exception)"."""
    found = None
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BaseExceptionGroup):
            seen = seen.exceptions[0]
            continue
        if isinstance(seen, kind) and str(seen):
            if kind is not BaseException:
                return seen
            found = seen
        seen = seen.__cause__ or seen.__context__
    return found


def describe(exc: BaseException) -> str:
    """What went wrong, in a few words: the operating system's for a socket error
    (``Connection refused``, ``Name or service not known``), else the message of the
    innermost cause (:func:`root_cause`)."""
    cause = root_cause(exc) or exc
    if isinstance(cause, ssl.SSLError):
        # "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)": the middle
        return re.sub(r"^\[[^]]*\] | \(_ssl\.c:\d+\)$", "", str(cause))
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.rpartition(": ")[2]
    return str(cause) or type(cause).__name__


async def request_json(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    untrusted_hint: str,
    **kwargs: Any,
) -> Any:
    """Send one request and return the decoded JSON body (None for a body that is not JSON).

    :param untrusted_hint: what to tell a user whose machine does not trust the server.
    :raises TrustError: the server's certificate is not trusted, or it refused ours.
    :raises TetherError: the server is unreachable, or answered with an error.
    """
    return json_or_none(
        await request_body(http, method, path, untrusted_hint=untrusted_hint, **kwargs)
    )


def json_or_none(body: bytes) -> Any:
    """``body`` decoded as JSON, or None when it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return None


async def request_body(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    untrusted_hint: str,
    **kwargs: Any,
) -> bytes:
    """Send one request and return its body as it came, once its status says it succeeded:
    for a caller that passes an answer on without reading it (a proxy forwarding auth's).

    :raises TrustError: as :func:`request_json`.
    :raises Unreachable: no connection could be made (nothing reached the server).
    :raises ConnectionLost: the connection failed once made (the request may have reached it).
    :raises TetherError: the server answered with an error.
    """
    import httpx

    url = http.base_url
    server = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
    try:
        response = await http.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        impostor = root_cause(exc, UnexpectedPeerKind)
        if impostor is not None:
            raise TrustError(
                f"{server} is not the server this connection expects: {impostor}",
                hint="check the address; another host of the cluster answers there, which "
                "its administrator should know about",
            ) from None
        if root_cause(exc, ssl.SSLCertVerificationError) is not None:
            raise TrustError(
                f"the server at {server} presented a certificate this machine does not trust",
                hint=untrusted_hint,
            ) from None
        alert = root_cause(exc, ssl.SSLError)
        reason = getattr(alert, "reason", None) or ""
        if reason in _REFUSALS:
            why, hint = _REFUSALS[reason]
            raise TrustError(f"{server} refused your certificate: {why}", hint=hint) from None
        reason = describe(exc)
        if alert is not None and isinstance(exc, httpx.ConnectError):
            raise TetherError(
                f"the TLS handshake with {server} failed: {reason}",
                hint="check the address: it should be the port of a Tether proxy (or auth service)",
            ) from None
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            raise Unreachable(
                f"cannot connect to {server}: {reason}",
                reason=reason,
                hint="check the address, and that Tether runs there and is reachable from "
                "this machine",
            ) from None
        raise ConnectionLost(f"connection to {server} failed: {reason}") from None
    if response.status_code >= 400:
        raise error_from_json(json_or_none(response.content), response.status_code)
    return response.content
