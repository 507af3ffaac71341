"""The behaviour every storage backend must show, as a reusable pytest class.

A backend plugin proves it is a drop-in replacement for SQLite by running this suite::

    from tether.testing.backend_conformance import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        async def backend(self):
            async with open_my_backend("my://...") as b:
                yield b

The ``backend`` fixture must yield an open, empty backend and close it afterwards (the suite
also closes it itself, so closing twice must be harmless). Two optional knobs:

- the ``advance`` fixture returns ``async def advance(seconds)`` moving the backend's clock
  forward; the default really sleeps, so override it when the backend takes an injectable
  clock (TTL tests then take no time);
- class attributes :attr:`BackendConformance.watch_overflow_events` (how many unread events
  surely overflow a watcher) and :attr:`BackendConformance.expiry_event_timeout` (how long the
  backend's reaper may take to report an expired key).

A backend whose store keeps a key a while past its TTL declares it as its
``ttl_granularity`` attribute (seconds; etcd's leases count whole seconds, two at least): the
TTL tests wait that much longer, for every backend alike (:func:`past_ttl`).

The tests need pytest-trio (``trio_mode = true``) and hypothesis.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.backend import Backend, BackendClosed, Event, Item, Op, WatchOverflow
from tether.errors import AlreadyExists, CompareFailed, NotFound

__all__ = ["BackendConformance"]

Advance = Callable[[float], Awaitable[None]]

#: Seconds a watcher may take to see an event that was already committed.
EVENT_TIMEOUT = 5.0


async def next_event(events: AsyncIterator[Event], within: float = EVENT_TIMEOUT) -> Event:
    """The next watch event, failing the test instead of hanging if none comes."""
    with trio.fail_after(within):
        return await events.__anext__()


async def no_event(events: AsyncIterator[Event], wait: float = 0.05) -> None:
    """Assert that no event is pending (a short real wait, for in-flight deliveries)."""
    with trio.move_on_after(wait):
        event = await events.__anext__()
        raise AssertionError(f"unexpected watch event {event!r}")


def past_ttl(backend: Backend, ttl: float = 1.0) -> float:
    """Seconds after which a key written with ``ttl`` is surely gone: half a second more, and
    the backend's ``ttl_granularity`` (how long its store may keep a key past its TTL: etcd
    rounds leases up to whole seconds), 0 for a backend that declares none."""
    return ttl + 0.5 + float(getattr(backend, "ttl_granularity", 0.0))


def summary(events: list[Event]) -> list[tuple[str, str, bytes]]:
    return [(e.type, e.item.key, e.item.value) for e in events]


_MODEL_KEYS = st.sampled_from(["a", "a/", "a/b", "ab", "b", "z\u00e9", "\u4e2d"])
_MODEL_VALUES = st.binary(max_size=6)
_MODEL_CONDITIONS = st.sampled_from(["none", "current", "stale"])
_MODEL_ACTIONS = st.one_of(
    st.tuples(st.just("put"), _MODEL_KEYS, _MODEL_VALUES),
    st.tuples(st.just("create"), _MODEL_KEYS, _MODEL_VALUES),
    st.tuples(st.just("cas"), _MODEL_KEYS, _MODEL_VALUES, st.booleans()),
    st.tuples(st.just("delete"), _MODEL_KEYS),
    st.tuples(st.just("delete_prefix"), st.sampled_from(["", "a", "a/", "b", "q"])),
    st.tuples(
        st.just("apply"),
        st.lists(
            st.tuples(_MODEL_KEYS, st.one_of(st.none(), _MODEL_VALUES), _MODEL_CONDITIONS),
            max_size=4,
            unique_by=lambda step: step[0],
        ),
    ),
)


class BackendConformance:
    """Subclass this in a test module and provide a ``backend`` fixture (see module docs)."""

    #: Unread events that certainly overflow a watcher's buffer; lower it for speed.
    watch_overflow_events: int = 10_000
    #: Seconds the backend's reaper may take to delete an expired key and report it.
    expiry_event_timeout: float = 5.0

    @pytest.fixture
    def advance(self) -> Advance:
        """Move the backend's clock forward; by default by really sleeping."""
        return trio.sleep

    # -- single keys ----------------------------------------------------------------------

    async def test_get_of_missing_key_returns_none(self, backend: Backend) -> None:
        assert await backend.get("/roles/nobody") is None

    async def test_put_then_get_returns_value_and_revision(self, backend: Backend) -> None:
        written = await backend.put("/roles/visitor", b"spec")
        assert written == Item(
            key="/roles/visitor", value=b"spec", revision=written.revision, expires=None
        )
        assert written.revision > 0
        assert await backend.get("/roles/visitor") == written

    async def test_put_overwrites_and_takes_a_new_revision(self, backend: Backend) -> None:
        first = await backend.put("/roles/visitor", b"v1")
        second = await backend.put("/roles/visitor", b"v2")
        assert second.revision > first.revision
        assert await backend.get("/roles/visitor") == second

    async def test_every_write_takes_the_next_global_revision(self, backend: Backend) -> None:
        revisions = [(await backend.put(f"/users/{name}", b"x")).revision for name in "abcab"]
        revisions.append((await backend.create("/users/new", b"x")).revision)
        revisions.append(await backend.apply([Op.put("/users/d", b"x")]))
        assert revisions == sorted(revisions)
        assert len(set(revisions)) == len(revisions)
        a = await backend.get("/users/a")
        assert a is not None and a.revision == revisions[3]

    async def test_binary_and_empty_values_round_trip(self, backend: Backend) -> None:
        await backend.put("/blob/all", bytes(range(256)))
        await backend.put("/blob/empty", b"")
        all_bytes = await backend.get("/blob/all")
        empty = await backend.get("/blob/empty")
        assert all_bytes is not None and all_bytes.value == bytes(range(256))
        assert empty is not None and empty.value == b""

    async def test_create_refuses_an_existing_key(self, backend: Backend) -> None:
        original = await backend.create("/users/alice", b"first")
        with pytest.raises(AlreadyExists, match="/users/alice"):
            await backend.create("/users/alice", b"second")
        assert await backend.get("/users/alice") == original

    async def test_create_after_delete_succeeds(self, backend: Backend) -> None:
        await backend.create("/users/alice", b"first")
        assert await backend.delete("/users/alice")
        again = await backend.create("/users/alice", b"second")
        assert again.value == b"second"

    async def test_compare_and_swap_at_the_read_revision_writes(self, backend: Backend) -> None:
        read = await backend.put("/roles/editor", b"v1")
        swapped = await backend.compare_and_swap(
            "/roles/editor", b"v2", expected_revision=read.revision
        )
        assert swapped.value == b"v2" and swapped.revision > read.revision
        assert await backend.get("/roles/editor") == swapped

    async def test_compare_and_swap_after_a_concurrent_change_fails(self, backend: Backend) -> None:
        read = await backend.put("/roles/editor", b"v1")
        winner = await backend.put("/roles/editor", b"someone else")
        with pytest.raises(CompareFailed, match="/roles/editor"):
            await backend.compare_and_swap(
                "/roles/editor", b"mine", expected_revision=read.revision
            )
        assert await backend.get("/roles/editor") == winner

    async def test_compare_and_swap_of_missing_key_raises_not_found(self, backend: Backend) -> None:
        with pytest.raises(NotFound, match="/roles/ghost"):
            await backend.compare_and_swap("/roles/ghost", b"v", expected_revision=1)
        assert await backend.get("/roles/ghost") is None

    async def test_racing_compare_and_swaps_have_exactly_one_winner(self, backend: Backend) -> None:
        read = await backend.put("/counter", b"0")
        outcomes: list[str] = []

        async def bump(value: bytes) -> None:
            try:
                await backend.compare_and_swap("/counter", value, expected_revision=read.revision)
            except CompareFailed:
                outcomes.append("lost")
            else:
                outcomes.append("won")

        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(bump, str(n).encode())
        assert sorted(outcomes) == ["lost"] * 4 + ["won"]

    async def test_delete_reports_whether_the_key_existed(self, backend: Backend) -> None:
        await backend.put("/nodes/web", b"x")
        assert await backend.delete("/nodes/web") is True
        assert await backend.get("/nodes/web") is None
        assert await backend.delete("/nodes/web") is False

    async def test_delete_prefix_removes_only_keys_under_it(self, backend: Backend) -> None:
        for key in ["/a/1", "/a/2", "/a/x/y", "/ab", "/a", "/b/1"]:
            await backend.put(key, b"x")
        assert await backend.delete_prefix("/a/") == 3
        assert [item.key for item in await backend.range("/")] == ["/a", "/ab", "/b/1"]
        assert await backend.delete_prefix("/a/") == 0

    # -- ranges ---------------------------------------------------------------------------

    async def test_range_is_sorted_by_key(self, backend: Backend) -> None:
        keys = ["/k/b", "/k/a", "/k/\u00e9", "/k/B", "/k/a/b", "/k/a0", "/k/\U0001f511", "/k/~"]
        for key in keys:
            await backend.put(key, key.encode())
        items = await backend.range("/k/")
        assert [item.key for item in items] == sorted(keys)
        assert all(item.value == item.key.encode() for item in items)

    async def test_range_isolates_sibling_prefixes(self, backend: Backend) -> None:
        for key in ["/a/1", "/a/2", "/ab", "/ab/1", "/a", "/b"]:
            await backend.put(key, b"x")
        assert [i.key for i in await backend.range("/a/")] == ["/a/1", "/a/2"]
        assert [i.key for i in await backend.range("/ab")] == ["/ab", "/ab/1"]
        assert [i.key for i in await backend.range("/a")] == ["/a", "/a/1", "/a/2", "/ab", "/ab/1"]
        assert [i.key for i in await backend.range("")] == [
            "/a",
            "/a/1",
            "/a/2",
            "/ab",
            "/ab/1",
            "/b",
        ]
        assert await backend.range("/c") == []

    async def test_range_limit_returns_the_first_keys(self, backend: Backend) -> None:
        for n in range(5):
            await backend.put(f"/sessions/{n}", b"x")
        assert [i.key for i in await backend.range("/sessions/", limit=2)] == [
            "/sessions/0",
            "/sessions/1",
        ]
        assert len(await backend.range("/sessions/", limit=10)) == 5
        assert await backend.range("/sessions/", limit=0) == []

    async def test_range_returns_the_same_items_as_get(self, backend: Backend) -> None:
        await backend.put("/r/1", b"one")
        await backend.put("/r/2", b"two", ttl=3600)
        assert await backend.range("/r/") == [await backend.get("/r/1"), await backend.get("/r/2")]

    # -- atomic batches -------------------------------------------------------------------

    async def test_apply_writes_every_op_under_one_revision(self, backend: Backend) -> None:
        await backend.put("/old", b"x")
        revision = await backend.apply(
            [Op.put("/users/a", b"a"), Op.put("/users/b", b"b"), Op.delete("/old")]
        )
        a, b = await backend.range("/users/")
        assert (a.value, b.value) == (b"a", b"b")
        assert a.revision == b.revision == revision
        assert await backend.get("/old") is None

    async def test_apply_with_a_failed_condition_writes_nothing(self, backend: Backend) -> None:
        token = await backend.put("/tokens/t1", b"unused")
        await backend.put("/tokens/t1", b"used")  # someone else consumed it
        before = await backend.range("")
        with pytest.raises(CompareFailed, match="/tokens/t1"):
            await backend.apply(
                [
                    Op.put("/users/new", b"u"),
                    Op.put("/passwords/new", b"p"),
                    Op.delete("/tokens/t1", expected_revision=token.revision),
                ]
            )
        assert await backend.range("") == before

    async def test_apply_create_condition_on_existing_key_raises_already_exists(
        self, backend: Backend
    ) -> None:
        await backend.put("/users/bob", b"x")
        with pytest.raises(AlreadyExists, match="/users/bob"):
            await backend.apply(
                [Op.put("/audit/1", b"x"), Op.put("/users/bob", b"y", expected_revision=0)]
            )
        assert await backend.get("/audit/1") is None

    async def test_apply_revision_condition_on_missing_key_raises_not_found(
        self, backend: Backend
    ) -> None:
        with pytest.raises(NotFound, match="/users/ghost"):
            await backend.apply(
                [Op.put("/audit/1", b"x"), Op.put("/users/ghost", b"y", expected_revision=7)]
            )
        assert await backend.get("/audit/1") is None

    async def test_apply_conditions_that_hold_write(self, backend: Backend) -> None:
        token = await backend.put("/tokens/t1", b"unused")
        revision = await backend.apply(
            [
                Op.delete("/tokens/t1", expected_revision=token.revision),
                Op.put("/users/new", b"u", expected_revision=0),
            ]
        )
        assert await backend.get("/tokens/t1") is None
        new = await backend.get("/users/new")
        assert new is not None and new.revision == revision > token.revision

    async def test_apply_sets_ttl_on_its_puts(self, backend: Backend, advance: Advance) -> None:
        await backend.apply([Op.put("/sessions/s", b"x", ttl=1.0), Op.put("/users/u", b"x")])
        session = await backend.get("/sessions/s")
        assert session is not None and session.expires is not None
        await advance(past_ttl(backend))
        assert await backend.get("/sessions/s") is None
        assert await backend.get("/users/u") is not None

    # -- TTL ------------------------------------------------------------------------------

    async def test_key_with_ttl_vanishes_once_expired(
        self, backend: Backend, advance: Advance
    ) -> None:
        item = await backend.put("/sessions/s1", b"x", ttl=1.0)
        await backend.put("/sessions/s2", b"x")
        assert item.expires is not None
        assert await backend.get("/sessions/s1") == item
        await advance(past_ttl(backend))
        assert await backend.get("/sessions/s1") is None
        assert [i.key for i in await backend.range("/sessions/")] == ["/sessions/s2"]

    async def test_expired_key_counts_as_absent_for_conditions(
        self, backend: Backend, advance: Advance
    ) -> None:
        old = await backend.create("/locks/l", b"holder-1", ttl=1.0)
        await advance(past_ttl(backend))
        with pytest.raises(NotFound):
            await backend.compare_and_swap("/locks/l", b"x", expected_revision=old.revision)
        taken = await backend.create("/locks/l", b"holder-2", ttl=1.0)
        assert taken.value == b"holder-2"

    async def test_put_without_ttl_clears_an_earlier_ttl(
        self, backend: Backend, advance: Advance
    ) -> None:
        await backend.put("/k", b"temporary", ttl=1.0)
        kept = await backend.put("/k", b"permanent")
        assert kept.expires is None
        await advance(past_ttl(backend))
        assert await backend.get("/k") == kept

    # -- watch ----------------------------------------------------------------------------

    async def test_watch_reports_changes_in_revision_order(self, backend: Backend) -> None:
        async with backend.watch("/roles/") as events:
            a = await backend.put("/roles/a", b"1")
            b = await backend.put("/roles/b", b"2")
            await backend.put("/roles/a", b"3")
            await backend.delete("/roles/b")
            seen = [await next_event(events) for _ in range(4)]
        assert summary(seen) == [
            ("put", "/roles/a", b"1"),
            ("put", "/roles/b", b"2"),
            ("put", "/roles/a", b"3"),
            ("delete", "/roles/b", b""),
        ]
        assert seen[0].item == a and seen[1].item == b
        revisions = [e.item.revision for e in seen]
        assert revisions == sorted(revisions) and len(set(revisions)) == 4

    async def test_watch_sees_only_changes_after_it_started(self, backend: Backend) -> None:
        await backend.put("/roles/before", b"x")
        async with backend.watch("/roles/") as events:
            await backend.put("/roles/after", b"x")
            assert (await next_event(events)).item.key == "/roles/after"
            await no_event(events)

    async def test_watch_filters_by_prefix(self, backend: Backend) -> None:
        async with backend.watch("/a/") as events:
            await backend.put("/ab", b"sibling")
            await backend.put("/b/1", b"other")
            await backend.put("/a/1", b"mine")
            assert summary([await next_event(events)]) == [("put", "/a/1", b"mine")]
            await no_event(events)

    async def test_every_watcher_gets_every_matching_event(self, backend: Backend) -> None:
        async with backend.watch("") as everything, backend.watch("/users/") as users:
            await backend.put("/roles/r", b"x")
            await backend.put("/users/u", b"x")
            assert (await next_event(everything)).item.key == "/roles/r"
            assert (await next_event(everything)).item.key == "/users/u"
            assert (await next_event(users)).item.key == "/users/u"

    async def test_watch_reports_batch_and_prefix_deletes(self, backend: Backend) -> None:
        await backend.put("/n/1", b"x")
        await backend.put("/n/2", b"x")
        async with backend.watch("/n/") as events:
            revision = await backend.apply([Op.put("/n/3", b"y"), Op.delete("/n/1")])
            batch = sorted(summary([await next_event(events) for _ in range(2)]))
            assert batch == [("delete", "/n/1", b""), ("put", "/n/3", b"y")]
            assert await backend.delete_prefix("/n/") == 2
            deletes = [await next_event(events) for _ in range(2)]
        assert sorted(summary(deletes)) == [("delete", "/n/2", b""), ("delete", "/n/3", b"")]
        assert deletes[0].item.revision == deletes[1].item.revision > revision

    async def test_failed_writes_emit_no_events(self, backend: Backend) -> None:
        await backend.put("/k", b"x")
        async with backend.watch("") as events:
            with pytest.raises(AlreadyExists):
                await backend.create("/k", b"y")
            with pytest.raises(CompareFailed):
                await backend.apply(
                    [Op.put("/other", b"y"), Op.delete("/k", expected_revision=999)]
                )
            assert await backend.delete("/missing") is False
            await no_event(events)

    async def test_watch_reports_ttl_expiry_as_a_delete(
        self, backend: Backend, advance: Advance
    ) -> None:
        async with backend.watch("/sessions/") as events:
            put = await backend.put("/sessions/s1", b"x", ttl=1.0)
            assert (await next_event(events)).item == put
            await advance(past_ttl(backend))
            expired = await next_event(events, self.expiry_event_timeout)
        assert (expired.type, expired.item.key, expired.item.value) == (
            "delete",
            "/sessions/s1",
            b"",
        )
        assert expired.item.revision > put.revision

    async def test_slow_watcher_overflows_instead_of_blocking_writers(
        self, backend: Backend
    ) -> None:
        async with backend.watch("/flood/") as slow:
            with trio.fail_after(60):  # writers finish although nobody reads
                written = 0
                while written < self.watch_overflow_events:
                    batch = min(500, self.watch_overflow_events - written)
                    await backend.apply(
                        [Op.put(f"/flood/{written + n:08d}", b"x") for n in range(batch)]
                    )
                    written += batch
            with pytest.raises(WatchOverflow):
                for _ in range(self.watch_overflow_events + 1):
                    await next_event(slow)
        # the backend itself is fine: later watchers work
        async with backend.watch("/flood/") as fresh:
            await backend.delete("/flood/00000000")
            assert (await next_event(fresh)).type == "delete"

    # -- closing --------------------------------------------------------------------------

    async def test_close_ends_watches_and_refuses_further_use(self, backend: Backend) -> None:
        await backend.put("/k", b"x")
        async with backend.watch("") as events:
            await backend.close()
            with pytest.raises(BackendClosed):
                await next_event(events)
        with pytest.raises(BackendClosed):
            await backend.get("/k")
        with pytest.raises(BackendClosed):
            await backend.put("/k", b"y")
        with pytest.raises(BackendClosed):
            async with backend.watch(""):
                pass
        await backend.close()  # idempotent

    # -- against a model ------------------------------------------------------------------

    async def test_random_operations_match_a_dict_model(self, backend: Backend) -> None:
        # Hypothesis drives a worker thread that runs each example back on the trio loop:
        # that keeps shrinking and the ``backend`` fixture, which @given on an async test
        # cannot share between examples.
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(actions=st.lists(_MODEL_ACTIONS, max_size=20))
        def check(actions: list[tuple[Any, ...]]) -> None:
            trio.from_thread.run(self._check_against_model, backend, actions)

        await trio.to_thread.run_sync(check)

    async def _check_against_model(self, backend: Backend, actions: list[tuple[Any, ...]]) -> None:
        # A fresh prefix per example keeps examples apart even if a fixture reuses its store.
        base = f"/model/{uuid.uuid4().hex}/"
        model: dict[str, Item] = {}
        last_revision = 0

        def advanced(revision: int) -> int:
            nonlocal last_revision
            assert revision > last_revision, "revisions must increase with every write"
            last_revision = revision
            return revision

        for action in actions:
            kind = action[0]
            if kind == "put":
                _, key, value = action
                item = await backend.put(base + key, value)
                advanced(item.revision)
                model[key] = item
            elif kind == "create":
                _, key, value = action
                if key in model:
                    with pytest.raises(AlreadyExists):
                        await backend.create(base + key, value)
                else:
                    model[key] = await backend.create(base + key, value)
                    advanced(model[key].revision)
            elif kind == "cas":
                _, key, value, use_current = action
                current = model.get(key)
                expected = current.revision if current and use_current else last_revision + 1
                if current is None:
                    with pytest.raises(NotFound):
                        await backend.compare_and_swap(
                            base + key, value, expected_revision=expected
                        )
                elif not use_current:
                    with pytest.raises(CompareFailed):
                        await backend.compare_and_swap(
                            base + key, value, expected_revision=expected
                        )
                else:
                    item = await backend.compare_and_swap(
                        base + key, value, expected_revision=expected
                    )
                    model[key] = item
                    advanced(item.revision)
            elif kind == "delete":
                _, key = action
                assert await backend.delete(base + key) is (model.pop(key, None) is not None)
            elif kind == "delete_prefix":
                _, prefix = action
                doomed = [key for key in model if key.startswith(prefix)]
                assert await backend.delete_prefix(base + prefix) == len(doomed)
                for key in doomed:
                    del model[key]
            else:
                _, steps = action
                ops, fails = [], False
                for key, value, condition in steps:
                    current = model.get(key)
                    if condition == "none":
                        expected = None
                    elif condition == "current":
                        expected = current.revision if current else 0
                    else:
                        expected = current.revision + 1 if current else last_revision + 1
                        fails = True
                    if value is None:
                        ops.append(Op.delete(base + key, expected_revision=expected))
                    else:
                        ops.append(Op.put(base + key, value, expected_revision=expected))
                if fails:
                    with pytest.raises((CompareFailed, NotFound, AlreadyExists)):
                        await backend.apply(ops)
                else:
                    changes = any(v is not None or k in model for k, v, _ in steps)
                    revision = await backend.apply(ops)
                    if changes:
                        advanced(revision)
                    for key, value, _ in steps:
                        if value is None:
                            model.pop(key, None)
                        else:
                            model[key] = Item(key=base + key, value=value, revision=revision)
            stored = await backend.range(base)
            assert stored == [model[key] for key in sorted(model)]
