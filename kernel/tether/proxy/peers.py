"""A cluster's proxies know one another, so that tunnel agents reach every one of them.

Each proxy publishes its own ``proxy`` entry (its public address) with an expiry it renews,
and reads everyone's. The tunnel server tells each agent (a leaf's proxy, a node in tunnel
mode) the whole list in its hello and in every heartbeat answer; the agent's pool then keeps a
tunnel to each proxy (:class:`tether.tunnel.agent.AgentPool`). That is high availability: with
one proxy down, every agent still holds a tunnel to the others, and users reach the cluster's
resources through whichever proxy (or load balancer) they use.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping, Sequence

import trio

from tether import __version__
from tether.auth.http_client import AuthClient
from tether.errors import TetherError
from tether.tunnel.control import ProxyInfo

__all__ = ["PUBLISH_INTERVAL", "PUBLISH_TTL", "ProxyPeers"]

log = logging.getLogger(__name__)

#: How often a proxy renews its entry and re-reads the others'.
PUBLISH_INTERVAL = 5.0
#: A proxy that stopped renewing its entry leaves the list after this long.
PUBLISH_TTL = datetime.timedelta(seconds=30)


class ProxyPeers:
    """This proxy's entry in the cluster's list of proxies, and the list as last read.

    :param auth: a client of the auth API authenticated as this proxy.
    :param proxy_id: this proxy's host id (the name of its entry).
    :param public_addr: where users and agents reach this proxy itself.
    :param root_tunnels: each root cluster this proxy keeps tunnels to -> the root proxies
        a tunnel is up to (:meth:`tether.proxy.root_tunnels.RootTunnels.connected`), reported
        in the entry's status for ``tetherctl status``.
    """

    def __init__(
        self,
        auth: AuthClient,
        proxy_id: str,
        public_addr: Callable[[], str],
        root_tunnels: Callable[[], Mapping[str, Sequence[str]]] = dict,
    ) -> None:
        self._auth = auth
        self.proxy_id = proxy_id
        self._public_addr = public_addr
        self._root_tunnels = root_tunnels
        self._others: list[ProxyInfo] = []

    def proxies(self) -> list[ProxyInfo]:
        """Every proxy of the cluster: this one first, then the others alive at the last read."""
        return [ProxyInfo(self.proxy_id, self._public_addr()), *self._others]

    async def publish_and_read(self) -> None:
        """Renew this proxy's entry, then read everyone's.

        :raises TetherError: auth could not be reached or refused.
        """
        entry = {
            "kind": "proxy",
            "version": "v2",
            "metadata": {"name": self.proxy_id},
            "spec": {"public_addr": self._public_addr(), "version": __version__},
            "status": {
                "root_tunnels": {
                    root: sorted(proxies) for root, proxies in self._root_tunnels().items()
                }
            },
        }
        await self._auth.publish(entry, PUBLISH_TTL)
        docs = await self._auth.get_resources("proxy")
        self._others = sorted(
            (
                ProxyInfo(str(doc["metadata"]["name"]), str(doc["spec"]["public_addr"]))
                for doc in docs
                if doc["metadata"]["name"] != self.proxy_id
            ),
            key=lambda p: p.id,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish and read every :data:`PUBLISH_INTERVAL` until cancelled."""
        task_status.started()
        while True:
            try:
                await self.publish_and_read()
            except TetherError as exc:
                log.warning("could not renew proxy %s's entry: %s", self.proxy_id, exc)
            await trio.sleep(PUBLISH_INTERVAL)
