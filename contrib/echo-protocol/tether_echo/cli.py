"""``tether echo ls``, ``connect`` and ``listen``: the client side.

The kernel's client half of the front door does the work: it connects to the proxy's one
port with the protocol's ALPN id, presents the user's certificate and asks for a target of a
cluster (the proxy's own or a leaf's); the answer is a byte stream to the node's echo service.
``listen`` shows the way in for programs that can offer neither ALPN nor a server name (as
``psql`` cannot): a local listener that opens one such stream per connection.
"""

from __future__ import annotations

import sys

import click
import trio

from tether.api import (
    AccessDenied,
    KindRegistry,
    TetherError,
    cluster_option,
    emit_table,
    format_option,
    list_targets,
    open_target_stream,
    output,
    profile_ssl_context,
    require_profile,
    resource_from_dict,
    run_async,
    serve_local_listener,
)
from tether_echo.kind import ECHO
from tether_echo.wire import MAX_LINE, ProtocolError, parse_first_line

__all__ = ["ALPN", "TITLE", "echo_group"]

#: The ALPN id of the echo front door on the proxy's public port.
ALPN = "tether-echo/1"
#: The protocol's name in messages.
TITLE = "echo"

_KINDS = KindRegistry([ECHO], plugin="echo")


class _Lines:
    """Lines read from a byte stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def next_line(self) -> bytes:
        """The next line, without its newline; ``b""`` plus what was left at the end."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise TetherError("the echo service sent a line too long")
            data = await self._stream.receive_some()
            if not data:
                rest, self._buffer = bytes(self._buffer), bytearray()
                if rest:
                    return rest
                raise TetherError("the echo service closed the connection")
            self._buffer += data
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line


@click.group("echo")
def echo_group() -> None:
    """Reach the echo service of nodes (the contrib protocol example)."""


@echo_group.command("ls")
@cluster_option("List the echo services of this cluster (default: the login's).")
@format_option()
@run_async
async def ls(cluster: str | None, fmt: str) -> None:
    """List the echo services you can reach (--format=json or yaml: the resources)."""
    profile = require_profile()
    docs = await list_targets(
        profile.proxy,
        profile_ssl_context(profile, alpn=[ALPN]),
        alpn=ALPN,
        protocol=TITLE,
        cluster=cluster or profile.cluster,
    )
    found = sorted(
        ((resource_from_dict(doc, _KINDS, source="echo"), doc) for doc in docs),
        key=lambda pair: (pair[0].spec.hostname, pair[0].metadata.name),
    )
    table = [
        (r.spec.hostname, ",".join(f"{k}={v}" for k, v in sorted(r.metadata.labels.items())))
        for r, _ in found
    ]
    output([doc for _, doc in found], fmt, text=lambda: emit_table(["Node Name", "Labels"], table))


@echo_group.command("connect")
@cluster_option("The node's cluster (default: the one logged in to).")
@click.argument("node")
@run_async
async def connect(cluster: str | None, node: str) -> None:
    """Send each line of standard input to NODE's echo service and print what comes back.

    NODE is a host name, a host id or labels (env=dev). The node's greeting, naming you as
    it sees you, goes to standard error.
    """
    profile = require_profile()
    stream, dialed = await open_target_stream(
        profile.proxy,
        profile_ssl_context(profile, alpn=[ALPN]),
        alpn=ALPN,
        protocol=TITLE,
        cluster=cluster or profile.cluster,
        target=node,
    )
    async with stream:
        lines = _Lines(stream)
        try:
            first = parse_first_line(await lines.next_line())
        except ProtocolError as exc:
            raise TetherError(f"{dialed.name} does not speak echo: {exc}") from None
        if isinstance(first, str):
            raise AccessDenied(f"echo {dialed.name!r} refused you: {first}")
        roles = ", ".join(first.roles) or "none"
        click.echo(
            f"echo {first.node}: hello {first.user} of {first.cluster} (roles: {roles})",
            err=True,
        )
        while line := await trio.to_thread.run_sync(sys.stdin.readline):
            await stream.send_all(line.encode() if line.endswith("\n") else line.encode() + b"\n")
            click.echo((await lines.next_line()).decode(errors="replace"))


@echo_group.command("listen")
@cluster_option("The node's cluster (default: the one logged in to).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="Local port (0: a free one)."
)
@click.argument("node")
@run_async
async def listen(cluster: str | None, port: int, node: str) -> None:
    """Carry each plaintext connection to 127.0.0.1:PORT to NODE's echo service.

    For programs that speak to a TCP port and can set neither ALPN nor a server name: this
    command presents your certificate to the proxy for them. Ctrl-C stops it.
    """
    profile = require_profile()
    name = cluster or profile.cluster
    context = profile_ssl_context(profile, alpn=[ALPN])
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    bound = listeners[0].socket.getsockname()[1]
    click.echo(f"listening on 127.0.0.1:{bound} for echo {node!r} of cluster {name!r}")

    async def open_stream() -> trio.abc.Stream:
        stream, _ = await open_target_stream(
            profile.proxy, context, alpn=ALPN, protocol=TITLE, cluster=name, target=node
        )
        return stream

    async def refused(local: trio.abc.Stream, exc: TetherError) -> None:
        click.echo(f"echo: {exc.message}", err=True)

    await serve_local_listener(listeners, open_stream, refused=refused)
