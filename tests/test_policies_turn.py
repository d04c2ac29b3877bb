"""Policies inside the turn: loop detection, the token budget and ``on_limit_reached``."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from fakes import FakeProvider, text_reply, tool_reply

import trurn
from trurn import events
from trurn._chunks import Finish, ToolCallDelta
from trurn._context import unanswered_tool_calls
from trurn._messages import ToolCall, ToolMessage, Usage

runs: list[str] = []


@trurn.tool
async def lookup(key: str) -> str:
    """Look a key up."""
    runs.append(key)
    return f"value of {key}"


def lookup_reply(call_id: str, key: str, usage: Usage | None = None) -> list[object]:
    reply = tool_reply((call_id, "lookup", f'{{"key": "{key}"}}'))
    if usage is not None:
        reply.insert(1, [usage])
    return reply


def results(context: trurn.Context) -> list[ToolMessage]:
    return [m for m in context.messages if isinstance(m, ToolMessage)]


async def run(
    agent: trurn.Agent, context: trurn.Context
) -> tuple[trurn.TurnResult, list[events.Event]]:
    seen: list[events.Event] = []
    runs.clear()
    result = await agent.run_turn(context, "find it", on_event=seen.append)
    return result, seen


async def test_the_same_call_three_times_ends_the_turn_as_a_loop() -> None:
    provider = FakeProvider([lookup_reply(f"c{i}", "a") for i in range(5)])
    context = trurn.Context()
    result, seen = await run(trurn.Agent(provider, tools=[lookup]), context)
    assert result.stop_reason == "loop_detected"
    assert runs == ["a", "a"]  # the third repeat was not run
    assert len(provider.requests) == 3
    last = results(context)[-1]
    assert last.status == "error"
    assert "looping" in last.content
    assert unanswered_tool_calls(context.messages) == []
    finished = seen[-1]
    assert isinstance(finished, events.TurnFinished)
    assert finished.stop_reason == "loop_detected"


async def test_key_order_does_not_hide_a_loop() -> None:
    replies = [
        tool_reply((f"c{i}", "lookup", arguments))
        for i, arguments in enumerate(['{"key": "a"}', '{ "key":"a" }', '{"key": "a"}'])
    ]
    result, _ = await run(trurn.Agent(FakeProvider(replies), tools=[lookup]), trurn.Context())
    assert result.stop_reason == "loop_detected"


async def test_a_short_cycle_is_a_loop() -> None:
    keys = ["a", "b", "a", "b", "a", "b", "a"]
    provider = FakeProvider([lookup_reply(f"c{i}", key) for i, key in enumerate(keys)])
    result, _ = await run(trurn.Agent(provider, tools=[lookup]), trurn.Context())
    assert result.stop_reason == "loop_detected"
    assert runs == ["a", "b", "a", "b", "a"]


async def test_distinct_calls_are_not_a_loop() -> None:
    keys = ["a", "b", "c", "d", "e"]
    replies = [lookup_reply(f"c{i}", key) for i, key in enumerate(keys)]
    provider = FakeProvider([*replies, text_reply("found")])
    result, _ = await run(trurn.Agent(provider, tools=[lookup]), trurn.Context())
    assert result.stop_reason == "completed"
    assert runs == keys


async def test_warn_then_stop_tells_the_model_once() -> None:
    provider = FakeProvider([lookup_reply(f"c{i}", "a") for i in range(4)])
    context = trurn.Context()
    agent = trurn.Agent(
        provider, tools=[lookup], loop_detection=trurn.LoopDetection(mode="warn_then_stop")
    )
    result, _ = await run(agent, context)
    assert result.stop_reason == "loop_detected"
    assert runs == ["a", "a", "a"]  # warned after the third, stopped at the fourth
    warned = results(context)[2]
    assert warned.status == "ok"
    assert warned.content.startswith("value of a")
    assert "Loop warning" in warned.content
    # The warning reached the model with that result.
    sent = provider.requests[3].messages[-1]
    assert isinstance(sent, ToolMessage)
    assert "Loop warning" in sent.content


async def test_loop_detection_can_be_turned_off() -> None:
    provider = FakeProvider([lookup_reply(f"c{i}", "a") for i in range(4)])
    agent = trurn.Agent(provider, tools=[lookup], loop_detection=None, max_steps=4)
    result, _ = await run(agent, trurn.Context())
    assert result.stop_reason == "max_iterations"
    assert runs == ["a"] * 4


async def test_the_token_budget_stops_before_the_next_model_call() -> None:
    used = Usage(input_tokens=60, output_tokens=10, total_tokens=70)
    provider = FakeProvider([lookup_reply(f"c{i}", f"k{i}", used) for i in range(5)])
    context = trurn.Context()
    agent = trurn.Agent(provider, tools=[lookup], max_turn_tokens=100)
    result, seen = await run(agent, context)
    assert result.stop_reason == "budget_exceeded"
    assert len(provider.requests) == 2  # 70 tokens: go on; 140: stop
    assert result.usage.total_tokens == 140
    assert unanswered_tool_calls(context.messages) == []
    assert [e.stop_reason for e in seen if isinstance(e, events.TurnFinished)] == [
        "budget_exceeded"
    ]


class Summarising:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, str]] = []

    async def should_continue(self, iteration: int, tool_calls: Sequence[ToolCall]) -> bool:
        return True

    async def on_limit_reached(
        self, iteration: int, tool_calls: Sequence[ToolCall], stop_reason: str
    ) -> str | None:
        self.calls.append((iteration, len(tool_calls), stop_reason))
        return f"Stopped after {iteration} replies ({stop_reason})."


async def test_on_limit_reached_writes_the_turn_text() -> None:
    provider = FakeProvider([lookup_reply(f"c{i}", f"k{i}") for i in range(2)])
    policy = Summarising()
    context = trurn.Context()
    agent = trurn.Agent(provider, tools=[lookup], max_steps=2, iteration_policy=policy)
    result, seen = await run(agent, context)
    assert policy.calls == [(2, 2, "max_iterations")]
    assert result.text == "Stopped after 2 replies (max_iterations)."
    finished = seen[-1]
    assert isinstance(finished, events.TurnFinished)
    assert finished.text == result.text
    # The model never said it, so it is not in the history.
    assert all(result.text not in (m.content or "") for m in context.messages)


async def test_on_limit_reached_is_not_called_when_the_model_answers() -> None:
    provider = FakeProvider([text_reply("done")])
    policy = Summarising()
    result, _ = await run(trurn.Agent(provider, iteration_policy=policy), trurn.Context())
    assert policy.calls == []
    assert result.text == "done"


async def test_a_loop_in_parallel_calls_of_one_reply() -> None:
    batch = [ToolCallDelta(index=i, id=f"p{i}", name="lookup") for i in range(3)]
    batch += [ToolCallDelta(index=i, arguments='{"key": "same"}') for i in range(3)]
    provider = FakeProvider([[batch, [Finish("tool_calls")]]])
    context = trurn.Context()
    result, _ = await run(trurn.Agent(provider, tools=[lookup]), context)
    assert result.stop_reason == "loop_detected"
    assert runs == []
    assert [r.status for r in results(context)] == ["error"] * 3


class Forgetful:
    """Forgets to return True: ``None`` must not pass for "stop" (nor "no" for "go on")."""

    def __init__(self, answer: object) -> None:
        self.answer = answer

    async def should_continue(self, iteration: int, tool_calls: Sequence[ToolCall]) -> bool:
        return self.answer  # type: ignore[return-value]


@pytest.mark.parametrize(("answer", "kind"), [(None, "NoneType"), ("no", "str")])
async def test_a_policy_answer_that_is_not_a_bool_fails_the_turn_naming_the_policy(
    answer: object, kind: str
) -> None:
    provider = FakeProvider([text_reply("hello")])
    agent = trurn.Agent(provider, iteration_policy=Forgetful(answer))
    context = trurn.Context()
    seen: list[events.Event] = []
    with pytest.raises(
        TypeError,
        match=f"iteration policy Forgetful: should_continue must return a bool, got {kind}",
    ):
        await agent.run_turn(context, "hi", on_event=seen.append)
    assert provider.requests == []  # no model call on an answer nobody can read
    finished = seen[-1]
    assert isinstance(finished, events.TurnFinished)
    assert finished.stop_reason == "error"
