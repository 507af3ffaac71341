"""How often one client address may call the endpoints anyone can call: token buckets, sans-IO.

The proxy's endpoints that take no certificate (password login, sign-up, SSO login, joining,
trusted cluster validation) cost the cluster work or storage for whoever reaches the port: an
argon2 hash for every password tried, a stored request for every SSO login started. The account
lockout stops guessing one user's password, not a flood across many names. A bucket per client
address lets a person or a script through at once (``burst``) and holds a flood to ``average``
requests per ``period``. The caller passes the time in, so this is pure and tested without
sleeping.
"""

from __future__ import annotations

import datetime

__all__ = ["RateLimiter"]


class RateLimiter:
    """One token bucket per client: ``average`` requests per ``period`` sustained, ``burst``
    at once; the least recently seen client is dropped beyond ``max_clients``.

    A dropped client starts again with a full bucket, which is what it would have had after a
    quiet spell anyway; the bound keeps a scan from many addresses from growing memory.
    """

    def __init__(
        self,
        *,
        average: int,
        burst: int,
        period: datetime.timedelta,
        max_clients: int = 100_000,
    ) -> None:
        self.average = average
        self.burst = burst
        self.period = period
        self._per_second = average / period.total_seconds()
        self._max_clients = max_clients
        # client -> (tokens left, when counted); dict order is least recently seen first
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str, now: float) -> float:
        """Spend one request of ``client``'s at ``now`` (seconds on a monotonic clock).

        :returns: 0.0 when the request may go ahead; otherwise the seconds until it could,
            and nothing was spent.
        """
        tokens, counted = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - counted) * self._per_second)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._per_second
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self._max_clients:
            del self._buckets[next(iter(self._buckets))]
        return wait

    def __len__(self) -> int:
        return len(self._buckets)
