from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from channels import drain

from trurn._broadcast import Broadcast, BroadcastStatistics, SubscriberStatistics


class Ev(msgspec.Struct, frozen=True):
    n: int
    final: bool = False


class Dropped(msgspec.Struct, frozen=True):
    count: int


Item = Ev | Dropped


def _is_final(item: Item) -> bool:
    return isinstance(item, Ev) and item.final


def make_hub() -> Broadcast[Item]:
    return Broadcast(is_final=_is_final, on_drop=Dropped)


def evs(*ns: int) -> list[Item]:
    return [Ev(n) for n in ns]


class _StepCounter(trio.abc.Instrument):
    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


@contextmanager
def count_schedule_points() -> Iterator[_StepCounter]:
    """Counts how often the current task is resumed, i.e. its schedule points."""
    counter = _StepCounter(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(counter)
    try:
        yield counter
    finally:
        trio.lowlevel.remove_instrument(counter)


# -- subscribing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_buffer": 0}, "max_buffer must be an int >= 1, got 0"),
        ({"max_buffer": -3}, "max_buffer must be an int >= 1, got -3"),
        ({"max_buffer": 1.5}, "max_buffer must be an int >= 1, got 1.5"),
        ({"max_buffer": True}, "max_buffer must be an int >= 1, got True"),
        ({"max_buffer": float("inf")}, "max_buffer must be an int >= 1, got inf"),
        ({"policy": "block"}, "policy must be one of .*got 'block'"),
    ],
)
def test_subscribe_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    # Raised by the call itself, before any `async with`.
    with pytest.raises(ValueError, match=match):
        make_hub().subscribe(**kwargs)


def test_drop_subscriber_of_announcing_hub_needs_two_slots() -> None:
    with pytest.raises(ValueError, match=r"max_buffer must be >= 2 .*'drop'.*got 1"):
        make_hub().subscribe(max_buffer=1, policy="drop")
    # Fine without on_drop, or for other policies.
    Broadcast[int]().subscribe(max_buffer=1, policy="drop")
    make_hub().subscribe(max_buffer=1, policy="wait")


async def test_every_subscriber_gets_every_event_in_order() -> None:
    hub = make_hub()
    async with hub.subscribe() as a, hub.subscribe(policy="drop") as b:
        await hub.publish(evs(1, 2))
        await hub.publish(evs(3))
        assert drain(a) == evs(1, 2, 3)
        assert drain(b) == evs(1, 2, 3)
        stats = hub.statistics()
        assert (stats.subscribers, stats.published, stats.delivered, stats.dropped) == (2, 3, 6, 0)


async def test_subscriber_sees_only_events_published_after_it_joined() -> None:
    hub = make_hub()
    async with hub.subscribe() as early:
        await hub.publish(evs(1))
        async with hub.subscribe() as late:
            await hub.publish(evs(2))
            assert drain(late) == evs(2)
        assert drain(early) == evs(1, 2)


async def test_events_published_to_nobody_are_counted_and_never_delivered_later() -> None:
    hub = make_hub()
    await hub.publish(evs(1, 2))
    with trio.CancelScope() as scope:
        scope.cancel()
        await hub.publish(evs(3))  # a cancellation point even with nobody listening
    async with hub.subscribe() as late:
        await hub.publish(evs(4))
        assert drain(late) == evs(4)
    stats = hub.statistics()
    assert (stats.published, stats.delivered, stats.dropped) == (3, 1, 0)


async def test_subscriber_is_removed_and_closed_on_exit() -> None:
    hub = make_hub()
    seen = []

    async def subscribe_and_fail() -> None:
        async with hub.subscribe() as a, hub.subscribe(policy="drop"):
            seen.append((a, hub.statistics().subscribers))
            raise KeyError

    with pytest.raises(KeyError):
        await subscribe_and_fail()
    [(a, subscribers)] = seen
    assert subscribers == 2
    assert hub.statistics().subscribers == 0
    with pytest.raises(trio.ClosedResourceError):
        a.receive_nowait()
    await hub.publish(evs(1))  # nobody left: fine
    assert hub.statistics().delivered == 0


async def test_subscriber_that_closes_its_channel_early_is_removed_quietly() -> None:
    hub = make_hub()
    async with hub.subscribe() as gone, hub.subscribe() as stays:
        gone.close()
        await hub.publish(evs(1, 2))
        assert hub.statistics().subscribers == 1
        assert drain(stays) == evs(1, 2)


# -- "wait" ----------------------------------------------------------------------------


async def test_wait_blocks_the_publisher_until_the_subscriber_reads() -> None:
    hub = make_hub()
    done = trio.Event()

    async def publisher() -> None:
        await hub.publish(evs(0, 1, 2, 3, 4))
        done.set()

    async with hub.subscribe(max_buffer=2) as events, trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        assert hub.statistics().per_subscriber[0].buffered == 2
        got = [await events.receive()]
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # one read made room for one more event only
        while len(got) < 5:
            got.append(await events.receive())
        await trio.testing.wait_all_tasks_blocked()
        assert done.is_set()
    assert got == evs(0, 1, 2, 3, 4)
    stats = hub.statistics()
    assert (stats.published, stats.delivered, stats.dropped) == (5, 5, 0)


async def test_cancelled_publish_returns_promptly_and_delivered_what_it_says(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = make_hub()
    async with (
        hub.subscribe() as before,
        hub.subscribe(max_buffer=1) as never_reads,
        hub.subscribe(policy="drop") as after,
    ):
        start = trio.current_time()
        with trio.move_on_after(5) as scope:
            await hub.publish(evs(1, 2, 3))
        assert scope.cancelled_caught
        assert trio.current_time() == start + 5
        # 1 reached everybody; 2 everybody with room (the full subscriber does not hold
        # back the ones after it); 3 nobody.
        assert drain(before) == evs(1, 2)
        assert drain(never_reads) == evs(1)
        assert drain(after) == evs(1, 2)
        stats = hub.statistics()
        assert (stats.published, stats.delivered, stats.dropped) == (2, 5, 0)
        # Nothing was dropped by policy, so nothing is announced later.
        await hub.publish(evs(4))
        assert drain(after) == evs(4)


async def test_leaving_the_block_releases_a_publisher_waiting_for_it() -> None:
    hub = make_hub()
    done = trio.Event()

    async def publisher() -> None:
        await hub.publish(evs(1, 2, 3))
        done.set()

    async with hub.subscribe() as other, trio.open_nursery() as nursery:
        async with hub.subscribe(max_buffer=1):
            nursery.start_soon(publisher)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
        await trio.testing.wait_all_tasks_blocked()
        assert done.is_set()
        assert drain(other) == evs(1, 2, 3)
        assert hub.statistics().subscribers == 1


async def test_closing_the_channel_releases_a_publisher_waiting_for_it() -> None:
    hub = make_hub()
    async with hub.subscribe(max_buffer=1) as slow, trio.open_nursery() as nursery:
        nursery.start_soon(hub.publish, evs(1, 2))
        await trio.testing.wait_all_tasks_blocked()
        assert hub.statistics().subscribers == 1
        slow.close()
        await trio.testing.wait_all_tasks_blocked()
        assert hub.statistics().subscribers == 0
        assert len(nursery.child_tasks) == 0


async def test_a_second_concurrent_publisher_is_refused() -> None:
    hub = make_hub()
    async with hub.subscribe() as fast, hub.subscribe(max_buffer=1) as slow:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.publish, evs(1, 2, 3))
            await trio.testing.wait_all_tasks_blocked()  # blocked on `slow` at 2
            with pytest.raises(trio.BusyResourceError, match="already publishing"):
                await hub.publish(evs(4))
            got = [await slow.receive() for _ in range(3)]
        assert got == evs(1, 2, 3)
        assert drain(fast) == got
        await hub.publish(evs(5))  # free again once the first call returned
        assert drain(slow) == evs(5)


# -- "drop" ----------------------------------------------------------------------------


async def test_drop_counts_and_announces_before_the_next_event_that_fits() -> None:
    hub = make_hub()
    async with hub.subscribe(max_buffer=2, policy="drop") as events:
        with count_schedule_points() as points:
            await hub.publish(evs(1, 2, 3, 4, 5))
        assert points.steps == 0  # dropping never waits
        sub = hub.statistics().per_subscriber[0]
        assert (sub.buffered, sub.dropped, sub.unannounced) == (2, 3, 3)
        assert drain(events) == evs(1, 2)
        await hub.publish(evs(6))
        assert drain(events) == [Dropped(3), Ev(6)]
        stats = hub.statistics()
        assert (stats.published, stats.delivered, stats.dropped) == (6, 3, 3)
        assert stats.per_subscriber[0].unannounced == 0


async def test_drop_waits_for_room_for_both_notice_and_event() -> None:
    hub = make_hub()
    async with hub.subscribe(max_buffer=2, policy="drop") as events:
        await hub.publish(evs(1, 2, 3))  # 3 dropped
        assert await events.receive() == Ev(1)
        await hub.publish(evs(4))  # one slot free: not enough for notice + event
        assert drain(events) == evs(2)
        await hub.publish(evs(5))
        assert drain(events) == [Dropped(2), Ev(5)]


async def test_drop_without_on_drop_only_counts() -> None:
    hub = Broadcast[int]()
    async with hub.subscribe(max_buffer=1, policy="drop") as events:
        await hub.publish([1, 2, 3])
        assert drain(events) == [1]
        await hub.publish([4])
        assert drain(events) == [4]
        sub = hub.statistics().per_subscriber[0]
        assert (sub.dropped, sub.unannounced) == (2, 0)


async def test_final_event_is_never_dropped_the_oldest_are_evicted() -> None:
    hub = make_hub()
    async with hub.subscribe(max_buffer=3, policy="drop") as events:
        await hub.publish([*evs(1, 2, 3), Ev(4, final=True)])
        # Room for the notice and the final event: the two oldest go.
        assert drain(events) == [Ev(3), Dropped(2), Ev(4, final=True)]
        stats = hub.statistics()
        assert (stats.published, stats.delivered, stats.dropped) == (4, 2, 2)
        assert stats.per_subscriber[0].unannounced == 0


async def test_an_evicted_notice_gives_its_count_back() -> None:
    hub = make_hub()
    async with hub.subscribe(max_buffer=2, policy="drop") as events:
        await hub.publish(evs(1, 2, 3, 4))  # 3, 4 dropped
        assert await events.receive() == Ev(1)
        await hub.publish(evs(5))  # not enough room for notice + event: 5 dropped
        assert await events.receive() == Ev(2)
        await hub.publish(evs(6))  # buffer: notice(3), 6
        assert hub.statistics().per_subscriber[0].buffered == 2
        await hub.publish([Ev(7, final=True)])
        # Both evicted; the new notice counts the 3 from the old one plus 6.
        assert drain(events) == [Dropped(4), Ev(7, final=True)]
        stats = hub.statistics()
        assert (stats.published, stats.delivered, stats.dropped) == (7, 3, 4)


async def test_buffer_of_final_events_only_disconnects_instead_of_dropping_one() -> None:
    hub = make_hub()
    async with hub.subscribe(max_buffer=2, policy="drop") as events:
        await hub.publish([Ev(1, final=True), Ev(2, final=True)])
        await hub.publish([Ev(3, final=True)])
        assert drain(events) == [Ev(1, final=True), Ev(2, final=True), "END"]
        stats = hub.statistics()
        assert (stats.subscribers, stats.disconnected, stats.dropped) == (0, 1, 0)


# -- "disconnect" ----------------------------------------------------------------------


async def test_disconnect_ends_that_subscriber_only() -> None:
    hub = make_hub()
    async with (
        hub.subscribe(max_buffer=2, policy="disconnect") as cut,
        hub.subscribe(max_buffer=10) as kept,
    ):
        for n in range(5):
            await hub.publish(evs(n))
        assert drain(cut) == [*evs(0, 1), "END"]
        assert drain(kept) == evs(0, 1, 2, 3, 4)
        stats = hub.statistics()
        assert (stats.subscribers, stats.disconnected, stats.delivered, stats.dropped) == (
            1,
            1,
            7,
            0,
        )


async def test_slow_drop_and_disconnect_subscribers_never_slow_the_publisher(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = make_hub()
    n = 1000
    async with (
        hub.subscribe(max_buffer=4, policy="drop") as dropper,
        hub.subscribe(max_buffer=4, policy="disconnect") as cut,
        hub.subscribe(max_buffer=n) as reader,
    ):
        # If any publish waited, the virtual clock would jump and fail_after would fire.
        with trio.fail_after(1), count_schedule_points() as points:
            for i in range(n):
                await hub.publish(evs(i))
        assert points.steps == 0  # nobody waited, so the publisher never yielded
        assert drain(reader) == evs(*range(n))
        assert drain(dropper) == evs(0, 1, 2, 3)
        assert drain(cut) == [*evs(0, 1, 2, 3), "END"]
        stats = hub.statistics()
        assert (stats.published, stats.dropped, stats.disconnected) == (n, n - 4, 1)
        assert stats.delivered == n + 4 + 4


# -- publish: cost ---------------------------------------------------------------------


@pytest.mark.parametrize(("subscribers", "batch"), [(0, 0), (0, 10), (3, 0), (3, 100)])
async def test_publish_yields_to_the_scheduler_only_when_it_must_wait(
    subscribers: int, batch: int
) -> None:
    hub = make_hub()
    async with trio.open_nursery() as nursery:
        for _ in range(subscribers):
            await nursery.start(_subscriber, hub)
        with count_schedule_points() as points:
            await hub.publish(evs(*range(batch)))
        assert points.steps == 0
        assert hub.statistics().delivered == subscribers * batch
        nursery.cancel_scope.cancel()


async def _subscriber(hub: Broadcast[Item], *, task_status: trio.TaskStatus[None]) -> None:
    async with hub.subscribe(max_buffer=1000):
        task_status.started()
        await trio.sleep_forever()


async def test_publish_cancelled_on_entry_delivers_nothing() -> None:
    hub = make_hub()
    async with hub.subscribe() as events:
        with trio.CancelScope() as scope:
            scope.cancel()
            await hub.publish(evs(1))
        assert scope.cancelled_caught
        assert drain(events) == []
        assert hub.statistics().published == 0


# -- publish_nowait --------------------------------------------------------------------


async def test_publish_nowait_never_blocks_and_keeps_final_events() -> None:
    hub = make_hub()
    async with (
        hub.subscribe(max_buffer=3) as waiter,
        hub.subscribe(max_buffer=3, policy="drop") as dropper,
        hub.subscribe(max_buffer=3, policy="disconnect") as cut,
        hub.subscribe(max_buffer=10) as roomy,
    ):
        with trio.testing.assert_no_checkpoints():
            hub.publish_nowait(evs(1, 2, 3, 4))
            hub.publish_nowait([Ev(5, final=True)])
        expected = [Ev(3), Dropped(3), Ev(5, final=True)]
        assert drain(waiter) == expected
        assert drain(dropper) == expected
        assert drain(cut) == [*evs(1, 2, 3), "END"]
        assert drain(roomy) == [*evs(1, 2, 3, 4), Ev(5, final=True)]
        stats = hub.statistics()
        assert (stats.published, stats.dropped, stats.disconnected) == (5, 6, 1)
        assert stats.delivered == 2 + 2 + 3 + 5


async def test_publish_nowait_with_a_one_slot_subscriber_announces_afterwards() -> None:
    hub = make_hub()
    async with hub.subscribe(max_buffer=1) as events:
        hub.publish_nowait(evs(1))
        hub.publish_nowait([Ev(2, final=True)])
        # The final event takes the only slot; the notice comes before the next event.
        assert drain(events) == [Ev(2, final=True)]
        assert hub.statistics().per_subscriber[0].unannounced == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.publish, evs(3))
            assert await events.receive() == Dropped(1)
            assert await events.receive() == Ev(3)


async def test_publish_nowait_while_a_publish_waits_on_the_same_subscriber() -> None:
    hub = make_hub()
    async with hub.subscribe(max_buffer=2) as events, trio.open_nursery() as nursery:
        nursery.start_soon(hub.publish, evs(0, 1, 2, 3))
        await trio.testing.wait_all_tasks_blocked()  # 0, 1 buffered; waiting with 2
        hub.publish_nowait([Ev(9, final=True)])
        # 0, 1 and the 2 being sent are evicted; the waiting publish goes on with 3.
        got = [await events.receive() for _ in range(3)]
        assert got == [Dropped(3), Ev(9, final=True), Ev(3)]
    stats = hub.statistics()
    assert (stats.published, stats.delivered, stats.dropped) == (5, 2, 3)


async def test_cancelled_wait_for_a_notice_keeps_the_count_owed() -> None:
    hub = make_hub()
    async with hub.subscribe(max_buffer=1) as events:
        hub.publish_nowait(evs(1, 2))  # 2 dropped: the subscriber is owed a notice
        with trio.CancelScope() as scope, trio.testing.assert_checkpoints():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hub.publish, evs(3))
                await trio.testing.wait_all_tasks_blocked()  # waiting to send the notice
                scope.cancel()
        assert hub.statistics().per_subscriber[0].unannounced == 1
        assert drain(events) == evs(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.publish, evs(4))
            assert [await events.receive() for _ in range(2)] == [Dropped(1), Ev(4)]


# -- close -----------------------------------------------------------------------------


async def test_close_ends_every_subscriber_after_its_buffer() -> None:
    hub = make_hub()
    async with hub.subscribe() as a, hub.subscribe(max_buffer=1) as b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.publish, evs(1, 2))
            await trio.testing.wait_all_tasks_blocked()  # waiting on `b` with 2
            hub.close()
            hub.close()  # idempotent
        # The waiting publish returned (its subscribers are gone).
        assert drain(a) == [*evs(1, 2), "END"]
        assert drain(b) == [*evs(1), "END"]
        with pytest.raises(trio.ClosedResourceError):
            await hub.publish(evs(3))
        with pytest.raises(trio.ClosedResourceError):
            hub.publish_nowait(evs(3))
        async with hub.subscribe() as late:
            with pytest.raises(trio.EndOfChannel):
                await late.receive()
    stats = hub.statistics()
    assert stats == BroadcastStatistics(
        subscribers=0,
        published=2,
        delivered=3,
        dropped=0,
        disconnected=0,
        closed=True,
        per_subscriber=(),
    )


async def test_statistics_per_subscriber() -> None:
    hub = make_hub()
    async with hub.subscribe(max_buffer=2, policy="drop"), hub.subscribe(policy="disconnect"):
        await hub.publish(evs(1, 2, 3))
        assert hub.statistics().per_subscriber == (
            SubscriberStatistics(policy="drop", max_buffer=2, buffered=2, dropped=1, unannounced=1),
            SubscriberStatistics(
                policy="disconnect", max_buffer=256, buffered=3, dropped=0, unannounced=0
            ),
        )
