"""The checks and the watch buffer ``tether.api`` gives backend plugins, used by every backend.

The conformance suite sees them through a backend; these pin what a plugin author calls them
for: which arguments each refuses, with which error, and how a watcher ends.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tether.api import (
    AlreadyExists,
    BackendClosed,
    BackendError,
    CompareFailed,
    Event,
    Item,
    NotFound,
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


def put(key: str, revision: int = 1) -> Event:
    return Event(type="put", item=Item(key=key, value=b"x", revision=revision))


# -- keys and prefixes -------------------------------------------------------------------------


def test_keys_a_backend_refuses_are_refused_with_value_error() -> None:
    check_key("/roles/visitor")
    check_key("z\u00e9/\u4e2d")
    for bad in ("", None, b"/roles/visitor"):
        with pytest.raises(ValueError, match="non-empty strings"):
            check_key(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not valid Unicode"):
        check_key("/roles/\ud800")


def test_the_empty_prefix_is_every_key_and_a_non_string_prefix_is_a_type_error() -> None:
    check_prefix("")
    check_prefix("/roles/")
    with pytest.raises(TypeError, match="prefixes are strings, got bytes"):
        check_prefix(b"/roles/")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not valid Unicode"):
        check_prefix("/roles/\udfff")


@pytest.mark.parametrize("limit", [None, 0, 1, 10_000])
def test_no_limit_an_empty_answer_or_a_count_may_be_asked_for(limit: int | None) -> None:
    check_limit(limit)


@pytest.mark.parametrize("limit", [-1, True, False])
def test_a_negative_or_boolean_limit_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match=r"limit must be None or >= 0, got"):
        check_limit(limit)


# -- apply() and compare_and_swap() arguments ---------------------------------------------------


def test_a_batch_comes_back_as_a_list_whatever_iterable_it_came_as() -> None:
    ops = [Op.put("/a", b"1"), Op.delete("/b", expected_revision=3)]
    assert check_batch(iter(ops)) == ops
    assert check_batch(()) == []


def test_a_batch_naming_a_key_twice_is_refused_naming_each_repeated_key_once() -> None:
    ops = [
        Op.put("/b", b"1"),
        Op.put("/a", b"1"),
        Op.delete("/b"),
        Op.delete("/a"),
        Op.delete("/b"),
    ]
    with pytest.raises(ValueError, match=r"each key once; repeated: \['/a', '/b'\]$"):
        check_batch(ops)


def test_a_batch_with_something_other_than_an_op_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"tether\.api\.Op, got a tuple"):
        check_batch([Op.put("/a", b"1"), ("put", "/b", b"1")])  # type: ignore[list-item]


@pytest.mark.parametrize("expected", [0, -1, True, 1.0, "1", None])
def test_a_swap_needs_a_real_revision_and_points_at_create_for_absent_keys(
    expected: object,
) -> None:
    with pytest.raises(
        ValueError, match=r"expected_revision must be a revision \(>= 1\).*create\(\)"
    ):
        check_swap_revision(expected)  # type: ignore[arg-type]


def test_any_revision_from_one_up_may_be_swapped() -> None:
    check_swap_revision(1)
    check_swap_revision(2**40)


# -- failed conditions ----------------------------------------------------------------------------


def test_conditions_that_hold_raise_nothing() -> None:
    check_condition(Op.put("/k", b"x"), None)
    check_condition(Op.put("/k", b"x"), 7)
    check_condition(Op.put("/k", b"x", expected_revision=0), None)
    check_condition(Op.put("/k", b"x", expected_revision=7), 7)
    check_condition(Op.delete("/k", expected_revision=7), 7)


def test_creating_a_key_that_exists_names_it_and_its_revision() -> None:
    with pytest.raises(AlreadyExists) as info:
        check_condition(Op.put("/users/alice", b"x", expected_revision=0), 4)
    assert str(info.value) == "key '/users/alice' already exists (revision 4)"


def test_expecting_a_revision_of_a_missing_key_is_not_found() -> None:
    with pytest.raises(NotFound) as info:
        check_condition(Op.delete("/users/ghost", expected_revision=3), None)
    assert str(info.value) == "key '/users/ghost' does not exist (expected revision 3)"


def test_a_key_changed_since_it_was_read_says_to_read_it_again() -> None:
    with pytest.raises(CompareFailed) as info:
        check_condition(Op.put("/roles/editor", b"x", expected_revision=3), 5)
    assert info.value.message == "key '/roles/editor' is at revision 5, not the expected 3"
    assert info.value.hint is not None and "read it again" in info.value.hint
    assert "\n" not in str(info.value)


# -- the watch buffer ---------------------------------------------------------------------------


async def test_a_watcher_reads_the_events_under_its_prefix_in_order() -> None:
    watcher = WatchBuffer("/roles/", 10)
    assert watcher.publish([put("/roles/a", 1), put("/users/b", 2), put("/roles/c", 3)])
    assert watcher.publish([])
    assert [(await watcher.__anext__()).item.key for _ in range(2)] == ["/roles/a", "/roles/c"]
    watcher.close()


async def test_a_waiting_reader_wakes_for_the_next_event() -> None:
    watcher = WatchBuffer("", 1)
    got: list[Event] = []

    async def read() -> None:
        async for event in watcher:
            got.append(event)
            return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert watcher.publish([put("/k")])
    assert [e.item.key for e in got] == ["/k"]


async def test_a_reader_too_far_behind_overflows_without_the_writer_waiting() -> None:
    watcher = WatchBuffer("/flood/", 2)
    assert watcher.publish([put("/flood/1"), put("/flood/2")])
    assert not watcher.publish([put("/flood/3")])  # returns at once: the writer never waits
    assert not watcher.publish([put("/flood/4")])  # the backend may drop it now
    for _ in range(2):  # the unread events are stale: the failure comes first, every time
        with pytest.raises(WatchOverflow, match=r"'/flood/' fell more than 2 events behind"):
            await watcher.__anext__()


async def test_a_failed_watch_raises_its_error_even_to_a_reader_already_waiting() -> None:
    watcher = WatchBuffer("", 4)
    raised: list[BaseException] = []

    async def read() -> None:
        try:
            await watcher.__anext__()
        except BackendError as exc:
            raised.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        watcher.fail(BackendClosed("storage was closed"))
        watcher.fail(BackendError("a later failure does not replace the first"))
    assert [(type(e), str(e)) for e in raised] == [(BackendClosed, "storage was closed")]
    assert not watcher.publish([put("/k")])


async def test_a_watch_whose_block_ended_stops_iterating_and_takes_no_events() -> None:
    watcher = WatchBuffer("", 4)
    watcher.publish([put("/k")])
    watcher.close()
    assert not watcher.publish([put("/k2")])
    with pytest.raises(StopAsyncIteration):
        await watcher.__anext__()


@pytest.mark.parametrize("size", [0, -1, True])
def test_a_watch_buffer_holds_at_least_one_event(size: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WatchBuffer("", size)
