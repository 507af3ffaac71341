"""The SSH front door: ALPN ``tether-ssh/1`` on the proxy's public port.

The kernel serves the exchange on it (:mod:`tether.proxy.front_door`, ``docs/tunnel-protocol.md``):
it finds the node among those the user may see, in this cluster or a leaf, reaches it and hands
the connection over. What is SSH's is only this: the ALPN id, the kind of target (``node``),
and how the proxy relays a session: bytes copied both ways, since the SSH session runs end to
end between the client and the node, which authenticates the user's SSH certificate itself.
The proxy never holds a key that could open a session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `tether ssh` reads the constants; only the proxy builds the handler
    from tether.api import ProtocolHandler

__all__ = ["FRONT_DOOR_ALPN", "PROTOCOL", "SSH_TARGET", "protocol_handler"]

FRONT_DOOR_ALPN = "tether-ssh/1"
#: The protocol's name: the target a proxy opens at a leaf's proxy, and through a node's
#: tunnel to reach its SSH server.
PROTOCOL = "ssh"
SSH_TARGET = PROTOCOL
#: In messages.
TITLE = "SSH"


def protocol_handler() -> ProtocolHandler:
    from tether.api import ProtocolHandler
    from tether_ssh.inventory import NODE_TARGET

    return ProtocolHandler(
        name=PROTOCOL,
        alpn=(FRONT_DOOR_ALPN,),
        target_kind=NODE_TARGET,
        title=TITLE,
        port_hint="reach other ports through SSH port forwarding (-L), which your roles govern",
    )
