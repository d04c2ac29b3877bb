"""Subagents: turns started from inside a tool know their ancestry, die with their
parent, and cannot nest deeper than the agent allows."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from fakes import HANG, FakeProvider, text_reply, tool_reply

import trurn
from trurn import events
from trurn._chunks import TextDelta
from trurn._journal import read_journal
from trurn._lineage import lineage_for
from trurn._messages import ToolMessage
from trurn._records import TurnStart


def started(seen: list[events.Event]) -> events.TurnStarted:
    first = seen[0]
    assert isinstance(first, events.TurnStarted)
    return first


def test_lineage_of_a_top_level_turn_and_its_children() -> None:
    root = lineage_for("t0", None, max_depth=2)
    assert (root.parent_turn_id, root.root_turn_id, root.depth, root.chain) == (
        None,
        "t0",
        0,
        ("t0",),
    )
    child = lineage_for("t1", root, max_depth=2)
    grandchild = lineage_for("t2", child, max_depth=2)
    assert (grandchild.parent_turn_id, grandchild.root_turn_id) == ("t1", "t0")
    assert (grandchild.depth, grandchild.chain) == (2, ("t0", "t1", "t2"))
    with pytest.raises(trurn.SubagentDepthError, match="nested 3 deep is over the limit of 2"):
        lineage_for("t3", grandchild, max_depth=2)


async def test_nested_turns_carry_parent_root_depth_and_chain() -> None:
    seen_by_level: dict[int, list[events.Event]] = {0: [], 1: [], 2: []}
    lineage_in_tool: list[trurn.TurnLineage | None] = []

    @trurn.tool
    async def leaf(task: str) -> str:
        """The innermost tool."""
        lineage_in_tool.append(trurn.current_turn())
        return "leaf done"

    @trurn.tool
    async def delegate(task: str) -> str:
        """Ask a sub-agent that itself uses a tool."""
        sub = trurn.Agent(
            FakeProvider([tool_reply(("c2", "leaf", '{"task": "t"}')), text_reply("mid")]),
            tools=[leaf],
        )
        result = await sub.run_turn(trurn.Context(), task, on_event=seen_by_level[1].append)
        return result.text or ""

    agent = trurn.Agent(
        FakeProvider([tool_reply(("c1", "delegate", '{"task": "t"}')), text_reply("top")]),
        tools=[delegate],
    )
    result = await agent.run_turn(trurn.Context(), "go", on_event=seen_by_level[0].append)

    top, middle = started(seen_by_level[0]), started(seen_by_level[1])
    assert (top.parent_turn_id, top.root_turn_id, top.depth) == (None, result.turn_id, 0)
    assert top.chain == [result.turn_id]
    assert middle.parent_turn_id == result.turn_id
    assert middle.root_turn_id == result.turn_id
    assert middle.depth == 1
    assert middle.chain == [result.turn_id, middle.turn_id]
    # A tool sees the turn that called it.
    [in_leaf] = lineage_in_tool
    assert in_leaf is not None
    assert in_leaf.turn_id == middle.turn_id
    assert in_leaf.chain == (result.turn_id, middle.turn_id)
    assert trurn.current_turn() is None  # nothing leaks out of the turn


async def test_sibling_subagents_run_concurrently_under_one_parent() -> None:
    parents: list[str | None] = []
    release = trio.Event()
    running = 0
    peak = 0

    @trurn.tool
    async def ask(question: str) -> str:
        """Ask a sub-agent."""
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 2:
            release.set()
        await release.wait()
        seen: list[events.Event] = []
        await trurn.run_turn(
            provider=FakeProvider([text_reply(question)]), message=question, on_event=seen.append
        )
        parents.append(started(seen).parent_turn_id)
        running -= 1
        return question

    both = tool_reply(("a", "ask", '{"question": "1"}'), ("b", "ask", '{"question": "2"}'))
    provider = FakeProvider([both, text_reply("both")])
    result = await trurn.run_turn(provider=provider, message="go", tools=[ask])
    assert peak == 2
    assert parents == [result.turn_id, result.turn_id]


async def test_a_runaway_subagent_stops_at_the_depth_limit() -> None:
    depths: list[int] = []

    @trurn.tool
    async def recurse() -> str:
        """Start the same kind of agent again."""
        current = trurn.current_turn()
        assert current is not None
        depths.append(current.depth)
        provider = FakeProvider([tool_reply(("r", "recurse", "{}")), text_reply("unwound")])
        agent = trurn.Agent(provider, tools=[recurse], max_depth=2)
        result = await agent.run_turn(trurn.Context(), "again")
        return result.text or ""

    provider = FakeProvider([tool_reply(("r", "recurse", "{}")), text_reply("top")])
    agent = trurn.Agent(provider, tools=[recurse], max_depth=2)
    context = trurn.Context()
    result = await agent.run_turn(context, "go")
    # Turns at depths 0, 1 and 2 ran the tool; the turn at depth 3 was refused.
    assert depths == [0, 1, 2]
    assert result.text == "top"
    assert result.stop_reason == "completed"


async def test_the_depth_error_is_what_the_model_reads() -> None:
    @trurn.tool
    async def nested() -> str:
        """Start a sub-agent that may not nest."""
        agent = trurn.Agent(FakeProvider([]), max_depth=0)
        await agent.run_turn(trurn.Context(), "x")
        return "unreachable"

    provider = FakeProvider([tool_reply(("n", "nested", "{}")), text_reply("ok")])
    context = trurn.Context()
    await trurn.Agent(provider, tools=[nested]).run_turn(context, "go")
    [result] = [m for m in context.messages if isinstance(m, ToolMessage)]
    assert result.status == "error"
    assert "over the limit of 0" in result.content


async def test_cancelling_the_parent_cancels_the_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    child_provider = FakeProvider([[[TextDelta("thinking about it")], HANG]])
    child_events: list[events.Event] = []
    child_context = trurn.Context()

    @trurn.tool
    async def delegate() -> str:
        """A sub-agent that never finishes."""
        agent = trurn.Agent(child_provider)
        await agent.run_turn(child_context, "work", on_event=child_events.append)
        return "unreachable"

    parent_provider = FakeProvider([tool_reply(("d", "delegate", "{}"))])
    parent_context = trurn.Context()
    with trio.move_on_after(5) as scope:
        await trurn.Agent(parent_provider, tools=[delegate]).run_turn(parent_context, "go")
    assert scope.cancelled_caught
    assert child_provider.open_streams == 0
    assert child_provider.closed_streams == 1
    assert [type(e) for e in child_events[-2:]] == [events.RunAborted, events.TurnFinished]
    assert child_context.messages[-1].content == "thinking about it"  # kept, marked aborted
    [result] = [m for m in parent_context.messages if isinstance(m, ToolMessage)]
    assert result.status == "cancelled"


async def test_session_turn_markers_carry_the_lineage(tmp_path: Path) -> None:
    path = tmp_path / "child.jsonl"

    @trurn.tool
    async def delegate() -> str:
        """A sub-agent writing to its own session."""
        async with trurn.Context(path) as context:
            agent = trurn.Agent(FakeProvider([text_reply("child")]))
            return (await agent.run_turn(context, "sub")).text or ""

    provider = FakeProvider([tool_reply(("d", "delegate", "{}")), text_reply("parent")])
    result = await trurn.run_turn(provider=provider, message="go", tools=[delegate])
    [start] = [r for r in (await read_journal(path)).records if isinstance(r, TurnStart)]
    assert (start.parent_turn_id, start.root_turn_id, start.depth) == (
        result.turn_id,
        result.turn_id,
        1,
    )
    assert start.chain == [result.turn_id, start.turn_id]


def test_max_depth_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        trurn.Agent(FakeProvider([]), max_depth=-1)
