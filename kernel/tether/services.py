"""What a plugin's long-running service receives, and what it hands back to ``tetherd``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    from tether.config import Config
    from tether.plugins import TetherPluginManager

__all__ = ["Service", "ServiceContext"]


@attrs.frozen
class Service:
    """A long-running task ``tetherd`` starts with ``nursery.start(run)``.

    :param name: shown in logs and errors.
    :param run: ``async def run(task_status)``; call ``task_status.started()`` once ready,
        then run until cancelled.
    """

    name: str
    run: Callable[..., Awaitable[None]]


@attrs.define
class ServiceContext:
    """The running daemon as services see it.

    :param config: the loaded configuration.
    :param pm: the plugin manager.
    :param nursery: the daemon's nursery; services that start helpers own their own nursery.
    :param extras: values the kernel's services publish for plugins (``"auth"``,
        ``"tunnel_server"``, ``"proxy_addr"``, ...), keyed by name.
    :param on_stop: awaited, in order, when the daemon is asked to stop (SIGTERM), before
        its tasks are cancelled: the place for graceful steps such as telling tunnel agents
        to move to another proxy.
    """

    config: Config
    pm: TetherPluginManager
    nursery: trio.Nursery
    extras: dict[str, Any] = attrs.field(factory=dict)
    on_stop: list[Callable[[], Awaitable[None]]] = attrs.field(factory=list)
