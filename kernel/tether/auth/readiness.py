"""Whether an auth server can serve: what ``/readyz`` answers a load balancer.

Ready means its CAs are loaded (an :class:`~tether.auth.service.AuthService` exists only once
they are) and its store answers a read within :data:`READ_TIMEOUT`. The answer is kept for
:data:`KEEP_FOR` seconds, so that however often balancers (or anyone: the route is anonymous)
ask, the store sees at most one read per interval: the route needs no rate limit of its own.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from tether.auth.authorities import CLUSTER_CA_KEYS
from tether.backend import Backend
from tether.errors import TetherError

__all__ = ["KEEP_FOR", "READ_TIMEOUT", "Readiness", "Verdict"]

#: How long the store may take to answer the probe's read before the server is not ready.
READ_TIMEOUT = 2.0
#: How long one verdict is answered again without asking the store.
KEEP_FOR = 1.0


@attrs.frozen
class Verdict:
    """Ready, or not and why (for the operator reading the balancer's log)."""

    ready: bool
    reason: str | None = None


class Readiness:
    """The probe behind ``/readyz``; one per auth server."""

    def __init__(self, backend: Backend, *, clock: Callable[[], float] = trio.current_time):
        self._backend = backend
        self._clock = clock
        self._last: tuple[float, Verdict] | None = None
        self._lock = trio.Lock()

    async def check(self) -> Verdict:
        """The verdict, from the store's answer to one read (or the last one, if recent)."""
        async with self._lock:  # concurrent asks wait for one read rather than each making one
            now = self._clock()
            if self._last is not None and now - self._last[0] < KEEP_FOR:
                return self._last[1]
            verdict = await self._probe()
            self._last = (self._clock(), verdict)
            return verdict

    async def _probe(self) -> Verdict:
        with trio.move_on_after(READ_TIMEOUT):
            try:
                # the CAs every auth server of the store signs with: a read that must succeed
                found = await self._backend.get(CLUSTER_CA_KEYS)
            except (TetherError, OSError) as exc:
                return Verdict(False, f"the storage failed to answer a read: {exc}")
            if found is None:
                return Verdict(False, "the storage does not hold the cluster's CAs")
            return Verdict(True)
        return Verdict(False, f"the storage did not answer a read within {READ_TIMEOUT:g}s")
