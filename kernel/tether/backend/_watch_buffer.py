"""The bounded buffer between a backend's writers and one watcher, shared by every backend.

Writers must never wait for a slow reader (one stalled cache would stall every write in the
cluster), so a watcher gets a fixed number of unread events and, past that, fails with
:class:`~tether.backend.WatchOverflow` and must re-list. Backends differ in where their events
come from (SQLite's own commits, PostgreSQL's event log, etcd's watch stream) but not in this
hand-over, so it lives here once and plugins reach it as ``tether.api.WatchBuffer``.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from tether.backend._base import BackendError, Event, WatchOverflow

__all__ = ["WatchBuffer"]


class WatchBuffer:
    """One watch's events: what :meth:`Backend.watch` yields, fed by the backend without blocking.

    Create one per ``watch(prefix)`` call, yield it to the caller, hand it committed events
    with :meth:`publish` (which keeps those under ``prefix``), end it with :meth:`fail`
    (``BackendClosed`` when the backend closes, or another :class:`BackendError`) and call
    :meth:`close` when the caller's ``watch`` block exits. A reader that falls more than
    ``size`` events behind gets :class:`WatchOverflow` from its iterator; a failure is raised
    at once, before events still buffered (they are stale: the reader must re-list anyway).

    :param prefix: the watched key prefix; :meth:`publish` drops events outside it.
    :param size: unread events the buffer holds before the watcher overflows (at least 1).
    :raises ValueError: ``size`` is below 1.
    """

    def __init__(self, prefix: str, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"a watch buffer holds at least 1 event, got {size!r}")
        self.prefix = prefix
        self.size = size
        self._send, self._receive = trio.open_memory_channel[Event](size)
        self._failure: BackendError | None = None

    def publish(self, events: Iterable[Event]) -> bool:
        """Queue the events whose key starts with :attr:`prefix`, without ever blocking.

        Returns False once the watcher is done (it overflowed now or earlier, was failed or
        closed): the backend then stops feeding it. Overflowing fails it with
        :class:`WatchOverflow`.
        """
        for event in events:
            if not event.item.key.startswith(self.prefix):
                continue
            try:
                self._send.send_nowait(event)
            except trio.WouldBlock:
                self.fail(
                    WatchOverflow(
                        f"watch on {self.prefix!r} fell more than {self.size} events behind",
                        hint="list the keys again and start a new watch",
                    )
                )
                return False
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return False  # failed or closed already
        return self._failure is None

    def fail(self, error: BackendError) -> None:
        """End the watch: the reader's next ``__anext__`` raises ``error``'s type and message."""
        if self._failure is None:
            self._failure = error
        self._send.close()

    def close(self) -> None:
        """Release the buffer when the caller's ``watch`` block exits; iterating then stops."""
        self._send.close()
        self._receive.close()

    def __aiter__(self) -> WatchBuffer:
        return self

    async def __anext__(self) -> Event:
        if self._failure is not None:
            raise self._fresh_failure()
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self._failure is not None:
                raise self._fresh_failure() from None
            raise StopAsyncIteration from None
        except trio.ClosedResourceError:
            raise StopAsyncIteration from None  # iterated after its watch() block ended

    def _fresh_failure(self) -> BackendError:
        # a new instance each time: raising one instance again and again would pile up
        # tracebacks on it
        assert self._failure is not None
        return type(self._failure)(self._failure.message, hint=self._failure.hint)
