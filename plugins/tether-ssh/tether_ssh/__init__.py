"""SSH access for Tether: the node's SSH server, the protocol the proxy routes, and the client.

The SSH protocol comes from asyncssh, an asyncio library; it runs inside ``trio_asyncio`` at
this plugin's boundary (:mod:`tether_ssh.server`, :mod:`tether_ssh.client`) and nothing else
sees asyncio. The kernel decides who may log in (:func:`tether.api.verify_ssh_user_cert`, then
RBAC through an :class:`Authorizer`); this plugin only asks. Modules: ``server`` (the node's
SSH server), ``agent`` (SSH inside the kernel's node agent), ``frontdoor`` (the protocol: ALPN
``tether-ssh/1``, whose connections the kernel routes), ``inventory`` (the ``node`` kind, SSH's
target kind), ``forwards`` (``-L``, ``-R``, ``-D`` as ``ssh`` reads them), ``options``
(``-o``), ``socks`` (``-D``'s handshake), ``client`` and ``cli`` (``tether ssh``, ``ls``,
``scp``, ``config``, ``proxy ssh``), ``aio_transport`` (the asyncio transport both ends run
asyncssh on, over a trio stream), ``channel_sizes`` (the SSH packet size both ends advertise).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether_ssh.client import ClientCredentials, copy_files, run_command
    from tether_ssh.forwards import LocalForward
    from tether_ssh.server import (
        AuditSink,
        Authorizer,
        NodeIdentity,
        Permissions,
        RoleSetAuthorizer,
        SSHServer,
        SSHServerStatistics,
        open_ssh_server,
        serve_ssh,
    )

__all__ = [
    "AuditSink",
    "Authorizer",
    "ClientCredentials",
    "LocalForward",
    "NodeIdentity",
    "Permissions",
    "RoleSetAuthorizer",
    "SSHServer",
    "SSHServerStatistics",
    "copy_files",
    "open_ssh_server",
    "run_command",
    "serve_ssh",
]

_MODULES = {
    "ClientCredentials": "tether_ssh.client",
    "copy_files": "tether_ssh.client",
    "run_command": "tether_ssh.client",
    "LocalForward": "tether_ssh.forwards",
}


def __getattr__(name: str) -> Any:
    # Imported on first use: every tether, tetherctl and tetherd start loads this package as a
    # plugin, and asyncssh alone costs a tenth of a second that most commands never need.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_MODULES.get(name, "tether_ssh.server"))
    return getattr(module, name)
