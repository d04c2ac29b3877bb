"""Hooks: every hook point, chaining, and hooks that raise, hang or return nonsense."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from fakes import FakeProvider, text_reply, tool_reply

import trurn
from trurn import events
from trurn._context import unanswered_tool_calls
from trurn._hooks import Block, Hooks
from trurn._messages import AssistantMessage, Message, ToolCall, ToolMessage, UserMessage
from trurn._turn import TurnResult

WEATHER_CALLS: list[dict[str, Any]] = []


@trurn.tool
async def get_weather(city: str) -> str:
    """Get the weather for a city."""
    WEATHER_CALLS.append({"city": city})
    return f"sunny in {city}"


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    WEATHER_CALLS.clear()


def weather_turn() -> FakeProvider:
    """A model that calls get_weather(Tokyo) once, then answers."""
    return FakeProvider(
        [
            tool_reply(("c1", "get_weather", '{"city": "Tokyo"}'), text="Checking."),
            text_reply("Sunny."),
        ]
    )


async def run(agent: trurn.Agent, message: str = "Weather?") -> tuple[TurnResult, list[Any]]:
    seen: list[events.Event] = []
    result = await agent.run_turn(trurn.Context(), message, on_event=seen.append)
    return result, seen


def of_type(seen: list[Any], kind: type[Any]) -> list[Any]:
    return [event for event in seen if isinstance(event, kind)]


def tags(seen: list[Any]) -> list[str]:
    return [event.__struct_config__.tag for event in seen]


# -- every hook point, in order ---------------------------------------------------------


class Recorder(Hooks):
    """Records each hook call as (name, what it was given)."""

    def __init__(self, log: list[tuple[str, Any]], label: str = "") -> None:
        self.log = log
        self.label = label

    async def before_request(self, messages: list[Message]) -> None:
        self.log.append((self.label + "before_request", len(messages)))

    async def before_tool(self, call: ToolCall) -> None:
        self.log.append((self.label + "before_tool", call.arguments))

    async def after_tool(self, call: ToolCall, result: ToolMessage) -> None:
        self.log.append((self.label + "after_tool", result.content))

    async def before_finish(self, text: str | None) -> None:
        self.log.append((self.label + "before_finish", text))

    async def on_turn_end(self, result: TurnResult) -> None:
        self.log.append((self.label + "on_turn_end", result.stop_reason))


async def test_every_hook_point_is_called_in_turn_order(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    log: list[tuple[str, Any]] = []
    agent = trurn.Agent(weather_turn(), tools=[get_weather], hooks=[Recorder(log)])
    result, seen = await run(agent)

    assert result.stop_reason == "completed"
    assert log == [
        ("before_request", 1),  # the user message
        ("before_tool", {"city": "Tokyo"}),
        ("after_tool", "sunny in Tokyo"),
        ("before_request", 3),  # user, assistant with the call, tool result
        ("before_finish", "Sunny."),
        ("on_turn_end", "completed"),
    ]
    assert not of_type(seen, events.Error)


async def test_several_hooks_run_in_the_order_given(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    log: list[tuple[str, Any]] = []
    hooks = [Recorder(log, "a."), Recorder(log, "b.")]
    agent = trurn.Agent(weather_turn(), tools=[get_weather], hooks=hooks)
    await run(agent)

    names = [name for name, _ in log]
    assert names == [
        "a.before_request",
        "b.before_request",
        "a.before_tool",
        "b.before_tool",
        "a.after_tool",
        "b.after_tool",
        "a.before_request",
        "b.before_request",
        "a.before_finish",
        "b.before_finish",
        "a.on_turn_end",
        "b.on_turn_end",
    ]


async def test_a_turn_without_hooks_calls_nothing(
    autojump_clock: trio.testing.MockClock, watchdog: None
) -> None:
    # A Hooks subclass that overrides nothing is skipped (and breaks nothing).
    agent = trurn.Agent(weather_turn(), tools=[get_weather], hooks=[Hooks()])
    result, seen = await run(agent)
    assert result.stop_reason == "completed"
    assert not of_type(seen, events.Error)


# -- before_request ---------------------------------------------------------------------


class Redact(Hooks):
    async def before_request(self, messages: list[Message]) -> list[Message]:
        return [
            UserMessage(m.content.replace("secret", "[redacted]"))
            if isinstance(m, UserMessage)
            else m
            for m in messages
        ]


class AddNote(Hooks):
    def __init__(self, note: str) -> None:
        self.note = note

    async def before_request(self, messages: list[Message]) -> list[Message]:
        return [*messages, UserMessage(self.note)]


async def test_before_request_edits_what_is_sent_not_the_history(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider([text_reply("OK.")])
    agent = trurn.Agent(provider, system="Be brief.", hooks=[Redact()])
    context = trurn.Context()
    await agent.run_turn(context, "my secret plan")

    sent = provider.requests[0].messages
    assert sent[0] == trurn.SystemMessage("Be brief.")  # the system prompt is still first
    assert sent[1:] == [UserMessage("my [redacted] plan")]
    assert context.messages[0] == UserMessage("my secret plan")


async def test_before_request_hooks_chain(
    autojump_clock: trio.testing.MockClock, watchdog: None
) -> None:
    provider = FakeProvider([text_reply("OK.")])
    agent = trurn.Agent(provider, hooks=[AddNote("first"), Redact(), AddNote("secret second")])
    await agent.run_turn(trurn.Context(), "Hi")

    # Each hook sees what the one before returned: Redact sees "first" but not the last note.
    assert provider.requests[0].messages == [
        UserMessage("Hi"),
        UserMessage("first"),
        UserMessage("secret second"),
    ]


async def test_before_request_changes_made_in_place_count_for_nothing(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    class Mutate(Hooks):
        async def before_request(self, messages: list[Message]) -> None:
            messages.clear()

    provider = FakeProvider([text_reply("OK.")])
    context = trurn.Context()
    await trurn.Agent(provider, hooks=[Mutate()]).run_turn(context, "Hi")
    assert provider.requests[0].messages == [UserMessage("Hi")]
    assert context.messages[0] == UserMessage("Hi")


# -- before_tool: rewrite and block -----------------------------------------------------


class ToParis(Hooks):
    async def before_tool(self, call: ToolCall) -> ToolCall:
        return msgspec.structs.replace(call, arguments={"city": "Paris"})


class Suffix(Hooks):
    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    async def before_tool(self, call: ToolCall) -> ToolCall:
        city = call.arguments["city"] + self.suffix
        return msgspec.structs.replace(call, arguments={"city": city})


async def test_before_tool_rewrite_is_what_runs_and_what_is_recorded(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = weather_turn()
    agent = trurn.Agent(provider, tools=[get_weather], hooks=[ToParis()])
    result, seen = await run(agent)

    assert WEATHER_CALLS == [{"city": "Paris"}]
    (started,) = of_type(seen, events.ToolCallStarted)
    assert started.call.arguments == {"city": "Paris"}
    assert started.call.id == "c1"
    assert started.call.name == "get_weather"
    (exit_event,) = of_type(seen, events.ToolExit)
    assert exit_event.content == "sunny in Paris"

    assistant, tool_result = result.messages[1], result.messages[2]
    assert isinstance(assistant, AssistantMessage)
    assert assistant.tool_calls[0].arguments == {"city": "Tokyo"}  # what the model asked
    assert isinstance(tool_result, ToolMessage)
    assert tool_result.arguments == {"city": "Paris"}  # what ran
    assert tool_result.content == "sunny in Paris"
    # The model reads the result of what ran.
    assert provider.requests[1].messages[2] == tool_result


async def test_before_tool_rewrites_chain(
    autojump_clock: trio.testing.MockClock, watchdog: None
) -> None:
    hooks = [ToParis(), Suffix(", France"), Suffix(" (EU)")]
    agent = trurn.Agent(weather_turn(), tools=[get_weather], hooks=hooks)
    result, _ = await run(agent)
    assert WEATHER_CALLS == [{"city": "Paris, France (EU)"}]
    tool_result = result.messages[2]
    assert isinstance(tool_result, ToolMessage)
    assert tool_result.arguments == {"city": "Paris, France (EU)"}


async def test_before_tool_returning_the_call_unchanged_records_no_rewrite(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    class Same(Hooks):
        async def before_tool(self, call: ToolCall) -> ToolCall:
            return call

    result, _ = await run(trurn.Agent(weather_turn(), tools=[get_weather], hooks=[Same()]))
    tool_result = result.messages[2]
    assert isinstance(tool_result, ToolMessage)
    assert tool_result.arguments is None
    assert WEATHER_CALLS == [{"city": "Tokyo"}]


async def test_before_tool_changes_made_in_place_do_not_touch_the_history(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    class Mutate(Hooks):
        async def before_tool(self, call: ToolCall) -> None:
            call.arguments["city"] = "Nowhere"

    result, _ = await run(trurn.Agent(weather_turn(), tools=[get_weather], hooks=[Mutate()]))
    assistant = result.messages[1]
    assert isinstance(assistant, AssistantMessage)
    assert assistant.tool_calls[0].arguments == {"city": "Tokyo"}
    assert WEATHER_CALLS == [{"city": "Tokyo"}]


async def test_before_tool_rewrite_is_in_the_session_file(tmp_path: Path, watchdog: None) -> None:
    path = tmp_path / "hooked.jsonl"
    async with trurn.Context(path) as context:
        agent = trurn.Agent(weather_turn(), tools=[get_weather], hooks=[ToParis()])
        await agent.run_turn(context, "Weather?")

    async with trurn.Context(path) as restored:
        messages = list(restored.messages)
    assistant, tool_result = messages[1], messages[2]
    assert isinstance(assistant, AssistantMessage)
    assert assistant.tool_calls[0].arguments == {"city": "Tokyo"}
    assert isinstance(tool_result, ToolMessage)
    assert tool_result.arguments == {"city": "Paris"}
    assert tool_result.content == "sunny in Paris"
    assert b'"arguments":{"city":"Paris"}' in path.read_bytes()


async def test_before_tool_can_repair_arguments_that_were_not_json(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider(
        [tool_reply(("c1", "get_weather", '{"city": "Tok')), text_reply("Sunny.")]
    )
    result, seen = await run(trurn.Agent(provider, tools=[get_weather], hooks=[ToParis()]))
    assert WEATHER_CALLS == [{"city": "Paris"}]
    tool_result = result.messages[2]
    assert isinstance(tool_result, ToolMessage)
    assert (tool_result.status, tool_result.arguments) == ("ok", {"city": "Paris"})
    assert not of_type(seen, events.Error)
    # The model's broken call stays in the history as it was sent.
    assistant = result.messages[1]
    assert isinstance(assistant, AssistantMessage)
    assert assistant.tool_calls[0].arguments_error is not None


class NoTokyo(Hooks):
    async def before_tool(self, call: ToolCall) -> Block | None:
        if call.arguments.get("city") == "Tokyo":
            return Block("Tokyo is off limits")
        return None


async def test_block_skips_the_call_and_the_model_reads_why(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    log: list[tuple[str, Any]] = []
    provider = weather_turn()
    agent = trurn.Agent(provider, tools=[get_weather], hooks=[NoTokyo(), Recorder(log)])
    result, seen = await run(agent)

    assert WEATHER_CALLS == []
    assert result.stop_reason == "completed"
    tool_result = result.messages[2]
    assert isinstance(tool_result, ToolMessage)
    assert tool_result.status == "denied"
    assert tool_result.content == "Blocked: Tokyo is off limits"
    assert provider.requests[1].messages[2] == tool_result
    # A UI sees the call and its end, like any other refused call.
    started = of_type(seen, events.ToolCallStarted)
    assert [event.call.id for event in started] == ["c1"]
    (exit_event,) = of_type(seen, events.ToolExit)
    assert (exit_event.tool_call_id, exit_event.status) == ("c1", "denied")
    assert tags(seen).index("tool_call") < tags(seen).index("tool_exit")
    # The hooks after a Block are not asked about the call, but after_tool sees it.
    names = [name for name, _ in log]
    assert "before_tool" not in names
    assert ("after_tool", "Blocked: Tokyo is off limits") in log


async def test_block_one_call_of_several(
    autojump_clock: trio.testing.MockClock, watchdog: None
) -> None:
    provider = FakeProvider(
        [
            tool_reply(
                ("c1", "get_weather", '{"city": "Tokyo"}'),
                ("c2", "get_weather", '{"city": "Oslo"}'),
            ),
            text_reply("Done."),
        ]
    )
    agent = trurn.Agent(provider, tools=[get_weather], hooks=[NoTokyo()])
    result, _ = await run(agent)
    statuses = [(m.tool_call_id, m.status) for m in result.messages if isinstance(m, ToolMessage)]
    assert statuses == [("c1", "denied"), ("c2", "ok")]
    assert WEATHER_CALLS == [{"city": "Oslo"}]


# -- after_tool ---------------------------------------------------------------------------


async def test_after_tool_sees_failures_and_the_recorded_result(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    seen_results: list[tuple[ToolCall, ToolMessage]] = []

    class After(Hooks):
        async def after_tool(self, call: ToolCall, result: ToolMessage) -> None:
            seen_results.append((call, result))

    provider = FakeProvider(
        [
            tool_reply(
                ("c1", "get_weather", '{"city": "Tokyo"}'),
                ("c2", "no_such_tool", "{}"),
            ),
            text_reply("Done."),
        ]
    )
    agent = trurn.Agent(provider, tools=[get_weather], hooks=[ToParis(), After()])
    result, _ = await run(agent)

    by_id = {call.id: (call, tool_result) for call, tool_result in seen_results}
    assert set(by_id) == {"c1", "c2"}
    call, tool_result = by_id["c1"]
    assert call.arguments == {"city": "Paris"}  # the call as it ran
    # The very result the history holds, arguments included.
    assert tool_result in result.messages
    assert tool_result.arguments == {"city": "Paris"}
    assert by_id["c2"][1].status == "error"


# -- before_finish --------------------------------------------------------------------------


async def test_before_finish_sends_the_model_back(
    autojump_clock: trio.testing.MockClock, watchdog: None
) -> None:
    asked: list[str | None] = []

    class CheckOnce(Hooks):
        async def before_finish(self, text: str | None) -> str | None:
            asked.append(text)
            return "Double-check that." if len(asked) == 1 else None

    provider = FakeProvider([text_reply("Maybe."), text_reply("Certainly.")])
    result, seen = await run(trurn.Agent(provider, hooks=[CheckOnce()]), "Sure?")

    assert asked == ["Maybe.", "Certainly."]
    assert result.stop_reason == "completed"
    assert result.text == "Certainly."
    assert provider.requests[1].messages[-1] == UserMessage("Double-check that.")
    assert [type(m) for m in result.messages] == [
        UserMessage,
        AssistantMessage,
        UserMessage,
        AssistantMessage,
    ]
    (injected,) = of_type(seen, events.UserInjected)
    assert injected.text == "Double-check that."
    assert tags(seen).count("message_sent") == 2


async def test_before_finish_is_bounded_by_max_steps(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    class Never(Hooks):
        async def before_finish(self, text: str | None) -> str:
            return "Again."

    provider = FakeProvider([text_reply(f"Try {n}.") for n in range(3)])
    result, seen = await run(trurn.Agent(provider, max_steps=3, hooks=[Never()]))

    assert len(provider.requests) == 3
    assert result.stop_reason == "max_iterations"
    assert of_type(seen, events.TurnFinished)[0].stop_reason == "max_iterations"
    # The last follow-up had no step left: it is not added for the model to never read.
    assert isinstance(result.messages[-1], trurn.AssistantMessage)
    assert len(of_type(seen, events.UserInjected)) == 2


async def test_the_first_before_finish_that_asks_wins(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    calls: list[str] = []

    class Ask(Hooks):
        def __init__(self, name: str, message: str | None) -> None:
            self.name, self.message = name, message

        async def before_finish(self, text: str | None) -> str | None:
            calls.append(self.name)
            message, self.message = self.message, None
            return message

    provider = FakeProvider([text_reply("One."), text_reply("Two.")])
    hooks = [Ask("a", ""), Ask("b", "More."), Ask("c", None)]
    result, _ = await run(trurn.Agent(provider, hooks=hooks))
    # "" counts as no message; once b asks, c is not consulted.
    assert calls == ["a", "b", "a", "b", "c"]
    assert provider.requests[1].messages[-1] == UserMessage("More.")
    assert result.text == "Two."
    assert len(provider.requests) == 2


# -- on_turn_end ------------------------------------------------------------------------------


async def test_on_turn_end_gets_the_result_before_turn_finished(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    seen: list[events.Event] = []
    ends: list[tuple[TurnResult, list[str]]] = []

    turn_ids: list[str | None] = []

    class End(Hooks):
        async def before_tool(self, call: ToolCall) -> None:
            lineage = trurn.current_turn()  # hooks run in the turn's task
            turn_ids.append(None if lineage is None else lineage.turn_id)

        async def on_turn_end(self, result: TurnResult) -> None:
            ends.append((result, tags(seen)))

    agent = trurn.Agent(weather_turn(), tools=[get_weather], hooks=[End()])
    result = await agent.run_turn(trurn.Context(), "Weather?", on_event=seen.append)

    ((given, tags_then),) = ends
    assert given == result
    assert turn_ids == [result.turn_id]
    assert "turn_finished" not in tags_then
    assert tags(seen)[-1] == "turn_finished"


async def test_on_turn_end_sees_an_after_turn_stop_but_not_a_cancel_now(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    ends: list[str] = []

    class End(Hooks):
        async def on_turn_end(self, result: TurnResult) -> None:
            ends.append(result.stop_reason)

    for mode in ("after_turn", "now"):
        agent = trurn.Agent(weather_turn(), tools=[get_weather], hooks=[End()])

        def on_event(event: events.Event, agent: trurn.Agent = agent, mode: str = mode) -> None:
            if isinstance(event, events.ToolCallStarted):
                agent.cancel(mode)  # type: ignore[arg-type]

        result = await agent.run_turn(trurn.Context(), "Weather?", on_event=on_event)
        assert result.stop_reason == "aborted"
    assert ends == ["aborted"]


# -- hooks that fail ---------------------------------------------------------------------------


class Boom(Exception):
    pass


class RaiseAt(Hooks):
    """Raises at every hook point."""

    async def before_request(self, messages: list[Message]) -> None:
        raise Boom("before_request broke")

    async def before_tool(self, call: ToolCall) -> None:
        raise Boom("before_tool broke")

    async def after_tool(self, call: ToolCall, result: ToolMessage) -> None:
        raise Boom("after_tool broke")

    async def before_finish(self, text: str | None) -> None:
        raise Boom("before_finish broke")

    async def on_turn_end(self, result: TurnResult) -> None:
        raise Boom("on_turn_end broke")


async def test_hooks_that_raise_become_error_events_and_the_turn_goes_on(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    log: list[tuple[str, Any]] = []
    provider = weather_turn()
    agent = trurn.Agent(provider, tools=[get_weather], hooks=[RaiseAt(), Recorder(log)])
    result, seen = await run(agent)

    assert result.stop_reason == "completed"
    assert result.text == "Sunny."
    assert WEATHER_CALLS == [{"city": "Tokyo"}]  # as the model asked
    errors = of_type(seen, events.Error)
    assert [error.message for error in errors] == [
        "hook RaiseAt.before_request raised Boom: before_request broke",
        "hook RaiseAt.before_tool raised Boom: before_tool broke",
        "hook RaiseAt.after_tool raised Boom: after_tool broke",
        "hook RaiseAt.before_request raised Boom: before_request broke",
        "hook RaiseAt.before_finish raised Boom: before_finish broke",
        "hook RaiseAt.on_turn_end raised Boom: on_turn_end broke",
    ]
    assert {error.error_type for error in errors} == {"Boom"}
    assert [error.tool_call_id for error in errors[1:3]] == ["c1", "c1"]
    # The next hook still runs, and the error never reaches the model.
    assert len(log) == 6
    for request in provider.requests:
        assert "broke" not in msgspec.json.encode(request.messages).decode()
    assert tags(seen)[-1] == "turn_finished"
    assert "run_aborted" not in tags(seen)


async def test_a_hook_that_hangs_times_out(
    autojump_clock: trio.testing.MockClock, watchdog: None
) -> None:
    class Hang(Hooks):
        async def before_tool(self, call: ToolCall) -> None:
            await trio.sleep_forever()

    agent = trurn.Agent(weather_turn(), tools=[get_weather], hooks=[Hang()], hook_timeout=5)
    start = trio.current_time()
    result, seen = await run(agent)

    assert trio.current_time() - start == pytest.approx(5)
    assert result.stop_reason == "completed"
    assert WEATHER_CALLS == [{"city": "Tokyo"}]
    (error,) = of_type(seen, events.Error)
    assert error.error_type == "TimeoutError"
    assert error.message == "hook Hang.before_tool did not return within 5 s"
    assert error.tool_call_id == "c1"


async def test_hook_timeout_bounds_each_call_not_the_turn(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    class Slow(Hooks):
        async def before_request(self, messages: list[Message]) -> None:
            await trio.sleep(3)

    agent = trurn.Agent(weather_turn(), tools=[get_weather], hooks=[Slow()], hook_timeout=5)
    result, seen = await run(agent)
    assert result.stop_reason == "completed"
    assert not of_type(seen, events.Error)


async def test_a_hanging_hook_without_timeout_stops_with_the_caller(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    class Hang(Hooks):
        async def before_request(self, messages: list[Message]) -> None:
            await trio.sleep_forever()

    provider = weather_turn()
    agent = trurn.Agent(provider, tools=[get_weather], hooks=[Hang()])
    context = trurn.Context()
    seen: list[events.Event] = []
    with trio.move_on_after(30) as scope:
        await agent.run_turn(context, "Weather?", on_event=seen.append)

    assert scope.cancelled_caught
    assert provider.requests == []  # the hook runs before the request is made
    assert provider.open_streams == 0
    assert tags(seen)[-2:] == ["run_aborted", "turn_finished"]
    assert of_type(seen, events.RunAborted)[0].reason == "cancelled"
    assert not of_type(seen, events.Error)  # a cancel is not a hook failure
    assert unanswered_tool_calls(context.messages) == []
    assert agent._turns == {}


async def test_cancel_now_stops_a_hook_that_has_a_timeout(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    class Hang(Hooks):
        async def before_tool(self, call: ToolCall) -> None:
            await trio.sleep_forever()

    agent = trurn.Agent(weather_turn(), tools=[get_weather], hooks=[Hang()], hook_timeout=100)

    def on_event(event: events.Event) -> None:
        if isinstance(event, events.AssistantFinal):
            agent.cancel("now", reason="stop")

    start = trio.current_time()
    context = trurn.Context()
    result = await agent.run_turn(context, "Weather?", on_event=on_event)
    assert trio.current_time() - start < 100
    assert result.stop_reason == "aborted"
    assert WEATHER_CALLS == []
    tool_result = context.messages[-1]
    assert isinstance(tool_result, ToolMessage)
    assert tool_result.status == "cancelled"


@pytest.mark.parametrize(
    ("point", "value", "expected"),
    [
        ("before_request", "not a list", "returned str, expected a list of trurn messages or None"),
        ("before_request", ["hi"], "returned list, expected a list of trurn messages or None"),
        ("before_tool", {"city": "Paris"}, "returned dict, expected a ToolCall, a Block or None"),
        ("before_finish", 42, "returned int, expected a str or None"),
    ],
)
async def test_a_hook_that_returns_the_wrong_type_changes_nothing(
    autojump_clock: trio.testing.MockClock, watchdog: None, point: str, value: object, expected: str
) -> None:
    async def wrong(self: Hooks, *args: object) -> object:
        return value

    hooks_type = type("Wrong", (Hooks,), {point: wrong})
    provider = weather_turn()
    agent = trurn.Agent(provider, tools=[get_weather], hooks=[hooks_type()])
    result, seen = await run(agent)

    assert result.stop_reason == "completed"
    assert WEATHER_CALLS == [{"city": "Tokyo"}]
    assert provider.requests[0].messages == [UserMessage("Weather?")]
    errors = of_type(seen, events.Error)
    assert errors
    assert errors[0].message == f"hook Wrong.{point} {expected}"
    assert errors[0].error_type == "TypeError"


async def test_a_hook_error_from_an_exception_without_message(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    class Bare(Hooks):
        async def on_turn_end(self, result: TurnResult) -> None:
            raise Boom

    result, seen = await run(trurn.Agent(FakeProvider([text_reply("Hi.")]), hooks=[Bare()]))
    assert result.stop_reason == "completed"
    assert [e.message for e in of_type(seen, events.Error)] == ["hook Bare.on_turn_end raised Boom"]


async def test_a_keyboard_interrupt_from_a_hook_is_not_swallowed(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    class Interrupt(Hooks):
        async def before_tool(self, call: ToolCall) -> None:
            raise KeyboardInterrupt

    agent = trurn.Agent(weather_turn(), tools=[get_weather], hooks=[Interrupt()])
    context = trurn.Context()
    with pytest.raises(KeyboardInterrupt):
        await agent.run_turn(context, "Weather?")
    assert WEATHER_CALLS == []
    assert unanswered_tool_calls(context.messages) == []


# -- bad configuration ----------------------------------------------------------------------------


async def test_hooks_must_be_hooks_instances() -> None:
    provider = FakeProvider([])
    with pytest.raises(TypeError, match=r"got the class Recorder: pass Recorder\(\)"):
        trurn.Agent(provider, hooks=[Recorder])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"trurn.Hooks instances \(subclass it\), got object"):
        trurn.Agent(provider, hooks=[object()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"use hooks=\[...\]"):
        trurn.Agent(provider, hooks=Recorder([]))  # type: ignore[arg-type]


async def test_hook_points_must_be_async() -> None:
    class Sync(Hooks):
        def before_tool(self, call: ToolCall) -> None:  # type: ignore[override]
            return None

    with pytest.raises(TypeError, match=r"hook Sync.before_tool must be an 'async def'"):
        trurn.Agent(FakeProvider([]), hooks=[Sync()])


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, "hook_timeout must be more than 0 seconds, got 0"),
        (-1.5, ValueError, "hook_timeout must be more than 0 seconds"),
        (math.nan, ValueError, "hook_timeout must be more than 0 seconds"),
        ("5", TypeError, "hook_timeout must be a number of seconds, not str"),
        (True, TypeError, "hook_timeout must be a number of seconds, not bool"),
    ],
)
async def test_bad_hook_timeout(value: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        trurn.Agent(FakeProvider([]), hook_timeout=value)  # type: ignore[arg-type]


# -- before_tool: rewritten arguments the history could not hold ------------------------

SCALED: list[float] = []


@trurn.tool
async def scale(x: float) -> str:
    """Scale a number."""
    SCALED.append(x)
    return f"scaled {x}"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"x": math.nan}, "hold nan, which JSON cannot store"),
        ({"x": [1.0, {"y": -math.inf}]}, "hold -inf, which JSON cannot store"),
        ({"x": object()}, "a ToolCall whose arguments JSON can hold (Encoding objects of type"),
        (["x", 2.0], "a ToolCall whose arguments are a dict with str keys"),
        ({1: 2.0}, "a ToolCall whose arguments are a dict with str keys"),
    ],
)
async def test_before_tool_arguments_the_history_cannot_hold_are_refused(
    tmp_path: Path, watchdog: None, arguments: Any, expected: str
) -> None:
    # On a session file such a rewrite used to let the tool run, then the history refused
    # its result and the turn died saying the call had not run.
    class Unstorable(Hooks):
        async def before_tool(self, call: ToolCall) -> ToolCall:
            return ToolCall(id=call.id, name=call.name, arguments=arguments)

    SCALED.clear()
    provider = FakeProvider([tool_reply(("c1", "scale", '{"x": 1}')), text_reply("ok")])
    agent = trurn.Agent(provider, tools=[scale], hooks=[Unstorable()])
    seen: list[events.Event] = []
    async with trurn.Context(tmp_path / "s.jsonl") as context:
        result = await agent.run_turn(context, "go", on_event=seen.append)

    assert result.stop_reason == "completed"
    assert SCALED == [1.0]  # the model's arguments ran
    errors = of_type(seen, events.Error)
    assert len(errors) == 1
    assert errors[0].message.startswith("hook Unstorable.before_tool returned ")
    assert expected in errors[0].message
    assert errors[0].tool_call_id == "c1"
    tool_result = context.messages[2]
    assert isinstance(tool_result, ToolMessage)
    assert (tool_result.status, tool_result.content) == ("ok", "scaled 1.0")
    assert tool_result.arguments is None  # no rewrite recorded
    async with trurn.Context(tmp_path / "s.jsonl") as restored:
        assert list(restored.messages) == list(context.messages)
