"""AnthropicMessages against an httpx.MockTransport: the request it sends, the chunks it
yields, the errors it raises, and that it closes what it opens."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
import trio.testing

from trurn._chunks import (
    Chunk,
    Finish,
    ReasoningDelta,
    ServerToolBlock,
    TextDelta,
    ThinkingSignature,
    ToolCallDelta,
)
from trurn._errors import (
    AuthenticationError,
    BadRequestError,
    ContextOverflowError,
    MalformedStreamError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    RateLimitError,
    ServerError,
)
from trurn._messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ThinkingBlock,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
)
from trurn.providers._anthropic import AnthropicMessages
from trurn.providers._base import Provider, Request, ToolSpec
from trurn.providers._http import error_from_response
from trurn.providers._streaming import HTTPCall

if TYPE_CHECKING:
    _static_check: Provider = AnthropicMessages("m")  # mypy: it satisfies the protocol

API_KEY = "sk-ant-test-DO-NOT-LEAK-0123456789"
BASE_URL = "https://anthropic.example.test"
URL = BASE_URL + "/v1/messages"
SSE = {"content-type": "text/event-stream; charset=utf-8"}
REQUEST = Request(messages=[UserMessage("hi")])
WEATHER = ToolSpec(
    "get_weather",
    "Current weather.",
    {"type": "object", "properties": {"city": {"type": "string"}}},
)
# A consumer that stops between two reads abandons httpx's nested async generators
# half-way; Trio reports each one as a ResourceWarning when it is collected (httpx issue
# #3686). The response itself is closed, which is what these tests check.
ABANDONED_HTTPX_GENERATORS = pytest.mark.filterwarnings(
    "ignore:Async generator 'httpx.:ResourceWarning"
)


def event(payload: dict[str, Any], name: str | None = None) -> bytes:
    """One SSE event named after the payload's type, as Anthropic sends them."""
    name = name or payload["type"]
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


def events(*payloads: dict[str, Any]) -> bytes:
    return b"".join(event(payload) for payload in payloads)


def message_start(input_tokens: int = 10, **usage: int) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1, **usage},
        },
    }


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": fields}


def text_delta(index: int, text: str) -> dict[str, Any]:
    return delta(index, type="text_delta", text=text)


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(stop_reason: str | None = "end_turn", **usage: Any) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": usage or {"output_tokens": 5},
    }


PING = {"type": "ping"}
STOP = {"type": "message_stop"}
HELLO = events(
    message_start(),
    block_start(0, {"type": "text", "text": ""}),
    text_delta(0, "Hel"),
    text_delta(0, "lo"),
    block_stop(0),
    message_delta(),
    STOP,
)


def anthropic_error(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


class Body(httpx.AsyncByteStream):
    """A streamed response body: pieces, then optionally an exception or a hang."""

    def __init__(
        self,
        pieces: Sequence[bytes],
        *,
        then: BaseException | None = None,
        hang: bool = False,
    ) -> None:
        self.pieces = list(pieces)
        self.then = then
        self.hang = hang
        self.closed = False
        self.sent = 0

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.sent < len(self.pieces):
            self.sent += 1
            return self.pieces[self.sent - 1]
        if self.then is not None:
            raise self.then
        if self.hang:
            await trio.sleep_forever()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


class Server:
    """Records requests and answers each with the response ``respond`` builds."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)  # type: ignore[no-any-return]


def streaming(
    pieces: Sequence[bytes] | bytes,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    then: BaseException | None = None,
    hang: bool = False,
) -> tuple[Server, Body]:
    body = Body([pieces] if isinstance(pieces, bytes) else pieces, then=then, hang=hang)
    server = Server(lambda request: httpx.Response(status, headers=headers or SSE, stream=body))
    return server, body


def client_for(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(server))


def provider_for(client: httpx.AsyncClient, **options: Any) -> AnthropicMessages:
    return AnthropicMessages("claude-default", base_url=BASE_URL, client=client, **options)


async def consume(
    provider: AnthropicMessages, received: list[list[Chunk]], request: Request = REQUEST
) -> None:
    """Stream ``request``, appending each batch to ``received`` as it arrives."""
    async with provider.stream(request) as stream:
        async for batch in stream:
            received.append(list(batch))


async def collect(provider: AnthropicMessages, request: Request = REQUEST) -> list[list[Chunk]]:
    batches: list[list[Chunk]] = []
    await consume(provider, batches, request)
    return batches


def flat(batches: list[list[Chunk]]) -> list[Chunk]:
    return [chunk for batch in batches for chunk in batch]


async def sent_body(request: Request, **options: Any) -> dict[str, Any]:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        await collect(provider_for(client, **options), request)
    return server.body


# --- the request -----------------------------------------------------------------------


async def test_request_body_messages_tools_and_options() -> None:
    request = Request(
        messages=[
            SystemMessage("Be brief."),
            UserMessage("Weather in Tokyo and Paris?"),
            AssistantMessage(
                content="Checking.",
                reasoning="I should call the tool twice.",
                thinking=[
                    ThinkingBlock(text="I should call the tool", signature="sig-1"),
                    ThinkingBlock(redacted="opaque-data"),
                    ThinkingBlock(text=" twice.", signature="sig-2"),
                ],
                server_blocks=[
                    {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {}}
                ],
                tool_calls=[
                    ToolCall(
                        id="toolu_1",
                        name="get_weather",
                        arguments={"city": "Tokyo"},
                        arguments_raw='{"city": "Tokyo"}',
                    ),
                    ToolCall(id="toolu_2", name="get_weather", arguments={"city": "Paris"}),
                ],
            ),
            ToolMessage(tool_call_id="toolu_1", name="get_weather", content="sunny"),
            ToolMessage(tool_call_id="toolu_2", name="get_weather", content="boom", status="error"),
            UserMessage("And now?"),
            SystemMessage("Answer in English."),
            AssistantMessage(content="Sunny in Tokyo."),
            AssistantMessage(aborted=True),  # empty: skipped, so the users below merge
            UserMessage("Thanks"),
            AssistantMessage(content="", aborted=True),
            UserMessage("Bye"),
        ],
        tools=[WEATHER],
        model="claude-override",
        temperature=0.2,
        max_tokens=100,
        tool_choice="auto",
        stop=["END", "STOP"],
        seed=7,
    )
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        await collect(provider_for(client), request)

    sent = server.requests[0]
    assert sent.method == "POST"
    assert str(sent.url) == URL
    assert server.body == {
        "model": "claude-override",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Tokyo and Paris?"}]},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "thinking",
                        "thinking": "I should call the tool",
                        "signature": "sig-1",
                    },
                    {"type": "redacted_thinking", "data": "opaque-data"},
                    {"type": "thinking", "thinking": " twice.", "signature": "sig-2"},
                    {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {}},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Tokyo"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": "boom",
                        "is_error": True,
                    },
                    {"type": "text", "text": "And now?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Sunny in Tokyo."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Thanks"},
                    {"type": "text", "text": "Bye"},
                ],
            },
        ],
        "stream": True,
        "system": "Be brief.\n\nAnswer in English.",
        "tools": [
            {
                "name": "get_weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                "description": "Current weather.",
            }
        ],
        "tool_choice": {"type": "auto"},
        "temperature": 0.2,
        "stop_sequences": ["END", "STOP"],
    }
    # The plain reasoning text is not sent: only the signed thinking blocks are.
    assert "I should call the tool twice." not in sent.content.decode()


async def test_minimal_body_uses_the_default_max_tokens() -> None:
    # No tools: tool_choice is not sent. No options: none are sent.
    body = await sent_body(Request(messages=[UserMessage("hi")], tool_choice="required"))
    assert body == {
        "model": "claude-default",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stream": True,
    }
    assert (await sent_body(REQUEST, max_tokens=123))["max_tokens"] == 123


@pytest.mark.parametrize(
    ("choice", "parallel", "wire"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ("get_weather", None, {"type": "tool", "name": "get_weather"}),
        (None, None, None),
        (None, True, None),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (
            "get_weather",
            False,
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        ("none", False, {"type": "none"}),  # no tool calls at all: nothing to serialise
    ],
)
async def test_tool_choice_mapping(
    choice: str | None, parallel: bool | None, wire: dict[str, Any] | None
) -> None:
    request = Request(
        messages=[UserMessage("hi")],
        tools=[WEATHER],
        tool_choice=choice,
        parallel_tool_calls=parallel,
    )
    body = await sent_body(request)
    assert body.get("tool_choice") == wire


def test_tool_choice_naming_an_unknown_tool_is_refused() -> None:
    request = Request(messages=[UserMessage("hi")], tools=[WEATHER], tool_choice="get_time")
    with pytest.raises(ValueError, match=r"'get_time'.*'get_weather'"):
        AnthropicMessages("m").stream(request)


@pytest.mark.parametrize(
    ("effort", "max_tokens", "budget", "sent_max"),
    [
        # max_tokens is always the budget plus the room asked for the answer, on both
        # sides of where max_tokens and the budget are equal.
        ("low", None, 1024, 5120),  # the default 4096 is the answer's room
        ("medium", None, 4096, 8192),
        ("high", None, 16384, 20480),
        ("high", 100, 16384, 16484),  # the answer keeps the 100 tokens asked for
        ("high", 16383, 16384, 32767),
        ("high", 16384, 16384, 32768),
        ("high", 16385, 16384, 32769),
        ("high", 20000, 16384, 36384),
        ("minimal", 2000, 1024, 3024),
    ],
)
async def test_thinking_budget_from_reasoning_effort(
    effort: str, max_tokens: int | None, budget: int, sent_max: int
) -> None:
    body = await sent_body(
        Request(messages=[UserMessage("hi")], reasoning_effort=effort, max_tokens=max_tokens)
    )
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert body["max_tokens"] == sent_max
    assert "reasoning_effort" not in body


async def test_reasoning_effort_none_sends_no_thinking() -> None:
    body = await sent_body(Request(messages=[UserMessage("hi")], reasoning_effort="none"))
    assert "thinking" not in body
    assert body["max_tokens"] == 4096


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (Request(messages=[UserMessage("hi")], reasoning_effort="extreme"), "'extreme'"),
        (Request(messages=[UserMessage("hi")], max_tokens=0), "max_tokens"),
        (Request(messages=[UserMessage("hi")], extra_body={"model": "x"}), "'model'"),
        (Request(messages=[UserMessage("hi")], extra_body={"messages": []}), "'messages'"),
        (Request(messages=[UserMessage("hi")], extra_body={"stream": False}), "'stream'"),
    ],
    ids=["effort", "max-tokens", "extra-model", "extra-messages", "extra-stream"],
)
async def test_requests_the_api_cannot_take_are_refused_before_sending(
    request_: Request, words: str
) -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        with pytest.raises(ValueError, match=words):
            provider_for(client).stream(request_)
    assert server.requests == []


async def test_extra_body_is_merged_last() -> None:
    body = await sent_body(
        Request(
            messages=[UserMessage("hi")],
            temperature=0.5,
            extra_body={"top_k": 5, "metadata": {"user_id": "u1"}, "temperature": 1.0},
        )
    )
    assert body["top_k"] == 5
    assert body["metadata"] == {"user_id": "u1"}
    assert body["temperature"] == 1.0
    assert body["model"] == "claude-default"
    assert body["stream"] is True


async def test_unsigned_thinking_and_empty_replies_are_not_sent_back() -> None:
    request = Request(
        messages=[
            UserMessage("q"),
            # Reasoning from a provider that does not sign it, or a reply cut off mid-thought.
            AssistantMessage(
                content="a", reasoning="plain", thinking=[ThinkingBlock(text="unsigned")]
            ),
            UserMessage("q2"),
            AssistantMessage(thinking=[ThinkingBlock(text="cut off")], aborted=True),
        ]
    )
    body = await sent_body(request)
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a"}]},
        {"role": "user", "content": [{"type": "text", "text": "q2"}]},
    ]


async def test_blank_text_is_left_out_of_every_kind_of_message() -> None:
    # The API refuses text blocks with nothing but white space (an empty string too).
    request = Request(
        messages=[
            UserMessage("q"),
            UserMessage(" \n\t "),  # merged with "q": left out
            AssistantMessage(content="  ", tool_calls=[ToolCall(id="t1", name="f")]),
            ToolMessage(tool_call_id="t1", name="f", content=""),
            ToolMessage(tool_call_id="t2", name="f", content=" \n", status="error"),
            UserMessage(""),
            AssistantMessage(content="\n\n"),  # nothing left: skipped
            AssistantMessage(content="a"),
            UserMessage("q2"),
        ]
    )
    body = await sent_body(request)
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1"},
                {"type": "tool_result", "tool_use_id": "t2", "is_error": True},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "a"}]},
        {"role": "user", "content": [{"type": "text", "text": "q2"}]},
    ]


async def test_text_with_surrounding_white_space_is_sent_as_it_is() -> None:
    request = Request(
        messages=[
            UserMessage("  q \n"),
            AssistantMessage(content=" a "),
            UserMessage("\u00a0x"),
        ]
    )
    body = await sent_body(request)
    texts = [message["content"][0]["text"] for message in body["messages"]]
    assert texts == ["  q \n", " a ", "\u00a0x"]


@pytest.mark.parametrize(
    ("messages", "index"),
    [
        ([UserMessage("")], 0),
        ([UserMessage("  \n")], 0),
        ([SystemMessage("s"), UserMessage("\t")], 1),
        ([UserMessage("q"), AssistantMessage(content="a"), UserMessage(" "), UserMessage("")], 2),
    ],
    ids=["empty", "blank", "after-system", "blank-turn-of-two"],
)
async def test_a_user_turn_with_nothing_to_send_is_refused_before_sending(
    messages: list[Message], index: int
) -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        with pytest.raises(ValueError, match=r"is a user message with no text") as caught:
            provider_for(client).stream(Request(messages=messages))
    assert str(caught.value).startswith(f"messages[{index}] is a user message with no text")
    assert server.requests == []


async def test_broken_tool_arguments_go_back_as_an_empty_input() -> None:
    broken = ToolCall(id="t1", name="f", arguments_raw='{"city": ', arguments_error="bad JSON")
    request = Request(
        messages=[
            UserMessage("hi"),
            AssistantMessage(tool_calls=[broken]),
            ToolMessage(tool_call_id="t1", name="f", content="invalid", status="error"),
        ]
    )
    body = await sent_body(request)
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
    ]
    assert body["messages"][2]["content"][0]["is_error"] is True


@pytest.mark.parametrize("status", ["cancelled", "denied", "error"])
async def test_every_failed_tool_status_is_an_error_result(status: Any) -> None:
    request = Request(
        messages=[
            UserMessage("hi"),
            AssistantMessage(tool_calls=[ToolCall(id="t1", name="f")]),
            ToolMessage(tool_call_id="t1", name="f", content="no", status=status),
        ]
    )
    body = await sent_body(request)
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "no", "is_error": True}
    ]


async def test_headers_with_api_key_version_and_extra_headers() -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        provider = provider_for(
            client,
            api_key=API_KEY,
            headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
        )
        await collect(provider)
    headers = server.requests[0].headers
    assert headers["x-api-key"] == API_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "text/event-stream"
    assert "authorization" not in headers


async def test_no_api_key_header_without_api_key_and_custom_version() -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        await collect(provider_for(client, anthropic_version="2099-01-01"))
    headers = server.requests[0].headers
    assert "x-api-key" not in headers
    assert headers["anthropic-version"] == "2099-01-01"


@pytest.mark.parametrize(
    ("base_url", "url"),
    [
        ("https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
        ("https://api.anthropic.com/", "https://api.anthropic.com/v1/messages"),
        ("https://api.anthropic.com/v1", "https://api.anthropic.com/v1/messages"),
        ("http://127.0.0.1:8080/proxy/", "http://127.0.0.1:8080/proxy/v1/messages"),
    ],
)
async def test_url_from_base_url(base_url: str, url: str) -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        await collect(AnthropicMessages("m", base_url=base_url, client=client))
    assert str(server.requests[0].url) == url


@pytest.mark.parametrize("base_url", ["", "not a url", "ftp://example.test", "/v1"])
def test_bad_base_url_is_refused(base_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        AnthropicMessages("m", base_url=base_url)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"anthropic_version": ""}, "anthropic_version"),
        ({"anthropic_version": "2023\r\nX-Evil: 1"}, "anthropic_version"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        AnthropicMessages("m", **options)


def test_empty_model_is_refused() -> None:
    with pytest.raises(ValueError, match="model"):
        AnthropicMessages("")


def test_model_property_repr_and_protocol() -> None:
    provider = AnthropicMessages("claude-sonnet-4-5", api_key=API_KEY)
    assert provider.model == "claude-sonnet-4-5"
    assert isinstance(provider, Provider)
    assert API_KEY not in repr(provider)
    assert "claude-sonnet-4-5" in repr(provider)


# --- chunks ----------------------------------------------------------------------------


async def test_one_batch_per_network_read_and_chunk_mapping() -> None:
    tool = block_start(2, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}})
    pieces = [
        event(message_start(10, cache_creation_input_tokens=3, cache_read_input_tokens=4)),
        events(block_start(0, {"type": "thinking", "thinking": "", "signature": ""}), PING),
        events(delta(0, type="thinking_delta", thinking="hmm")),
        events(delta(0, type="signature_delta", signature="sig-a")),
        events(delta(0, type="signature_delta", signature="sig-b"), block_stop(0)),
        events(block_start(1, {"type": "text", "text": "", "citations": []}), text_delta(1, "Hi")),
        events(delta(1, type="citations_delta", citation={"type": "char_location"})),
        events({"type": "brand_new_event", "index": 1}, block_stop(1), tool),
        event(delta(2, type="input_json_delta", partial_json=""))
        + event(delta(2, type="input_json_delta", partial_json='{"a":'))[:30],
        event(delta(2, type="input_json_delta", partial_json='{"a":'))[30:],
        events(delta(2, type="input_json_delta", partial_json="1}"), block_stop(2)),
        b": a comment\n\n",
        events(
            message_delta(
                "tool_use", output_tokens=20, output_tokens_details={"thinking_tokens": 6}
            ),
            STOP,
        ),
    ]
    server, body = streaming(pieces)
    async with client_for(server) as client:
        batches = await collect(provider_for(client))
    assert batches == [
        [ReasoningDelta("hmm")],
        [ThinkingSignature(signature="sig-asig-b")],  # one per block, at its stop
        [TextDelta("Hi")],
        [ToolCallDelta(index=2, id="toolu_1", name="f")],
        [ToolCallDelta(index=2, arguments='{"a":')],
        [ToolCallDelta(index=2, arguments="1}")],
        [
            Finish("tool_calls"),
            Usage(
                input_tokens=17,
                output_tokens=20,
                total_tokens=37,
                reasoning_tokens=6,
                cached_input_tokens=4,
            ),
        ],
    ]
    assert body.closed
    assert body.sent == len(pieces)


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("tool_use", "tool_calls"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        ("pause_turn", "pause_turn"),
        ("a_reason_from_the_future", "a_reason_from_the_future"),
    ],
)
async def test_stop_reason_mapping(wire: str, reason: str) -> None:
    server, _ = streaming(events(message_start(), message_delta(wire), STOP))
    async with client_for(server) as client:
        chunks = flat(await collect(provider_for(client)))
    assert chunks[0] == Finish(reason)


async def test_usage_from_message_delta_wins_and_start_fills_gaps() -> None:
    # Newer API versions repeat the cumulative input counts in message_delta (server
    # tools add to them); older ones send output_tokens only.
    stream = events(
        message_start(100, cache_read_input_tokens=50),
        message_delta("end_turn", input_tokens=300, output_tokens=9),
        STOP,
    )
    server, _ = streaming(stream)
    async with client_for(server) as client:
        chunks = flat(await collect(provider_for(client)))
    assert chunks == [
        Finish("stop"),
        Usage(input_tokens=350, output_tokens=9, total_tokens=359, cached_input_tokens=50),
    ]


async def test_redacted_thinking_and_server_blocks() -> None:
    search = {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {}}
    result = {
        "type": "web_search_tool_result",
        "tool_use_id": "srv_1",
        "content": [{"type": "web_search_result", "url": "https://example.test"}],
    }
    stream = events(
        message_start(),
        block_start(0, {"type": "redacted_thinking", "data": "opaque"}),
        block_stop(0),
        block_start(1, search),
        delta(1, type="input_json_delta", partial_json='{"query": '),
        delta(1, type="input_json_delta", partial_json='"weather"}'),
        block_stop(1),
        block_start(2, result),
        block_stop(2),
        block_start(3, {"type": "text", "text": "Sunny."}),  # text in the start is kept
        block_stop(3),
        message_delta(),
        STOP,
    )
    server, _ = streaming(stream)
    async with client_for(server) as client:
        chunks = flat(await collect(provider_for(client)))
    assert chunks[:4] == [
        ThinkingSignature(redacted="opaque"),
        ServerToolBlock({**search, "input": {"query": "weather"}}),
        ServerToolBlock(result),
        TextDelta("Sunny."),
    ]


async def test_server_block_without_deltas_keeps_its_input() -> None:
    search = {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {"q": 1}}
    stream = events(message_start(), block_start(0, search), block_stop(0), message_delta(), STOP)
    server, _ = streaming(stream)
    async with client_for(server) as client:
        chunks = flat(await collect(provider_for(client)))
    assert chunks[0] == ServerToolBlock(search)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (
            [
                block_start(0, {"type": "server_tool_use", "id": "s", "name": "w", "input": {}}),
                delta(0, type="input_json_delta", partial_json='{"query": '),
                block_stop(0),
            ],
            "input is not JSON",
        ),
        ([block_start(0, {"text": ""})], "without a block type"),
        ([block_start(0, {"type": "tool_use", "name": "f", "input": {}})], "tool_use block"),
        ([block_start(0, {"type": "redacted_thinking"})], "redacted_thinking block"),
    ],
    ids=["server-input", "no-type", "tool-no-id", "redacted-no-data"],
)
async def test_malformed_blocks(bad: list[dict[str, Any]], words: str) -> None:
    stream = events(message_start(), *bad, message_delta(), STOP)
    server, body = streaming(stream)
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError, match=words):
            await collect(provider_for(client))
    assert body.closed


# --- HTTP errors -----------------------------------------------------------------------

STATUS_CASES = [
    pytest.param(
        401,
        anthropic_error("authentication_error", f"invalid x-api-key {API_KEY}"),
        AuthenticationError,
        "invalid x-api-key",
        id="401",
    ),
    pytest.param(
        403,
        anthropic_error("permission_error", "Your API key does not have permission"),
        PermissionDeniedError,
        "does not have permission",
        id="403",
    ),
    pytest.param(
        404,
        anthropic_error("not_found_error", "model: claude-9"),
        NotFoundError,
        "model: claude-9",
        id="404",
    ),
    pytest.param(
        400,
        anthropic_error("invalid_request_error", "messages.0.content: Field required"),
        BadRequestError,
        "Field required",
        id="400",
    ),
    pytest.param(
        400,
        anthropic_error("invalid_request_error", "prompt is too long: 210000 tokens > 200000"),
        ContextOverflowError,
        "prompt is too long",
        id="400-prompt-too-long",
    ),
    pytest.param(
        400,
        anthropic_error(
            "invalid_request_error",
            "input length and `max_tokens` exceed context limit: 178959 + 64000 > 200000, "
            "decrease input length or `max_tokens` and try again",
        ),
        ContextOverflowError,
        "exceed context limit: 178959 + 64000 > 200000",
        id="400-input-and-max-tokens-exceed-context-limit",
    ),
    pytest.param(
        413,
        anthropic_error("request_too_large", "Request exceeds the maximum allowed number"),
        BadRequestError,
        "maximum allowed number",
        id="413",
    ),
    pytest.param(
        429,
        anthropic_error("rate_limit_error", "Number of request tokens has exceeded your limit"),
        RateLimitError,
        "exceeded your limit",
        id="429",
    ),
    pytest.param(
        500,
        anthropic_error("api_error", "Internal server error"),
        ServerError,
        "Internal server error",
        id="500",
    ),
    pytest.param(
        529,
        anthropic_error("overloaded_error", "Overloaded"),
        OverloadedError,
        "Overloaded",
        id="529",
    ),
    pytest.param(
        502,
        b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
        ServerError,
        "502 Bad Gateway",
        id="502-html",
    ),
]


def test_input_and_max_tokens_over_the_context_limit_is_an_overflow() -> None:
    # Anthropic's real 400 when the prompt fits but prompt + max_tokens does not.
    message = (
        "input length and `max_tokens` exceed context limit: 178959 + 64000 > 200000, "
        "decrease input length or `max_tokens` and try again"
    )
    body = json.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    ).encode()
    response = httpx.Response(400, content=body, request=httpx.Request("POST", URL))
    error = error_from_response(response, body, provider="anthropic-messages")
    assert type(error) is ContextOverflowError
    assert not error.retryable
    assert str(error) == f"HTTP 400 Bad Request from {URL}: {message}"


@pytest.mark.parametrize(("status", "payload", "cls", "words"), STATUS_CASES)
async def test_error_status_maps_to_typed_exception(
    status: int, payload: bytes, cls: type[ProviderError], words: str
) -> None:
    server, body = streaming(payload, status=status, headers={"content-type": "application/json"})
    async with client_for(server) as client:
        provider = provider_for(client, api_key=API_KEY)
        with pytest.raises(ProviderError) as caught:
            async with provider.stream(REQUEST):
                raise AssertionError("the context must not be entered")
    error = caught.value
    assert type(error) is cls
    assert error.status_code == status
    assert error.provider == "anthropic-messages"
    assert words in str(error)
    assert str(status) in str(error)
    assert URL in str(error)
    assert API_KEY not in str(error)
    assert API_KEY not in repr(error.args)
    assert body.closed


@pytest.mark.parametrize(
    ("headers", "retry_after"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({}, None),
    ],
    ids=["retry-after", "retry-after-ms", "none"],
)
async def test_rate_limit_retry_after(headers: dict[str, str], retry_after: float | None) -> None:
    payload = anthropic_error("rate_limit_error", "slow down")
    server, _ = streaming(
        payload, status=429, headers={"content-type": "application/json", **headers}
    )
    async with client_for(server) as client:
        with pytest.raises(RateLimitError) as caught:
            async with provider_for(client).stream(REQUEST):
                pass
    assert caught.value.retry_after == retry_after
    assert caught.value.retryable


async def test_secrets_in_extra_headers_stay_out_of_errors() -> None:
    payload = anthropic_error("authentication_error", "bad token Bearer PROXY-SECRET")
    server, _ = streaming(payload, status=401, headers={"content-type": "application/json"})
    async with client_for(server) as client:
        provider = provider_for(client, headers={"Authorization": "Bearer PROXY-SECRET"})
        with pytest.raises(AuthenticationError) as caught:
            await collect(provider)
    assert "bad token" in str(caught.value)
    assert "PROXY-SECRET" not in str(caught.value)


# A proxy or gateway page that echoes the request it refused, key and all. The key sits
# where an excerpt of 200 characters would cut it in two, so masking after the cut would
# leave half of it.
ECHO_PAGE = b"<html><body>" + b"x" * 150 + b" x-api-key: " + API_KEY.encode() + b"</body></html>"
ECHO_TITLE = b"<html><head><title>denied for " + API_KEY.encode() + b"</title></head></html>"


@pytest.mark.parametrize(
    ("status", "content_type", "body", "cls"),
    [
        (403, "text/html", ECHO_PAGE, PermissionDeniedError),
        (502, "text/html", ECHO_TITLE, ServerError),
        (200, "text/html", ECHO_TITLE, MalformedStreamError),
        (200, "text/html", ECHO_PAGE, MalformedStreamError),
        (200, "text/event-stream", b"event: error\ndata: " + ECHO_PAGE + b"\n\n", ProviderError),
        (200, "text/event-stream", b"data: " + ECHO_PAGE + b"\n\n", MalformedStreamError),
        (
            200,
            "text/event-stream",
            b'event: error\ndata: {"type":"error"} ' + API_KEY.encode() + b"\n\n",
            ProviderError,
        ),
    ],
    ids=[
        "403-page",
        "502-title",
        "200-html-title",
        "200-html-page",
        "error-event",
        "payload",
        "error-event-json",
    ],
)
async def test_a_key_echoed_by_the_server_is_masked(
    status: int, content_type: str, body: bytes, cls: type[ProviderError]
) -> None:
    server, _ = streaming(body, status=status, headers={"content-type": content_type})
    async with client_for(server) as client:
        with pytest.raises(ProviderError) as caught:
            await collect(provider_for(client, api_key=API_KEY))
    error = caught.value
    assert type(error) is cls
    # The body is shown, with the key masked (the mask itself may be cut short).
    assert any(shown in str(error) for shown in ("for [redacted]", "key: [re", "} [redacted]"))
    for piece in (API_KEY, API_KEY[:12], API_KEY[-12:]):
        assert piece not in str(error)
        assert piece not in repr(error.args)


def test_http_call_repr_shows_no_secret() -> None:
    provider = AnthropicMessages("m", base_url=BASE_URL, api_key=API_KEY)
    stream = provider.stream(REQUEST)
    call = HTTPCall(
        stream._client,
        stream._request,
        stream._url,
        stream._secrets,
    )
    assert API_KEY in call.request.headers["x-api-key"]  # it is there to be hidden
    text = repr(call)
    assert API_KEY not in text
    assert text == f"HTTPCall(POST {URL}, 1 secrets masked)"


async def test_200_with_html_body_is_malformed() -> None:
    page = b"<!doctype html><html><head><title>Sign in to the proxy</title></head></html>"
    server, body = streaming(page, headers={"content-type": "text/html; charset=utf-8"})
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError) as caught:
            async with provider_for(client).stream(REQUEST):
                raise AssertionError("the context must not be entered")
    assert "text/html" in str(caught.value)
    assert "Sign in to the proxy" in str(caught.value)
    assert caught.value.status_code == 200
    assert body.closed


# --- transport errors ------------------------------------------------------------------


async def test_unreachable_server() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        provider = provider_for(client, api_key=API_KEY)
        with pytest.raises(ProviderConnectionError) as caught:
            async with provider.stream(REQUEST):
                pass
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert URL in str(caught.value)
    assert API_KEY not in str(caught.value)


async def test_connect_timeout() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(slow)) as client:
        with pytest.raises(ProviderTimeout):
            async with provider_for(client).stream(REQUEST):
                pass


@pytest.mark.parametrize(
    ("failure", "cls"),
    [
        (httpx.RemoteProtocolError("peer closed connection"), ProviderConnectionError),
        (httpx.ReadError("connection reset by peer"), ProviderConnectionError),
        (httpx.ReadTimeout("read timed out"), ProviderTimeout),
    ],
    ids=["remote-protocol", "read-error", "read-timeout"],
)
async def test_transport_error_mid_stream(failure: Exception, cls: type[ProviderError]) -> None:
    head = events(message_start(), block_start(0, {"type": "text", "text": ""}))
    server, body = streaming([head + event(text_delta(0, "partial"))], then=failure)
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(cls) as caught:
            await consume(provider_for(client), received)
    assert received == [[TextDelta("partial")]]
    assert caught.value.__cause__ is failure
    assert "mid-reply" in str(caught.value)
    assert body.closed


# --- malformed streams -----------------------------------------------------------------


async def test_stream_ending_without_message_stop_is_malformed() -> None:
    # Everything but message_stop: the output still comes first.
    stream = HELLO[: HELLO.index(b"event: message_stop")]
    server, body = streaming([stream])
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError, match="no message_stop"):
            await consume(provider_for(client), received)
    assert flat(received)[:3] == [TextDelta("Hel"), TextDelta("lo"), Finish("stop")]
    assert body.closed


async def test_stream_cut_inside_an_event_is_malformed() -> None:
    cut = events(message_start(), block_start(0, {"type": "text", "text": ""}))
    server, _ = streaming([cut, b'event: content_block_delta\ndata: {"type":"content_bl'])
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError, match="no message_stop"):
            await collect(provider_for(client))


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x9f\x92\x96 binary garbage \xff\xfe",
        b"\x00\x9f\n\n\xff\xfe\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nhello",
    ],
    ids=["no-newline", "newlines", "text"],
)
async def test_garbage_bytes_are_malformed(garbage: bytes) -> None:
    server, body = streaming([garbage])
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError):
            await collect(provider_for(client))
    assert body.closed


@pytest.mark.parametrize(
    "payload",
    [
        b"data: {not json}\n\n",
        b'data: {"type": 5}\n\n',
        b"data: [1, 2]\n\n",
        b"event: content_block_delta\ndata: \xff\n\n",
        b'data: {"type": "content_block_delta", "index": 0, "delta": "text"}\n\n',
    ],
    ids=["not-json", "wrong-type", "array", "bad-utf8", "wrong-delta"],
)
async def test_malformed_payload_after_good_events(payload: bytes) -> None:
    head = events(message_start(), block_start(0, {"type": "text", "text": ""}))
    stream = head + event(text_delta(0, "good")) + payload + event(text_delta(0, "never"))
    server, body = streaming(stream)
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError) as caught:
            await consume(provider_for(client), received)
    # The good chunk of the same read is delivered first; nothing after the bad payload is.
    assert received == [[TextDelta("good")]]
    assert "not a Messages event" in str(caught.value)
    assert isinstance(caught.value.__cause__, Exception)
    assert body.closed


# --- errors inside the stream ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "message", "cls"),
    [
        ("overloaded_error", "Overloaded", OverloadedError),
        ("rate_limit_error", "Rate limited", RateLimitError),
        ("api_error", "Internal server error", ServerError),
        ("invalid_request_error", "Bad thing", BadRequestError),
        ("invalid_request_error", "prompt is too long: 5 > 4", ContextOverflowError),
        ("authentication_error", "invalid x-api-key", AuthenticationError),
        ("permission_error", "not allowed", PermissionDeniedError),
        ("not_found_error", "no such model", NotFoundError),
        ("mystery_error", "who knows", ProviderError),
    ],
)
async def test_error_event_mid_stream(kind: str, message: str, cls: type[ProviderError]) -> None:
    head = events(message_start(), block_start(0, {"type": "text", "text": ""}))
    error = {"type": "error", "error": {"details": None, "type": kind, "message": message}}
    server, body = streaming([head + event(text_delta(0, "so far")), event(error) + b"trailing"])
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(ProviderError) as caught:
            await consume(provider_for(client), received)
    assert type(caught.value) is cls
    assert received == [[TextDelta("so far")]]
    assert message in str(caught.value)
    assert caught.value.status_code is None
    assert caught.value.provider == "anthropic-messages"
    assert body.closed


async def test_error_event_is_raised_after_the_batch_that_precedes_it() -> None:
    head = events(message_start(), block_start(0, {"type": "text", "text": ""}))
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    server, _ = streaming(head + event(text_delta(0, "partial")) + event(error))  # one read
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(OverloadedError):
            await consume(provider_for(client), received)
    assert received == [[TextDelta("partial")]]


async def test_error_event_without_event_name_or_with_unparsable_data() -> None:
    error = b'data: {"type":"error","error":{"type":"api_error","message":"boom"}}\n\n'
    server, _ = streaming(event(message_start()) + error)
    async with client_for(server) as client:
        with pytest.raises(ServerError, match="boom"):
            await collect(provider_for(client))
    server, _ = streaming(b"event: error\ndata: upstream exploded\n\n")
    async with client_for(server) as client:
        with pytest.raises(ProviderError, match="upstream exploded") as caught:
            await collect(provider_for(client))
    assert type(caught.value) is ProviderError


# --- closing ---------------------------------------------------------------------------


async def test_response_closed_when_cancelled_while_waiting_for_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    head = events(message_start(), block_start(0, {"type": "text", "text": ""}))
    server, body = streaming([head + event(text_delta(0, "first"))], hang=True)
    received: list[Chunk] = []
    async with client_for(server) as client:
        with trio.move_on_after(5) as scope:
            async with provider_for(client).stream(REQUEST) as stream:
                assert stream.response is not None
                assert not stream.response.is_closed
                async for batch in stream:
                    received.extend(batch)
    assert scope.cancelled_caught
    assert received == [TextDelta("first")]
    assert stream.response is not None
    assert stream.response.is_closed
    assert body.closed


@ABANDONED_HTTPX_GENERATORS
async def test_response_closed_when_cancelled_in_the_consumer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    head = events(message_start(), block_start(0, {"type": "text", "text": ""}))
    server, body = streaming([head + event(text_delta(0, "first")), event(text_delta(0, "2"))])
    received: list[Chunk] = []
    async with client_for(server) as client:
        with trio.move_on_after(5) as scope:
            async with provider_for(client).stream(REQUEST) as stream:
                async for batch in stream:
                    received.extend(batch)
                    await trio.sleep_forever()  # e.g. a full subscriber
    assert scope.cancelled_caught
    assert received == [TextDelta("first")]
    assert stream.response is not None
    assert stream.response.is_closed
    assert body.closed
    assert body.sent == 1


async def test_response_closed_when_cancelled_while_connecting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with httpx.AsyncClient(transport=httpx.MockTransport(never)) as client:
        with trio.move_on_after(5) as scope:
            async with provider_for(client).stream(REQUEST):
                raise AssertionError("the context must not be entered")
    assert scope.cancelled_caught


async def test_body_is_drained_after_message_stop() -> None:
    server, body = streaming([HELLO, b"event: ping\ndata: {}\n\n", b""])
    async with client_for(server) as client:
        batches = await collect(provider_for(client))
    assert flat(batches)[:3] == [TextDelta("Hel"), TextDelta("lo"), Finish("stop")]
    assert body.sent == 3
    assert body.closed


async def test_drain_gives_up_on_a_server_that_never_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, body = streaming([HELLO], hang=True)
    async with client_for(server) as client:
        start = trio.current_time()
        batches = await collect(provider_for(client))
        waited = trio.current_time() - start
    assert flat(batches)[-2] == Finish("stop")
    assert 0 < waited <= 2.0
    assert body.closed


async def test_stream_can_be_entered_only_once_and_iterated_only_inside() -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        stream = provider_for(client).stream(REQUEST)
        with pytest.raises(RuntimeError, match="inside its 'async with'"):
            await stream.__anext__()
        async with stream as batches:
            async for _ in batches:
                pass
        with pytest.raises(RuntimeError, match="once"):
            async with stream:
                pass


async def test_owned_client_is_closed_by_aclose() -> None:
    provider = AnthropicMessages("m", base_url=BASE_URL)
    provider.stream(REQUEST)  # makes the client lazily; nothing is sent until entered
    client = provider._client  # the owned client is private; peeking is the only way
    assert client is not None
    assert not client.is_closed
    assert client.timeout == httpx.Timeout(600.0, connect=10.0)
    await provider.aclose()
    assert client.is_closed
    with pytest.raises(trio.ClosedResourceError):
        provider.stream(REQUEST)
    await provider.aclose()  # idempotent


async def test_owned_client_closed_on_leaving_async_with() -> None:
    async with AnthropicMessages("m", base_url=BASE_URL) as provider:
        provider.stream(REQUEST)
        client = provider._client
    assert client is not None
    assert client.is_closed


async def test_injected_client_is_not_closed() -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        async with provider_for(client) as provider:
            await collect(provider)
        await provider.aclose()
        assert not client.is_closed
    assert client.is_closed  # closed by its owner, the test


async def test_aclose_without_client_is_a_checkpoint() -> None:
    provider = AnthropicMessages("m")
    with trio.testing.assert_checkpoints():
        await provider.aclose()
