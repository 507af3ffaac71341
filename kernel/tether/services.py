"""What a plugin's long-running service receives, and what it hands back to ``tetherd``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

if TYPE_CHECKING:
    from tether.auth.joins import JoinResult
    from tether.config import Config
    from tether.plugins import TetherPluginManager

__all__ = ["HostIssuer", "Service", "ServiceContext"]


@attrs.frozen
class Service:
    """A long-running task ``tetherd`` starts with ``nursery.start(run)``.

    :param name: shown in logs and errors.
    :param run: ``async def run(task_status)``; call ``task_status.started()`` once ready,
        then run until cancelled.
    """

    name: str
    run: Callable[..., Awaitable[None]]


class HostIssuer(Protocol):
    """What the auth service in this process offers a host beside it: its certificates
    without a join token (it needs no proof). The kernel's node agent uses it."""

    async def issue_host_identity(
        self,
        *,
        role: str,
        host_id: str,
        hostname: str,
        addresses: Sequence[str],
        ssh_public_key: str,
        tls_public_key_pem: str,
        roles: Sequence[str] | None = None,
    ) -> JoinResult:
        """Issue the SSH host and X.509 certificates of a host of ``role``, carrying the host
        roles ``roles`` (a node: those of the protocols it runs)."""
        ...


@attrs.define
class ServiceContext:
    """The running daemon as services see it.

    :param config: the loaded configuration.
    :param pm: the plugin manager.
    :param nursery: the daemon's nursery; services that start helpers own their own nursery.
    :param auth_addr: where the auth service of this process listens (``host:port``), or None
        when this daemon runs no auth service.
    :param local_auth: that auth service, to issue a host's certificates without a token;
        None when this daemon runs none.
    :param on_stop: awaited, in order, when the daemon is asked to stop (SIGTERM), before
        its tasks are cancelled: the place for graceful steps such as telling tunnel agents
        to move to another proxy.
    """

    config: Config
    pm: TetherPluginManager
    nursery: trio.Nursery
    auth_addr: str | None = None
    local_auth: HostIssuer | None = None
    on_stop: list[Callable[[], Awaitable[None]]] = attrs.field(factory=list)
