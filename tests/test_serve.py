"""A long-lived agent (serve, send, steering, open_agent) and cancel modes."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from channels import drain
from fakes import HANG, FakeProvider, Reply, assert_valid_history, text_reply, tool_reply

import trurn
from trurn import events
from trurn._agent import open_agent
from trurn._chunks import Chunk, TextDelta
from trurn._context import unanswered_tool_calls
from trurn._messages import AssistantMessage, Message, ToolMessage, Usage, UserMessage
from trurn.providers import Request

# -- helpers -------------------------------------------------------------------------------


class Gates:
    """Named trio.Events a test opens to let a tool, or a model call, go on."""

    def __init__(self) -> None:
        self._events: dict[str, trio.Event] = {}

    def __getitem__(self, name: str) -> trio.Event:
        return self._events.setdefault(name, trio.Event())


GATES = Gates()
LOG: list[str] = []


@pytest.fixture(autouse=True)
def _fresh_state() -> None:
    global GATES
    GATES = Gates()
    LOG.clear()


@trurn.tool
async def wait_for(gate: str) -> str:
    """Waits until the test opens ``gate``."""
    LOG.append(f"start {gate}")
    try:
        GATES[f"started {gate}"].set()
        await GATES[gate].wait()
    except trio.Cancelled:
        LOG.append(f"cancelled {gate}")
        raise
    LOG.append(f"done {gate}")
    return f"{gate} opened"


@trurn.tool
async def pause(seconds: float) -> str:
    """Sleeps (on the test's clock)."""
    await trio.sleep(seconds)
    LOG.append(f"slept {seconds:g}")
    return f"slept {seconds:g}"


def call(call_id: str, gate: str) -> tuple[str, str, str]:
    return call_id, "wait_for", f'{{"gate": "{gate}"}}'


class GatedProvider(FakeProvider):
    """A FakeProvider whose model call number ``n`` (from 1) waits for ``GATES["model n"]``
    when the test asked for it, and says it arrived with ``GATES["asked n"]``."""

    def __init__(self, replies: Sequence[Reply], gated: Sequence[int] = ()) -> None:
        super().__init__(replies)
        self.gated = set(gated)

    @asynccontextmanager
    async def stream(self, request: Request) -> AsyncIterator[AsyncIterator[Sequence[Chunk]]]:
        number = len(self.requests) + 1
        GATES[f"asked {number}"].set()
        if number in self.gated:
            await GATES[f"model {number}"].wait()
        async with super().stream(request) as batches:
            yield batches


async def read_until(
    stream: trio.MemoryReceiveChannel[events.Event], finished: int
) -> list[events.Event]:
    """The events up to the ``finished``-th turn_finished."""
    seen: list[events.Event] = []
    count = 0
    async for event in stream:
        seen.append(event)
        if isinstance(event, events.TurnFinished):
            count += 1
            if count == finished:
                return seen
    raise AssertionError("the subscription ended early")


def of_type(seen: Sequence[Any], kind: type[Any]) -> list[Any]:
    return [event for event in seen if isinstance(event, kind)]


def tags(seen: Sequence[Any]) -> list[str]:
    return [event.__struct_config__.tag for event in seen]


def user_texts(messages: Sequence[Message]) -> list[str]:
    return [m.content for m in messages if isinstance(m, UserMessage)]


@asynccontextmanager
async def serving(
    agent: trurn.Agent, context: trurn.Context | None = None
) -> AsyncIterator[trio.MemoryReceiveChannel[events.Event]]:
    """``agent`` serving ``context`` (a new one if None) for the block, with a subscription
    to its events; serving stops when the block ends."""
    async with agent.subscribe() as stream, trio.open_nursery() as nursery:
        await nursery.start(agent.serve, trurn.Context() if context is None else context)
        yield stream
        nursery.cancel_scope.cancel()


class BackgroundTurn:
    """What a turn run by :func:`turn_in_background` emitted, and its result once ended."""

    def __init__(self) -> None:
        self.seen: list[events.Event] = []
        self.results: list[trurn.TurnResult] = []


@asynccontextmanager
async def turn_in_background(
    agent: trurn.Agent, context: trurn.Context
) -> AsyncIterator[BackgroundTurn]:
    """A turn ("Go") of ``agent`` on ``context`` that runs while the block does; leaving
    the block waits for it to end."""
    turn = BackgroundTurn()

    async def run() -> None:
        turn.results.append(await agent.run_turn(context, "Go", on_event=turn.seen.append))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        yield turn


# -- serve and send ----------------------------------------------------------------------------


async def test_serve_runs_the_messages_in_order(
    autojump_clock: trio.testing.MockClock, watchdog: None
) -> None:
    provider = FakeProvider([text_reply("A."), text_reply("B."), text_reply("C.")])
    agent = trurn.Agent(provider)
    context = trurn.Context()
    async with serving(agent, context) as stream:
        await agent.send("a")
        agent.send_nowait("b")
        await agent.send("c")
        seen = await read_until(stream, 3)

    assert [e.input for e in of_type(seen, events.TurnStarted)] == ["a", "b", "c"]
    assert [e.text for e in of_type(seen, events.TurnFinished)] == ["A.", "B.", "C."]
    assert user_texts(context.messages) == ["a", "b", "c"]
    # One turn at a time, each on the history of the ones before.
    assert [len(r.messages) for r in provider.requests] == [1, 3, 5]
    assert len({e.turn_id for e in of_type(seen, events.TurnStarted)}) == 3


async def test_a_provider_error_does_not_stop_serve(
    autojump_clock: trio.testing.MockClock, watchdog: None
) -> None:
    provider = FakeProvider([trurn.BadRequestError("bad request"), text_reply("Fine.")])
    agent = trurn.Agent(provider, retry=None)
    context = trurn.Context()
    async with serving(agent, context) as stream:
        await agent.send("first")
        await agent.send("second")
        seen = await read_until(stream, 2)

    finished = of_type(seen, events.TurnFinished)
    assert [e.stop_reason for e in finished] == ["error", "completed"]
    (error,) = of_type(seen, events.Error)
    assert error.error_type == "BadRequestError"
    assert of_type(seen, events.RunAborted)[0].reason == "error"
    assert user_texts(context.messages) == ["first", "second"]
    assert_valid_history(context.messages)


async def test_an_unexpected_error_ends_serve(
    autojump_clock: trio.testing.MockClock, watchdog: None
) -> None:
    class Broken(Exception):
        pass

    agent = trurn.Agent(FakeProvider([Broken("not a provider error")]))

    async def serve_one() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.serve, trurn.Context())
            await agent.send("hi")

    with pytest.raises(Exception) as caught:  # noqa: PT011 (the nursery's group)
        await serve_one()
    assert caught.group_contains(Broken, match="not a provider error")
    # serve has ended: the agent takes no more messages.
    with pytest.raises(trio.ClosedResourceError):
        agent.send_nowait("again")


async def test_steer_joins_the_running_turn_at_the_next_step(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider(
        [
            tool_reply(call("c1", "g")),
            text_reply("Noted both."),
            text_reply("Later done."),
        ]
    )
    agent = trurn.Agent(provider, tools=[wait_for])
    context = trurn.Context()
    async with serving(agent, context) as stream:
        await agent.send("start")
        await GATES["started g"].wait()  # the turn is in its tool call
        await agent.send("later")  # for the next turn
        await agent.send("also this", steer=True)
        assert agent.pending_messages() == ["later", "also this"]
        GATES["g"].set()
        seen = await read_until(stream, 2)

    first, second = of_type(seen, events.TurnStarted)
    assert (first.input, second.input) == ("start", "later")
    # The steering message went into the first turn's second request, after the result.
    sent = provider.requests[1].messages
    assert isinstance(sent[-2], ToolMessage)
    assert sent[-1] == UserMessage("also this")
    (injected,) = of_type(seen, events.UserInjected)
    assert injected.text == "also this"
    assert injected.turn_id == first.turn_id
    turn_one = [e for e in seen if e.turn_id == first.turn_id]
    order = tags(turn_one)
    assert order.index("tool_exit") < order.index("user_message")
    assert order.index("user_message") < [i for i, t in enumerate(order) if t == "message_sent"][1]
    assert user_texts(context.messages) == ["start", "also this", "later"]
    assert_valid_history(context.messages)


async def test_a_steering_message_waits_for_the_next_turn_if_the_turn_ends_first(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = GatedProvider([text_reply("One."), text_reply("Two.")], gated=[1])
    agent = trurn.Agent(provider)
    context = trurn.Context()
    async with serving(agent, context) as stream:
        await agent.send("first")
        await GATES["asked 1"].wait()  # the turn's only model call has begun
        await agent.send("steer me", steer=True)
        GATES["model 1"].set()
        seen = await read_until(stream, 2)

    assert [e.input for e in of_type(seen, events.TurnStarted)] == ["first", "steer me"]
    assert not of_type(seen, events.UserInjected)
    assert [m.content for m in provider.requests[0].messages] == ["first"]
    assert user_texts(context.messages) == ["first", "steer me"]


async def test_steering_waits_while_a_turn_is_cancelled_after_turn(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    # A stop requested before the step boundary wins: the steering message is not
    # taken into a turn that will not call the model again; it starts the next turn.
    provider = FakeProvider([tool_reply(call("c1", "g")), text_reply("Next.")])
    agent = trurn.Agent(provider, tools=[wait_for])
    context = trurn.Context()
    async with serving(agent, context) as stream:
        await agent.send("start")
        await GATES["started g"].wait()
        await agent.send("steer", steer=True)
        assert agent.cancel("after_turn") is True
        GATES["g"].set()
        seen = await read_until(stream, 2)

    assert [e.stop_reason for e in of_type(seen, events.TurnFinished)] == ["aborted", "completed"]
    assert [e.input for e in of_type(seen, events.TurnStarted)] == ["start", "steer"]
    assert not of_type(seen, events.UserInjected)


async def test_send_to_an_agent_that_is_not_serving_is_refused(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    agent = trurn.Agent(FakeProvider([text_reply("Hi.")]))
    with pytest.raises(trio.ClosedResourceError, match="this agent is not serving"):
        await agent.send("too early")
    with pytest.raises(trio.ClosedResourceError, match=r"agent\.serve\(context\)"):
        agent.send_nowait("too early")

    async with serving(agent) as stream:
        await agent.send("hello")
        await read_until(stream, 1)

    # The agent closed: a steering message (or any other) fails loudly.
    with pytest.raises(trio.ClosedResourceError, match="this agent is not serving"):
        await agent.send("too late", steer=True)
    with pytest.raises(trio.ClosedResourceError):
        agent.send_nowait("too late")
    assert agent.pending_messages() == []


async def test_send_rejects_what_is_not_text() -> None:
    agent = trurn.Agent(FakeProvider([]))
    with pytest.raises(TypeError, match="a message must be a str, got bytes"):
        agent.send_nowait(b"hi")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a message must be a str, got int"):
        await agent.send(42)  # type: ignore[arg-type]


async def test_max_pending_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pending must be at least 1, got 0"):
        trurn.Agent(FakeProvider([]), max_pending=0)


async def test_a_full_inbox_refuses_send_nowait_and_clear_empties_it(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider([tool_reply(call("c1", "g")), text_reply("Done."), text_reply("Z.")])
    agent = trurn.Agent(provider, tools=[wait_for], max_pending=2)
    context = trurn.Context()
    async with serving(agent, context) as stream:
        await agent.send("start")
        await GATES["started g"].wait()
        agent.send_nowait("x")
        agent.send_nowait("y", steer=True)
        with pytest.raises(trio.WouldBlock):
            agent.send_nowait("z")
        assert agent.pending_messages() == ["x", "y"]
        assert agent.clear_pending() == 2
        assert agent.pending_messages() == []
        assert agent.clear_pending() == 0
        agent.send_nowait("z")
        GATES["g"].set()
        seen = await read_until(stream, 2)

    assert [e.input for e in of_type(seen, events.TurnStarted)] == ["start", "z"]
    assert user_texts(context.messages) == ["start", "z"]


async def test_send_waits_for_room(autojump_clock: trio.testing.MockClock, watchdog: None) -> None:
    provider = FakeProvider(
        [tool_reply(call("c1", "g")), text_reply("1."), text_reply("2."), text_reply("3.")]
    )
    agent = trurn.Agent(provider, tools=[wait_for], max_pending=1)
    sent: list[str] = []

    async def sender() -> None:
        await agent.send("b")
        sent.append("b")

    async with agent.subscribe() as stream, trio.open_nursery() as nursery:
        await nursery.start(agent.serve, trurn.Context())
        await agent.send("start")
        await GATES["started g"].wait()
        agent.send_nowait("a")
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == []  # waiting for room
        GATES["g"].set()
        seen = await read_until(stream, 3)
        nursery.cancel_scope.cancel()

    assert sent == ["b"]
    assert [e.input for e in of_type(seen, events.TurnStarted)] == ["start", "a", "b"]


async def test_a_sender_waiting_for_room_is_told_when_serve_ends(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider([tool_reply(call("c1", "g"))])
    agent = trurn.Agent(provider, tools=[wait_for], max_pending=1)
    outcome: list[BaseException] = []

    async def sender() -> None:
        try:
            await agent.send("b")
        except trio.ClosedResourceError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as outer, trio.open_nursery() as nursery:
        await nursery.start(agent.serve, trurn.Context())
        await agent.send("start")
        await GATES["started g"].wait()
        agent.send_nowait("a")
        outer.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == []
        nursery.cancel_scope.cancel()
    assert len(outcome) == 1
    assert "not serving" in str(outcome[0])
    assert agent.pending_messages() == []  # what waited was dropped


async def test_a_second_serve_is_refused(
    autojump_clock: trio.testing.MockClock, watchdog: None
) -> None:
    agent = trurn.Agent(FakeProvider([text_reply("Hi.")]))
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.serve, trurn.Context())
        with pytest.raises(RuntimeError, match="this agent is already serving"):
            await nursery.start(agent.serve, trurn.Context())
        nursery.cancel_scope.cancel()

    # Once the first has ended, the agent may serve again.
    async with serving(agent) as stream:
        await agent.send("hello")
        seen = await read_until(stream, 1)
    assert of_type(seen, events.TurnFinished)[0].stop_reason == "completed"


async def test_serving_a_session_that_is_not_open_is_refused_before_it_starts(
    tmp_path: Path,
) -> None:
    agent = trurn.Agent(FakeProvider([]))
    with pytest.raises(RuntimeError, match="is not open"):
        await agent.serve(trurn.Context(tmp_path / "s.jsonl"))
    with pytest.raises(trio.ClosedResourceError):
        agent.send_nowait("nobody serves")


async def test_cancelling_serve_mid_turn_leaves_no_task_and_a_valid_history(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider([tool_reply(call("c1", "g")), [[TextDelta("never")], HANG]])
    agent = trurn.Agent(provider, tools=[wait_for])
    context = trurn.Context()
    async with agent.subscribe() as stream:
        with trio.move_on_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.serve, context)
                await agent.send("start")
                agent.send_nowait("queued")
                await GATES["started g"].wait()
                # Cancelled by the deadline while the tool waits.
        seen = drain(stream)

    assert LOG == ["start g", "cancelled g"]
    assert provider.open_streams == 0
    assert agent._turns == {}
    assert agent.pending_messages() == []
    assert tags(seen)[-2:] == ["run_aborted", "turn_finished"]
    result = context.messages[-1]
    assert isinstance(result, ToolMessage)
    assert result.status == "cancelled"
    assert_valid_history(context.messages)
    with pytest.raises(trio.ClosedResourceError):
        agent.send_nowait("after")


# -- open_agent ----------------------------------------------------------------------------


async def test_open_agent_serves_until_the_block_ends(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider([text_reply("Hello!")])
    context = trurn.Context()
    async with open_agent(provider, context, system="Be kind.") as agent:
        assert agent.system == "Be kind."
        async with agent.subscribe() as stream:
            await agent.send("hi")
            seen = await read_until(stream, 1)
    assert of_type(seen, events.TurnFinished)[0].text == "Hello!"
    assert provider.requests[0].messages[0] == trurn.SystemMessage("Be kind.")
    assert user_texts(context.messages) == ["hi"]
    with pytest.raises(trio.ClosedResourceError):
        await agent.send("after the block")


async def test_open_agent_exit_cancels_the_running_turn(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider([tool_reply(call("c1", "g"), text="Working.")])
    context = trurn.Context()
    async with open_agent(provider, context, tools=[wait_for]) as agent, agent.subscribe():
        await agent.send("start")
        await GATES["started g"].wait()
        agent.send_nowait("dropped")
        # Leaving the block stops the tool and the turn.
    assert LOG == ["start g", "cancelled g"]
    assert provider.open_streams == 0
    assert agent._turns == {}
    assert agent.pending_messages() == []
    assert_valid_history(context.messages)
    assert [type(m) for m in context.messages] == [UserMessage, AssistantMessage, ToolMessage]
    assert user_texts(context.messages) == ["start"]


async def test_open_agent_lets_an_error_from_the_block_out_alone(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    class Oops(Exception):
        pass

    with pytest.raises(Oops, match="from the body"):
        async with open_agent(FakeProvider([])):
            raise Oops("from the body")


async def test_open_agent_in_a_session_file(tmp_path: Path, watchdog: None) -> None:
    path = tmp_path / "served.jsonl"
    provider = FakeProvider([tool_reply(call("c1", "g"))])
    async with (
        trurn.Context(path) as context,
        open_agent(provider, context, tools=[wait_for]) as agent,
    ):
        await agent.send("start")
        await GATES["started g"].wait()
    async with trurn.Context(path) as restored:
        messages = list(restored.messages)
    assert_valid_history(messages)
    result = messages[-1]
    assert isinstance(result, ToolMessage)
    assert result.status == "cancelled"


# -- cancel modes ----------------------------------------------------------------------------


def cancel_on(
    agent: trurn.Agent, kind: type[Any], mode: str = "now", reason: str | None = "stop"
) -> tuple[list[events.Event], Any]:
    """An on_event that records events and cancels the turn at the first ``kind``."""
    seen: list[events.Event] = []

    def on_event(event: events.Event) -> None:
        seen.append(event)
        if isinstance(event, kind) and len(of_type(seen, kind)) == 1:
            assert agent.cancel(mode, reason=reason) is True  # type: ignore[arg-type]

    return seen, on_event


async def test_cancel_now_mid_stream_keeps_the_partial_text(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider(
        [[[TextDelta("Partial ")], [TextDelta("answer")], HANG], text_reply("Resumed.")]
    )
    agent = trurn.Agent(provider)
    context = trurn.Context()
    seen, on_event = cancel_on(agent, events.AssistantDelta, reason="user pressed stop")
    result = await agent.run_turn(context, "Go", on_event=on_event)

    assert result.stop_reason == "aborted"
    assert result.text == "Partial "
    partial = context.messages[-1]
    assert isinstance(partial, AssistantMessage)
    assert partial.aborted
    assert partial.content == "Partial "
    (aborted,) = of_type(seen, events.RunAborted)
    assert (aborted.reason, aborted.message) == ("cancelled", "user pressed stop")
    assert tags(seen)[-2:] == ["run_aborted", "turn_finished"]
    assert seen[-1].stop_reason == "aborted"  # type: ignore[union-attr]
    assert provider.open_streams == 0
    assert provider.closed_streams == 1
    assert agent._turns == {}
    assert_valid_history(context.messages)
    # The next turn on the same history is unaffected, and sends the partial reply back.
    again = await agent.run_turn(context, "Go on")
    assert again.stop_reason == "completed"
    assert partial in provider.requests[1].messages


async def test_cancel_now_mid_tool_gives_cancelled_results(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    reply = tool_reply(call("c1", "g"), call("c2", "h"), text="Checking.")
    reply[0] = [*reply[0], Usage(input_tokens=10, output_tokens=5, total_tokens=15)]
    provider = FakeProvider([reply])
    agent = trurn.Agent(provider, tools=[wait_for])
    context = trurn.Context()
    async with turn_in_background(agent, context) as turn:
        await GATES["started g"].wait()
        await GATES["started h"].wait()
        assert agent.cancel("now", reason="enough") is True

    (result,) = turn.results
    seen = turn.seen
    assert result.stop_reason == "aborted"
    assert result.text == "Checking."
    assert result.usage.total_tokens == 15
    results = [m for m in result.messages if isinstance(m, ToolMessage)]
    assert [(m.tool_call_id, m.status) for m in results] == [
        ("c1", "cancelled"),
        ("c2", "cancelled"),
    ]
    assert sorted(LOG) == ["cancelled g", "cancelled h", "start g", "start h"]
    exits = of_type(seen, events.ToolExit)
    assert {e.status for e in exits} == {"cancelled"}
    (aborted,) = of_type(seen, events.RunAborted)
    assert aborted.message == "enough"
    assert of_type(seen, events.TurnFinished)[0].usage.total_tokens == 15
    assert provider.open_streams == 0
    assert_valid_history(context.messages)


async def test_cancel_now_abandons_a_sync_tool_that_ignores_cancellation(
    watchdog: None,
) -> None:
    started = trio.Event()
    release = threading.Event()
    finished = threading.Event()

    @trurn.tool
    def stubborn() -> str:
        """Blocks in its thread; cancellation cannot reach it."""
        trio.from_thread.run_sync(started.set)
        release.wait(10)
        finished.set()
        return "too late"

    provider = FakeProvider([tool_reply(("s1", "stubborn", "{}"))])
    agent = trurn.Agent(provider, tools=[stubborn])
    context = trurn.Context()
    async with turn_in_background(agent, context) as turn:
        await started.wait()
        agent.cancel("now", reason="stop waiting")
    # The turn ended while the thread still runs: its result is "cancelled".
    assert not finished.is_set()
    [result] = turn.results
    assert result.stop_reason == "aborted"
    [tool_result] = [m for m in context.messages if isinstance(m, ToolMessage)]
    assert tool_result.status == "cancelled"
    assert unanswered_tool_calls(context.messages) == []
    release.set()
    assert await trio.to_thread.run_sync(finished.wait, 10)


async def test_cancel_now_mid_tool_in_a_session_file(tmp_path: Path, watchdog: None) -> None:
    path = tmp_path / "cancelled.jsonl"
    provider = FakeProvider([tool_reply(call("c1", "g"))])
    async with trurn.Context(path) as context:
        agent = trurn.Agent(provider, tools=[wait_for])
        _seen, on_event = cancel_on(agent, events.ToolCallStarted, reason="bye")
        result = await agent.run_turn(context, "Go", on_event=on_event)
    assert result.stop_reason == "aborted"
    async with trurn.Context(path) as restored:
        messages = list(restored.messages)
    assert messages == result.messages
    assert_valid_history(messages)
    assert b'"stop_reason":"aborted"' in path.read_bytes()


async def test_cancel_after_turn_lets_the_step_finish(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider(
        [
            tool_reply(
                ("c1", "pause", '{"seconds": 5}'),
                ("c2", "pause", '{"seconds": 1}'),
                text="Working.",
            ),
            text_reply("never asked"),
        ]
    )
    agent = trurn.Agent(provider, tools=[pause])
    context = trurn.Context()
    seen, on_event = cancel_on(agent, events.ToolCallStarted, "after_turn", reason="wrap up")
    start = trio.current_time()
    result = await agent.run_turn(context, "Go", on_event=on_event)

    assert trio.current_time() - start == pytest.approx(5)  # the tools ran to their end
    assert sorted(LOG) == ["slept 1", "slept 5"]
    assert len(provider.requests) == 1  # and the model was not called again
    assert result.stop_reason == "aborted"
    assert result.text == "Working."
    assert [m.status for m in result.messages if isinstance(m, ToolMessage)] == ["ok", "ok"]
    (aborted,) = of_type(seen, events.RunAborted)
    assert (aborted.reason, aborted.message) == ("cancelled", "wrap up")
    assert tags(seen)[-2:] == ["run_aborted", "turn_finished"]
    assert seen[-1].stop_reason == "aborted"  # type: ignore[union-attr]
    assert_valid_history(context.messages)
    assert provider.open_streams == 0


async def test_cancel_after_turn_in_the_last_step_lets_the_turn_complete(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider([text_reply("", "All", " done.")])
    agent = trurn.Agent(provider)
    seen, on_event = cancel_on(agent, events.AssistantDelta, "after_turn")
    result = await agent.run_turn(trurn.Context(), "Go", on_event=on_event)
    # Nothing was left to stop: the answer is whole.
    assert result.stop_reason == "completed"
    assert result.text == "All done."
    assert not of_type(seen, events.RunAborted)


async def test_cancel_while_idle_does_not_touch_the_next_turn(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider([text_reply("Fine.")])
    agent = trurn.Agent(provider)
    assert agent.cancel() is False
    assert agent.cancel("after_turn", reason="nothing running") is False
    seen: list[events.Event] = []
    result = await agent.run_turn(trurn.Context(), "Hi", on_event=seen.append)
    assert result.stop_reason == "completed"
    assert not of_type(seen, events.RunAborted)


async def test_cancel_while_serve_is_idle_does_not_touch_the_next_turn(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    agent = trurn.Agent(FakeProvider([text_reply("Fine.")]))
    async with serving(agent) as stream:
        await trio.testing.wait_all_tasks_blocked()
        assert agent.cancel("now") is False
        assert agent.cancel("after_turn") is False
        await agent.send("hi")
        seen = await read_until(stream, 1)
    assert of_type(seen, events.TurnFinished)[0].stop_reason == "completed"


async def test_cancel_twice_aborts_once_with_the_first_reason(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider([tool_reply(call("c1", "g"))])
    agent = trurn.Agent(provider, tools=[wait_for])
    seen: list[events.Event] = []
    answers: list[bool] = []

    def on_event(event: events.Event) -> None:
        seen.append(event)
        if isinstance(event, events.ToolCallStarted):
            answers.append(agent.cancel("now", reason="first"))
            answers.append(agent.cancel("now", reason="second"))

    context = trurn.Context()
    result = await agent.run_turn(context, "Go", on_event=on_event)
    assert answers == [True, True]
    assert result.stop_reason == "aborted"
    (aborted,) = of_type(seen, events.RunAborted)
    assert aborted.message == "first"
    assert len(of_type(seen, events.TurnFinished)) == 1
    assert_valid_history(context.messages)
    assert agent.cancel("now") is False  # over: nothing to cancel


async def test_cancel_now_after_after_turn_hurries_the_stop(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider([tool_reply(call("c1", "g")), text_reply("never asked")])
    agent = trurn.Agent(provider, tools=[wait_for])
    context = trurn.Context()
    async with turn_in_background(agent, context) as turn:
        await GATES["started g"].wait()
        assert agent.cancel("after_turn", reason="gently") is True
        await trio.sleep(60)
        assert turn.results == []  # still waiting for its tool
        assert agent.cancel("now", reason="hurry") is True

    (result,) = turn.results
    seen = turn.seen
    assert result.stop_reason == "aborted"
    assert LOG == ["start g", "cancelled g"]
    assert len(provider.requests) == 1
    (aborted,) = of_type(seen, events.RunAborted)
    assert aborted.message == "gently"
    tool_result = context.messages[-1]
    assert isinstance(tool_result, ToolMessage)
    assert tool_result.status == "cancelled"
    assert_valid_history(context.messages)


async def test_cancel_in_serve_stops_one_turn_and_serve_goes_on(
    autojump_clock: trio.testing.MockClock,
    watchdog: None,
) -> None:
    provider = FakeProvider([tool_reply(call("c1", "g")), text_reply("Second.")])
    agent = trurn.Agent(provider, tools=[wait_for])
    context = trurn.Context()
    async with serving(agent, context) as stream:
        await agent.send("first")
        await agent.send("second")
        await GATES["started g"].wait()
        assert agent.cancel("now", reason="skip it") is True
        seen = await read_until(stream, 2)

    assert [e.stop_reason for e in of_type(seen, events.TurnFinished)] == ["aborted", "completed"]
    assert of_type(seen, events.RunAborted)[0].message == "skip it"
    assert user_texts(context.messages) == ["first", "second"]
    assert_valid_history(context.messages)


async def test_cancel_rejects_an_unknown_mode() -> None:
    agent = trurn.Agent(FakeProvider([]))
    with pytest.raises(ValueError, match="mode must be 'now' or 'after_turn', got 'later'"):
        agent.cancel("later")  # type: ignore[arg-type]


async def test_a_served_context_takes_turns_only_from_its_agent(
    autojump_clock: trio.testing.MockClock, watchdog: None
) -> None:
    agent = trurn.Agent(FakeProvider([text_reply("Hi.")]))
    other = trurn.Agent(FakeProvider([]))
    context = trurn.Context()
    async with serving(agent, context) as stream:
        # A direct turn on it is refused, and serve goes on with its queue intact.
        with pytest.raises(RuntimeError, match="serving this context"):
            await agent.run_turn(context, "direct")
        with pytest.raises(RuntimeError, match="already serving this context"):
            await other.serve(context)
        await agent.send("hello")
        seen = await read_until(stream, 1)
    assert of_type(seen, events.TurnFinished)[0].stop_reason == "completed"
    # Once serve has ended, the context is free again.
    assert not context._served
