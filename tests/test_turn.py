"""The turn loop, on an in-memory fake provider and virtual time."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing
from channels import drain
from fakes import HANG, FakeProvider, Reply, assert_valid_history, text_reply, tool_reply

import trurn
from trurn import events
from trurn._chunks import Finish, ReasoningDelta, TextDelta, ToolCallDelta
from trurn._context import unanswered_tool_calls
from trurn._messages import AssistantMessage, ToolMessage, UserMessage


@trurn.tool
async def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"sunny in {city}"


async def collect(agent: trurn.Agent, context: trurn.Context, message: str) -> list[events.Event]:
    seen: list[events.Event] = []
    await agent.run_turn(context, message, on_event=seen.append)
    return seen


async def test_text_only_turn(autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider([text_reply("", "Hel", "lo!")])
    agent = trurn.Agent(provider, system="Be brief.")
    context = trurn.Context()
    seen: list[events.Event] = []
    result = await agent.run_turn(context, "Hi", on_event=seen.append)

    assert result.text == "Hello!"
    assert result.stop_reason == "completed"
    assert result.tool_calls == []
    assert [type(m) for m in result.messages] == [UserMessage, AssistantMessage]
    assert list(context.messages) == result.messages
    assert [e.__struct_config__.tag for e in seen] == [
        "turn_started",
        "message_sent",
        "assistant_delta",
        "assistant_delta",
        "assistant_final",
        "turn_finished",
    ]
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert {e.turn_id for e in seen} == {result.turn_id}
    # The system prompt goes first in the request but is not part of the history.
    request = provider.requests[0]
    assert isinstance(request.messages[0], trurn.SystemMessage)
    assert request.messages[0].content == "Be brief."
    assert request.messages[1:] == [UserMessage("Hi")]


async def test_tool_call_round_trip(autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider(
        [
            tool_reply(("call_1", "get_weather", '{"city": "Tokyo"}'), text="Checking."),
            text_reply("It is sunny in Tokyo."),
        ]
    )
    agent = trurn.Agent(provider, tools=[get_weather])
    context = trurn.Context()
    result = await agent.run_turn(context, "Weather in Tokyo?")

    assert result.text == "It is sunny in Tokyo."
    assert [(c.id, c.name, c.arguments) for c in result.tool_calls] == [
        ("call_1", "get_weather", {"city": "Tokyo"})
    ]
    tool_message = result.messages[2]
    assert isinstance(tool_message, ToolMessage)
    assert (tool_message.content, tool_message.status) == ("sunny in Tokyo", "ok")
    # The second request carries the tool result back to the model.
    assert provider.requests[1].messages[-1] == tool_message
    assert [spec.name for spec in provider.requests[0].tools] == ["get_weather"]
    assert_valid_history(context.messages)


async def test_events_of_a_tool_turn_in_order(autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider(
        [tool_reply(("c1", "get_weather", '{"city": "Oslo"}')), text_reply("Done.")]
    )
    seen = await collect(trurn.Agent(provider, tools=[get_weather]), trurn.Context(), "Oslo?")
    tags = [e.__struct_config__.tag for e in seen]
    assert tags == [
        "turn_started",
        "message_sent",
        "tool_call_delta",
        "tool_call_delta",
        "assistant_final",
        "tool_call",
        "tool_exit",
        "message_sent",
        "assistant_delta",
        "assistant_final",
        "turn_finished",
    ]


async def test_parallel_tool_calls_run_concurrently_up_to_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    running = 0
    most = 0

    @trurn.tool
    async def slow(n: int) -> int:
        """Sleep a while, then echo."""
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.sleep(1)
        running -= 1
        return n

    calls = [(f"c{i}", "slow", f'{{"n": {i}}}') for i in range(5)]
    provider = FakeProvider([tool_reply(*calls), text_reply("ok")])
    agent = trurn.Agent(provider, tools=[slow], max_concurrent_tools=2)
    start = trio.current_time()
    result = await agent.run_turn(trurn.Context(), "go")

    assert most == 2
    assert trio.current_time() - start == pytest.approx(3)  # 5 calls, 2 at a time
    results = [m for m in result.messages if isinstance(m, ToolMessage)]
    assert [r.content for r in results] == ["0", "1", "2", "3", "4"]  # call order


async def test_max_iterations_stops_a_model_that_keeps_calling_tools(
    autojump_clock: trio.testing.MockClock,
) -> None:
    replies = [tool_reply((f"c{i}", "get_weather", f'{{"city": "X{i}"}}')) for i in range(3)]
    provider = FakeProvider(replies)
    context = trurn.Context()
    result = await trurn.Agent(provider, tools=[get_weather], max_steps=3).run_turn(context, "x")
    assert result.stop_reason == "max_iterations"
    assert len(provider.requests) == 3
    assert_valid_history(context.messages)


async def test_iteration_policy_sees_the_calls_and_can_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[int, list[str]]] = []

    class StopAfterOneTool:
        async def should_continue(
            self, iteration: int, tool_calls: Sequence[trurn.ToolCall]
        ) -> bool:
            seen.append((iteration, [c.arguments["city"] for c in tool_calls]))
            return not tool_calls

    provider = FakeProvider([tool_reply(("c1", "get_weather", '{"city": "Rome"}'))])
    agent = trurn.Agent(provider, tools=[get_weather], iteration_policy=StopAfterOneTool())
    result = await agent.run_turn(trurn.Context(), "x")
    assert result.stop_reason == "policy"
    assert seen == [(0, []), (1, ["Rome"])]


async def test_on_progress_gets_interim_text_and_tool_hints(
    autojump_clock: trio.testing.MockClock,
) -> None:
    progress: list[tuple[str, bool]] = []

    async def on_progress(content: str, *, tool_hint: bool = False) -> None:
        progress.append((content, tool_hint))

    provider = FakeProvider(
        [
            tool_reply(("c1", "get_weather", '{"city": "Lisbon"}'), text="Let me look. "),
            text_reply("Warm."),
        ]
    )
    await trurn.run_turn(
        provider=provider, message="x", tools=[get_weather], on_progress=on_progress
    )
    assert progress == [("Let me look.", False), ('get_weather("Lisbon")', True)]


async def test_unknown_tool_is_reported_to_the_model_and_the_turn_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider([tool_reply(("c1", "nope", "{}")), text_reply("Sorry.")])
    result = await trurn.run_turn(provider=provider, message="x", tools=[get_weather])
    [tool_message] = [m for m in result.messages if isinstance(m, ToolMessage)]
    assert tool_message.status == "error"
    assert "nope" in tool_message.content
    assert "get_weather" in tool_message.content
    assert result.text == "Sorry."


async def test_empty_reply_ends_the_turn_without_reprompting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider([[[Finish("stop")]]])
    result = await trurn.run_turn(provider=provider, message="x")
    assert result.text is None
    assert result.stop_reason == "completed"
    assert len(provider.requests) == 1


@pytest.mark.parametrize("reason", ["length", "content_filter"])
async def test_cut_off_reply_stops_the_turn_and_closes_its_tool_calls(
    reason: str, autojump_clock: trio.testing.MockClock
) -> None:
    cut = [
        [ToolCallDelta(index=0, id="c1", name="get_weather", arguments='{"city": "Ber')],
        [Finish(reason)],
    ]
    ran: list[str] = []

    @trurn.tool
    def record(city: str) -> str:
        """Record."""
        ran.append(city)
        return city

    provider = FakeProvider([cut])
    context = trurn.Context()
    result = await trurn.Agent(provider, tools=[record]).run_turn(context, "x")
    assert result.stop_reason == reason
    assert ran == []
    last = context.messages[-1]
    assert isinstance(last, ToolMessage)
    assert last.status == "error"
    assert reason in last.content
    assert_valid_history(context.messages)


async def test_seq_is_monotonic_across_turns_of_one_agent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider([text_reply("one"), text_reply("two")])
    agent = trurn.Agent(provider)
    first = await collect(agent, trurn.Context(), "a")
    second = await collect(agent, trurn.Context(), "b")
    seqs = [e.seq for e in first + second]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert first[0].turn_id != second[0].turn_id


async def test_one_turn_at_a_time_per_context(autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider([[HANG], text_reply("x")])
    agent = trurn.Agent(provider)
    context = trurn.Context()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent.run_turn, context, "first")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="already running"):
            await agent.run_turn(context, "second")
        nursery.cancel_scope.cancel()


async def test_a_turn_inside_a_tool_knows_its_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    inner_events: list[events.Event] = []

    @trurn.tool
    async def delegate(task: str) -> str:
        """Ask a sub-agent."""
        sub = await trurn.run_turn(
            provider=FakeProvider([text_reply("sub answer")]),
            message=task,
            on_event=inner_events.append,
        )
        return sub.text or ""

    provider = FakeProvider([tool_reply(("c1", "delegate", '{"task": "t"}')), text_reply("ok")])
    outer_events: list[events.Event] = []
    result = await trurn.run_turn(
        provider=provider, message="x", tools=[delegate], on_event=outer_events.append
    )
    started = inner_events[0]
    assert isinstance(started, events.TurnStarted)
    assert started.parent_turn_id == result.turn_id
    outer_started = outer_events[0]
    assert isinstance(outer_started, events.TurnStarted)
    assert outer_started.parent_turn_id is None


# --- cancellation and errors -------------------------------------------------------------


async def test_cancel_mid_stream_keeps_partial_text_and_closes_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider([[[TextDelta("Partial ")], [TextDelta("answer")], HANG]])
    agent = trurn.Agent(provider)
    context = trurn.Context()
    seen: list[events.Event] = []
    with trio.move_on_after(5) as scope:
        await agent.run_turn(context, "x", on_event=seen.append)
    assert scope.cancelled_caught
    assert provider.open_streams == 0
    assert provider.closed_streams == 1
    partial = context.messages[-1]
    assert isinstance(partial, AssistantMessage)
    assert (partial.content, partial.aborted) == ("Partial answer", True)
    tags = [e.__struct_config__.tag for e in seen]
    assert tags[-3:] == ["assistant_final", "run_aborted", "turn_finished"]
    finished = seen[-1]
    assert isinstance(finished, events.TurnFinished)
    assert finished.stop_reason == "aborted"


@pytest.mark.parametrize(
    "reply",
    [[HANG], [[ReasoningDelta("hmm")], HANG]],
    ids=["before-any-output", "after-reasoning-only"],
)
async def test_cancel_before_any_text_leaves_only_the_user_message(
    reply: Reply, autojump_clock: trio.testing.MockClock
) -> None:
    # No text and no tool call yet: no empty assistant message is kept.
    provider = FakeProvider([reply])
    context = trurn.Context()
    with trio.move_on_after(1):
        await trurn.Agent(provider).run_turn(context, "x")
    assert list(context.messages) == [UserMessage("x")]


async def test_cancel_mid_tool_gives_every_call_a_result(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trurn.tool
    async def forever() -> str:
        """Never returns."""
        await trio.sleep_forever()
        return "unreachable"

    provider = FakeProvider(
        [tool_reply(("c1", "get_weather", '{"city": "A"}'), ("c2", "forever", "{}"))]
    )
    agent = trurn.Agent(provider, tools=[get_weather, forever])
    context = trurn.Context()
    seen: list[events.Event] = []
    with trio.move_on_after(10):
        await agent.run_turn(context, "x", on_event=seen.append)

    results = {m.tool_call_id: m for m in context.messages if isinstance(m, ToolMessage)}
    assert results["c1"].status == "ok"
    assert results["c2"].status == "cancelled"
    assert unanswered_tool_calls(context.messages) == []
    assert_valid_history(context.messages)
    exits = [e for e in seen if isinstance(e, events.ToolExit)]
    assert {(e.tool_call_id, e.status) for e in exits} == {("c1", "ok"), ("c2", "cancelled")}
    assert [e.__struct_config__.tag for e in seen][-2:] == ["run_aborted", "turn_finished"]


async def test_provider_error_mid_stream_is_raised_after_closing_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    error = trurn.ProviderConnectionError("connection reset by peer")
    provider = FakeProvider([[[TextDelta("Half")], error]])
    context = trurn.Context()
    seen: list[events.Event] = []
    with pytest.raises(trurn.ProviderConnectionError, match="connection reset"):
        await trurn.Agent(provider).run_turn(context, "x", on_event=seen.append)
    partial = context.messages[-1]
    assert isinstance(partial, AssistantMessage)
    assert (partial.content, partial.aborted) == ("Half", True)
    tags = [e.__struct_config__.tag for e in seen]
    assert tags[-4:] == ["assistant_final", "error", "run_aborted", "turn_finished"]
    error_event = seen[-3]
    assert isinstance(error_event, events.Error)
    assert error_event.error_type == "ProviderConnectionError"
    assert provider.open_streams == 0


async def test_provider_error_before_the_stream_after_tools_keeps_history_valid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider(
        [
            tool_reply(("c1", "get_weather", '{"city": "A"}')),
            trurn.RateLimitError("slow down", status_code=429),
        ]
    )
    context = trurn.Context()
    with pytest.raises(trurn.RateLimitError):
        await trurn.Agent(provider, tools=[get_weather], retry=None).run_turn(context, "x")
    assert_valid_history(context.messages)


async def test_a_drop_subscriber_that_never_reads_does_not_block_the_turn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider([text_reply("", *["x"] * 50)])
    agent = trurn.Agent(provider)
    async with agent.subscribe(max_buffer=4, policy="drop") as stuck:
        result = await agent.run_turn(trurn.Context(), "x")
        assert result.text == "x" * 50
        received = drain(stuck)
    # The subscriber was told what it missed and still got the end of the turn.
    assert any(isinstance(e, events.EventsDropped) for e in received)
    assert isinstance(received[-1], events.TurnFinished)


async def test_a_wait_subscriber_that_never_reads_cannot_stop_a_cancel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider([text_reply("", *["x"] * 20)])
    agent = trurn.Agent(provider)
    context = trurn.Context()
    async with agent.subscribe(max_buffer=2, policy="wait") as stuck:
        with trio.move_on_after(1) as scope:
            await agent.run_turn(context, "x")
        assert scope.cancelled_caught
        received = drain(stuck)
    assert isinstance(received[-1], events.TurnFinished)
    assert provider.open_streams == 0


# --- callbacks that fail, interrupts -----------------------------------------------------


async def test_a_failing_on_event_ends_the_turn_with_its_own_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def broken(event: events.Event) -> None:
        if isinstance(event, events.ToolCallStarted):
            raise ValueError("callback bug in the UI")

    provider = FakeProvider(
        [tool_reply(("c1", "get_weather", '{"city": "A"}'), ("c2", "get_weather", "{}"))]
    )
    agent = trurn.Agent(provider, tools=[get_weather])
    context = trurn.Context()
    async with agent.subscribe(policy="drop", max_buffer=64) as stream:
        with pytest.raises(ValueError, match="callback bug in the UI"):
            await agent.run_turn(context, "x", on_event=broken)
        seen = [stream.receive_nowait() for _ in range(stream.statistics().current_buffer_used)]
    assert_valid_history(context.messages)
    # The model never saw the UI's bug as a tool result.
    assert all(
        "callback bug" not in m.content for m in context.messages if isinstance(m, ToolMessage)
    )
    assert [e.__struct_config__.tag for e in seen][-2:] == ["run_aborted", "turn_finished"]
    [error] = [e for e in seen if isinstance(e, events.Error)]
    assert error.error_type == "ValueError"
    assert "callback bug" not in error.message  # not a trurn error: only its type is published


async def test_a_failing_on_progress_or_policy_keeps_the_history_valid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def on_progress(content: str, *, tool_hint: bool = False) -> None:
        raise LookupError("progress sink gone")

    provider = FakeProvider([tool_reply(("c1", "get_weather", '{"city": "A"}'))])
    context = trurn.Context()
    agent = trurn.Agent(provider, tools=[get_weather])
    with pytest.raises(LookupError, match="progress sink gone"):
        await agent.run_turn(context, "x", on_progress=on_progress)
    assert_valid_history(context.messages)
    last = context.messages[-1]
    assert isinstance(last, ToolMessage)
    assert (last.status, "LookupError" in last.content) == ("error", True)

    class Broken:
        async def should_continue(self, iteration: int, tool_calls: object) -> bool:
            raise RuntimeError("policy bug")

    agent = trurn.Agent(FakeProvider([]), iteration_policy=Broken())
    with pytest.raises(RuntimeError, match="policy bug"):
        await agent.run_turn(trurn.Context(), "x")


async def test_keyboard_interrupt_in_a_tool_comes_out_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trurn.tool
    async def interrupt() -> str:
        """Simulates Ctrl-C arriving inside a tool."""
        raise KeyboardInterrupt

    provider = FakeProvider([tool_reply(("c1", "interrupt", "{}"), ("c2", "get_weather", "{}"))])
    context = trurn.Context()
    seen: list[events.Event] = []
    agent = trurn.Agent(provider, tools=[interrupt, get_weather])
    with pytest.raises(KeyboardInterrupt):
        await agent.run_turn(context, "x", on_event=seen.append)
    assert_valid_history(context.messages)
    aborted = [e for e in seen if isinstance(e, events.RunAborted)]
    assert [e.reason for e in aborted] == ["interrupted"]


async def test_cancel_while_announcing_a_finished_tool_keeps_its_result(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider([tool_reply(("c1", "get_weather", '{"city": "A"}'))])
    agent = trurn.Agent(provider, tools=[get_weather])
    context = trurn.Context()
    seen: list[events.Event] = []
    # turn_started, message_sent, 2 x tool_call_delta, assistant_final, tool_call: six
    # events fit; the publish of tool_exit then waits on this subscriber until cancelled.
    async with agent.subscribe(max_buffer=6, policy="wait"):
        with trio.move_on_after(5) as scope:
            await agent.run_turn(context, "x", on_event=seen.append)
    assert scope.cancelled_caught
    [result] = [m for m in context.messages if isinstance(m, ToolMessage)]
    assert (result.tool_call_id, result.status) == ("c1", "ok")
    exits = [e for e in seen if isinstance(e, events.ToolExit)]
    assert all(e.status == "ok" for e in exits)


async def test_an_empty_reply_leaves_a_history_the_next_turn_can_use(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider([[[Finish("stop")]], text_reply("second")])
    agent = trurn.Agent(provider)
    context = trurn.Context()
    await agent.run_turn(context, "one")
    result = await agent.run_turn(context, "two")
    assert result.text == "second"
    sent = provider.requests[1].messages
    assert [type(m).__name__ for m in sent] == ["UserMessage", "AssistantMessage", "UserMessage"]


class StepCounter(trio.abc.Instrument):
    """Counts how often the task running a turn is scheduled (once per checkpoint)."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def turn_steps(subscribers: int, batches: int) -> int:
    reply = [[TextDelta("x"), TextDelta("y")] for _ in range(batches)] + [[Finish("stop")]]
    agent = trurn.Agent(FakeProvider([reply]))
    counter = StepCounter()
    async with AsyncExitStack() as stack:
        for _ in range(subscribers):
            await stack.enter_async_context(agent.subscribe(policy="drop", max_buffer=10_000))
        trio.lowlevel.add_instrument(counter)
        try:
            counter.task = trio.lowlevel.current_task()
            await agent.run_turn(trurn.Context(), "x")
        finally:
            trio.lowlevel.remove_instrument(counter)
    return counter.steps


async def test_publishing_costs_no_checkpoint_per_subscriber_or_event() -> None:
    # The fake provider checkpoints once per batch it yields; publishing adds no
    # schedule point of its own, whatever the number of events or of subscribers.
    one = await turn_steps(subscribers=1, batches=10)
    four = await turn_steps(subscribers=4, batches=10)
    longer = await turn_steps(subscribers=4, batches=20)
    assert one == four
    assert longer - four == 10  # ten more batches: the provider's one step each, no more


async def test_concurrent_tools_behind_a_slow_subscriber_keep_seq_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trurn.tool
    async def chatty(n: int, ctx: trurn.ToolContext) -> str:
        """Streams a few lines of output."""
        for i in range(5):
            await ctx.output(f"{n}.{i}")
        return str(n)

    calls = [(f"c{n}", "chatty", f'{{"n": {n}}}') for n in range(4)]
    provider = FakeProvider([tool_reply(*calls), text_reply("done")])
    agent = trurn.Agent(provider, tools=[chatty])
    received: list[events.Event] = []
    on_event: list[events.Event] = []

    async def slow_reader(stream: trio.MemoryReceiveChannel[events.Event]) -> None:
        async for event in stream:
            received.append(event)
            if isinstance(event, events.TurnFinished):
                return
            await trio.sleep(0.01)

    async with agent.subscribe(max_buffer=2, policy="wait") as stream, trio.open_nursery() as n:
        n.start_soon(slow_reader, stream)
        await agent.run_turn(trurn.Context(), "x", on_event=on_event.append)
    seqs = [e.seq for e in received]
    assert seqs == list(range(1, len(seqs) + 1))  # every event, in seq order
    assert [e.seq for e in on_event] == seqs
    assert sum(isinstance(e, events.ToolOutput) for e in received) == 20


async def test_a_paused_reply_is_sent_back_and_the_turn_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Anthropic's "pause_turn": a long server-side step stopped midway; the client sends
    # the reply back unchanged and the model carries on.
    paused = [[TextDelta("Searching...")], [Finish("pause_turn")]]
    provider = FakeProvider([paused, text_reply("Found it.")])
    result = await trurn.Agent(provider).run_turn(trurn.Context(), "x")
    assert result.text == "Found it."
    assert result.stop_reason == "completed"
    second = provider.requests[1].messages
    assert isinstance(second[-1], AssistantMessage)
    assert second[-1].content == "Searching..."


async def test_agent_options_go_into_every_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider([tool_reply(("c1", "get_weather", '{"city": "A"}')), text_reply("ok")])
    agent = trurn.Agent(
        provider,
        tools=[get_weather],
        model="override",
        temperature=0.2,
        max_tokens=99,
        reasoning_effort="low",
        tool_choice="required",
        stop=["END"],
        seed=7,
        parallel_tool_calls=False,
        extra_body={"top_k": 3},
    )
    await agent.run_turn(trurn.Context(), "x")
    for request in provider.requests:
        options = (
            request.model,
            request.temperature,
            request.max_tokens,
            request.reasoning_effort,
            request.tool_choice,
            request.stop,
            request.seed,
            request.parallel_tool_calls,
            request.extra_body,
        )
        assert options == ("override", 0.2, 99, "low", "required", ["END"], 7, False, {"top_k": 3})


async def test_an_interrupted_reply_keeps_only_real_text(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trurn._chunks import ServerToolBlock

    async def interrupted(*steps: object) -> list[AssistantMessage]:
        context = trurn.Context()
        with trio.move_on_after(1):
            await trurn.Agent(FakeProvider([[*steps, HANG]])).run_turn(context, "x")
        return [m for m in context.messages if isinstance(m, AssistantMessage)]

    # Blank text is not a valid assistant message: nothing is kept.
    assert await interrupted([TextDelta("\n\n")]) == []
    # A server tool call whose result never came is dropped; the text stays.
    search = ServerToolBlock({"type": "server_tool_use", "id": "s1", "name": "web_search"})
    [kept] = await interrupted([search, TextDelta("Looking")])
    assert (kept.content, kept.server_blocks, kept.aborted) == ("Looking", [], True)


async def test_a_callback_failing_on_the_last_event_does_not_end_the_turn_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def broken(event: events.Event) -> None:
        if isinstance(event, events.TurnFinished):
            raise ValueError("UI gone")

    agent = trurn.Agent(FakeProvider([text_reply("done")]))
    async with agent.subscribe(policy="drop", max_buffer=64) as stream:
        with pytest.raises(ValueError, match="UI gone"):
            await agent.run_turn(trurn.Context(), "x", on_event=broken)
        seen = [stream.receive_nowait() for _ in range(stream.statistics().current_buffer_used)]
    tags = [e.__struct_config__.tag for e in seen]
    assert tags.count("turn_finished") == 1
    assert "run_aborted" not in tags


# --- OTURN's tool-call delta accessors ----------------------------------------------------


async def test_tool_call_deltas_show_the_calls_as_they_stream() -> None:
    streaming = [
        [ToolCallDelta(index=0, id="c1", name="get_weather")],
        [ToolCallDelta(index=0, arguments='{"city": ')],
        [ToolCallDelta(index=0, arguments='"Oslo"}')],
        [Finish("tool_calls")],
    ]
    provider = FakeProvider([streaming, text_reply("Sunny.")])
    context = trurn.Context()
    assert trurn.get_tool_call_deltas(context) == []
    seen_arguments: list[str] = []

    def watch(event: events.Event) -> None:
        if isinstance(event, events.ToolCallDelta):
            progress = trurn.get_tool_call_delta(context, "c1")
            assert progress is not None
            assert trurn.get_tool_call_delta(context, 0) == progress
            seen_arguments.append(progress.arguments)
        if isinstance(event, events.ToolCallStarted):
            # The reply is complete: its calls stay readable while the tools run.
            [done] = trurn.get_tool_call_deltas(context)
            assert (done.name, done.arguments) == ("get_weather", '{"city": "Oslo"}')

    await trurn.Agent(provider, tools=[get_weather]).run_turn(context, "x", on_event=watch)
    assert seen_arguments == ["", '{"city": ', '{"city": "Oslo"}']
    # The next reply (text only) reset them.
    assert trurn.get_tool_call_deltas(context) == []
    assert trurn.get_tool_call_delta(context, "c1") is None
