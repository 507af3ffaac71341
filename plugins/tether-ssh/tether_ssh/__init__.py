"""SSH access for Tether: the node's SSH server, authenticating users by Tether certificates.

The SSH protocol comes from asyncssh, an asyncio library; it runs inside ``trio_asyncio`` and
nothing outside :mod:`tether_ssh.server` sees asyncio. The kernel decides who may log in
(:func:`tether.pki.verify_ssh_user_cert`, then RBAC through an :class:`Authorizer`); this
plugin only asks.
"""

from __future__ import annotations

from tether_ssh.server import Authorizer, NodeIdentity, RoleSetAuthorizer, serve_ssh

__all__ = ["Authorizer", "NodeIdentity", "RoleSetAuthorizer", "serve_ssh"]
