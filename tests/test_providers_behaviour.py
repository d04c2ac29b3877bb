"""One behavioural suite, run against both providers: OpenAIChat and AnthropicMessages.

Every test plays whole :class:`trurn.Agent` turns over real loopback HTTP against the
scripted server, which answers ``POST /v1/chat/completions`` and ``POST /v1/messages``
from the same :class:`~trurn.testing.Reply` script. The ``wire`` fixture is
parametrised over the two providers; what differs between them (where the system
prompt goes, how tool results are spelled, how many events come before the first
text delta) lives in :class:`Wire`, so each test states one behaviour for both.

Responses are counted by a wrapping transport, so every test also shows that nothing
is left open. Tests about a single failing call run with ``retry=None``; retries run
on Trio's virtual clock with ``jitter=0``, so their waits are exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import msgspec
import pytest
import trio
import trio.testing

import trurn
from trurn import events
from trurn.providers import AnthropicMessages, OpenAIChat, Provider, Request
from trurn.testing import (
    DropConnection,
    EndWithoutDone,
    ErrorChunk,
    MalformedChunk,
    Reply,
    ScriptedServer,
    ScriptedToolCall,
    StatusError,
)
from trurn.testing.pytest_plugin import ScriptedServerFactory

API_KEY = "sk-behaviour-SECRET-0123456789"
EXACT = trurn.RetryPolicy(attempts=3, initial_delay=1.0, multiplier=2.0, jitter=0)
NGINX_PAGE = (
    "<html>\r\n<head><title>Welcome to nginx!</title></head>\r\n"
    "<body><h1>Welcome to nginx!</h1></body>\r\n</html>\r\n"
)
BAD_GATEWAY_PAGE = (
    "<html><head><title>502 Bad Gateway</title></head>"
    "<body><center><h1>502 Bad Gateway</h1></center></body></html>"
)


# --- what differs between the two wire formats -------------------------------------------

Body = dict[str, Any]
E = TypeVar("E", bound=BaseException)
ToolResult = tuple[str, str, bool | None]  # (tool call id, content, is_error as sent)


def _openai_provider(base_url: str, client: httpx.AsyncClient, api_key: str) -> Provider:
    return OpenAIChat("scripted-gpt", base_url=base_url, api_key=api_key, client=client)


def _anthropic_provider(base_url: str, client: httpx.AsyncClient, api_key: str) -> Provider:
    # The server's base_url ends in /v1; AnthropicMessages accepts that as well as the
    # bare root, and posts to {root}/v1/messages either way.
    return AnthropicMessages("scripted-claude", base_url=base_url, api_key=api_key, client=client)


def _openai_system(body: Body) -> str | None:
    systems = [m["content"] for m in body["messages"] if m["role"] == "system"]
    assert len(systems) <= 1
    return systems[0] if systems else None


def _anthropic_system(body: Body) -> str | None:
    assert all(m["role"] in ("user", "assistant") for m in body["messages"])
    return body.get("system")


def _openai_tool_results(body: Body) -> list[ToolResult]:
    # OpenAI has no error flag: a failed tool is only told by its content.
    results: list[ToolResult] = []
    for message in body["messages"]:
        if message["role"] == "tool":
            assert set(message) == {"role", "tool_call_id", "content"}
            results.append((message["tool_call_id"], message["content"], None))
    return results


def _anthropic_tool_results(body: Body) -> list[ToolResult]:
    results: list[ToolResult] = []
    for message in body["messages"]:
        if isinstance(message["content"], str):
            continue
        for block in message["content"]:
            if block["type"] == "tool_result":
                assert message["role"] == "user"
                results.append(
                    (block["tool_use_id"], block["content"], block.get("is_error", False))
                )
    return results


def _openai_sent_calls(body: Body) -> list[tuple[str, str, Any]]:
    return [
        (call["id"], call["function"]["name"], msgspec.json.decode(call["function"]["arguments"]))
        for message in body["messages"]
        if message["role"] == "assistant"
        for call in message.get("tool_calls") or ()
    ]


def _anthropic_sent_calls(body: Body) -> list[tuple[str, str, Any]]:
    return [
        (block["id"], block["name"], block["input"])
        for message in body["messages"]
        if message["role"] == "assistant" and not isinstance(message["content"], str)
        for block in message["content"]
        if block["type"] == "tool_use"
    ]


def _openai_sent_thinking(body: Body) -> list[tuple[str, str]]:
    # Chat Completions has no way to send reasoning back; trurn sends none.
    assert all("reasoning_content" not in m for m in body["messages"])
    return []


def _anthropic_sent_thinking(body: Body) -> list[tuple[str, str]]:
    return [
        (block["thinking"], block["signature"])
        for message in body["messages"]
        if message["role"] == "assistant" and not isinstance(message["content"], str)
        for block in message["content"]
        if block["type"] == "thinking"
    ]


@dataclass(frozen=True)
class Wire:
    """One provider and what its wire format looks like to the tests."""

    name: str
    provider: Callable[[str, httpx.AsyncClient, str], Provider]
    # Index of the first text event of a reply without reasoning: OpenAI sends the role
    # chunk first; Anthropic sends message_start, content_block_start and a ping.
    text_at: int
    # Events of a reply with one text piece before the second piece of its tool call's
    # arguments (counted as the scripted server sends them).
    mid_tool_call_at: int
    system: Callable[[Body], str | None]
    tool_results: Callable[[Body], list[ToolResult]]
    sent_calls: Callable[[Body], list[tuple[str, str, Any]]]
    sent_thinking: Callable[[Body], list[tuple[str, str]]]
    stop_field: str
    # max_tokens sent when the turn sets none (Anthropic's API requires one).
    default_max_tokens: int | None
    # Whether a body ending after the finish reason, without [DONE] / message_stop, counts
    # as a whole reply. OpenAI-compatible servers often leave [DONE] out; Anthropic's
    # stream always ends in message_stop.
    finished_without_terminator: bool
    # The providers' real answers to a prompt that is too long, and to an unknown model.
    overflow: StatusError
    not_found: StatusError
    thinking_signed: bool


OPENAI = Wire(
    name="openai",
    provider=_openai_provider,
    text_at=1,
    # role, text, tool call id/name, first arguments piece
    mid_tool_call_at=4,
    system=_openai_system,
    tool_results=_openai_tool_results,
    sent_calls=_openai_sent_calls,
    sent_thinking=_openai_sent_thinking,
    stop_field="stop",
    default_max_tokens=None,
    finished_without_terminator=True,
    overflow=StatusError(
        status=400,
        message=(
            "This model's maximum context length is 128000 tokens. However, your messages "
            "resulted in 131072 tokens. Please reduce the length of the messages."
        ),
        type="invalid_request_error",
        code="context_length_exceeded",
    ),
    not_found=StatusError(
        status=404,
        message="The model `gpt-nope` does not exist or you do not have access to it.",
        type="invalid_request_error",
        code="model_not_found",
    ),
    thinking_signed=False,
)

ANTHROPIC = Wire(
    name="anthropic",
    provider=_anthropic_provider,
    text_at=3,
    # message_start, text block start, ping, text delta, text block stop, tool_use block
    # start, first input_json_delta
    mid_tool_call_at=7,
    system=_anthropic_system,
    tool_results=_anthropic_tool_results,
    sent_calls=_anthropic_sent_calls,
    sent_thinking=_anthropic_sent_thinking,
    stop_field="stop_sequences",
    default_max_tokens=4096,
    finished_without_terminator=False,
    overflow=StatusError(
        status=400,
        message="prompt is too long: 208416 tokens > 200000 maximum",
        type="invalid_request_error",
    ),
    not_found=StatusError(status=404, message="model: claude-nope", type="not_found_error"),
    thinking_signed=True,
)


@pytest.fixture(params=[OPENAI, ANTHROPIC], ids=lambda wire: wire.name)
def wire(request: pytest.FixtureRequest) -> Wire:
    chosen: Wire = request.param
    return chosen


# --- plumbing ----------------------------------------------------------------------------


class CountingTransport(httpx.AsyncBaseTransport):
    """A real HTTP transport that counts the responses it opened and those still open."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.opened = 0
        self.open_responses = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        stream: httpx.AsyncByteStream = response.stream
        self.opened += 1
        self.open_responses += 1
        transport = self

        class Counted(httpx.AsyncByteStream):
            closed = False

            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for part in stream:
                    yield part

            async def aclose(self) -> None:
                if not self.closed:
                    self.closed = True
                    transport.open_responses -= 1
                await stream.aclose()

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Counted(), request=request
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class Harness:
    agent: trurn.Agent
    server: ScriptedServer
    transport: CountingTransport

    def body(self, number: int) -> Body:
        """The JSON body of request ``number`` (from 0) as the server received it."""
        decoded: Body = msgspec.json.decode(self.server.request_bodies[number])
        return decoded

    async def turn(
        self, message: str = "hi", context: trurn.Context | None = None
    ) -> tuple[trurn.TurnResult, list[events.Event]]:
        seen: list[events.Event] = []
        result = await self.agent.run_turn(
            context or trurn.Context(), message, on_event=seen.append
        )
        return result, seen

    async def failing_turn(
        self, error: type[E], message: str = "hi", match: str | None = None
    ) -> tuple[pytest.ExceptionInfo[E], trurn.Context, list[events.Event]]:
        context = trurn.Context()
        seen: list[events.Event] = []
        with pytest.raises(error, match=match) as caught:
            await self.agent.run_turn(context, message, on_event=seen.append)
        return caught, context, seen


Start = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def transport() -> AsyncIterator[CountingTransport]:
    counting = CountingTransport()
    yield counting
    await counting.aclose()


@pytest.fixture
async def http(transport: CountingTransport) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=transport) as client:
        yield client


@pytest.fixture
def start(
    scripted_server: ScriptedServerFactory,
    http: httpx.AsyncClient,
    transport: CountingTransport,
    wire: Wire,
) -> Start:
    """``await start(replies, **agent_options)``: a scripted server and an agent on it."""

    async def start(
        replies: list[Reply],
        *,
        tools: Iterable[Any] | None = None,
        api_key: str = API_KEY,
        **options: Any,
    ) -> Harness:
        server = await scripted_server(replies, api_key=API_KEY)
        provider = wire.provider(server.base_url, http, api_key)
        options.setdefault("retry", None)
        agent = trurn.Agent(provider, tools=[get_weather] if tools is None else tools, **options)
        return Harness(agent, server, transport)

    return start


@trurn.tool
async def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"sunny in {city}"


@trurn.tool
def explode() -> str:
    """Always fails."""
    raise ValueError("the widget is on fire")


def of_type(seen: list[events.Event], kind: type[events.BaseEvent]) -> list[Any]:
    return [event for event in seen if isinstance(event, kind)]


def tags(seen: list[events.Event]) -> list[str]:
    return [event.__struct_config__.tag for event in seen]  # type: ignore[misc]


def assert_aborted_with(context: trurn.Context, text: str) -> None:
    """The history ends with the partial reply ``text``, marked aborted, no tool calls."""
    partial = context.messages[-1]
    assert isinstance(partial, trurn.AssistantMessage)
    assert (partial.content, partial.aborted, partial.tool_calls) == (text, True, [])


# --- replies that go right -----------------------------------------------------------------


async def test_text_streams_in_chunks(start: Start) -> None:
    harness = await start([Reply("Hello there, from a scripted model!", text_chunks=5)])
    result, seen = await harness.turn()

    assert result.text == "Hello there, from a scripted model!"
    assert result.stop_reason == "completed"
    deltas = [event.text for event in of_type(seen, events.AssistantDelta)]
    assert len(deltas) == 5
    assert "".join(deltas) == result.text
    assert tags(seen)[0] == "turn_started"
    assert tags(seen)[-2:] == ["assistant_final", "turn_finished"]
    assert [m.__struct_config__.tag for m in result.messages] == ["user", "assistant"]
    assert (harness.transport.opened, harness.transport.open_responses) == (1, 0)


async def test_reasoning_streams_and_goes_back_as_the_provider_requires(
    start: Start, wire: Wire
) -> None:
    harness = await start(
        [
            Reply(
                reasoning="The user wants the weather; ask the tool.",
                reasoning_chunks=3,
                tool_calls=[ScriptedToolCall("get_weather", {"city": "Lima"})],
            ),
            Reply("Sunny in Lima."),
        ]
    )
    result, seen = await harness.turn("Weather in Lima?")

    reasoning = [event.text for event in of_type(seen, events.AssistantReasoningDelta)]
    assert len(reasoning) == 3
    assert "".join(reasoning) == "The user wants the weather; ask the tool."
    first = result.messages[1]
    assert isinstance(first, trurn.AssistantMessage)
    assert first.reasoning == "The user wants the weather; ask the tool."
    assert result.text == "Sunny in Lima."
    # Anthropic checks the signed thinking block that preceded a tool use when the tool
    # result comes back; OpenAI's API has no field for it.
    sent = wire.sent_thinking(harness.body(1))
    if wire.thinking_signed:
        assert sent == [
            ("The user wants the weather; ask the tool.", "scripted-signature-msg_scripted_1")
        ]
        assert first.thinking[0].signature == "scripted-signature-msg_scripted_1"
    else:
        assert sent == []


async def test_tool_call_arguments_split_over_chunks(start: Start, wire: Wire) -> None:
    call = ScriptedToolCall("get_weather", {"city": "Rio de Janeiro"}, chunks=7)
    harness = await start([Reply(tool_calls=[call]), Reply("Sunny in Rio.")])
    result, seen = await harness.turn("Weather in Rio?")

    pieces = [event.arguments for event in of_type(seen, events.ToolCallDelta) if event.arguments]
    assert len(pieces) == 7
    assert "".join(pieces) == call.arguments_text
    (made,) = result.tool_calls
    assert (made.name, made.arguments) == ("get_weather", {"city": "Rio de Janeiro"})
    (exit_event,) = of_type(seen, events.ToolExit)
    assert (exit_event.tool_call_id, exit_event.status) == (made.id, "ok")
    assert exit_event.content == "sunny in Rio de Janeiro"
    # The call goes back with its id and parsed arguments, its result right after it.
    assert wire.sent_calls(harness.body(1)) == [
        (made.id, "get_weather", {"city": "Rio de Janeiro"})
    ]
    assert wire.tool_results(harness.body(1)) == [
        (made.id, "sunny in Rio de Janeiro", None if wire is OPENAI else False)
    ]
    assert result.text == "Sunny in Rio."


async def test_two_parallel_tool_calls_run_at_once(
    start: Start, wire: Wire, autojump_clock: trio.testing.MockClock
) -> None:
    arrived: list[str] = []
    both_here = trio.Event()

    @trurn.tool
    async def meet(who: str) -> str:
        """Wait until the other call has started too."""
        arrived.append(who)
        if len(arrived) == 2:
            both_here.set()
        # Run one after the other, the first call would wait here until the (virtual)
        # deadline and fail: only calls running at once can both succeed.
        with trio.fail_after(10):
            await both_here.wait()
        return f"met {who}"

    replies = [
        Reply(
            "Meeting both.",
            tool_calls=[
                ScriptedToolCall("meet", {"who": "ann"}, chunks=2),
                ScriptedToolCall("meet", {"who": "bob"}, chunks=2),
            ],
        ),
        Reply("Met both."),
    ]
    harness = await start(replies, tools=[meet])
    result, seen = await harness.turn()

    assert [(c.name, c.arguments) for c in result.tool_calls] == [
        ("meet", {"who": "ann"}),
        ("meet", {"who": "bob"}),
    ]
    first, second = (call.id for call in result.tool_calls)
    assert first != second
    assert sorted(arrived) == ["ann", "bob"]
    ok = None if wire is OPENAI else False
    # Results go back in call order, whichever finished first.
    assert wire.tool_results(harness.body(1)) == [
        (first, "met ann", ok),
        (second, "met bob", ok),
    ]
    assert [e.status for e in of_type(seen, events.ToolExit)] == ["ok", "ok"]
    assert result.text == "Met both."


async def test_tool_results_go_back_in_the_wire_format_with_failures_flagged(
    start: Start, wire: Wire
) -> None:
    replies = [
        Reply(
            tool_calls=[
                ScriptedToolCall("get_weather", {"city": "Oslo"}),
                ScriptedToolCall("explode", {}),
            ]
        ),
        Reply("Oslo is sunny; the other tool failed."),
    ]
    harness = await start(replies, tools=[get_weather, explode])
    result, _ = await harness.turn()

    good, bad = (call.id for call in result.tool_calls)
    results = wire.tool_results(harness.body(1))
    assert [(call_id, flag) for call_id, _, flag in results] == (
        [(good, None), (bad, None)] if wire is OPENAI else [(good, False), (bad, True)]
    )
    assert results[0][1] == "sunny in Oslo"
    assert "the widget is on fire" in results[1][1]
    if wire is ANTHROPIC:
        # Both results in one user message, after the assistant's tool_use blocks.
        roles = [m["role"] for m in harness.body(1)["messages"]]
        assert roles == ["user", "assistant", "user"]
    statuses = [m.status for m in result.messages if isinstance(m, trurn.ToolMessage)]
    assert statuses == ["ok", "error"]


async def test_usage_is_summed_over_the_turn(start: Start) -> None:
    replies = [
        Reply(
            tool_calls=[ScriptedToolCall("get_weather", {"city": "Bern"})],
            usage=trurn.Usage(input_tokens=100, output_tokens=20),
        ),
        Reply("Sunny.", usage=trurn.Usage(input_tokens=150, output_tokens=7)),
    ]
    harness = await start(replies)
    result, seen = await harness.turn()

    assert (result.usage.input_tokens, result.usage.output_tokens) == (250, 27)
    assert result.usage.total_tokens == 277
    per_reply = [event.message.usage for event in of_type(seen, events.AssistantFinal)]
    assert [(u.input_tokens, u.output_tokens) for u in per_reply] == [(100, 20), (150, 7)]
    (finished,) = of_type(seen, events.TurnFinished)
    assert finished.usage == result.usage


async def test_a_cut_off_reply_ends_the_turn_with_length_and_runs_no_tool(start: Start) -> None:
    ran: list[str] = []

    @trurn.tool
    def record(city: str) -> str:
        """Must not run."""
        ran.append(city)
        return "ran"

    cut = Reply(
        "Checking",
        tool_calls=[ScriptedToolCall("record", {"city": "Kyiv"})],
        finish_reason="length",  # Anthropic: stop_reason "max_tokens"
    )
    harness = await start([cut, Reply("never sent")], tools=[record])
    result, seen = await harness.turn()

    assert result.stop_reason == "length"
    assert ran == []
    assert len(harness.server.requests) == 1
    reply = result.messages[1]
    assert isinstance(reply, trurn.AssistantMessage)
    assert reply.finish_reason == "length"
    # The history stays valid: the unrun call has a result saying why.
    closing = result.messages[-1]
    assert isinstance(closing, trurn.ToolMessage)
    assert closing.status == "error"
    assert "cut off" in closing.content
    (finished,) = of_type(seen, events.TurnFinished)
    assert finished.stop_reason == "length"


async def test_the_system_prompt_is_sent(start: Start, wire: Wire) -> None:
    harness = await start([Reply("Brief.")], system="Be brief.")
    await harness.turn()
    body = harness.body(0)
    assert wire.system(body) == "Be brief."
    assert harness.server.requests[0].messages[0].role == "system"


async def test_no_system_prompt_sends_none(start: Start, wire: Wire) -> None:
    harness = await start([Reply("Hi.")])
    await harness.turn()
    assert wire.system(harness.body(0)) is None


async def test_agent_options_reach_the_wire(start: Start, wire: Wire) -> None:
    harness = await start(
        [Reply("a"), Reply("b")], temperature=0.25, max_tokens=321, tool_choice="get_weather"
    )
    await harness.turn()
    body = harness.body(0)
    assert (body["temperature"], body["max_tokens"]) == (0.25, 321)
    assert body["stream"] is True
    assert [t["name"] if wire is ANTHROPIC else t["function"]["name"] for t in body["tools"]] == [
        "get_weather"
    ]
    forced = body["tool_choice"]
    assert (
        forced == {"type": "tool", "name": "get_weather"}
        if wire is ANTHROPIC
        else forced == {"type": "function", "function": {"name": "get_weather"}}
    )


async def test_defaults_leave_options_out(start: Start, wire: Wire) -> None:
    harness = await start([Reply("a")])
    await harness.turn()
    body = harness.body(0)
    assert "temperature" not in body
    assert wire.stop_field not in body
    assert body.get("max_tokens") == wire.default_max_tokens


async def test_stop_sequences_reach_the_wire(
    scripted_server: ScriptedServerFactory, http: httpx.AsyncClient, wire: Wire
) -> None:
    # The Agent has no stop option (yet): the provider is called directly.
    server = await scripted_server([Reply("one two")], api_key=API_KEY)
    provider = wire.provider(server.base_url, http, API_KEY)
    request = Request(messages=[trurn.UserMessage("count")], stop=["END", "\n\n"], max_tokens=9)
    async with provider.stream(request) as batches:
        async for _ in batches:
            pass
    body: Body = msgspec.json.decode(server.request_bodies[0])
    assert body[wire.stop_field] == ["END", "\n\n"]
    assert body["max_tokens"] == 9


# --- bad input: HTTP errors ------------------------------------------------------------------


async def test_a_wrong_api_key_is_an_authentication_error(start: Start) -> None:
    wrong = "sk-wrong-KEY-9876543210"
    harness = await start([Reply("never")], api_key=wrong)
    caught, context, seen = await harness.failing_turn(trurn.AuthenticationError)

    assert caught.value.status_code == 401
    assert wrong not in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert all(wrong not in msgspec.json.encode(event).decode() for event in seen)
    assert list(context.messages) == [trurn.UserMessage("hi")]
    assert tags(seen)[-3:] == ["error", "run_aborted", "turn_finished"]
    assert harness.transport.open_responses == 0


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (403, trurn.PermissionDeniedError),
        (500, trurn.ServerError),
        (503, trurn.ServerError),
        (529, trurn.OverloadedError),
    ],
)
async def test_error_statuses_become_typed_errors(
    start: Start, status: int, error: type[trurn.ProviderError]
) -> None:
    harness = await start([Reply(fault=StatusError(status=status, message=f"said {status}"))])
    caught, context, _ = await harness.failing_turn(error)
    assert type(caught.value) is error
    assert caught.value.status_code == status
    assert f"said {status}" in str(caught.value)
    assert list(context.messages) == [trurn.UserMessage("hi")]
    assert harness.transport.open_responses == 0


async def test_an_unknown_model_is_not_found(start: Start, wire: Wire) -> None:
    harness = await start([Reply(fault=wire.not_found)], retry=EXACT)
    caught, _, seen = await harness.failing_turn(trurn.NotFoundError)
    assert caught.value.status_code == 404
    assert wire.not_found.message is not None
    assert wire.not_found.message in str(caught.value)
    assert of_type(seen, events.Retrying) == []
    assert len(harness.server.requests) == 1


async def test_a_context_overflow_in_the_providers_own_words(start: Start, wire: Wire) -> None:
    harness = await start([Reply(fault=wire.overflow)], retry=EXACT)
    caught, context, seen = await harness.failing_turn(trurn.ContextOverflowError)
    assert caught.value.status_code == 400
    assert isinstance(caught.value, trurn.BadRequestError)
    assert wire.overflow.message is not None
    assert wire.overflow.message in str(caught.value)
    # Not worth retrying: the same prompt overflows again.
    assert len(harness.server.requests) == 1
    assert of_type(seen, events.Retrying) == []
    assert list(context.messages) == [trurn.UserMessage("hi")]
    (error_event,) = of_type(seen, events.Error)
    assert error_event.error_type == "ContextOverflowError"


async def test_a_plain_bad_request_is_not_an_overflow(start: Start) -> None:
    fault = StatusError(status=400, message="tools.0.name: String should match pattern")
    harness = await start([Reply(fault=fault)])
    caught, _, _ = await harness.failing_turn(trurn.BadRequestError)
    assert type(caught.value) is trurn.BadRequestError


# --- bad input: retries on the virtual clock ----------------------------------------------


@pytest.mark.parametrize(
    ("fault", "wait"),
    [
        (StatusError(status=429, retry_after=7), 7.0),
        (StatusError(status=429, headers={"retry-after-ms": "1500"}), 1.5),
    ],
    ids=["retry-after", "retry-after-ms"],
)
async def test_429_waits_as_long_as_the_server_says(
    start: Start, autojump_clock: trio.testing.MockClock, fault: StatusError, wait: float
) -> None:
    harness = await start([Reply(fault=fault), Reply("Finally.")], retry=EXACT)
    begin = trio.current_time()
    result, seen = await harness.turn()
    assert trio.current_time() - begin == wait
    assert result.text == "Finally."
    retries = of_type(seen, events.Retrying)
    assert [(r.attempt, r.delay, r.error_type) for r in retries] == [(1, wait, "RateLimitError")]
    assert len(harness.server.requests) == 2
    assert harness.transport.open_responses == 0


async def test_429_without_retry_after_backs_off_exponentially(
    start: Start, autojump_clock: trio.testing.MockClock
) -> None:
    limited = Reply(fault=StatusError(status=429))
    harness = await start([limited, limited, Reply("Finally.")], retry=EXACT)
    begin = trio.current_time()
    result, seen = await harness.turn()
    assert trio.current_time() - begin == 3.0  # 1 s, then 2 s
    retries = of_type(seen, events.Retrying)
    assert [(r.attempt, r.delay) for r in retries] == [(1, 1.0), (2, 2.0)]
    assert result.text == "Finally."


async def test_429_gives_up_after_the_last_attempt(
    start: Start, autojump_clock: trio.testing.MockClock
) -> None:
    limited = Reply(fault=StatusError(status=429, message="slow down"))
    harness = await start([limited] * 3, retry=EXACT)
    begin = trio.current_time()
    caught, context, _ = await harness.failing_turn(trurn.RateLimitError, match="slow down")
    assert trio.current_time() - begin == 3.0
    assert caught.value.retry_after is None
    assert len(harness.server.requests) == 3
    assert list(context.messages) == [trurn.UserMessage("hi")]


async def test_529_overloaded_is_retried(
    start: Start, autojump_clock: trio.testing.MockClock
) -> None:
    busy = Reply(fault=StatusError(status=529))
    harness = await start([busy, busy, Reply("Here now.")], retry=EXACT)
    begin = trio.current_time()
    result, seen = await harness.turn()
    assert trio.current_time() - begin == 3.0
    assert [r.error_type for r in of_type(seen, events.Retrying)] == ["OverloadedError"] * 2
    assert result.text == "Here now."
    assert harness.transport.open_responses == 0


async def test_500_is_retried_then_raised(
    start: Start, autojump_clock: trio.testing.MockClock
) -> None:
    failing = Reply(fault=StatusError(status=500, message="boom"))
    harness = await start([failing] * 3, retry=EXACT)
    caught, _, seen = await harness.failing_turn(trurn.ServerError, match="boom")
    assert caught.value.status_code == 500
    assert len(of_type(seen, events.Retrying)) == 2
    assert len(harness.server.requests) == 3


# --- bad input: broken streams ---------------------------------------------------------------


async def test_a_connection_reset_after_partial_output_is_not_retried(
    start: Start, wire: Wire, autojump_clock: trio.testing.MockClock
) -> None:
    reply = Reply("abcdefgh", text_chunks=8, fault=DropConnection(after=wire.text_at + 3))
    harness = await start([reply, Reply("never sent")], retry=EXACT)
    caught, context, seen = await harness.failing_turn(trurn.ProviderConnectionError)

    assert "mid-reply" in str(caught.value)
    assert len(harness.server.requests) == 1  # output had arrived: no retry
    assert of_type(seen, events.Retrying) == []
    assert_aborted_with(context, "abc")
    assert tags(seen)[-3:] == ["error", "run_aborted", "turn_finished"]
    (aborted,) = of_type(seen, events.RunAborted)
    assert aborted.reason == "error"
    assert harness.transport.open_responses == 0


async def test_a_connection_reset_mid_tool_call_keeps_the_text_and_runs_nothing(
    start: Start, wire: Wire
) -> None:
    ran: list[str] = []

    @trurn.tool
    def record(city: str) -> str:
        """Must not run."""
        ran.append(city)
        return "ran"

    call = ScriptedToolCall("record", {"city": "Kyiv"}, chunks=3)
    reply = Reply("Checking.", tool_calls=[call], fault=DropConnection(after=wire.mid_tool_call_at))
    harness = await start([reply], tools=[record])
    _, context, seen = await harness.failing_turn(trurn.ProviderConnectionError)

    # The call's name and first piece did arrive, so the reset really was mid-call.
    deltas = of_type(seen, events.ToolCallDelta)
    assert [d.name for d in deltas if d.name] == ["record"]
    assert ran == []
    assert of_type(seen, events.ToolCallStarted) == []
    assert_aborted_with(context, "Checking.")


async def test_an_error_event_mid_stream_is_typed_and_keeps_the_partial_reply(
    start: Start, wire: Wire
) -> None:
    fault = ErrorChunk(after=wire.text_at + 2, type="overloaded_error", message="Overloaded")
    harness = await start([Reply("abcdef", text_chunks=6, fault=fault)], retry=EXACT)
    caught, context, _ = await harness.failing_turn(trurn.OverloadedError, match="Overloaded")
    assert caught.value.status_code is None  # sent inside a 200 stream
    assert len(harness.server.requests) == 1
    assert_aborted_with(context, "ab")
    assert harness.transport.open_responses == 0


async def test_a_stream_that_stops_mid_reply_is_malformed(start: Start, wire: Wire) -> None:
    reply = Reply("abcdefgh", text_chunks=8, fault=EndWithoutDone(after=wire.text_at + 4))
    harness = await start([reply])
    caught, context, _ = await harness.failing_turn(trurn.MalformedStreamError)
    assert "ended before the reply finished" in str(caught.value)
    assert_aborted_with(context, "abcd")
    assert harness.transport.open_responses == 0


async def test_a_stream_that_stops_after_the_finish_without_its_terminator(
    start: Start, wire: Wire
) -> None:
    # Every event but data: [DONE] / message_stop.
    harness = await start([Reply("Whole.", fault=EndWithoutDone(after=1000))])
    if wire.finished_without_terminator:
        result, _ = await harness.turn()
        assert (result.text, result.stop_reason) == ("Whole.", "completed")
    else:
        caught, context, _ = await harness.failing_turn(trurn.MalformedStreamError)
        assert "message_stop" in str(caught.value)
        assert_aborted_with(context, "Whole.")
    assert harness.transport.open_responses == 0


async def test_garbage_bytes_mid_stream_are_malformed(start: Start, wire: Wire) -> None:
    garbage = MalformedChunk(at=wire.text_at + 2, data="\x00\x7f}{ not json at all")
    harness = await start([Reply("abcdef", text_chunks=6, fault=garbage)], retry=EXACT)
    caught, context, seen = await harness.failing_turn(trurn.MalformedStreamError)
    assert "not json at all" in str(caught.value)
    assert len(harness.server.requests) == 1
    assert_aborted_with(context, "ab")
    (error_event,) = of_type(seen, events.Error)
    assert error_event.error_type == "MalformedStreamError"
    assert harness.transport.open_responses == 0


async def test_garbage_as_the_first_event_is_malformed_and_not_retried(
    start: Start, autojump_clock: trio.testing.MockClock
) -> None:
    garbage = Reply("never seen", fault=MalformedChunk(at=0, data="<<<garbage>>>"))
    harness = await start([garbage, Reply("never sent")], retry=EXACT)
    _, context, seen = await harness.failing_turn(trurn.MalformedStreamError, match="garbage")
    assert len(harness.server.requests) == 1
    assert of_type(seen, events.Retrying) == []
    assert list(context.messages) == [trurn.UserMessage("hi")]


async def test_a_200_html_page_is_malformed(start: Start) -> None:
    page = StatusError(status=200, body=NGINX_PAGE, content_type="text/html")
    harness = await start([Reply(fault=page)], retry=EXACT)
    caught, context, _ = await harness.failing_turn(trurn.MalformedStreamError)
    assert "text/html" in str(caught.value)
    assert "Welcome to nginx!" in str(caught.value)
    assert caught.value.status_code == 200
    assert len(harness.server.requests) == 1
    assert list(context.messages) == [trurn.UserMessage("hi")]
    assert harness.transport.open_responses == 0


async def test_an_html_error_page_is_a_server_error_naming_its_title(start: Start) -> None:
    page = StatusError(status=502, body=BAD_GATEWAY_PAGE, content_type="text/html")
    harness = await start([Reply(fault=page)])
    caught, _, _ = await harness.failing_turn(trurn.ServerError)
    assert caught.value.status_code == 502
    assert "502 Bad Gateway" in str(caught.value)
    assert "<html>" not in str(caught.value)


# --- cancellation -----------------------------------------------------------------------------


async def test_cancelling_mid_stream_closes_the_response(
    start: Start, wire: Wire, autojump_clock: trio.testing.MockClock
) -> None:
    text = "one two three four five six"
    slow = Reply(text, text_chunks=6, chunk_delay=1.0)
    harness = await start([slow])
    context = trurn.Context()
    seen: list[events.Event] = []
    # One event a second: the text starts at second text_at + 1; cancel half-way through
    # the third second of text, after two pieces.
    with trio.move_on_after(wire.text_at + 2.5) as scope:
        await harness.agent.run_turn(context, "hi", on_event=seen.append)

    assert scope.cancelled_caught
    assert (harness.transport.opened, harness.transport.open_responses) == (1, 0)
    assert_aborted_with(context, text[:9])  # pieces "one " and "two t"
    (aborted,) = of_type(seen, events.RunAborted)
    assert aborted.reason == "cancelled"
    assert tags(seen)[-1] == "turn_finished"


async def test_cancelling_while_waiting_for_the_first_byte_closes_everything(
    start: Start, autojump_clock: trio.testing.MockClock
) -> None:
    slow = Reply("late", chunk_delay=30.0)
    harness = await start([slow])
    context = trurn.Context()
    with trio.move_on_after(5):
        await harness.agent.run_turn(context, "hi")
    assert harness.transport.open_responses == 0
    assert list(context.messages) == [trurn.UserMessage("hi")]
