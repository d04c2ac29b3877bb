"""AnthropicMessages against an httpx.MockTransport: the request it sends, the chunks it
yields and the errors only it raises. What it does just as OpenAIChat does (status codes,
transport errors, broken streams, closing) is tested for both in test_providers_http.py."""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from anthropic_wire import (
    BASE_URL,
    HELLO,
    PING,
    STOP,
    URL,
    anthropic_error,
    block_start,
    block_stop,
    delta,
    event,
    events,
    message_delta,
    message_start,
    provider_for,
    text_delta,
)
from mock_http import (
    REQUEST,
    body_sent,
    client_for,
    collect,
    consume,
    flat,
    request_sent,
    streaming,
)

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
    ContextOverflowError,
    MalformedStreamError,
    ProviderError,
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
WEATHER = ToolSpec(
    "get_weather",
    "Current weather.",
    {"type": "object", "properties": {"city": {"type": "string"}}},
)


# The HTTP request AnthropicMessages made to stream a request (REQUEST by default), given the
# options, and its JSON body.
sent = partial(request_sent, provider_for, HELLO)
sent_body = partial(body_sent, provider_for, HELLO)


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
    http_request = await sent(request)
    assert http_request.method == "POST"
    assert str(http_request.url) == URL
    assert json.loads(http_request.content) == {
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
    assert "I should call the tool twice." not in http_request.content.decode()


async def test_minimal_body_uses_the_default_max_tokens() -> None:
    # No tools: tool_choice is not sent. No options: none are sent.
    body = await sent_body(Request(messages=[UserMessage("hi")], tool_choice="required"))
    assert body == {
        "model": "claude-default",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stream": True,
    }
    assert (await sent_body(max_tokens=123))["max_tokens"] == 123


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


async def test_extra_body_replaces_a_field_with_no_duplicate_key() -> None:
    request = Request(messages=[UserMessage("hi")], extra_body={"max_tokens": 7, "system": None})
    sent = await request_sent(provider_for, HELLO, request)
    pairs = json.loads(sent.content, object_pairs_hook=list)
    keys = [key for key, _ in pairs]
    assert sorted(keys) == sorted(set(keys))  # each key once
    assert dict(pairs)["max_tokens"] == 7
    assert dict(pairs)["system"] is None  # an explicit null is sent as asked


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        ({1: "x"}, "extra_body keys must be strings, got 1"),
        ({"metadata": {"when": object()}}, "extra_body does not encode as JSON"),
    ],
)
def test_extra_body_that_cannot_go_on_the_wire(extra: dict[Any, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        provider_for(None).stream(Request(messages=[UserMessage("hi")], extra_body=extra))


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
    http_request = await sent(
        api_key=API_KEY, headers={"anthropic-beta": "interleaved-thinking-2025-05-14"}
    )
    headers = http_request.headers
    assert headers["x-api-key"] == API_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "text/event-stream"
    assert "authorization" not in headers


async def test_no_api_key_header_without_api_key_and_custom_version() -> None:
    headers = (await sent(anthropic_version="2099-01-01")).headers
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
    assert str((await sent(base_url=base_url)).url) == url


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


async def test_tool_input_sent_whole_in_the_block_start_is_kept() -> None:
    # The API opens a tool_use block with an empty input and streams it in deltas; some
    # compatible servers send the whole input in the start and no delta.
    given = {"city": "Paris", "days": [1, 2]}
    tool = block_start(0, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": given})
    server, _ = streaming(
        events(message_start(5), tool, block_stop(0), message_delta("tool_use"), STOP)
    )
    async with client_for(server) as client:
        chunks = flat(await collect(provider_for(client)))
    (call,) = [chunk for chunk in chunks if isinstance(chunk, ToolCallDelta)]
    assert (call.index, call.id, call.name) == (0, "toolu_1", "f")
    assert json.loads(call.arguments) == given


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


def test_input_and_max_tokens_over_the_context_limit_is_an_overflow() -> None:
    # Anthropic's real 400 when the prompt fits but prompt + max_tokens does not.
    message = (
        "input length and `max_tokens` exceed context limit: 178959 + 64000 > 200000, "
        "decrease input length or `max_tokens` and try again"
    )
    body = anthropic_error("invalid_request_error", message)
    response = httpx.Response(400, content=body, request=httpx.Request("POST", URL))
    error = error_from_response(response, body, provider="anthropic-messages")
    assert type(error) is ContextOverflowError
    assert not error.retryable
    assert str(error) == f"HTTP 400 Bad Request from {URL}: {message}"


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
    shown = repr(call)
    assert API_KEY not in shown
    assert shown == f"HTTPCall(POST {URL}, 1 secrets masked)"


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


# --- errors inside the stream ----------------------------------------------------------


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
