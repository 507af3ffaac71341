"""How often one client address may call the endpoints anyone can call: token buckets.

The proxy's endpoints that take no certificate (password login, sign-up, SSO login, joining,
trusted cluster validation) cost the cluster work or storage for whoever reaches the port: an
argon2 hash for every password tried, a stored request for every SSO login started. The account
lockout stops guessing one user's password, not a flood across many names. A bucket per client
address lets a person or a script through at once (``burst``) and holds a flood to ``average``
requests per ``period``. The caller passes the time in, so :class:`RateLimiter` is pure and
tested without sleeping; :func:`rate_limited` puts one in front of a web endpoint (the proxy's
and the auth service's anonymous ones alike).
"""

from __future__ import annotations

import datetime
import functools
import math
from collections.abc import Awaitable, Callable

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tether.durations import format_duration
from tether.errors import RateLimited
from tether.wire import error_status, error_to_json

__all__ = ["RateLimiter", "rate_limited"]

Endpoint = Callable[[Request], Awaitable[Response]]


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


def rate_limited(limiter: RateLimiter, endpoint: Endpoint, *, who: str, setting: str) -> Endpoint:
    """``endpoint``, answering 429 with Retry-After to a client address over its rate.

    :param who: the service, as the refusal names it (``"the proxy"``).
    :param setting: where its rate is configured (``"proxy_service.rate_limit"``).
    """

    @functools.wraps(endpoint)
    async def limited(request: Request) -> Response:
        host = request.client.host if request.client else "unknown"
        wait = limiter.take(host, trio.current_time())
        if wait:
            error = RateLimited(
                # rounded up: "try again in 0.0s" would invite the next refusal
                f"too many requests from {host}; try again in {math.ceil(wait * 10) / 10:.1f}s",
                hint=f"{who} takes {limiter.burst} at once and {limiter.average} per "
                f"{format_duration(limiter.period)} from one address ({setting})",
            )
            headers = {"Retry-After": str(math.ceil(wait))}
            if request.scope.get("http_version", "1.1").startswith("1."):  # HTTP/2 forbids it
                # answered without reading the request's body, which makes hypercorn end the
                # connection unless the body had all arrived: say so, or a client may send its
                # next request on it meanwhile and get no answer
                headers["Connection"] = "close"
            return JSONResponse(
                error_to_json(error), status_code=error_status(error), headers=headers
            )
        return await endpoint(request)

    return limited
