"""Tether's storage on etcd v3, through etcd's JSON gateway, driven from trio.

What the kernel asks of a backend maps onto etcd directly: etcd's revision is the global
revision (every transaction takes the next one, in commit order, for every auth server on
the same etcd); compare-and-swap and batches are transactions comparing each key's
``mod_revision`` (``create_revision`` 0 for "absent"); a TTL is a lease, whose expiry etcd
itself turns into a delete event; watches are etcd's, resumed from the last revision seen
when a member goes away. A batch is one transaction: etcd refuses one with more operations
than its ``--max-txn-ops`` (128 by default), so run etcd with a larger one (the tests use
10,000; a root with many leaves writes their heartbeats in one batch).

etcd's leases count whole seconds, two at least, and its leader looks for expired ones
twice a second, so a key lives up to :attr:`EtcdBackend.ttl_granularity` seconds past its
TTL: its ``expires`` says when its TTL ends, and every caller checks that where it matters.

Requests go to the first member that answers. One whose connection cannot be made goes to
the next member at once; a read that failed on the way is asked again there; a write that
may have reached a member is not replayed (its compare-and-swap could then fail against
itself): the caller gets a :class:`~tether.api.BackendError` saying so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, NoReturn

import httpx
import trio

from tether.api import (
    BackendClosed,
    BackendError,
    CompareFailed,
    Event,
    Item,
    Op,
    WatchBuffer,
    WatchOverflow,
    check_batch,
    check_condition,
    check_key,
    check_limit,
    check_prefix,
    check_swap_revision,
)
from tether_etcd import _wire
from tether_etcd._wire import EtcdSettings

__all__ = ["EtcdBackend", "open_etcd"]

log = logging.getLogger(__name__)

#: Seconds a request may take before the member counts as gone.
REQUEST_TIMEOUT = 10.0
#: Seconds a request waits for the members to elect a new leader (etcd's election timeout
#: is one second by default; a few rounds of it).
ELECTION_WAIT = 10.0
#: Events a watcher may lag behind before it gets WatchOverflow.
WATCH_BUFFER = 10_000


class EtcdBackend:
    """The storage backend on an etcd cluster; open it with :func:`open_etcd`."""

    #: Seconds a key may outlive its TTL: etcd rounds a lease up to whole seconds, two at
    #: least, and reaps expired leases every half second.
    ttl_granularity = 1.5

    def __init__(
        self, settings: EtcdSettings, client: httpx.AsyncClient, *, watch_buffer: int
    ) -> None:
        self.settings = settings
        self._client = client
        #: runs each watch's stream from etcd (owned by :func:`open_etcd`)
        self._nursery: trio.Nursery | None = None
        self._prefix = settings.prefix.encode()
        self._member = 0  # the endpoint that answered last
        self._watch_buffer = watch_buffer
        self._closed = False
        #: each open watch: the scope of its feed from etcd, and the buffer it feeds
        self._watches: dict[trio.CancelScope, WatchBuffer] = {}

    # -- requests -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BackendClosed(f"storage {self._where()} is closed")

    def _where(self) -> str:
        return f"etcd {','.join(self.settings.endpoints)}{self.settings.prefix}"

    async def _call(self, path: str, body: Mapping[str, Any], *, replay: bool) -> dict[str, Any]:
        """POST ``body`` to ``path``; while the members elect a leader (one died), ask again
        for up to :data:`ELECTION_WAIT` seconds what surely was not applied.

        :param replay: the request changes nothing, so one that failed on the way, or that
            lost its leader, may be asked again.
        """
        delay = 0.05
        deadline = trio.current_time() + ELECTION_WAIT
        while True:
            try:
                return await self._call_once(path, body, replay=replay)
            except _Electing as exc:
                if not (replay or exc.not_proposed) or trio.current_time() + delay > deadline:
                    raise BackendError(
                        f"etcd refused a request: {exc.message}",
                        hint=None if exc.not_proposed or replay else _MAYBE_APPLIED,
                    ) from None
                await trio.sleep(delay)
                delay = min(2 * delay, 1.0)

    async def _call_once(
        self, path: str, body: Mapping[str, Any], *, replay: bool
    ) -> dict[str, Any]:
        """POST ``body`` to ``path`` at the members, first the one that answered last."""
        self._check_open()
        endpoints = self.settings.endpoints
        failures = []
        for step in range(len(endpoints)):
            index = (self._member + step) % len(endpoints)
            url = endpoints[index] + path
            try:
                answer = await self._client.post(url, json=body)
            except httpx.ConnectError as exc:
                failures.append(f"{endpoints[index]}: {_reason(exc)}")
                continue
            except httpx.TransportError as exc:
                if replay:
                    failures.append(f"{endpoints[index]}: {_reason(exc)}")
                    continue
                raise BackendError(
                    f"etcd member {endpoints[index]} did not answer a write: {_reason(exc)}",
                    hint=_MAYBE_APPLIED,
                ) from None
            if index != self._member:
                log.warning("storage: etcd member %s answers now", endpoints[index])
                self._member = index
            return _answer(answer, url)
        raise BackendError(
            f"no etcd member answers ({'; '.join(failures)})",
            hint="check that etcd runs and that storage.url names its client addresses",
        )

    async def _range(self, key: bytes, end: bytes | None, limit: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _wire.encode(key)}
        if end is not None:
            body["range_end"] = _wire.encode(end)
        if limit:
            body["limit"] = str(limit)
        return await self._call("/v3/kv/range", body, replay=True)

    async def _lease(self, ttl: float) -> int:
        answer = await self._call("/v3/lease/grant", {"TTL": str(math.ceil(ttl))}, replay=False)
        return int(answer["ID"])

    def _key(self, key: str) -> bytes:
        return self._prefix + key.encode()

    # -- the Backend protocol -------------------------------------------------------------

    async def get(self, key: str) -> Item | None:
        """Return the live item at ``key``, or None."""
        check_key(key)
        answer = await self._range(self._key(key), None, None)
        kvs = answer.get("kvs") or []
        return _wire.decode_item(kvs[0], self._prefix) if kvs else None

    async def put(self, key: str, value: bytes, *, ttl: float | None = None) -> Item:
        """Create or replace ``key``; return the written item."""
        return await self._apply_one(Op.put(key, value, ttl=ttl))

    async def create(self, key: str, value: bytes, *, ttl: float | None = None) -> Item:
        """Write ``key`` only if absent; raise ``AlreadyExists`` otherwise."""
        return await self._apply_one(Op.put(key, value, ttl=ttl, expected_revision=0))

    async def compare_and_swap(
        self, key: str, value: bytes, *, expected_revision: int, ttl: float | None = None
    ) -> Item:
        """Replace ``key`` only if it is at ``expected_revision``."""
        check_swap_revision(expected_revision)
        return await self._apply_one(
            Op.put(key, value, ttl=ttl, expected_revision=expected_revision)
        )

    async def _apply_one(self, op: Op) -> Item:
        expires = time.time() + op.ttl if op.ttl is not None else None
        revision = await self._transact([op], {op.key: expires} if expires is not None else {})
        return Item(key=op.key, value=op.value, revision=revision, expires=expires)

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        check_key(key)
        body = {"key": _wire.encode(self._key(key))}
        answer = await self._call("/v3/kv/deleterange", body, replay=False)
        return int(answer.get("deleted", 0)) > 0

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every live key starting with ``prefix`` under one revision; return how many."""
        check_prefix(prefix)
        key = self._key(prefix)
        body = {"key": _wire.encode(key), "range_end": _wire.encode(_wire.prefix_end(key))}
        answer = await self._call("/v3/kv/deleterange", body, replay=False)
        return int(answer.get("deleted", 0))

    async def range(self, prefix: str, *, limit: int | None = None) -> list[Item]:
        """Return the live items whose key starts with ``prefix``, sorted by key."""
        check_prefix(prefix)
        check_limit(limit)
        if limit == 0:
            self._check_open()
            return []
        key = self._key(prefix)
        answer = await self._range(key, _wire.prefix_end(key), limit)
        return [_wire.decode_item(kv, self._prefix) for kv in answer.get("kvs") or []]

    async def apply(self, ops: Sequence[Op]) -> int:
        """Apply ``ops`` atomically under one new revision and return it."""
        ops = check_batch(ops)
        if not ops:
            return _wire.header_revision(await self._range(self._prefix, None, 1))
        now = time.time()
        expiry = {op.key: now + op.ttl for op in ops if op.ttl is not None}
        return await self._transact(ops, expiry)

    async def _transact(self, ops: Sequence[Op], expiry: Mapping[str, float]) -> int:
        """One transaction: every condition, then every op; the revision it committed at."""
        leases: dict[int, int] = {}
        for op in ops:
            if op.ttl is not None and math.ceil(op.ttl) not in leases:
                leases[math.ceil(op.ttl)] = await self._lease(op.ttl)
        compare = [
            _wire.compare_revision(self._key(op.key), op.expected_revision)
            for op in ops
            if op.expected_revision is not None
        ]
        success = [
            _wire.put_request(
                self._key(op.key),
                _wire.wrap(op.value, expiry.get(op.key)),
                leases[math.ceil(op.ttl)] if op.ttl is not None else 0,
            )
            if op.type == "put"
            else _wire.delete_request(self._key(op.key))
            for op in ops
        ]
        conditioned = [op for op in ops if op.expected_revision is not None]
        failure = [_wire.range_request(self._key(op.key)) for op in conditioned]
        body = {"compare": compare, "success": success, "failure": failure}
        answer = await self._call("/v3/kv/txn", body, replay=False)
        if not answer.get("succeeded"):
            _raise_failed_condition(conditioned, _wire.txn_responses(answer))
        return _wire.header_revision(answer)

    @contextlib.asynccontextmanager
    async def watch(self, prefix: str) -> AsyncIterator[AsyncIterator[Event]]:
        """Subscribe to committed changes under ``prefix``: etcd's watch from the revision
        after the one it answers now, resumed at another member from the last event seen
        if one goes away; one compacted away meanwhile is a :class:`WatchOverflow`."""
        check_prefix(prefix)
        key = self._key(prefix)
        start = _wire.header_revision(await self._range(self._prefix, None, 1)) + 1
        buffer = WatchBuffer(prefix, self._watch_buffer)
        scope = trio.CancelScope()
        self._watches[scope] = buffer
        assert self._nursery is not None, "open the backend with open_etcd"
        self._nursery.start_soon(self._feed, key, start, buffer, scope)
        try:
            yield buffer
        finally:
            self._watches.pop(scope, None)
            scope.cancel()
            buffer.close()

    async def _feed(
        self,
        key: bytes,
        start: int,
        buffer: WatchBuffer,
        scope: trio.CancelScope,
    ) -> None:
        """Stream etcd's watch of ``key``'s prefix into ``buffer`` until cancelled or it ends."""
        request = {
            "create_request": {
                "key": _wire.encode(key),
                "range_end": _wire.encode(_wire.prefix_end(key)),
            }
        }
        with scope:
            failed = 0
            while not self._closed:  # closed: the watcher's stream ends in BackendClosed
                request["create_request"]["start_revision"] = str(start)
                endpoint = self.settings.endpoints[self._member]
                try:
                    async with self._client.stream(
                        "POST", endpoint + "/v3/watch", json=request, timeout=None
                    ) as answer:
                        async for line in answer.aiter_lines():
                            if not line.strip():
                                continue
                            result = json.loads(line).get("result", {})
                            if result.get("canceled") or result.get("compact_revision"):
                                buffer.fail(
                                    WatchOverflow(
                                        f"watch on {self._where()}: the events since revision "
                                        f"{start} were compacted away",
                                        hint="list the keys again and start a new watch",
                                    )
                                )
                                return
                            failed = 0
                            events = [
                                _wire.decode_watch_event(raw, self._prefix)
                                for raw in result.get("events") or []
                            ]
                            if events:
                                start = events[-1].item.revision + 1
                            if not buffer.publish(events):
                                return  # it overflowed, or its watch block ended
                except (httpx.TransportError, ValueError) as exc:
                    failed += 1
                    if failed >= 3 * len(self.settings.endpoints):
                        buffer.fail(BackendError(f"watch on {self._where()}: {exc}"))
                        return
                    self._member = (self._member + 1) % len(self.settings.endpoints)
                    await trio.sleep(0.1 * failed)

    async def close(self) -> None:
        """End every watch with :class:`BackendClosed` and refuse further use. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for scope, buffer in list(self._watches.items()):
            buffer.fail(BackendClosed(f"storage {self._where()} was closed"))
            scope.cancel()
        await self._client.aclose()


def _raise_failed_condition(
    conditioned: Sequence[Op], responses: Sequence[Mapping[str, Any]]
) -> NoReturn:
    """Raise the error a failed transaction stands for: that of the first condition that did
    not hold, judged from the keys as the failure branch read them (in the same transaction),
    so the error and its message are the ones every backend gives."""
    for op, response in zip(conditioned, responses, strict=False):
        kvs = response.get("response_range", {}).get("kvs") or []
        revision = int(kvs[0].get("mod_revision", 0)) if kvs else None
        check_condition(op, revision)
    raise CompareFailed("the batch's conditions no longer held", hint="read again and retry")


#: What a member answers while the cluster has no leader, or just changed it (etcd's
#: ``Unavailable`` errors): a read may be asked again, a write only if it was never proposed.
_ELECTING = ("no leader", "leader changed", "timed out")
_MAYBE_APPLIED = "it may have been applied; read the key again before retrying"


class _Electing(BackendError):
    """The cluster is electing a leader; ``not_proposed``: the request surely did nothing."""

    def __init__(self, message: str, *, not_proposed: bool) -> None:
        super().__init__(message)
        self.not_proposed = not_proposed


def _answer(answer: httpx.Response, url: str) -> dict[str, Any]:
    """The JSON of a gateway answer, or the error it carries."""
    try:
        data = answer.json()
    except ValueError:
        raise BackendError(f"etcd at {url} answered HTTP {answer.status_code}, not JSON") from None
    if answer.status_code != 200 or "error" in data:
        message = data.get("message") or data.get("error") or f"HTTP {answer.status_code}"
        if any(sign in str(message) for sign in _ELECTING):
            raise _Electing(str(message), not_proposed="no leader" in str(message))
        hint = None
        if "too many operations" in str(message):
            hint = "start etcd with a larger --max-txn-ops (Tether writes heartbeats in one batch)"
        raise BackendError(f"etcd refused a request: {message}", hint=hint)
    if not isinstance(data, dict):
        raise BackendError(f"etcd at {url} answered {type(data).__name__}, not an object")
    return data


def _reason(exc: httpx.TransportError) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or type(exc).__name__
    if isinstance(cause, OSError) and cause.strerror:
        text = cause.strerror
    return text


@contextlib.asynccontextmanager
async def open_etcd(url: str, *, watch_buffer: int = WATCH_BUFFER) -> AsyncIterator[EtcdBackend]:
    """Open the storage at an ``etcd://`` URL (see :func:`tether_etcd._wire.parse_url`):
    checks that a member answers before anything else starts.

    :raises ConfigError: the URL is malformed; :class:`BackendError`: no member answers.
    """
    settings = _wire.parse_url(url)
    verify: ssl.SSLContext | bool = True
    if settings.endpoints[0].startswith("https:"):
        verify = ssl.create_default_context(cafile=settings.ca_file)
        if settings.cert_file:
            verify.load_cert_chain(settings.cert_file, settings.key_file)
    client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT, verify=verify)
    backend = EtcdBackend(settings, client, watch_buffer=watch_buffer)
    try:
        await backend.apply([])  # a member answers, or the daemon stops here saying why
        async with trio.open_nursery() as nursery:
            backend._nursery = nursery
            try:
                yield backend
            finally:
                await backend.close()
    finally:
        await backend.close()
