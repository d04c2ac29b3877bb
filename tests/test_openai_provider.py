"""OpenAIChat against an httpx.MockTransport: the request it sends, the errors it raises,
and that it closes what it opens."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
import trio.testing

from trurn._chunks import Chunk, Finish, ReasoningDelta, TextDelta, ToolCallDelta
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
    SystemMessage,
    ThinkingBlock,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
)
from trurn.providers._base import Provider, Request, ToolSpec
from trurn.providers._http import excerpt, parse_retry_after
from trurn.providers._openai import OpenAIChat
from trurn.providers._streaming import HTTPCall

if TYPE_CHECKING:
    _static_check: Provider = OpenAIChat("m")  # mypy: OpenAIChat satisfies the protocol

API_KEY = "sk-test-DO-NOT-LEAK-0123456789"
BASE_URL = "https://llm.example.test/v1"
URL = BASE_URL + "/chat/completions"
SSE = {"content-type": "text/event-stream"}
REQUEST = Request(messages=[UserMessage("hi")])
# A consumer that stops between two reads (an exception or a cancellation landing in its own
# code) abandons httpx's nested async generators half-way; Trio reports each one as a
# ResourceWarning when it is collected (httpx issue #3686). The response itself is closed,
# which is what these tests check.
ABANDONED_HTTPX_GENERATORS = pytest.mark.filterwarnings(
    "ignore:Async generator 'httpx.:ResourceWarning"
)


def sse(*payloads: Any) -> bytes:
    """An event stream of ``data:`` events (dicts are JSON-encoded)."""
    out = b""
    for payload in payloads:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        out += b"data: " + data.encode() + b"\n\n"
    return out


def delta(index: int = 0, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": fields, "finish_reason": finish}]}


HELLO = sse(delta(role="assistant", content="Hel"), delta(content="lo"), delta(finish="stop"))


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


async def consume(
    provider: OpenAIChat, received: list[list[Chunk]], request: Request = REQUEST
) -> None:
    """Stream ``request``, appending each batch to ``received`` as it arrives."""
    async with provider.stream(request) as stream:
        async for batch in stream:
            received.append(list(batch))


async def collect(provider: OpenAIChat, request: Request = REQUEST) -> list[list[Chunk]]:
    batches: list[list[Chunk]] = []
    await consume(provider, batches, request)
    return batches


def flat(batches: list[list[Chunk]]) -> list[Chunk]:
    return [chunk for batch in batches for chunk in batch]


# --- the request -----------------------------------------------------------------------


async def test_request_body_messages_tools_and_options() -> None:
    server, _ = streaming(HELLO)
    weather = ToolSpec(
        "get_weather",
        "Current weather.",
        {"type": "object", "properties": {"city": {"type": "string"}}},
    )
    request = Request(
        messages=[
            SystemMessage("Be brief."),
            UserMessage("Weather in Tokyo and Paris?"),
            AssistantMessage(
                content="Checking.",
                reasoning="secret chain of thought",
                thinking=[ThinkingBlock(text="more thoughts", signature="sig")],
                tool_calls=[
                    ToolCall(
                        id="call_1",
                        name="get_weather",
                        arguments={"city": "Tokyo"},
                        arguments_raw='{"city": "Tokyo"}',
                    ),
                    ToolCall(id="call_2", name="get_weather", arguments={"city": "Paris"}),
                ],
            ),
            ToolMessage(tool_call_id="call_1", name="get_weather", content="sunny"),
            ToolMessage(tool_call_id="call_2", name="get_weather", content="boom", status="error"),
            AssistantMessage(tool_calls=[ToolCall(id="call_3", name="get_weather")]),
            ToolMessage(tool_call_id="call_3", name="get_weather", content="rain"),
            AssistantMessage(content="Sunny in Tokyo."),
            AssistantMessage(aborted=True),
        ],
        tools=[weather],
        model="gpt-override",
        temperature=0.2,
        max_tokens=100,
        reasoning_effort="low",
        tool_choice="auto",
    )
    async with client_for(server) as client:
        await collect(OpenAIChat("gpt-default", base_url=BASE_URL, client=client), request)

    sent = server.requests[0]
    assert sent.method == "POST"
    assert str(sent.url) == URL
    assert server.body == {
        "model": "gpt-override",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Tokyo and Paris?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "boom"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_3",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_3", "content": "rain"},
            {"role": "assistant", "content": "Sunny in Tokyo."},
            {"role": "assistant", "content": ""},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather.",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                    },
                },
            }
        ],
        "tool_choice": "auto",
        "temperature": 0.2,
        "max_tokens": 100,
        "reasoning_effort": "low",
    }
    assert "secret chain of thought" not in sent.content.decode()
    assert "more thoughts" not in sent.content.decode()


async def test_none_options_and_empty_tools_are_left_out() -> None:
    server, _ = streaming(HELLO)
    request = Request(messages=[UserMessage("hi")], tool_choice="required")
    async with client_for(server) as client:
        await collect(OpenAIChat("gpt-x", base_url=BASE_URL, client=client), request)
    assert server.body == {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_max_completion_tokens_field() -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        provider = OpenAIChat(
            "o4-mini", base_url=BASE_URL, client=client, max_tokens_field="max_completion_tokens"
        )
        await collect(provider, Request(messages=[UserMessage("hi")], max_tokens=5))
    assert server.body["max_completion_tokens"] == 5
    assert "max_tokens" not in server.body


async def test_headers_with_api_key_and_extra_headers() -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        provider = OpenAIChat(
            "m",
            base_url=BASE_URL,
            api_key=API_KEY,
            client=client,
            headers={"X-Title": "trurn tests", "HTTP-Referer": "https://example.test"},
        )
        await collect(provider)
    headers = server.requests[0].headers
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert headers["x-title"] == "trurn tests"
    assert headers["http-referer"] == "https://example.test"
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "text/event-stream"


async def test_no_authorization_header_without_api_key() -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        await collect(OpenAIChat("m", base_url=BASE_URL, client=client))
    assert "authorization" not in server.requests[0].headers


async def test_extra_headers_override_defaults() -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        provider = OpenAIChat(
            "m", base_url=BASE_URL, api_key=API_KEY, client=client, headers={"authorization": "X"}
        )
        await collect(provider)
    assert server.requests[0].headers.get_list("authorization") == ["X"]


async def test_base_url_query_string_is_kept() -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        provider = OpenAIChat(
            "m",
            base_url="https://az.example.test/openai/deployments/d/?api-version=1",
            client=client,
        )
        await collect(provider)
    assert str(server.requests[0].url) == (
        "https://az.example.test/openai/deployments/d/chat/completions?api-version=1"
    )


WEATHER = ToolSpec("get_weather", "Current weather.", {"type": "object", "properties": {}})
CLOCK = ToolSpec("get_time", "Current time.", {"type": "object", "properties": {}})


def body_of(request: Request, **options: Any) -> dict[str, Any]:
    from trurn.providers._openai import encode_request

    return json.loads(encode_request(request, model="m", **options))  # type: ignore[no-any-return]


def no_duplicate_keys(raw: bytes) -> dict[str, Any]:
    """``raw`` decoded, failing if any object in it names a key twice."""

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        assert len(keys) == len(set(keys)), f"duplicate keys in {keys}"
        return dict(pairs)

    return json.loads(raw, object_pairs_hook=pairs_hook)  # type: ignore[no-any-return]


async def test_stop_seed_parallel_tool_calls_and_reasoning_effort_on_the_wire() -> None:
    server, _ = streaming(HELLO)
    request = Request(
        messages=[UserMessage("hi")],
        tools=[WEATHER],
        stop=("\n\n", "END"),
        seed=42,
        parallel_tool_calls=False,
        reasoning_effort="high",
        temperature=0.0,
        max_tokens=64,
    )
    async with client_for(server) as client:
        await collect(OpenAIChat("m", base_url=BASE_URL, client=client), request)
    body = server.body
    assert body["stop"] == ["\n\n", "END"]
    assert body["seed"] == 42
    assert body["parallel_tool_calls"] is False
    assert body["reasoning_effort"] == "high"
    assert body["temperature"] == 0.0
    assert body["max_tokens"] == 64
    assert "tool_choice" not in body


def test_tool_options_are_left_out_without_tools() -> None:
    request = Request(
        messages=[UserMessage("hi")], tool_choice="get_weather", parallel_tool_calls=True
    )
    body = body_of(request)
    assert "tool_choice" not in body
    assert "parallel_tool_calls" not in body
    assert "tools" not in body


def test_empty_stop_list_is_left_out() -> None:
    assert "stop" not in body_of(Request(messages=[UserMessage("hi")], stop=[]))


@pytest.mark.parametrize("mode", ["auto", "none", "required"])
def test_tool_choice_modes_go_as_they_are(mode: str) -> None:
    request = Request(messages=[UserMessage("hi")], tools=[WEATHER], tool_choice=mode)
    assert body_of(request)["tool_choice"] == mode


def test_tool_choice_naming_a_tool_forces_that_function() -> None:
    request = Request(messages=[UserMessage("hi")], tools=[WEATHER, CLOCK], tool_choice="get_time")
    assert body_of(request)["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_time"},
    }


@pytest.mark.parametrize("choice", ["get_wether", "", "AUTO"])
async def test_tool_choice_naming_an_unknown_tool_is_refused_before_sending(choice: str) -> None:
    server, _ = streaming(HELLO)
    request = Request(messages=[UserMessage("hi")], tools=[WEATHER, CLOCK], tool_choice=choice)
    async with client_for(server) as client:
        provider = OpenAIChat("m", base_url=BASE_URL, client=client)
        with pytest.raises(ValueError, match="tool_choice") as caught:
            await collect(provider, request)
    assert repr(choice) in str(caught.value)
    assert "'get_weather', 'get_time'" in str(caught.value)
    assert server.requests == []


async def test_extra_body_is_merged_last_and_replaces_options() -> None:
    server, _ = streaming(HELLO)
    request = Request(
        messages=[UserMessage("hi")],
        tools=[WEATHER],
        tool_choice="auto",
        temperature=0.2,
        seed=1,
        extra_body={
            "temperature": 0.9,
            "tool_choice": "none",
            "top_p": 0.5,
            "response_format": {"type": "json_object"},
            "provider": {"order": ["groq", "together"], "allow_fallbacks": False},
        },
    )
    async with client_for(server) as client:
        await collect(OpenAIChat("m", base_url=BASE_URL, client=client), request)
    raw = server.requests[0].content
    body = no_duplicate_keys(raw)
    assert body["temperature"] == 0.9
    assert body["tool_choice"] == "none"
    assert body["seed"] == 1
    assert body["top_p"] == 0.5
    assert body["response_format"] == {"type": "json_object"}
    assert body["provider"] == {"order": ["groq", "together"], "allow_fallbacks": False}
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["model"] == "m"
    assert body["stream"] is True
    assert list(body)[-5:] == ["temperature", "tool_choice", "top_p", "response_format", "provider"]


def test_extra_body_can_send_an_explicit_null_and_replace_the_max_tokens_field() -> None:
    request = Request(
        messages=[UserMessage("hi")],
        max_tokens=10,
        extra_body={"max_completion_tokens": 20, "max_tokens": None},
    )
    from trurn.providers._openai import encode_request

    body = no_duplicate_keys(encode_request(request, model="m"))
    assert body["max_tokens"] is None
    assert body["max_completion_tokens"] == 20


def test_empty_or_mapping_extra_body() -> None:
    from types import MappingProxyType

    from trurn.providers._openai import encode_request

    plain = Request(messages=[UserMessage("hi")])
    empty = Request(messages=[UserMessage("hi")], extra_body={})
    proxy = Request(messages=[UserMessage("hi")], extra_body=MappingProxyType({"user": "u1"}))
    assert encode_request(empty, model="m") == encode_request(plain, model="m")
    assert body_of(proxy)["user"] == "u1"


@pytest.mark.parametrize("key", ["model", "messages", "stream", "stream_options"])
async def test_extra_body_may_not_replace_the_call_itself(key: str) -> None:
    server, _ = streaming(HELLO)
    request = Request(messages=[UserMessage("hi")], extra_body={"top_p": 1, key: "x"})
    async with client_for(server) as client:
        provider = OpenAIChat("m", base_url=BASE_URL, client=client)
        with pytest.raises(ValueError, match=f"extra_body may not set '{key}'"):
            await collect(provider, request)
    assert server.requests == []


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        ({1: "x"}, "extra_body keys must be strings, got 1"),
        ({"when": object()}, "extra_body does not encode as JSON"),
    ],
)
def test_extra_body_that_cannot_go_on_the_wire(extra: dict[Any, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        body_of(Request(messages=[UserMessage("hi")], extra_body=extra))


async def test_query_parameters_are_added_to_the_url() -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        provider = OpenAIChat(
            "m",
            base_url="https://az.example.test/openai/deployments/d?keep=1&api-version=old",
            client=client,
            query={"api-version": "2024-10-21", "extra": "a b"},
        )
        await collect(provider)
    url = server.requests[0].url
    assert url.path == "/openai/deployments/d/chat/completions"
    assert list(url.params.multi_items()) == [
        ("keep", "1"),
        ("api-version", "2024-10-21"),
        ("extra", "a b"),
    ]


async def test_query_secrets_stay_out_of_errors() -> None:
    payload = openai_error("bad signature QUERY-SECRET-1 for deployment")
    server, _ = streaming(payload, status=403, headers={"content-type": "application/json"})
    async with client_for(server) as client:
        provider = OpenAIChat(
            "m",
            base_url=BASE_URL,
            client=client,
            query={"api-version": "2024-10-21", "sig": "QUERY-SECRET-1"},
        )
        with pytest.raises(PermissionDeniedError) as caught:
            await collect(provider)
    assert "bad signature" in str(caught.value)
    assert "QUERY-SECRET-1" not in str(caught.value)
    assert "2024-10-21" not in str(caught.value)  # URLs in errors show no query at all


@pytest.mark.parametrize("base_url", ["", "not a url", "ftp://example.test/v1", "/v1"])
def test_bad_base_url_is_refused(base_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        OpenAIChat("m", base_url=base_url)


def test_empty_model_is_refused() -> None:
    with pytest.raises(ValueError, match="model"):
        OpenAIChat("")


def test_model_property_repr_and_protocol() -> None:
    provider = OpenAIChat("gpt-4o-mini", api_key=API_KEY)
    assert provider.model == "gpt-4o-mini"
    assert isinstance(provider, Provider)
    assert API_KEY not in repr(provider)
    assert "gpt-4o-mini" in repr(provider)


# --- chunks ----------------------------------------------------------------------------


async def test_one_batch_per_network_read_and_chunk_mapping() -> None:
    pieces = [
        sse(delta(role="assistant", content="", refusal=None)),  # nothing to report
        sse(delta(reasoning_content="think")),
        sse(
            delta(
                content="Hi",
                tool_calls=[
                    {
                        "index": 0,
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": ""},
                    }
                ],
            )
        ),
        sse(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}]))[:20],
        sse(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}]))[20:],
        b": keep-alive\n\n",
        sse(delta(finish="tool_calls"), delta(finish="tool_calls")),
        sse(
            {
                "choices": [],
                "usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": 5,
                    "total_tokens": 15,
                    "prompt_tokens_details": {"cached_tokens": 4},
                    "completion_tokens_details": {"reasoning_tokens": 2},
                },
            },
            "[DONE]",
        ),
    ]
    server, body = streaming(pieces)
    async with client_for(server) as client:
        batches = await collect(OpenAIChat("m", base_url=BASE_URL, client=client))
    assert batches == [
        [ReasoningDelta("think")],
        [TextDelta("Hi"), ToolCallDelta(index=0, id="c1", name="f", arguments="")],
        [ToolCallDelta(index=0, arguments='{"a":')],
        [Finish("tool_calls")],  # repeated finish reported once
        [
            Usage(
                input_tokens=10,
                output_tokens=5,
                total_tokens=15,
                reasoning_tokens=2,
                cached_input_tokens=4,
            )
        ],
    ]
    assert body.closed
    assert body.sent == len(pieces)  # the body was drained after [DONE]


async def test_refusal_reasoning_field_and_other_choices() -> None:
    server, _ = streaming(
        sse(
            delta(reasoning="r1", reasoning_content=None),
            delta(reasoning="dup", reasoning_content="r2"),  # both: sent once
            delta(index=1, content="other choice"),
            delta(refusal="I can't."),
            delta(finish="stop"),
            "[DONE]",
        )
    )
    async with client_for(server) as client:
        chunks = flat(await collect(OpenAIChat("m", base_url=BASE_URL, client=client)))
    assert chunks == [
        ReasoningDelta("r1"),
        ReasoningDelta("r2"),
        TextDelta("I can't."),
        Finish("stop"),
    ]


async def test_unknown_fields_and_event_types_are_ignored() -> None:
    stream = (
        b'data: {"id":"x","object":"chat.completion.chunk","x_groq":{"id":"q"},'
        b'"choices":[{"index":0,"delta":{"content":"ok","channel":"final"},'
        b'"logprobs":{"content":[]},"finish_reason":null}],"obfuscation":"abc"}\n\n'
        b"event: ping\ndata: {}\n\n" + sse(delta(finish="stop"))
    )
    server, _ = streaming(stream)
    async with client_for(server) as client:
        chunks = flat(await collect(OpenAIChat("m", base_url=BASE_URL, client=client)))
    assert chunks == [TextDelta("ok"), Finish("stop")]


async def test_usage_without_total_and_deepseek_cache_field() -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "prompt_cache_hit_tokens": 5}
    server, _ = streaming(sse(delta(finish="stop"), {"choices": [], "usage": usage}, "[DONE]"))
    async with client_for(server) as client:
        chunks = flat(await collect(OpenAIChat("m", base_url=BASE_URL, client=client)))
    assert chunks[-1] == Usage(
        input_tokens=7, output_tokens=3, total_tokens=10, cached_input_tokens=5
    )


async def test_finish_without_done_is_accepted() -> None:
    server, body = streaming(sse(delta(content="x"), delta(finish="stop")))
    async with client_for(server) as client:
        chunks = flat(await collect(OpenAIChat("m", base_url=BASE_URL, client=client)))
    assert chunks == [TextDelta("x"), Finish("stop")]
    assert body.closed


async def test_done_without_finish_is_accepted() -> None:
    server, _ = streaming(sse(delta(content="x"), "[DONE]"))
    async with client_for(server) as client:
        chunks = flat(await collect(OpenAIChat("m", base_url=BASE_URL, client=client)))
    assert chunks == [TextDelta("x")]


# --- HTTP errors -----------------------------------------------------------------------


def openai_error(
    message: str, code: str | None = None, kind: str = "invalid_request_error"
) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    ).encode()


STATUS_CASES = [
    pytest.param(
        401,
        openai_error(f"Incorrect API key provided: {API_KEY}.", "invalid_api_key"),
        AuthenticationError,
        "Incorrect API key provided",
        id="401",
    ),
    pytest.param(
        403,
        openai_error("You are not allowed to sample from this model", kind="permission_error"),
        PermissionDeniedError,
        "not allowed to sample",
        id="403",
    ),
    pytest.param(
        404,
        openai_error("The model `gpt-9` does not exist", "model_not_found"),
        NotFoundError,
        "does not exist",
        id="404",
    ),
    pytest.param(
        400,
        openai_error("Invalid value for 'temperature'"),
        BadRequestError,
        "Invalid value for 'temperature'",
        id="400",
    ),
    pytest.param(
        400,
        openai_error(
            "This model's maximum context length is 128000 tokens. However, your messages "
            "resulted in 130000 tokens.",
            "context_length_exceeded",
        ),
        ContextOverflowError,
        "maximum context length is 128000",
        id="400-context-code",
    ),
    pytest.param(
        400,
        b'{"type":"error","error":{"type":"invalid_request_error",'
        b'"message":"prompt is too long: 210000 tokens > 200000 maximum"}}',
        ContextOverflowError,
        "prompt is too long",
        id="400-context-message",
    ),
    pytest.param(
        422,
        b'{"detail":"Unprocessable: messages[0].role"}',
        BadRequestError,
        "messages[0].role",
        id="422-detail",
    ),
    pytest.param(
        429,
        openai_error("Rate limit reached for gpt-4o", "rate_limit_exceeded", "requests"),
        RateLimitError,
        "Rate limit reached",
        id="429",
    ),
    pytest.param(
        500,
        openai_error("The server had an error", kind="server_error"),
        ServerError,
        "The server had an error",
        id="500",
    ),
    pytest.param(
        503,
        b"<html><head><title>503 Service Unavailable</title></head><body>...</body></html>",
        ServerError,
        "503 Service Unavailable",
        id="503-html",
    ),
    pytest.param(
        529,
        b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
        OverloadedError,
        "Overloaded",
        id="529",
    ),
    pytest.param(
        404, b'{"error":"model \'llama9\' not found"}', NotFoundError, "llama9", id="ollama"
    ),
    pytest.param(502, b"", ServerError, "empty body", id="502-empty"),
]


@pytest.mark.parametrize(("status", "payload", "cls", "words"), STATUS_CASES)
async def test_error_status_maps_to_typed_exception(
    status: int, payload: bytes, cls: type[ProviderError], words: str
) -> None:
    server, body = streaming(payload, status=status, headers={"content-type": "application/json"})
    async with client_for(server) as client:
        provider = OpenAIChat("m", base_url=BASE_URL, api_key=API_KEY, client=client)
        with pytest.raises(ProviderError) as caught:
            async with provider.stream(REQUEST):
                raise AssertionError("the context must not be entered")
    error = caught.value
    assert type(error) is cls
    assert error.status_code == status
    assert error.provider == "openai-chat"
    assert words in str(error)
    assert str(status) in str(error)
    assert URL in str(error)
    assert API_KEY not in str(error)
    assert API_KEY not in repr(error.args)
    assert body.closed


async def test_insufficient_quota_is_a_rate_limit_that_is_not_retryable() -> None:
    payload = openai_error(
        "You exceeded your current quota", "insufficient_quota", "insufficient_quota"
    )
    server, _ = streaming(payload, status=429, headers={"content-type": "application/json"})
    async with client_for(server) as client:
        with pytest.raises(RateLimitError) as caught:
            async with OpenAIChat("m", base_url=BASE_URL, client=client).stream(REQUEST):
                pass
    assert not caught.value.retryable
    assert RateLimitError.retryable


def _http_date(seconds_from_now: float) -> str:
    when = datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now)
    return email.utils.format_datetime(when, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        ({"retry-after": "7"}, 7.0, 7.0),
        ({"retry-after": "1.5"}, 1.5, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25, 0.25),
        # Built when the module is collected, so the bounds leave room for a slow run.
        ({"retry-after": _http_date(3600)}, 3000.0, 3601.0),
        ({"retry-after": _http_date(-60)}, 0.0, 0.0),
        ({}, None, None),
        ({"retry-after": "soon"}, None, None),
        ({"retry-after": "-3"}, None, None),
    ],
    ids=[
        "seconds",
        "fraction",
        "ms-first",
        "http-date",
        "date-past",
        "none",
        "garbage",
        "negative",
    ],
)
async def test_429_retry_after(
    headers: dict[str, str], low: float | None, high: float | None
) -> None:
    server, _ = streaming(
        openai_error("slow down", "rate_limit_exceeded"),
        status=429,
        headers={"content-type": "application/json", **headers},
    )
    async with client_for(server) as client:
        with pytest.raises(RateLimitError) as caught:
            async with OpenAIChat("m", base_url=BASE_URL, client=client).stream(REQUEST):
                pass
    retry_after = caught.value.retry_after
    if low is None:
        assert retry_after is None
    else:
        assert retry_after is not None
        assert low <= retry_after <= (high or low)
    assert caught.value.retryable


def test_parse_retry_after_http_date_is_exact_relative_to_now() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"retry-after": date}), now=now) == 30.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "nan"})) is None


def test_excerpt_is_short_and_single_line() -> None:
    text = excerpt(b"line one\n\n   line two " + b"x" * 1000)
    assert text.startswith("line one line two xx")
    assert len(text) <= 200
    assert "\n" not in text


async def test_200_with_html_body_is_malformed() -> None:
    page = b"<!doctype html><html><head><title>Captive portal login</title></head></html>"
    server, body = streaming(page, headers={"content-type": "text/html; charset=utf-8"})
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError) as caught:
            async with OpenAIChat("m", base_url=BASE_URL, client=client).stream(REQUEST):
                raise AssertionError("the context must not be entered")
    assert "text/html" in str(caught.value)
    assert "Captive portal login" in str(caught.value)
    assert body.closed


# A proxy or gateway page that echoes the request it refused, key and all. The key sits
# where an excerpt of 200 characters would cut it in two, so masking after the cut would
# leave half of it.
ECHO_PAGE = b"<html><body>" + b"x" * 150 + b" Authorization: Bearer " + API_KEY.encode()
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
            b"event: response." + API_KEY.encode() + b"\ndata: {}\n\n",
            MalformedStreamError,
        ),
    ],
    ids=[
        "403-page",
        "502-title",
        "200-html-title",
        "200-html-page",
        "error-event",
        "payload",
        "responses-event-name",
    ],
)
async def test_a_key_echoed_by_the_server_is_masked(
    status: int, content_type: str, body: bytes, cls: type[ProviderError]
) -> None:
    server, _ = streaming(body, status=status, headers={"content-type": content_type})
    async with client_for(server) as client:
        with pytest.raises(ProviderError) as caught:
            await collect(OpenAIChat("m", base_url=BASE_URL, api_key=API_KEY, client=client))
    error = caught.value
    assert type(error) is cls
    # The body is shown, with the key masked (the mask itself may be cut short).
    assert any(shown in str(error) for shown in ("for [redacted]", "Bearer [re", "response.[re"))
    for piece in (API_KEY, API_KEY[:12], API_KEY[-12:]):
        assert piece not in str(error)
        assert piece not in repr(error.args)


def test_excerpt_masks_secrets_before_cutting() -> None:
    body = b"a" * 180 + API_KEY.encode()
    assert API_KEY[:17] in excerpt(body)  # what a cut alone leaves
    masked = excerpt(body, secrets=[API_KEY, ""])
    assert masked == "a" * 180 + "[redacted]"
    assert excerpt(b"<title>key " + API_KEY.encode() + b"</title>", secrets=[API_KEY]) == (
        "key [redacted]"
    )


def test_http_call_repr_shows_no_secret() -> None:
    provider = OpenAIChat("m", base_url=BASE_URL, api_key=API_KEY, headers={"api-key": "H-SEC"})
    stream = provider.stream(REQUEST)
    call = HTTPCall(stream._client, stream._request, stream._url, stream._secrets)
    assert call.request.headers["authorization"] == f"Bearer {API_KEY}"  # there to be hidden
    assert API_KEY in repr(tuple(call))  # what the NamedTuple's own repr would show
    text = repr(call)
    assert API_KEY not in text
    assert "H-SEC" not in text
    assert text == f"HTTPCall(POST {URL}, 2 secrets masked)"


async def test_200_without_content_type_is_read_as_a_stream() -> None:
    # Some small compatible servers leave the header out; the bytes then decide.
    server, _ = streaming(HELLO, headers={"x-nothing": "here"})
    async with client_for(server) as client:
        chunks = flat(await collect(OpenAIChat("m", base_url=BASE_URL, client=client)))
    assert chunks == [TextDelta("Hel"), TextDelta("lo"), Finish("stop")]


async def test_secrets_in_headers_and_query_string_stay_out_of_errors() -> None:
    payload = openai_error("Access denied for key AZ-SECRET-KEY")
    server, _ = streaming(payload, status=401, headers={"content-type": "application/json"})
    async with client_for(server) as client:
        provider = OpenAIChat(
            "m",
            base_url="https://az.example.test/openai?sig=QUERY-SECRET",
            client=client,
            headers={"api-key": "AZ-SECRET-KEY"},
        )
        with pytest.raises(AuthenticationError) as caught:
            await collect(provider)
    assert "Access denied for key" in str(caught.value)
    assert "https://az.example.test/openai/chat/completions:" in str(caught.value)
    assert "AZ-SECRET-KEY" not in str(caught.value)
    assert "QUERY-SECRET" not in str(caught.value)


async def test_200_with_json_body_is_malformed() -> None:
    server, _ = streaming(b'{"choices": []}', headers={"content-type": "application/json"})
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError, match="application/json"):
            async with OpenAIChat("m", base_url=BASE_URL, client=client).stream(REQUEST):
                pass


# --- transport errors ------------------------------------------------------------------


async def test_unreachable_server() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        provider = OpenAIChat("m", base_url=BASE_URL, api_key=API_KEY, client=client)
        with pytest.raises(ProviderConnectionError) as caught:
            async with provider.stream(REQUEST):
                pass
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert URL in str(caught.value)
    assert "Connection refused" in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert caught.value.retryable


async def test_connect_timeout() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(slow)) as client:
        with pytest.raises(ProviderTimeout) as caught:
            async with OpenAIChat("m", base_url=BASE_URL, client=client).stream(REQUEST):
                pass
    assert isinstance(caught.value.__cause__, httpx.ConnectTimeout)
    assert URL in str(caught.value)


@pytest.mark.parametrize(
    ("failure", "cls"),
    [
        (
            httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            ),
            ProviderConnectionError,
        ),
        (httpx.ReadError("connection reset by peer"), ProviderConnectionError),
        (httpx.ReadTimeout("read timed out"), ProviderTimeout),
    ],
    ids=["remote-protocol", "read-error", "read-timeout"],
)
async def test_transport_error_mid_stream(failure: Exception, cls: type[ProviderError]) -> None:
    server, body = streaming([sse(delta(content="partial"))], then=failure)
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(cls) as caught:
            await consume(OpenAIChat("m", base_url=BASE_URL, client=client), received)
    assert received == [[TextDelta("partial")]]
    assert caught.value.__cause__ is failure
    assert "mid-reply" in str(caught.value)
    assert body.closed


# --- malformed streams -----------------------------------------------------------------


async def test_stream_ending_without_done_or_finish_is_malformed() -> None:
    server, body = streaming([sse(delta(content="half an ans"))])
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError, match="ended before the reply finished"):
            await consume(OpenAIChat("m", base_url=BASE_URL, client=client), received)
    assert received == [[TextDelta("half an ans")]]
    assert body.closed


async def test_stream_cut_inside_an_event_is_malformed() -> None:
    server, _ = streaming([sse(delta(content="a")), b'data: {"choices": [{"ind'])
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError, match="ended before the reply finished"):
            await collect(OpenAIChat("m", base_url=BASE_URL, client=client))


@pytest.mark.parametrize(
    "payload",
    [b"data: {not json}\n\n", b'data: {"choices": 5}\n\n', b"data: [1, 2]\n\n", b"data: \xff\n\n"],
    ids=["not-json", "wrong-type", "array", "bad-utf8"],
)
async def test_malformed_payload_after_good_chunks(payload: bytes) -> None:
    server, body = streaming(sse(delta(content="good")) + payload + sse(delta(content="never")))
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError) as caught:
            await consume(OpenAIChat("m", base_url=BASE_URL, client=client), received)
    # The good chunk of the same read is delivered first; nothing after the bad payload is.
    assert received == [[TextDelta("good")]]
    assert "not a chat completion chunk" in str(caught.value)
    assert isinstance(caught.value.__cause__, Exception)
    assert body.closed


# --- errors inside the stream ----------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        ({"message": "Provider returned error", "code": 400}, BadRequestError),
        (
            {"message": "context_length_exceeded", "code": "context_length_exceeded"},
            ContextOverflowError,
        ),
        ({"message": "Rate limit", "code": 429}, RateLimitError),
        ({"message": "Upstream failed", "code": 502}, ServerError),
        ({"message": "Overloaded", "type": "overloaded_error"}, OverloadedError),
        ({"message": "odd", "code": "weird"}, ProviderError),
        ("a plain string error", ProviderError),
    ],
    ids=["400", "overflow", "429", "502", "overloaded", "unknown", "string"],
)
async def test_error_chunk_in_stream(error: Any, cls: type[ProviderError]) -> None:
    server, _ = streaming([sse(delta(content="so far")), sse({"error": error}, "[DONE]")])
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(ProviderError) as caught:
            await consume(OpenAIChat("m", base_url=BASE_URL, client=client), received)
    assert type(caught.value) is cls
    assert received == [[TextDelta("so far")]]
    message = error if isinstance(error, str) else error["message"]
    assert message in str(caught.value)
    assert caught.value.status_code is None


async def test_error_event_is_raised_after_the_batch_that_precedes_it() -> None:
    stream = sse(delta(content="partial")) + (
        b'event: error\ndata: {"error":{"message":"Tool call validation failed",'
        b'"type":"invalid_request_error","code":"tool_use_failed","status_code":400}}\n\n'
    )
    server, body = streaming(stream)  # one read holds both
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(BadRequestError, match="Tool call validation failed") as caught:
            await consume(OpenAIChat("m", base_url=BASE_URL, client=client), received)
    assert received == [[TextDelta("partial")]]
    assert "tool_use_failed" in str(caught.value)
    assert body.closed


async def test_error_event_with_unparsable_data() -> None:
    server, _ = streaming(b"event: error\ndata: upstream exploded\n\n")
    async with client_for(server) as client:
        with pytest.raises(ProviderError, match="upstream exploded"):
            await collect(OpenAIChat("m", base_url=BASE_URL, client=client))


# --- closing ---------------------------------------------------------------------------


async def test_response_closed_when_cancelled_while_waiting_for_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, body = streaming([sse(delta(content="first"))], hang=True)
    received: list[Chunk] = []
    async with client_for(server) as client:
        provider = OpenAIChat("m", base_url=BASE_URL, client=client)
        with trio.move_on_after(5) as scope:
            async with provider.stream(REQUEST) as stream:
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
    server, body = streaming([sse(delta(content="first")), sse(delta(content="second"))])
    received: list[Chunk] = []
    async with client_for(server) as client:
        provider = OpenAIChat("m", base_url=BASE_URL, client=client)
        with trio.move_on_after(5) as scope:
            async with provider.stream(REQUEST) as stream:
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
            async with OpenAIChat("m", base_url=BASE_URL, client=client).stream(REQUEST):
                raise AssertionError("the context must not be entered")
    assert scope.cancelled_caught


@ABANDONED_HTTPX_GENERATORS
async def test_response_closed_when_consumer_raises() -> None:
    server, body = streaming([sse(delta(content="first")), sse(delta(content="second"))])

    async def buggy_consumer(provider: OpenAIChat) -> None:
        async with provider.stream(REQUEST) as stream:
            async for _ in stream:
                raise KeyError("consumer bug")

    async with client_for(server) as client:
        with pytest.raises(KeyError):
            await buggy_consumer(OpenAIChat("m", base_url=BASE_URL, client=client))
    assert body.closed
    assert body.sent == 1


async def test_body_is_drained_after_done_so_nothing_is_abandoned() -> None:
    # Bytes after [DONE] are read (and ignored) before the stream reports its end.
    server, body = streaming([sse(delta(content="a"), "[DONE]"), b"data: trailing\n\n", b""])
    async with client_for(server) as client:
        batches = await collect(OpenAIChat("m", base_url=BASE_URL, client=client))
    assert batches == [[TextDelta("a")]]
    assert body.sent == 3
    assert body.closed


async def test_drain_after_done_gives_up_on_a_server_that_never_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, body = streaming([sse(delta(content="a"), delta(finish="stop"), "[DONE]")], hang=True)
    async with client_for(server) as client:
        start = trio.current_time()
        batches = await collect(OpenAIChat("m", base_url=BASE_URL, client=client))
        waited = trio.current_time() - start
    assert batches == [[TextDelta("a"), Finish("stop")]]
    assert 0 < waited <= 2.0
    assert body.closed


async def test_stream_can_be_entered_only_once() -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        stream = OpenAIChat("m", base_url=BASE_URL, client=client).stream(REQUEST)
        async with stream as batches:
            async for _ in batches:
                pass
        with pytest.raises(RuntimeError, match="once"):
            async with stream:
                pass


async def test_owned_client_is_closed_by_aclose() -> None:
    provider = OpenAIChat("m", base_url=BASE_URL)
    provider.stream(REQUEST)  # makes the client lazily; nothing is sent until entered
    client = provider._client  # the owned client is private; peeking is the only way
    assert client is not None
    assert not client.is_closed
    await provider.aclose()
    assert client.is_closed
    with pytest.raises(trio.ClosedResourceError):
        provider.stream(REQUEST)
    await provider.aclose()  # idempotent


async def test_owned_client_closed_on_leaving_async_with() -> None:
    async with OpenAIChat("m", base_url=BASE_URL) as provider:
        provider.stream(REQUEST)
        client = provider._client
    assert client is not None
    assert client.is_closed


async def test_owned_client_has_long_read_timeout() -> None:
    async with OpenAIChat("m", base_url=BASE_URL) as provider:
        provider.stream(REQUEST)
        assert provider._client is not None
        assert provider._client.timeout == httpx.Timeout(600.0, connect=10.0)


async def test_injected_client_is_not_closed() -> None:
    server, _ = streaming(HELLO)
    async with client_for(server) as client:
        async with OpenAIChat("m", base_url=BASE_URL, client=client) as provider:
            await collect(provider)
        await provider.aclose()
        assert not client.is_closed
    assert client.is_closed  # closed by its owner, the test


async def test_aclose_without_client_is_a_checkpoint() -> None:
    provider = OpenAIChat("m")
    with trio.testing.assert_checkpoints():
        await provider.aclose()


def test_tool_call_arguments_that_were_not_json_go_back_as_an_empty_object() -> None:
    from trurn._messages import AssistantMessage, ToolCall, ToolMessage, UserMessage
    from trurn.providers._openai import encode_request

    broken = ToolCall(id="c1", name="f", arguments_raw='{"city": ', arguments_error="bad JSON")
    exact = ToolCall(id="c2", name="f", arguments={"a": 1}, arguments_raw='{"a":  1}')
    request = Request(
        messages=[
            UserMessage("hi"),
            AssistantMessage(tool_calls=[broken, exact]),
            ToolMessage(tool_call_id="c1", name="f", content="invalid", status="error"),
            ToolMessage(tool_call_id="c2", name="f", content="ok"),
        ]
    )
    body = json.loads(encode_request(request, model="m"))
    calls = body["messages"][1]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == ["{}", '{"a":  1}']
