from __future__ import annotations

import pytest
import trio
import trio.testing
from channels import drain

from trurn._broadcast import Broadcast
from trurn._nucleus import Nucleus, Transition

# A counter: "inc" adds one and says so, "double" emits two events, "stop" ends it,
# anything else is a bug in the caller.


def counter(state: int, signal: str, /) -> Transition[int, str]:
    if signal == "inc":
        return Transition(state + 1, (f"now {state + 1}",))
    if signal == "double":
        return Transition(state * 2, (f"was {state}", f"now {state * 2}"))
    if signal == "stop":
        return Transition(state, ("stopped",), terminal=True)
    raise ValueError(f"unknown signal {signal!r}")


async def signals_from(*signals: str) -> trio.MemoryReceiveChannel[str]:
    send, receive = trio.open_memory_channel[str](len(signals))
    with send:
        for signal in signals:
            await send.send(signal)
    return receive


async def test_step_stores_the_state_and_publishes_the_events_in_order() -> None:
    nucleus = Nucleus(1, counter)
    async with nucleus.subscribe() as events:
        transition = await nucleus.step("inc")
        assert transition == Transition(2, ("now 2",))
        assert (nucleus.state, nucleus.terminal) == (2, False)
        await nucleus.step("double")
        assert nucleus.state == 4
        assert drain(events) == ["now 2", "was 2", "now 4"]


async def test_step_once_terminal_is_a_no_op_but_still_a_checkpoint() -> None:
    nucleus = Nucleus(3, counter)
    async with nucleus.subscribe() as events:
        assert await nucleus.step("stop") == Transition(3, ("stopped",), True)
        assert nucleus.terminal
        with trio.testing.assert_checkpoints():
            after = await nucleus.step("inc")
        assert after == Transition(3, (), True)
        assert nucleus.state == 3
        assert drain(events) == ["stopped"]


async def test_reducer_exception_leaves_the_state_unchanged() -> None:
    nucleus = Nucleus(5, counter)
    async with nucleus.subscribe() as events:
        with pytest.raises(ValueError, match="unknown signal 'jump'"):
            await nucleus.step("jump")
        assert (nucleus.state, nucleus.terminal) == (5, False)
        assert drain(events) == []
        await nucleus.step("inc")
        assert nucleus.state == 6


async def test_run_stops_at_the_terminal_state_and_leaves_later_signals() -> None:
    nucleus = Nucleus(0, counter)
    signals = await signals_from("inc", "inc", "double", "stop", "inc", "inc")
    async with nucleus.subscribe() as events:
        assert await nucleus.run(signals) == 4
        assert nucleus.terminal
        assert drain(events) == ["now 1", "now 2", "was 2", "now 4", "stopped"]
    assert drain(signals) == ["inc", "inc", "END"]  # not consumed, not closed


async def test_run_returns_the_state_when_the_signals_end() -> None:
    nucleus = Nucleus(0, counter)
    assert await nucleus.run(await signals_from("inc", "double")) == 2
    assert not nucleus.terminal
    with trio.testing.assert_checkpoints():
        assert await nucleus.run(await signals_from()) == 2


async def test_run_when_already_terminal_takes_no_signal() -> None:
    nucleus = Nucleus(0, counter)
    await nucleus.step("stop")
    signals = await signals_from("inc")
    with trio.testing.assert_checkpoints():
        assert await nucleus.run(signals) == 0
    assert drain(signals) == ["inc", "END"]


async def test_step_cancelled_on_entry_changes_nothing() -> None:
    nucleus = Nucleus(0, counter)
    async with nucleus.subscribe() as events:
        with trio.CancelScope() as scope:
            scope.cancel()
            await nucleus.step("inc")
        assert scope.cancelled_caught
        assert nucleus.state == 0
        assert drain(events) == []


async def test_step_cancelled_while_publishing_has_stored_its_state() -> None:
    nucleus = Nucleus(1, counter)
    async with nucleus.subscribe(max_buffer=1) as events:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(nucleus.step, "double")
                await trio.testing.wait_all_tasks_blocked()  # "now 2" does not fit
                scope.cancel()
        assert nucleus.state == 2
        assert drain(events) == ["was 1"]


async def test_events_go_to_the_broadcast_it_was_given() -> None:
    hub = Broadcast[str]()
    nucleus = Nucleus(0, counter, broadcast=hub)
    assert nucleus.broadcast is hub
    async with hub.subscribe() as events:
        await hub.publish(["from elsewhere"])
        await nucleus.step("inc")
        assert drain(events) == ["from elsewhere", "now 1"]
        assert hub.statistics().published == 2


async def test_steps_from_several_tasks_take_turns_while_a_subscriber_is_full() -> None:
    nucleus = Nucleus(0, counter)
    async with nucleus.subscribe(max_buffer=1) as events, trio.open_nursery() as nursery:
        for _ in range(3):  # the second and third wait: the subscriber holds one event
            nursery.start_soon(nucleus.step, "inc")
            await trio.testing.wait_all_tasks_blocked()
        got = [await events.receive() for _ in range(3)]
    assert got == ["now 1", "now 2", "now 3"]
    assert nucleus.state == 3


async def test_a_step_on_a_broadcast_busy_with_another_publisher_reduces_nothing() -> None:
    hub: Broadcast[str] = Broadcast()
    nucleus = Nucleus(0, counter, broadcast=hub)
    async with hub.subscribe(max_buffer=1) as events, trio.open_nursery() as nursery:
        nursery.start_soon(hub.publish, ["x", "y"])  # waits: the subscriber holds one
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError, match="nothing was reduced"):
            await nucleus.step("inc")
        assert nucleus.state == 0
        assert [await events.receive() for _ in range(2)] == ["x", "y"]
    assert await nucleus.step("inc") == Transition(1, ("now 1",))
