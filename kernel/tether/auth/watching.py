"""One stream of the store's events under several prefixes, for the caches auth keeps.

The backend watches one prefix at a time; a cache made of several (the trust of CAs, trusted
clusters and roles; the remote clusters and their heartbeats) wants their events as one
stream, in the order each prefix's watch delivers them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import trio

from tether.backend import Backend, Event, WatchOverflow

__all__ = ["EVENT_BUFFER", "watch_prefixes"]

#: Events the merged stream may hold before its reader takes them; past that the forwarders
#: wait, and the backend's own watch buffers (it reports an overflow when that fills).
EVENT_BUFFER = 1000


@contextlib.asynccontextmanager
async def watch_prefixes(
    backend: Backend, prefixes: Iterable[str]
) -> AsyncIterator[trio.MemoryReceiveChannel[Event]]:
    """Watch every prefix; yield one channel of their events, open once every watch is.

    A watch that ends (its backend closed, or it fell behind) raises :class:`WatchOverflow`
    out of the block, so the caller reads everything again.
    """
    send, receive = trio.open_memory_channel[Event](EVENT_BUFFER)

    async def forward(events: AsyncIterator[Event], out: trio.MemorySendChannel[Event]) -> None:
        async with out:
            async for event in events:
                await out.send(event)
        raise WatchOverflow("a watch of the cache's prefixes ended")

    async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:
        for prefix in prefixes:
            events = await stack.enter_async_context(backend.watch(prefix))
            nursery.start_soon(forward, events, send.clone())
        send.close()
        try:
            yield receive
        finally:
            nursery.cancel_scope.cancel()
