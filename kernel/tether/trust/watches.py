"""Answering hosts' watches of the trust: ``GET /v1/trust?known=REV&wait=SECONDS``.

Auth answers them from the snapshot it builds from the store
(:class:`~tether.auth.trust_feed.TrustFeed`); a proxy answers its nodes in tunnel mode from
the copy auth pushes to it (:class:`~tether.trust.cache.TrustCache`), so that a thousand
nodes behind one proxy cost auth one watch, not a thousand. Both must answer alike (the same
body, the same revision, the same waiting and the same caps), so the answering lives here
once and each source only says what its snapshot is and when it changes.
"""

from __future__ import annotations

import abc
import json

import trio

from tether import pki
from tether.errors import AccessDenied, RateLimited

__all__ = ["MAX_WAIT", "WATCHES_PER_CALLER", "TrustWatches"]

#: The longest a reader's watch waits for a change. Below the 30 s a proxy's client of auth
#: waits for an answer (:class:`~tether.auth.http_client.AuthClient`'s timeout).
MAX_WAIT = 20.0
#: Watches one caller (one host) may hold open at once: one is what a host needs; a few more
#: cover a reconnect racing the old request, and the cap keeps one host from tying up a server.
WATCHES_PER_CALLER = 4
#: identity kinds that are people, not hosts: they never read the trust
_PEOPLE = ("user", "admin")


class TrustWatches(abc.ABC):
    """A source of trust snapshots that answers hosts' watches of it.

    A subclass names its snapshot (:attr:`revision`), serializes it (:meth:`body`) and calls
    :meth:`_revision_moved` when the revision changes; this class decides who may read, how
    long a watch waits and wakes the waiting ones.
    """

    def __init__(self) -> None:
        #: watches under way, by caller
        self._watches: dict[tuple[str, str, str], int] = {}
        self._changed = trio.Event()

    @property
    @abc.abstractmethod
    def cluster_name(self) -> str:
        """The cluster whose trust this is."""

    @property
    @abc.abstractmethod
    def revision(self) -> str:
        """The name of the current snapshot, as auth gave it."""

    @abc.abstractmethod
    def body(self) -> bytes:
        """The current snapshot as the auth API sends it: its JSON with its ``revision``."""

    async def wait_changed(self, known: str | None) -> None:
        """Return once :attr:`revision` is not ``known`` (at once if it is not now); a caller
        that waits only so long wraps this in ``trio.move_on_after``."""
        while self.revision == known:
            await self._changed.wait()

    def _revision_moved(self) -> None:
        """Wake whoever waits for the revision to change: the subclass changed it."""
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def check_reader(self, identity: pki.Identity) -> None:
        """Refuse who may not read the snapshot: it is for the cluster's own hosts (proxies,
        nodes, and whatever agent kinds plugins add), never for people (users, whose
        certificates it decides, and admins) nor for another cluster's hosts.

        :raises AccessDenied: a user or admin, or an identity of another cluster.
        """
        if identity.kind in _PEOPLE or identity.cluster != self.cluster_name:
            raise AccessDenied(
                f"only the hosts of cluster {self.cluster_name!r} (its proxies, nodes and "
                "agents) may read its trust"
            )

    async def answer(self, identity: pki.Identity, known: str | None, wait: float) -> bytes:
        """The answer to ``GET /v1/trust?known=REV&wait=SECONDS``: the snapshot at once when
        its revision is not ``known``; else the new one as soon as it changes, or after
        ``wait`` seconds (at most :data:`MAX_WAIT`) only ``{"revision", "unchanged": true}``.

        :raises AccessDenied: see :meth:`check_reader`.
        :raises RateLimited: the caller holds :data:`WATCHES_PER_CALLER` watches already.
        """
        self.check_reader(identity)
        wait = min(max(wait, 0.0), MAX_WAIT)
        if wait and self.revision == known:
            caller = (identity.cluster, identity.kind, identity.username)
            if self._watches.get(caller, 0) >= WATCHES_PER_CALLER:
                raise RateLimited(
                    f"{identity.kind} {identity.username!r} already watches the trust "
                    f"{WATCHES_PER_CALLER} times",
                    hint="wait for an answer before asking again",
                )
            self._watches[caller] = self._watches.get(caller, 0) + 1
            try:
                with trio.move_on_after(wait):
                    await self.wait_changed(known)
            finally:
                self._watches[caller] -= 1
                if not self._watches[caller]:
                    del self._watches[caller]
        return self.unchanged_body() if self.revision == known else self.body()

    def unchanged_body(self) -> bytes:
        """The answer to a reader that holds the current snapshot already."""
        return json.dumps({"revision": self.revision, "unchanged": True}).encode()
