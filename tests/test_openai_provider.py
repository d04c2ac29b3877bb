"""OpenAIChat against an httpx.MockTransport: the request it sends, the chunks it yields
and the errors only it raises. What it does just as AnthropicMessages does (status codes,
transport errors, broken streams, closing) is tested for both in test_providers_http.py."""

from __future__ import annotations

import email.utils
import json
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
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
from openai_wire import HELLO, URL, delta, openai_error, provider_for, sse

from trurn._chunks import Chunk, Finish, ReasoningDelta, TextDelta, ToolCallDelta
from trurn._errors import (
    AuthenticationError,
    MalformedStreamError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
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


# The HTTP request OpenAIChat made to stream a request (REQUEST by default), given the
# options, and its JSON body.
sent = partial(request_sent, provider_for, HELLO)
sent_body = partial(body_sent, provider_for, HELLO)


# --- the request -----------------------------------------------------------------------


async def test_request_body_messages_tools_and_options() -> None:
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
    http_request = await sent(request, model="gpt-default")
    assert http_request.method == "POST"
    assert str(http_request.url) == URL
    assert json.loads(http_request.content) == {
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
    assert "secret chain of thought" not in http_request.content.decode()
    assert "more thoughts" not in http_request.content.decode()


async def test_none_options_and_empty_tools_are_left_out() -> None:
    request = Request(messages=[UserMessage("hi")], tool_choice="required")
    assert await sent_body(request, model="gpt-x") == {
        "model": "gpt-x",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_max_completion_tokens_field() -> None:
    request = Request(messages=[UserMessage("hi")], max_tokens=5)
    body = await sent_body(request, model="o4-mini", max_tokens_field="max_completion_tokens")
    assert body["max_completion_tokens"] == 5
    assert "max_tokens" not in body


async def test_headers_with_api_key_and_extra_headers() -> None:
    http_request = await sent(
        api_key=API_KEY,
        headers={"X-Title": "trurn tests", "HTTP-Referer": "https://example.test"},
    )
    headers = http_request.headers
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert headers["x-title"] == "trurn tests"
    assert headers["http-referer"] == "https://example.test"
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "text/event-stream"


async def test_no_authorization_header_without_api_key() -> None:
    assert "authorization" not in (await sent()).headers


async def test_extra_headers_override_defaults() -> None:
    http_request = await sent(api_key=API_KEY, headers={"authorization": "X"})
    assert http_request.headers.get_list("authorization") == ["X"]


async def test_base_url_query_string_is_kept() -> None:
    http_request = await sent(
        base_url="https://az.example.test/openai/deployments/d/?api-version=1"
    )
    assert str(http_request.url) == (
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
    body = await sent_body(request)
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
        provider = provider_for(client)
        with pytest.raises(ValueError, match="tool_choice") as caught:
            await collect(provider, request)
    assert repr(choice) in str(caught.value)
    assert "'get_weather', 'get_time'" in str(caught.value)
    assert server.requests == []


async def test_extra_body_is_merged_last_and_replaces_options() -> None:
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
    body = no_duplicate_keys((await sent(request)).content)
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
        provider = provider_for(client)
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
    http_request = await sent(
        base_url="https://az.example.test/openai/deployments/d?keep=1&api-version=old",
        query={"api-version": "2024-10-21", "extra": "a b"},
    )
    url = http_request.url
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
        provider = provider_for(
            client,
            query={"api-version": "2024-10-21", "sig": "QUERY-SECRET-1"},
        )
        with pytest.raises(PermissionDeniedError) as caught:
            await collect(provider)
    assert "bad signature" in str(caught.value)
    assert "QUERY-SECRET-1" not in str(caught.value)
    assert "2024-10-21" not in str(caught.value)  # URLs in errors show no query at all


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
        batches = await collect(provider_for(client))
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
        chunks = flat(await collect(provider_for(client)))
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
        chunks = flat(await collect(provider_for(client)))
    assert chunks == [TextDelta("ok"), Finish("stop")]


async def test_usage_without_total_and_deepseek_cache_field() -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "prompt_cache_hit_tokens": 5}
    server, _ = streaming(sse(delta(finish="stop"), {"choices": [], "usage": usage}, "[DONE]"))
    async with client_for(server) as client:
        chunks = flat(await collect(provider_for(client)))
    assert chunks[-1] == Usage(
        input_tokens=7, output_tokens=3, total_tokens=10, cached_input_tokens=5
    )


async def test_finish_without_done_is_accepted() -> None:
    server, body = streaming(sse(delta(content="x"), delta(finish="stop")))
    async with client_for(server) as client:
        chunks = flat(await collect(provider_for(client)))
    assert chunks == [TextDelta("x"), Finish("stop")]
    assert body.closed


async def test_done_without_finish_is_accepted() -> None:
    server, _ = streaming(sse(delta(content="x"), "[DONE]"))
    async with client_for(server) as client:
        chunks = flat(await collect(provider_for(client)))
    assert chunks == [TextDelta("x")]


# --- HTTP errors -----------------------------------------------------------------------


async def test_insufficient_quota_is_a_rate_limit_that_is_not_retryable() -> None:
    payload = openai_error(
        "You exceeded your current quota", "insufficient_quota", "insufficient_quota"
    )
    server, _ = streaming(payload, status=429, headers={"content-type": "application/json"})
    async with client_for(server) as client:
        with pytest.raises(RateLimitError) as caught:
            async with provider_for(client).stream(REQUEST):
                pass
    assert not caught.value.retryable
    assert RateLimitError.retryable


def test_parse_retry_after_http_date_is_exact_relative_to_now() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"retry-after": date}), now=now) == 30.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "nan"})) is None


# 2015-10-21 07:28:00 GMT, and the same moment plus 30 s in each of RFC 9110's date forms.
OCT_21 = 1445412480.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),  # IMF-fixdate
        ("Wednesday, 21-Oct-15 07:28:30 GMT", 30.0),  # RFC 850
        ("Wed Oct 21 07:28:30 2015", 30.0),  # asctime: no zone, GMT by definition
        ("Wed, 21 Oct 2015 07:28:30 -0000", 30.0),
        (" 7 ", 7.0),
        ("1_0", None),  # float() reads it as 10; the header's syntax is digits
        ("1e3", None),
        ("+5", None),
        ("infinity", None),
        ("9" * 400, None),
    ],
)
def test_parse_retry_after_takes_only_what_rfc_9110_allows(
    value: str, seconds: float | None
) -> None:
    assert parse_retry_after(httpx.Headers({"retry-after": value}), now=OCT_21) == seconds


def test_parse_retry_after_ms_is_digits_too() -> None:
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1_500"})) is None
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1_500", "retry-after": "9"})) == 9
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500.5"})) == 1.5005


def test_excerpt_is_short_and_single_line() -> None:
    text = excerpt(b"line one\n\n   line two " + b"x" * 1000)
    assert text.startswith("line one line two xx")
    assert len(text) <= 200
    assert "\n" not in text


def test_excerpt_masks_secrets_before_cutting() -> None:
    body = b"a" * 180 + API_KEY.encode()
    assert API_KEY[:17] in excerpt(body)  # what a cut alone leaves
    masked = excerpt(body, secrets=[API_KEY, ""])
    assert masked == "a" * 180 + "[redacted]"
    assert excerpt(b"<title>key " + API_KEY.encode() + b"</title>", secrets=[API_KEY]) == (
        "key [redacted]"
    )


# An Azure SAS signature: base64, so "+", "/" and "=" go on the wire percent-encoded.
SIG = "ab+cd/ef=="


@pytest.mark.parametrize(
    ("base_url", "query"),
    [
        ("https://x.test/openai/deployments/d", {"sig": SIG, "api-version": "1"}),
        ("https://x.test/openai/deployments/d?sig=ab%2Bcd%2Fef%3D%3D", None),
    ],
    ids=["query", "in-base-url"],
)
async def test_a_query_secret_echoed_in_any_encoding_is_masked(
    base_url: str, query: dict[str, str] | None
) -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        message = (
            f"bad url {request.url} (sig {request.url.params['sig']}, "
            f"or {quote_plus(SIG)} / {quote(SIG)})"
        )
        return httpx.Response(401, json={"error": {"message": message}})

    async with client_for(echo) as client:
        provider = OpenAIChat("m", base_url=base_url, client=client, query=query)
        with pytest.raises(AuthenticationError) as caught:
            await collect(provider)
    text = str(caught.value)
    assert "chat/completions?sig=[redacted]" in text
    assert "(sig [redacted], or [redacted] / " in text
    for piece in ("ab+cd", "ab%2Bcd", "cd/ef", "cd%2Fef", "ef=="):
        assert piece not in text


def test_http_call_repr_shows_no_secret() -> None:
    provider = provider_for(None, api_key=API_KEY, headers={"api-key": "H-SEC"})
    stream = provider.stream(REQUEST)
    call = HTTPCall(stream._client, stream._request, stream._url, stream._secrets)
    assert call.request.headers["authorization"] == f"Bearer {API_KEY}"  # there to be hidden
    assert API_KEY in repr(tuple(call))  # what the NamedTuple's own repr would show
    text = repr(call)
    assert API_KEY not in text
    assert "H-SEC" not in text
    # The key, its Authorization header's value and the api-key header's value.
    assert text == f"HTTPCall(POST {URL}, 3 secrets masked)"


async def test_200_without_content_type_is_read_as_a_stream() -> None:
    # Some small compatible servers leave the header out; the bytes then decide.
    server, _ = streaming(HELLO, headers={"x-nothing": "here"})
    async with client_for(server) as client:
        chunks = flat(await collect(provider_for(client)))
    assert chunks == [TextDelta("Hel"), TextDelta("lo"), Finish("stop")]


async def test_secrets_in_headers_and_query_string_stay_out_of_errors() -> None:
    payload = openai_error("Access denied for key AZ-SECRET-KEY")
    server, _ = streaming(payload, status=401, headers={"content-type": "application/json"})
    async with client_for(server) as client:
        provider = provider_for(
            client,
            base_url="https://az.example.test/openai?sig=QUERY-SECRET",
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
            async with provider_for(client).stream(REQUEST):
                pass


# --- malformed streams -----------------------------------------------------------------


async def test_stream_ending_without_done_or_finish_is_malformed() -> None:
    server, body = streaming([sse(delta(content="half an ans"))])
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError, match="ended before the reply finished"):
            await consume(provider_for(client), received)
    assert received == [[TextDelta("half an ans")]]
    assert body.closed


# --- errors inside the stream ----------------------------------------------------------


async def test_error_event_with_unparsable_data() -> None:
    server, _ = streaming(b"event: error\ndata: upstream exploded\n\n")
    async with client_for(server) as client:
        with pytest.raises(ProviderError, match="upstream exploded"):
            await collect(provider_for(client))


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
