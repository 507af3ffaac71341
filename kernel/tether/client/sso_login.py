"""``tether login --auth=NAME`` with a single sign-on connector: the client's half.

The client listens on 127.0.0.1 (a port of its own), asks the proxy to start the login with its
public keys, that listener's URL and the hash of a secret it keeps, and shows the user the
identity provider's URL. The provider sends the browser back to the proxy, which asks the user
to approve the login and then sends the browser on to the listener with the login's id and a
one-time code; the client then collects its certificates from the proxy with the secret and
that code. The certificates never travel in a URL, and only this client can collect them:
whoever the login's link is shared with signs in for the client on their own machine, never
for this one.
"""

from __future__ import annotations

import logging
import secrets
import urllib.parse
import webbrowser
from collections.abc import Callable
from typing import Any

import h11
import trio

from tether import pki
from tether.auth.sso_flows import REQUEST_TTL, hash_client_secret
from tether.client.web import proxy_call
from tether.errors import TetherError

__all__ = ["CALLBACK_PATH", "sso_login"]

log = logging.getLogger(__name__)

CALLBACK_PATH = "/callback"
_DONE_PAGE = (
    b"<!doctype html><title>Tether</title><h1>Back to the terminal</h1>"
    b"<p>The identity provider answered; <code>tether login</code> shows the result.</p>"
)


async def sso_login(
    proxy: str,
    context: Any,
    connector: str,
    key: pki.PrivateKey,
    *,
    ttl_seconds: float | None,
    show_url: Callable[[str], None],
    open_browser: bool,
) -> dict[str, Any]:
    """Log in through ``connector``; returns the login result (certificates), as
    ``/webapi/login`` does.

    :param show_url: tells the user where to log in (the CLI prints it).
    :param open_browser: also open the URL in this machine's browser.
    :raises TetherError: the login was refused (with the provider's or Tether's reason), or
        did not finish while the cluster kept it open (:data:`REQUEST_TTL`).
    """
    timeout = REQUEST_TTL.total_seconds()
    secret = secrets.token_urlsafe(32)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        arrived: trio.MemorySendChannel[tuple[str, str]]
        arrived, waiting = trio.open_memory_channel[tuple[str, str]](1)
        nursery.start_soon(_serve_callbacks, listeners, arrived)
        begun = await proxy_call(
            proxy,
            "POST",
            "/webapi/sso/login",
            context,
            json={
                "connector": connector,
                "client_redirect_url": f"http://127.0.0.1:{port}{CALLBACK_PATH}",
                "client_secret_hash": hash_client_secret(secret),
                "ssh_public_key": pki.ssh_public_key_line(key.public_key()),
                "tls_public_key": pki.public_key_to_pem(key.public_key()).decode(),
                "ttl_seconds": ttl_seconds,
            },
        )
        url = str(begun["auth_url"])
        show_url(url)
        if open_browser:
            await trio.to_thread.run_sync(webbrowser.open, url)
        with trio.move_on_after(timeout) as waited:
            while (callback := await waiting.receive())[0] != begun["request_id"]:
                log.warning("ignoring a callback for another login (%s)", callback[0])
        nursery.cancel_scope.cancel()
    if waited.cancelled_caught:
        raise TetherError(
            f"the login through {connector!r} did not finish in {int(timeout)} s",
            hint="open the URL in a browser and log in there, then try again",
        )
    body: dict[str, Any] = await proxy_call(
        proxy,
        "POST",
        "/webapi/sso/collect",
        context,
        json={"request_id": begun["request_id"], "client_secret": secret, "code": callback[1]},
    )
    return body


async def _serve_callbacks(
    listeners: list[trio.SocketListener], arrived: trio.MemorySendChannel[tuple[str, str]]
) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(10):  # a browser that connects and says nothing
                try:
                    callback = await _one_request(stream)
                except (h11.ProtocolError, trio.BrokenResourceError) as exc:
                    log.info("a bad request on the login listener: %s", exc)
                    return
                if callback:
                    await arrived.send(callback)

    await trio.serve_listeners(handle, listeners)


async def _one_request(stream: trio.abc.Stream) -> tuple[str, str] | None:
    """Answer one HTTP request; returns the login id and one-time code a
    ``GET /callback?request=ID&code=CODE`` carried."""
    conn = h11.Connection(h11.SERVER)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(bytes(data))
            if not data and conn.their_state is not h11.DONE:
                return None
            continue
        if isinstance(event, h11.Request):
            break
        return None  # garbage or a closed connection: h11 raised or said so
    target = urllib.parse.urlsplit(event.target.decode("latin-1"))
    query = dict(urllib.parse.parse_qsl(target.query))
    found = (
        event.method == b"GET"
        and target.path == CALLBACK_PATH
        and "request" in query
        and "code" in query
    )
    body = _DONE_PAGE if found else b"not found"
    headers = [
        ("content-type", "text/html; charset=utf-8" if found else "text/plain"),
        ("content-length", str(len(body))),
        ("connection", "close"),
    ]
    for outgoing in (
        h11.Response(status_code=200 if found else 404, headers=headers),
        h11.Data(data=body),
        h11.EndOfMessage(),
    ):
        await stream.send_all(conn.send(outgoing) or b"")
    return (query["request"], query["code"]) if found else None
