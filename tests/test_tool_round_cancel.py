"""A round of tool calls that is cut short: a KeyboardInterrupt comes out alone, results
stay in call order, and every finished call gets its tool_exit."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing
from fakes import FakeProvider, assert_valid_history, text_reply, tool_reply

import trurn
from trurn import events
from trurn._approvals import Approvals
from trurn._messages import ToolCall, ToolMessage


@trurn.tool
async def rm(path: str) -> str:
    """Remove a file."""
    return "removed"


@trurn.tool
async def pick(ctx: trurn.ToolContext) -> str:
    """Ask which one."""
    return await ctx.choose("which?", ["a", "b"])


@trurn.tool
async def slow(n: int) -> str:
    """Sleep n seconds."""
    await trio.sleep(n)
    return f"slow {n}"


@trurn.tool
async def spawns(n: int) -> str:
    """Interrupted inside a nursery of its own, next to a sibling that sleeps."""

    async def interrupt() -> None:
        await trio.sleep(n)
        raise KeyboardInterrupt

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
        nursery.start_soon(interrupt)
    return "unreachable"


def exits(seen: Sequence[events.Event]) -> list[str]:
    return [e.tool_call_id for e in seen if isinstance(e, events.ToolExit)]


def interrupt(request: object) -> None:
    raise KeyboardInterrupt


def agent_for(where: str) -> trurn.Agent:
    """An agent whose approver, chooser or on_event raises KeyboardInterrupt mid-wait."""
    if where == "chooser":
        provider = FakeProvider([tool_reply(("c1", "pick", "{}")), text_reply("done")])
        return trurn.Agent(provider, tools=[pick], chooser=interrupt)
    provider = FakeProvider([tool_reply(("c1", "rm", '{"path": "x"}')), text_reply("done")])
    approver = interrupt if where == "approver" else None
    return trurn.Agent(provider, tools=[rm], require_approval=True, approver=approver)


@pytest.mark.parametrize("where", ["approver", "chooser", "on_event"])
async def test_a_keyboard_interrupt_during_a_wait_comes_out_alone(where: str) -> None:
    agent = agent_for(where)
    context = trurn.Context()
    seen: list[events.Event] = []

    def on_event(event: events.Event) -> None:
        seen.append(event)
        if where == "on_event" and isinstance(event, events.ApprovalRequest):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        await agent.run_turn(context, "go", on_event=on_event)
    assert type(caught.value) is KeyboardInterrupt  # not a group around it
    assert_valid_history(context.messages)
    aborted = [e for e in seen if isinstance(e, events.RunAborted)]
    assert [e.reason for e in aborted] == ["interrupted"]
    assert exits(seen) == ["c1"]
    assert not agent.pending_requests()


async def test_a_keyboard_interrupt_from_a_tools_own_nursery_comes_out_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Two groups deep (the tool's nursery, then the round's), beside a cancelled call.
    provider = FakeProvider([tool_reply(("a", "slow", '{"n": 10}'), ("b", "spawns", '{"n": 1}'))])
    agent = trurn.Agent(provider, tools=[slow, spawns])
    context = trurn.Context()
    with pytest.raises(KeyboardInterrupt) as caught:
        await agent.run_turn(context, "go")
    assert type(caught.value) is KeyboardInterrupt
    assert_valid_history(context.messages)
    assert [(m.tool_call_id, m.status) for m in context.messages[2:]] == [
        ("a", "cancelled"),
        ("b", "cancelled"),
    ]


async def test_approvals_wait_lets_a_keyboard_interrupt_out_alone() -> None:
    approvals = Approvals(approver=interrupt)

    async def emit(batch: Sequence[events.BaseEvent]) -> None:
        await trio.lowlevel.checkpoint()

    with pytest.raises(KeyboardInterrupt) as caught:
        await approvals.request_approval(
            emit, ToolCall(id="c", name="f"), preview=None, precheck=None
        )
    assert type(caught.value) is KeyboardInterrupt
    assert approvals.pending() == []


async def test_results_keep_call_order_when_the_round_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # b finishes first; a is cancelled at 5 s: the history still reads a, then b.
    provider = FakeProvider([tool_reply(("a", "slow", '{"n": 10}'), ("b", "slow", '{"n": 1}'))])
    agent = trurn.Agent(provider, tools=[slow])
    context = trurn.Context()
    seen: list[events.Event] = []
    with trio.move_on_after(5):
        await agent.run_turn(context, "go", on_event=seen.append)
    assert_valid_history(context.messages)
    results = [m for m in context.messages if isinstance(m, ToolMessage)]
    assert [(m.tool_call_id, m.status, m.content) for m in results] == [
        ("a", "cancelled", "Cancelled: the turn stopped before this call finished."),
        ("b", "ok", "slow 1"),
    ]
    assert exits(seen) == ["b", "a"]  # each call announced once, as it ended
    kinds = [type(e) for e in seen[-2:]]
    assert kinds == [events.RunAborted, events.TurnFinished]


async def test_a_cancel_while_tool_exit_waits_on_a_subscriber_still_announces_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider([tool_reply(("a", "slow", '{"n": 0}')), text_reply("x")])
    agent = trurn.Agent(provider, tools=[slow])
    context = trurn.Context()
    seen: list[events.Event] = []
    async with agent.subscribe(max_buffer=1, policy="wait") as stream:

        async def read_until_the_reply() -> None:
            async for event in stream:
                if isinstance(event, events.AssistantFinal):
                    return  # then tool_call fills the buffer and tool_exit waits

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_until_the_reply)
            with trio.CancelScope() as scope:

                async def cancel_when_blocked() -> None:
                    await trio.testing.wait_all_tasks_blocked()
                    scope.cancel()

                nursery.start_soon(cancel_when_blocked)
                await agent.run_turn(context, "go", on_event=seen.append)
    assert scope.cancelled_caught
    assert_valid_history(context.messages)
    result = context.messages[-1]
    assert isinstance(result, ToolMessage)
    assert (result.tool_call_id, result.status, result.content) == ("a", "ok", "slow 0")
    assert exits(seen) == ["a"]
    exit_event = next(e for e in seen if isinstance(e, events.ToolExit))
    assert (exit_event.status, exit_event.content) == ("ok", "slow 0")
    assert [type(e) for e in seen[-3:]] == [events.ToolExit, events.RunAborted, events.TurnFinished]
