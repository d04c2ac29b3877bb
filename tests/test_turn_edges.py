"""Edges of a turn: a cancel that lands while the end is announced, steering messages
around a cancel or a stop, and two agents taking turns on one session."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing
from fakes import FakeProvider, text_reply, tool_reply

import trurn
from trurn import events
from trurn._messages import UserMessage


def kinds(seen: list[events.Event]) -> list[str]:
    return [str(event.__struct_config__.tag) for event in seen]


async def test_cancel_now_while_turn_finished_is_delivered_does_not_end_the_turn_twice() -> None:
    agent = trurn.Agent(FakeProvider([text_reply("hi")]))
    seen: list[events.Event] = []

    async def on_event(event: events.Event) -> None:
        seen.append(event)
        if isinstance(event, events.TurnFinished):
            agent.cancel("now")
            await trio.lowlevel.checkpoint()  # the cancel lands inside the callback

    async with agent.subscribe() as stream:
        result = await agent.run_turn(trurn.Context(), "q", on_event=on_event)
        delivered = [stream.receive_nowait() for _ in range(5)]
    assert result.stop_reason == "completed"
    assert kinds(seen) == [
        "turn_started",
        "message_sent",
        "assistant_delta",
        "assistant_final",
        "turn_finished",
    ]
    assert delivered == seen


async def test_an_outer_cancel_while_turn_finished_waits_for_a_subscriber() -> None:
    # A "wait" subscriber with a full buffer holds turn_finished up; the caller's
    # cancel lands there. The subscriber still gets the end, once, and nothing more.
    agent = trurn.Agent(FakeProvider([text_reply("hi")]))
    async with agent.subscribe(max_buffer=4, policy="wait") as stream:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.run_turn, trurn.Context(), "q")
            await trio.testing.wait_all_tasks_blocked()  # the turn waits on the subscriber
            nursery.cancel_scope.cancel()
        received = []
        while True:
            try:
                received.append(stream.receive_nowait())
            except trio.WouldBlock:
                break
    # The full subscriber made room for the end by dropping its oldest events (and was
    # told so), as for any final event published while the turn cannot wait.
    assert kinds(received)[-1] == "turn_finished"
    assert kinds(received).count("turn_finished") == 1
    assert "run_aborted" not in kinds(received)
    assert "events_dropped" in kinds(received)
    assert received[-1].stop_reason == "completed"  # type: ignore[union-attr]


async def test_steering_messages_survive_a_cancel_while_they_are_announced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    holder: list[trurn.Agent] = []

    @trurn.tool
    async def poke() -> str:
        """Send two steering messages."""
        holder[0].send_nowait("s1", steer=True)
        holder[0].send_nowait("s2", steer=True)
        return "ok"

    provider = FakeProvider([tool_reply(("c1", "poke", "{}")), text_reply("done")])
    agent = trurn.Agent(provider, tools=[poke])
    holder.append(agent)
    context = trurn.Context()
    async with trio.open_nursery() as nursery:
        async with agent.subscribe(max_buffer=1, policy="wait") as stream:
            await nursery.start(agent.serve, context)
            await agent.send("go")
            async for event in stream:
                if isinstance(event, events.ToolCallStarted):
                    await trio.testing.wait_all_tasks_blocked()
                    agent.cancel("now")
                    break
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    users = [m.content for m in context.messages if isinstance(m, UserMessage)]
    assert users == ["go", "s1", "s2"]


async def test_a_turn_stopped_by_its_budget_leaves_steering_for_the_next_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    holder: list[trurn.Agent] = []

    @trurn.tool
    async def poke() -> str:
        """Send a steering message."""
        holder[0].send_nowait("later", steer=True)
        return "ok"

    used = trurn.Usage(input_tokens=50, output_tokens=60, total_tokens=110)
    first = tool_reply(("c1", "poke", "{}"))
    first.insert(1, [used])
    provider = FakeProvider([first, text_reply("answered later")])
    agent = trurn.Agent(provider, tools=[poke], max_turn_tokens=100)
    holder.append(agent)
    context = trurn.Context()
    finished: list[str] = []
    async with trio.open_nursery() as nursery:
        async with agent.subscribe() as stream:
            await nursery.start(agent.serve, context)
            await agent.send("go")
            async for event in stream:
                if isinstance(event, events.TurnFinished):
                    finished.append(event.stop_reason)
                    if len(finished) == 2:
                        break
        nursery.cancel_scope.cancel()
    assert finished == ["budget_exceeded", "completed"]
    # The steering message was not swallowed by the stopped turn: it became the next one.
    assert provider.requests[1].messages[-1] == UserMessage("later")


async def test_two_agents_on_one_session_never_reuse_a_seq(tmp_path: Path) -> None:
    async with trurn.Context(tmp_path / "s.jsonl") as context:
        first = trurn.Agent(FakeProvider([text_reply("one")]))
        await first.run_turn(context, "a")
        second = trurn.Agent(FakeProvider([text_reply("two")]))
        seqs: list[int] = []
        await second.run_turn(context, "b", on_event=lambda event: seqs.append(event.seq))
    assert context.last_seq == seqs[-1]
    assert seqs[0] == first._seq + 1
