"""Whole turns over real HTTP: OpenAIChat against the scripted server on 127.0.0.1.

The "bad input" cases of the core issue each end in a clear error or a model-visible
tool result, never a hang, a leaked task or an open connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing

import trurn
from trurn import events
from trurn.providers import OpenAIChat
from trurn.testing import (
    DropConnection,
    EndWithoutDone,
    ErrorChunk,
    MalformedChunk,
    Reply,
    ScriptedToolCall,
    StatusError,
    open_scripted_server,
)
from trurn.testing.pytest_plugin import ScriptedServerFactory


@trurn.tool
async def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"sunny in {city}"


class CountingTransport(httpx.AsyncBaseTransport):
    """A real HTTP transport that counts the responses still open."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.open_responses = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        self.open_responses += 1
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        transport = self

        class Counted(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for part in stream:
                    yield part

            async def aclose(self) -> None:
                transport.open_responses -= 1
                await stream.aclose()

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Counted(), request=request
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
async def transport() -> AsyncIterator[CountingTransport]:
    counting = CountingTransport()
    yield counting
    await counting.aclose()


async def agent_for(
    scripted_server: ScriptedServerFactory,
    transport: CountingTransport,
    replies: list[Reply],
    **options: object,
) -> tuple[trurn.Agent, httpx.AsyncClient]:
    server = await scripted_server(replies, api_key="sk-test-secret")
    client = httpx.AsyncClient(transport=transport)
    provider = OpenAIChat(
        "scripted", base_url=server.base_url, api_key="sk-test-secret", client=client
    )
    # No retries: these tests are about what one failing call does (retries are tested
    # in test_retry.py, on virtual time).
    options.setdefault("retry", None)
    return trurn.Agent(provider, tools=[get_weather], **options), client  # type: ignore[arg-type]


async def test_a_whole_turn_with_a_tool_call(
    scripted_server: ScriptedServerFactory, transport: CountingTransport
) -> None:
    replies = [
        Reply(
            "Let me check.",
            tool_calls=[ScriptedToolCall("get_weather", {"city": "Tokyo"}, chunks=4)],
            reasoning="The user wants weather.",
        ),
        Reply("It is sunny in Tokyo.", text_chunks=5),
    ]
    agent, client = await agent_for(scripted_server, transport, replies)
    async with client:
        seen: list[events.Event] = []
        result = await agent.run_turn(trurn.Context(), "Weather in Tokyo?", on_event=seen.append)

    assert result.text == "It is sunny in Tokyo."
    assert [(c.name, c.arguments) for c in result.tool_calls] == [
        ("get_weather", {"city": "Tokyo"})
    ]
    assert result.usage.total_tokens > 0
    deltas = "".join(e.text for e in seen if isinstance(e, events.AssistantDelta))
    assert deltas == "Let me check.It is sunny in Tokyo."
    assert any(isinstance(e, events.AssistantReasoningDelta) for e in seen)
    assert transport.open_responses == 0


async def test_run_turn_front_door_over_http() -> None:
    replies = [
        Reply(tool_calls=[ScriptedToolCall("get_weather", {"city": "Oslo"})]),
        Reply("Sunny in Oslo."),
    ]
    async with (
        open_scripted_server(replies) as server,
        OpenAIChat("scripted", base_url=server.base_url) as provider,
    ):
        result = await trurn.run_turn(
            provider=provider, message="Oslo?", system="Be brief.", tools=[get_weather]
        )
    assert result.text == "Sunny in Oslo."
    assert result.stop_reason == "completed"
    first = server.requests[0]
    assert [m.role for m in first.messages] == ["system", "user"]
    second = server.requests[1]
    assert [m.role for m in second.messages] == ["system", "user", "assistant", "tool"]
    assert second.messages[-1].content == "sunny in Oslo"


async def test_unreachable_base_url_is_retried_then_a_clear_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A port nobody listens on: bind one, then close it.
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    seen: list[events.Event] = []
    start = trio.current_time()
    async with OpenAIChat("m", base_url=f"http://127.0.0.1:{port}/v1") as provider:
        with pytest.raises(trurn.ProviderConnectionError, match=f"127.0.0.1:{port}"):
            await trurn.run_turn(
                provider=provider,
                message="hi",
                on_event=seen.append,
                retry=trurn.RetryPolicy(attempts=3, initial_delay=1, jitter=0),
            )
    retries = [e for e in seen if isinstance(e, events.Retrying)]
    assert [(r.attempt, r.delay, r.error_type) for r in retries] == [
        (1, 1.0, "ProviderConnectionError"),
        (2, 2.0, "ProviderConnectionError"),
    ]
    assert trio.current_time() - start == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (StatusError(status=401, message="Incorrect API key provided"), trurn.AuthenticationError),
        (StatusError(status=429, message="Rate limit", retry_after=7), trurn.RateLimitError),
        (StatusError(status=500, message="The server had an error"), trurn.ServerError),
        (
            StatusError(
                status=400,
                message="This model's maximum context length is 128000 tokens.",
                code="context_length_exceeded",
            ),
            trurn.ContextOverflowError,
        ),
    ],
)
async def test_http_error_statuses_become_typed_errors(
    scripted_server: ScriptedServerFactory,
    transport: CountingTransport,
    fault: StatusError,
    error: type[trurn.ProviderError],
) -> None:
    agent, client = await agent_for(scripted_server, transport, [Reply(fault=fault)])
    context = trurn.Context()
    async with client:
        with pytest.raises(error) as caught:
            await agent.run_turn(context, "hi")
    assert fault.message is not None
    assert fault.message in str(caught.value)
    assert "sk-test-secret" not in str(caught.value)
    assert caught.value.status_code == fault.status
    if isinstance(caught.value, trurn.RateLimitError):
        assert caught.value.retry_after == 7
    assert list(context.messages) == [trurn.UserMessage("hi")]
    assert transport.open_responses == 0


@pytest.mark.parametrize(
    ("fault", "error", "match"),
    [
        (EndWithoutDone(after=2), trurn.MalformedStreamError, "ended"),
        (MalformedChunk(at=2), trurn.MalformedStreamError, "not json|JSON"),
        (
            ErrorChunk(after=2, message="Upstream exploded"),
            trurn.ProviderError,
            "Upstream exploded",
        ),
        (DropConnection(after=2), trurn.ProviderConnectionError, "connection|closed|reset"),
    ],
)
async def test_broken_streams_keep_the_partial_reply_and_raise(
    scripted_server: ScriptedServerFactory,
    transport: CountingTransport,
    fault: object,
    error: type[trurn.ProviderError],
    match: str,
) -> None:
    reply = Reply("abcdefgh", text_chunks=8, fault=fault)  # type: ignore[arg-type]
    agent, client = await agent_for(scripted_server, transport, [reply])
    context = trurn.Context()
    seen: list[events.Event] = []
    async with client:
        with pytest.raises(error, match=match):
            await agent.run_turn(context, "hi", on_event=seen.append)
    partial = context.messages[-1]
    assert isinstance(partial, trurn.AssistantMessage)
    assert partial.aborted
    assert partial.content
    assert "abcdefgh".startswith(partial.content)
    assert [e.__struct_config__.tag for e in seen][-3:] == ["error", "run_aborted", "turn_finished"]
    assert transport.open_responses == 0


async def test_bad_tool_calls_become_results_the_model_reads(
    scripted_server: ScriptedServerFactory, transport: CountingTransport
) -> None:
    @trurn.tool
    def explode() -> str:
        """Always fails."""
        raise ValueError("the widget is on fire")

    replies = [
        Reply(
            tool_calls=[
                ScriptedToolCall("get_weather", '{"city": "Par'),  # not JSON
                ScriptedToolCall("launch_rockets", {}),  # unknown
                ScriptedToolCall("get_weather", {"town": "Paris"}),  # invalid arguments
                ScriptedToolCall("explode", {}),  # raises
            ]
        ),
        Reply("I could not do that."),
    ]
    agent, client = await agent_for(scripted_server, transport, replies)
    agent = trurn.Agent(agent.provider, tools=[get_weather, explode], retry=None)
    seen: list[events.Event] = []
    async with client:
        result = await agent.run_turn(trurn.Context(), "go", on_event=seen.append)

    assert result.text == "I could not do that."
    results = [m for m in result.messages if isinstance(m, trurn.ToolMessage)]
    assert [r.status for r in results] == ["error"] * 4
    assert "not valid JSON" in results[0].content
    assert "launch_rockets" in results[1].content
    assert "get_weather" in results[1].content  # the available tools are named
    assert "town" in results[2].content
    assert "the widget is on fire" in results[3].content
    errors = [e for e in seen if isinstance(e, events.Error)]
    assert len(errors) == 4
    assert {e.tool_call_id for e in errors} == {c.id for c in result.tool_calls}


async def test_cancelling_a_turn_mid_stream_closes_the_response(
    scripted_server: ScriptedServerFactory,
    transport: CountingTransport,
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = Reply("one two three four five six", text_chunks=6, chunk_delay=1.0)
    agent, client = await agent_for(scripted_server, transport, [slow])
    context = trurn.Context()
    async with client:
        with trio.move_on_after(3.5):
            await agent.run_turn(context, "hi")
        assert transport.open_responses == 0
    partial = context.messages[-1]
    assert isinstance(partial, trurn.AssistantMessage)
    assert partial.aborted
    # Two text chunks arrived in 3.5 s: the first third of the text, no more.
    assert partial.content == "one two three four five six"[: len(partial.content)]
    assert 0 < len(partial.content) < 15


async def test_a_tool_that_never_returns_is_cancelled_with_the_turn(
    scripted_server: ScriptedServerFactory,
    transport: CountingTransport,
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trurn.tool
    async def wait_forever() -> str:
        """Never returns."""
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    replies = [Reply(tool_calls=[ScriptedToolCall("wait_forever", {})])]
    agent, client = await agent_for(scripted_server, transport, replies)
    agent = trurn.Agent(agent.provider, tools=[wait_forever], retry=None)
    context = trurn.Context()
    async with client:
        with trio.move_on_after(60) as scope:
            await agent.run_turn(context, "hi")
    assert scope.cancelled_caught
    last = context.messages[-1]
    assert isinstance(last, trurn.ToolMessage)
    assert last.status == "cancelled"
    assert transport.open_responses == 0


async def test_an_empty_model_reply_ends_the_turn(
    scripted_server: ScriptedServerFactory, transport: CountingTransport
) -> None:
    agent, client = await agent_for(scripted_server, transport, [Reply("")])
    async with client:
        result = await agent.run_turn(trurn.Context(), "hi")
    assert result.text is None
    assert result.stop_reason == "completed"


async def test_a_subscriber_that_never_reads_does_not_stall_the_turn(
    scripted_server: ScriptedServerFactory, transport: CountingTransport
) -> None:
    agent, client = await agent_for(scripted_server, transport, [Reply("x" * 100, text_chunks=100)])
    async with client, agent.subscribe(max_buffer=8, policy="disconnect") as ignored:
        async with agent.subscribe(max_buffer=8, policy="drop") as lagging:
            result = await agent.run_turn(trurn.Context(), "hi")
            assert result.text == "x" * 100
            buffered = [lagging.receive_nowait() for _ in range(8)]
        assert isinstance(buffered[-1], events.TurnFinished)
        drained = []
        with pytest.raises(trio.EndOfChannel):
            drained.extend(ignored.receive_nowait() for _ in range(9))
        assert len(drained) == 8  # what was buffered when it was cut off
    stats = agent._hub.statistics()
    assert stats.disconnected == 1
