"""The order and count of the events an agent publishes when turns end under pressure:
slow subscribers, a second cancel, two turns of one agent at once."""

from __future__ import annotations

import trio
import trio.testing
from fakes import FakeProvider, text_reply, tool_reply

import trurn
from trurn import events


def received(channel: trio.MemoryReceiveChannel[events.Event]) -> list[events.Event]:
    """What the subscriber holds now, without waiting."""
    out: list[events.Event] = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return out


async def test_cancel_now_while_the_after_turn_abort_is_delivered_aborts_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trurn.tool
    async def slow() -> str:
        """Takes a second."""
        await trio.sleep(1)
        return "ok"

    replies = [tool_reply(("a", "slow", "{}")), text_reply("never asked")]
    agent = trurn.Agent(FakeProvider(replies), tools=[slow])
    async with (
        agent.subscribe(max_buffer=1, policy="wait") as stuck,
        agent.subscribe(max_buffer=100, policy="drop") as watcher,
        trio.open_nursery() as nursery,
    ):

        async def stop_twice() -> None:
            async for event in stuck:  # keeps up until the tool starts, then stops reading
                if isinstance(event, events.ToolCallStarted):
                    break
            agent.cancel("after_turn", reason="user stop")
            await trio.sleep(5)  # its run_aborted now waits for the stuck subscriber
            agent.cancel("now")  # hurry it

        nursery.start_soon(stop_twice)
        result = await agent.run_turn(trurn.Context(), "go")
        seen = received(watcher)
        nursery.cancel_scope.cancel()
    assert result.stop_reason == "aborted"
    assert [type(e) for e in seen].count(events.RunAborted) == 1
    assert [type(e) for e in seen[-2:]] == [events.RunAborted, events.TurnFinished]
    aborted = seen[-2]
    assert isinstance(aborted, events.RunAborted)
    assert aborted.message == "user stop"
    assert [e.seq for e in seen] == sorted({e.seq for e in seen})


async def test_a_turn_aborted_while_another_waits_for_a_subscriber_keeps_seq_order() -> None:
    agent = trurn.Agent(FakeProvider([text_reply("one", "o", "n", "e"), text_reply("two")]))
    async with (
        agent.subscribe(max_buffer=3, policy="wait") as slow,
        agent.subscribe(max_buffer=1000, policy="wait") as fast,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(agent.run_turn, trurn.Context(), "first")
        await trio.testing.wait_all_tasks_blocked()  # the first turn waits for `slow`
        second = trio.CancelScope()

        async def run_second() -> None:
            with second:
                await agent.run_turn(trurn.Context(), "second")

        nursery.start_soon(run_second)
        await trio.testing.wait_all_tasks_blocked()  # waiting for its turn to publish
        second.cancel()  # its closing events are stamped now, after the blocked batch
        await trio.testing.wait_all_tasks_blocked()
        before = received(fast)
        nursery.start_soon(received_all, slow)  # let the first turn go on
        await trio.testing.wait_all_tasks_blocked()
        after = received(fast)
        nursery.cancel_scope.cancel()
    stream = before + after
    seqs = [event.seq for event in stream]
    assert seqs == list(range(1, len(stream) + 1))  # every seq once, in order
    finished = [e for e in stream if isinstance(e, events.TurnFinished)]
    assert [e.stop_reason for e in finished] == ["aborted", "completed"]


async def received_all(channel: trio.MemoryReceiveChannel[events.Event]) -> None:
    async for _ in channel:
        pass
