"""The scripted server's Anthropic Messages endpoint: over real loopback sockets with
plain httpx, and end to end with AnthropicMessages and a whole trurn.Agent turn."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import trurn
from trurn import Usage
from trurn._chunks import Chunk, Finish, TextDelta
from trurn._errors import (
    AuthenticationError,
    ContextOverflowError,
    MalformedStreamError,
    OverloadedError,
    ProviderConnectionError,
    ProviderError,
    RateLimitError,
)
from trurn._messages import UserMessage
from trurn.providers._anthropic import AnthropicMessages
from trurn.providers._base import Request
from trurn.testing import (
    ChatRequest,
    DropConnection,
    EndWithoutDone,
    ErrorChunk,
    MalformedChunk,
    MessagesRequest,
    Reply,
    ScriptedServer,
    ScriptedToolCall,
    StatusError,
    demo_model,
    open_scripted_server,
)

API_KEY = "sk-ant-scripted-SECRET-42"
VERSION = {"anthropic-version": "2023-06-01"}

# --- helpers ------------------------------------------------------------------------------


def messages_body(content: str = "hi", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": content}],
        "stream": True,
    }
    body.update(fields)
    return body


def parse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, payload) of each event of an SSE body, checking they agree."""
    out = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        name = lines[0].removeprefix("event: ") if lines[0].startswith("event: ") else None
        data = "".join(line[6:] for line in lines if line.startswith("data: "))
        payload = json.loads(data)
        if name is not None:
            assert payload["type"] == name
        out.append((payload["type"], payload))
    return out


def whole(response: httpx.Response) -> list[dict[str, Any]]:
    """The payloads of a stream that ended with message_stop (and nothing after it)."""
    parsed = parse_events(response)
    assert parsed[-1][0] == "message_stop"
    assert [name for name, _ in parsed].count("message_stop") == 1
    return [payload for _, payload in parsed]


def of_type(payloads: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [p for p in payloads if p["type"] == kind]


def block_deltas(payloads: list[dict[str, Any]], kind: str) -> list[str]:
    field = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}
    return [
        p["delta"][field[kind]]
        for p in of_type(payloads, "content_block_delta")
        if p["delta"]["type"] == kind
    ]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=None) as client:
        yield client


async def post(
    client: httpx.AsyncClient,
    server: ScriptedServer,
    headers: dict[str, str] | None = None,
    **body: Any,
) -> httpx.Response:
    return await client.post(
        f"{server.base_url}/messages",
        json=messages_body(**body),
        headers=VERSION if headers is None else headers,
    )


# --- the stream -------------------------------------------------------------------------


async def test_text_streams_as_text_deltas_between_start_and_stop(
    client: httpx.AsyncClient,
) -> None:
    async with open_scripted_server([Reply("Hello there, world!", text_chunks=3)]) as server:
        response = await post(client, server)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = whole(response)
    assert [p["type"] for p in payloads] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert payloads[0]["message"]["model"] == "claude-test"
    assert payloads[0]["message"]["id"] == "msg_scripted_1"
    assert payloads[1]["content_block"] == {"type": "text", "text": ""}
    pieces = block_deltas(payloads, "text_delta")
    assert len(pieces) == 3
    assert "".join(pieces) == "Hello there, world!"
    assert payloads[-2]["delta"]["stop_reason"] == "end_turn"


async def test_reasoning_is_a_signed_thinking_block_before_the_text(
    client: httpx.AsyncClient,
) -> None:
    reply = Reply("Answer.", reasoning="Let me think about it.", reasoning_chunks=3)
    async with open_scripted_server([reply]) as server:
        payloads = whole(await post(client, server))
    starts = of_type(payloads, "content_block_start")
    assert [(s["index"], s["content_block"]["type"]) for s in starts] == [
        (0, "thinking"),
        (1, "text"),
    ]
    assert "".join(block_deltas(payloads, "thinking_delta")) == "Let me think about it."
    assert len(block_deltas(payloads, "thinking_delta")) == 3
    signatures = [
        p["delta"]["signature"]
        for p in of_type(payloads, "content_block_delta")
        if p["delta"]["type"] == "signature_delta"
    ]
    assert signatures == ["scripted-signature-msg_scripted_1"]
    assert [p["index"] for p in of_type(payloads, "content_block_stop")] == [0, 1]


async def test_tool_calls_are_tool_use_blocks_with_split_input(client: httpx.AsyncClient) -> None:
    calls = [
        ScriptedToolCall("get_weather", {"city": "Tokyo"}, chunks=4),
        ScriptedToolCall("noop", {}, chunks=2),
    ]
    async with open_scripted_server([Reply("Checking.", tool_calls=calls)]) as server:
        payloads = whole(await post(client, server))
    starts = [s["content_block"] for s in of_type(payloads, "content_block_start")]
    assert starts[1:] == [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
        {"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}},
    ]
    by_index: dict[int, list[str]] = {}
    for p in of_type(payloads, "content_block_delta"):
        if p["delta"]["type"] == "input_json_delta":
            by_index.setdefault(p["index"], []).append(p["delta"]["partial_json"])
    assert len(by_index[1]) == 4
    assert json.loads("".join(by_index[1])) == {"city": "Tokyo"}
    assert "".join(by_index[2]) == "{}"
    assert payloads[-2]["delta"]["stop_reason"] == "tool_use"


async def test_tool_use_ids_count_the_conversations_tool_calls(
    client: httpx.AsyncClient,
) -> None:
    history = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
    ]
    async with open_scripted_server([Reply(tool_calls=[ScriptedToolCall("f")])]) as server:
        response = await client.post(
            f"{server.base_url}/messages",
            json=messages_body(messages=history),
            headers=VERSION,
        )
    starts = of_type(whole(response), "content_block_start")
    assert starts[0]["content_block"]["id"] == "toolu_2"


async def test_usage_in_message_start_and_message_delta(client: httpx.AsyncClient) -> None:
    usage = Usage(input_tokens=100, output_tokens=20, cached_input_tokens=30, reasoning_tokens=5)
    async with open_scripted_server([Reply("x", usage=usage), Reply("hello")]) as server:
        scripted = whole(await post(client, server))
        estimated = whole(await post(client, server))
    start = scripted[0]["message"]["usage"]
    assert start["input_tokens"] == 70  # Anthropic counts cache reads apart
    assert start["cache_read_input_tokens"] == 30
    assert scripted[-2]["usage"] == {
        "output_tokens": 20,
        "output_tokens_details": {"thinking_tokens": 5},
    }
    assert estimated[0]["message"]["usage"]["input_tokens"] > 0
    assert estimated[-2]["usage"]["output_tokens"] > 0


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("tool_calls", "tool_use"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
        ("pause_turn", "pause_turn"),
    ],
)
async def test_finish_reason_in_anthropic_words(
    client: httpx.AsyncClient, finish: str, stop: str
) -> None:
    async with open_scripted_server([Reply("x", finish_reason=finish, model="m2")]) as server:
        payloads = whole(await post(client, server))
    assert payloads[-2]["delta"]["stop_reason"] == stop
    assert payloads[0]["message"]["model"] == "m2"


# --- faults -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
        (529, "overloaded_error"),
    ],
)
async def test_status_errors_have_anthropic_error_bodies(
    client: httpx.AsyncClient, status: int, kind: str
) -> None:
    async with open_scripted_server([Reply(fault=StatusError(status))]) as server:
        response = await post(client, server)
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert body["error"]["message"]


async def test_status_error_message_type_retry_after_and_body(client: httpx.AsyncClient) -> None:
    replies = [
        Reply(fault=StatusError(429, message="slow down", type="custom", retry_after=2.5)),
        Reply(fault=StatusError(200, body="<html>proxy</html>", content_type="text/html")),
    ]
    async with open_scripted_server(replies) as server:
        limited = await post(client, server)
        html = await post(client, server)
    assert limited.json() == {"type": "error", "error": {"type": "custom", "message": "slow down"}}
    assert limited.headers["retry-after"] == "2.5"
    assert html.status_code == 200
    assert html.text == "<html>proxy</html>"


async def test_malformed_chunk_replaces_one_event(client: httpx.AsyncClient) -> None:
    async with open_scripted_server([Reply("ab", fault=MalformedChunk(at=3))]) as server:
        response = await post(client, server)
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    assert blocks[3] == "data: {not json"
    assert blocks[-1].startswith("event: message_stop")
    assert "content_block_delta" not in response.text  # the one text delta was replaced


async def test_error_chunk_is_an_error_event_and_ends_the_stream(
    client: httpx.AsyncClient,
) -> None:
    replies = [
        Reply("abc", text_chunks=3, fault=ErrorChunk(after=4)),
        Reply("abc", fault=ErrorChunk(after=1, type="overloaded_error", message="Overloaded")),
    ]
    async with open_scripted_server(replies) as server:
        first = parse_events(await post(client, server))
        second = parse_events(await post(client, server))
    assert [name for name, _ in first][-1] == "error"
    assert len(first) == 5
    assert first[-1][1]["error"]["type"] == "api_error"
    assert second[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert "message_stop" not in [name for name, _ in first + second]


async def test_drop_connection_and_end_without_message_stop(client: httpx.AsyncClient) -> None:
    replies = [Reply("abc", fault=DropConnection(after=3)), Reply("abc", fault=EndWithoutDone(4))]
    async with open_scripted_server(replies) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await post(client, server)
        ended = await post(client, server)
    names = [name for name, _ in parse_events(ended)]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta"]


async def test_api_key_is_enforced_with_x_api_key(client: httpx.AsyncClient) -> None:
    replies = [Reply("ok")]
    async with open_scripted_server(replies, api_key=API_KEY) as server:
        missing = await post(client, server)
        wrong = await post(client, server, headers={**VERSION, "x-api-key": "nope"})
        bearer = await post(
            client, server, headers={**VERSION, "authorization": f"Bearer {API_KEY}"}
        )
        right = await post(client, server, headers={**VERSION, "x-api-key": API_KEY})
    for refused in (missing, wrong, bearer):
        assert refused.status_code == 401
        assert refused.json()["error"]["type"] == "authentication_error"
        assert API_KEY not in refused.text
    assert "required" in missing.json()["error"]["message"]
    assert wrong.json()["error"]["message"] == "invalid x-api-key"
    assert right.status_code == 200
    assert len(server.requests) == 4  # refused ones are recorded too
    assert server.replies_used == 1


async def test_anthropic_version_is_required(client: httpx.AsyncClient) -> None:
    async with open_scripted_server([Reply("ok")]) as server:
        response = await post(client, server, headers={})
    assert response.status_code == 400
    assert "anthropic-version" in response.json()["error"]["message"]


async def test_bad_requests_get_anthropic_errors(client: httpx.AsyncClient) -> None:
    async with open_scripted_server([Reply("ok")]) as server:
        url = f"{server.base_url}/messages"
        no_max = await client.post(
            url, json={"model": "m", "messages": [], "stream": True}, headers=VERSION
        )
        not_json = await client.post(url, content=b"{nope", headers=VERSION)
        not_streaming = await post(client, server, stream=False)
        get = await client.get(url, headers=VERSION)
    for response, status in ((no_max, 400), (not_json, 400), (not_streaming, 400), (get, 405)):
        assert response.status_code == status
        assert response.json()["type"] == "error"
    assert "max_tokens" in no_max.json()["error"]["message"]
    assert "stream" in not_streaming.json()["error"]["message"]
    assert server.replies_used == 0


async def test_running_out_of_replies_is_a_500(client: httpx.AsyncClient) -> None:
    async with open_scripted_server([]) as server:
        response = await post(client, server)
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "api_error"
    assert "ran out of replies" in response.json()["error"]["message"]


async def test_requests_are_recorded_normalised_and_raw(client: httpx.AsyncClient) -> None:
    seen: list[ChatRequest] = []

    def script(request: ChatRequest) -> Reply:
        seen.append(request)
        return Reply("ok")

    body = messages_body(
        system="Be brief.",
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "use the tool", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"c": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {"type": "text", "text": "So?"},
                ],
            },
        ],
        tools=[{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto"},
        temperature=0.5,
    )
    async with open_scripted_server(script) as server:
        await client.post(
            f"{server.base_url}/messages", json=body, headers={**VERSION, "x-trace": "1"}
        )
    assert seen == server.requests
    chat = server.requests[0]
    assert [(m.role, m.text) for m in chat.messages] == [
        ("system", "Be brief."),
        ("user", "Weather?"),
        ("assistant", "Checking."),
        ("tool", "sunny"),
        ("user", "So?"),
    ]
    assistant = chat.messages[2]
    assert assistant.reasoning_content == "use the tool"
    assert assistant.tool_calls is not None
    assert [
        (c.id, c.function.name, json.loads(c.function.arguments)) for c in assistant.tool_calls
    ] == [("t1", "get_weather", {"c": 1})]
    assert chat.messages[3].tool_call_id == "t1"
    assert chat.tool_names == ["get_weather"]
    assert chat.tool_choice == {"type": "auto"}
    assert chat.max_tokens == 100
    assert chat.temperature == 0.5
    assert json.loads(server.request_bodies[0]) == body
    assert MessagesRequest.__name__ == "MessagesRequest"
    assert server.request_headers[0]["x-trace"] == "1"


# --- with AnthropicMessages ---------------------------------------------------------------


async def collect(provider: AnthropicMessages, received: list[Chunk]) -> None:
    async with provider.stream(Request(messages=[UserMessage("hi")])) as batches:
        async for batch in batches:
            received.extend(batch)


async def test_provider_reads_the_scripted_stream() -> None:
    usage = Usage(input_tokens=50, output_tokens=7, cached_input_tokens=10, reasoning_tokens=2)
    reply = Reply("Hello!", text_chunks=2, reasoning="hm", usage=usage)
    async with (
        open_scripted_server([reply], api_key=API_KEY) as server,
        httpx.AsyncClient() as http,
    ):
        provider = AnthropicMessages(
            "claude-x", base_url=server.base_url, api_key=API_KEY, client=http
        )
        received: list[Chunk] = []
        await collect(provider, received)
    texts = [c.text for c in received if isinstance(c, TextDelta)]
    assert texts == ["Hel", "lo!"]
    assert received[-2:] == [
        Finish("stop"),
        Usage(
            input_tokens=50,
            output_tokens=7,
            total_tokens=57,
            reasoning_tokens=2,
            cached_input_tokens=10,
        ),
    ]
    assert server.request_headers[0]["x-api-key"] == API_KEY


@pytest.mark.parametrize(
    ("reply", "cls", "words"),
    [
        (Reply(fault=StatusError(529)), OverloadedError, "Overloaded"),
        (Reply(fault=StatusError(429, retry_after=3)), RateLimitError, "rate limit"),
        (
            Reply(fault=StatusError(400, message="prompt is too long: 300000 tokens > 200000")),
            ContextOverflowError,
            "prompt is too long",
        ),
        (Reply("abc", fault=ErrorChunk(4, type="overloaded_error")), OverloadedError, "error"),
        (Reply("abc", fault=MalformedChunk(4)), MalformedStreamError, "not a Messages event"),
        (Reply("abc", fault=DropConnection(4)), ProviderConnectionError, "mid-reply"),
        (Reply("abc", fault=EndWithoutDone(5)), MalformedStreamError, "no message_stop"),
    ],
    ids=["529", "429", "overflow", "error-event", "malformed", "drop", "no-stop"],
)
async def test_provider_raises_typed_errors_for_faults(
    reply: Reply, cls: type[ProviderError], words: str
) -> None:
    async with (
        open_scripted_server([reply], api_key=API_KEY) as server,
        httpx.AsyncClient() as http,
    ):
        provider = AnthropicMessages("m", base_url=server.base_url, api_key=API_KEY, client=http)
        received: list[Chunk] = []
        with pytest.raises(ProviderError) as caught:
            await collect(provider, received)
    assert type(caught.value) is cls
    assert words.lower() in str(caught.value).lower()
    assert API_KEY not in str(caught.value)
    if isinstance(caught.value, RateLimitError):
        assert caught.value.retry_after == 3
    if reply.fault is not None and not isinstance(reply.fault, StatusError):
        assert [c for c in received if isinstance(c, TextDelta)]  # partial output first


async def test_provider_with_the_wrong_key_is_an_authentication_error() -> None:
    async with (
        open_scripted_server([Reply("ok")], api_key=API_KEY) as server,
        AnthropicMessages("m", base_url=server.base_url, api_key="wrong-key") as provider,
    ):
        with pytest.raises(AuthenticationError) as caught:
            await collect(provider, [])
    assert "invalid x-api-key" in str(caught.value)
    assert "wrong-key" not in str(caught.value)


@trurn.tool
async def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"sunny in {city}"


async def test_a_whole_agent_turn_with_a_tool_call_over_the_anthropic_endpoint() -> None:
    async with (
        open_scripted_server(demo_model, api_key=API_KEY) as server,
        AnthropicMessages("claude-scripted", base_url=server.base_url, api_key=API_KEY) as provider,
    ):
        agent = trurn.Agent(provider, tools=[get_weather], system="You are terse.")
        context = trurn.Context()
        seen: list[trurn.events.Event] = []
        result = await agent.run_turn(context, "Weather in Paris?", on_event=seen.append)
        follow_up = await agent.run_turn(context, "Thanks!")

    # The turn: text and a tool call, the tool's result, then the final answer.
    assert result.stop_reason == "completed"
    assert [(c.name, c.arguments) for c in result.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert result.tool_calls[0].id == "toolu_1"
    assert result.text == "In Paris it is sunny in Paris."
    deltas = "".join(e.text for e in seen if isinstance(e, trurn.events.AssistantDelta))
    assert deltas == "Let me check the weather.In Paris it is sunny in Paris."
    assert result.usage.total_tokens > 0
    assert follow_up.text is not None

    # What went over the wire, as Anthropic wants it.
    # Four requests: the tool call, the answer, and the follow-up turn's (another call).
    assert len(server.request_bodies) == 4
    first, second, third, _ = (json.loads(body) for body in server.request_bodies)
    assert first["system"] == "You are terse."
    assert first["tools"][0]["name"] == "get_weather"
    assert "city" in first["tools"][0]["input_schema"]["properties"]
    assert second["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Let me check the weather."},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
    }
    assert second["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny in Paris"}],
    }
    # The final answer had reasoning: it goes back as a signed thinking block, first.
    answer = third["messages"][3]
    assert answer["role"] == "assistant"
    assert answer["content"][0] == {
        "type": "thinking",
        "thinking": "The tool answered, so I can reply now.",
        "signature": "scripted-signature-msg_scripted_2",
    }
    assert answer["content"][1] == {"type": "text", "text": "In Paris it is sunny in Paris."}
    assert third["messages"][4] == {
        "role": "user",
        "content": [{"type": "text", "text": "Thanks!"}],
    }
    assert [m["role"] for m in third["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
