"""What AnthropicMessages and OpenAIChat do the same way at the HTTP level, tested once for
both against an ``httpx.MockTransport`` (:mod:`mock_http`): error statuses become typed
errors, keys stay out of them, transport failures and broken streams are reported, and
every response and owned client is closed however the stream ends.

The ``wire`` fixture is parametrised over the two providers (test ids ``[anthropic]`` and
``[openai]``); what differs between their wire formats lives in :class:`Wire`. What only
one provider does is in ``test_anthropic_provider.py`` or ``test_openai_provider.py``.
"""

from __future__ import annotations

import email.utils
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import anthropic_wire
import httpx
import openai_wire
import pytest
import trio
import trio.testing
from anthropic_wire import anthropic_error
from mock_http import (
    REQUEST,
    client_for,
    collect,
    consume,
    failing_client,
    flat,
    streaming,
)
from openai_wire import openai_error

from trurn._chunks import Chunk, Finish, TextDelta
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
from trurn.providers._anthropic import AnthropicMessages
from trurn.providers._base import Provider
from trurn.providers._http import collect_secrets
from trurn.providers._openai import OpenAIChat
from trurn.testing import Reply, open_scripted_server

API_KEY = "sk-test-DO-NOT-LEAK-0123456789"
JSON = {"content-type": "application/json"}
Case = Any  # what pytest.param returns (pytest has no public name for its type)
# Leaving a stream between two reads must not leave httpx's nested async generators half-way
# for the GC, which Trio reports as a ResourceWarning (httpx issue #3686): an error here,
# whatever the project's filters say about it.
NOTHING_LEFT_TO_THE_GC = pytest.mark.filterwarnings("error:Async generator:ResourceWarning")


@dataclass(frozen=True)
class Wire:
    """One provider, and the bytes of its wire format the shared tests need."""

    name: str
    provider: str  # the name its errors carry
    url: str  # where its requests go
    make: Callable[..., AnthropicMessages | OpenAIChat]  # (client, model=, base_url=, **options)
    text_start: bytes  # what comes before the first text delta of a reply
    text: Callable[[str], bytes]  # the event carrying one piece of text
    whole: bytes  # a whole reply ("Hel", "lo", finish "stop") and the mark of its end
    error_body: Callable[[str], bytes]  # a 401's body, with the server's message
    rate_limited: bytes  # a 429's body
    unfinished: str  # what the error says when the body ends before the reply does
    not_an_event: str  # what the error says about a payload it cannot read
    bad_payloads: dict[str, bytes]  # by test id: payloads it cannot read as an event
    # An error event in the stream, the error it must raise and words of its message.
    error_event: tuple[bytes, type[ProviderError], Sequence[str]]


# Payloads no provider can read as an event.
NOT_JSON_OBJECTS = {"not-json": b"data: {not json}\n\n", "array": b"data: [1, 2]\n\n"}
ANTHROPIC = Wire(
    name="anthropic",
    provider="anthropic-messages",
    url=anthropic_wire.URL,
    make=anthropic_wire.provider_for,
    text_start=anthropic_wire.TEXT_START,
    text=anthropic_wire.text,
    whole=anthropic_wire.HELLO,
    error_body=lambda message: anthropic_error("authentication_error", message),
    rate_limited=anthropic_error("rate_limit_error", "slow down"),
    unfinished="no message_stop",
    not_an_event="not a Messages event",
    bad_payloads={
        **NOT_JSON_OBJECTS,
        "wrong-type": b'data: {"type": 5}\n\n',
        "bad-utf8": b"event: content_block_delta\ndata: \xff\n\n",
        "wrong-delta": b'data: {"type": "content_block_delta", "index": 0, "delta": "text"}\n\n',
    },
    error_event=(
        anthropic_wire.event(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        ),
        OverloadedError,
        ["Overloaded"],
    ),
)
OPENAI = Wire(
    name="openai",
    provider="openai-chat",
    url=openai_wire.URL,
    make=openai_wire.provider_for,
    text_start=b"",
    text=openai_wire.text,
    whole=openai_wire.HELLO + openai_wire.sse("[DONE]"),
    error_body=openai_error,
    rate_limited=openai_error("slow down", "rate_limit_exceeded"),
    unfinished="ended before the reply finished",
    not_an_event="not a chat completion chunk",
    bad_payloads={
        **NOT_JSON_OBJECTS,
        "wrong-type": b'data: {"choices": 5}\n\n',
        "bad-utf8": b"data: \xff\n\n",
    },
    error_event=(
        b'event: error\ndata: {"error":{"message":"Tool call validation failed",'
        b'"type":"invalid_request_error","code":"tool_use_failed","status_code":400}}\n\n',
        BadRequestError,
        ["Tool call validation failed", "tool_use_failed"],
    ),
)
WIRES = [ANTHROPIC, OPENAI]


@pytest.fixture(params=WIRES, ids=lambda wire: wire.name)
def wire(request: pytest.FixtureRequest) -> Wire:
    chosen: Wire = request.param
    return chosen


def by_wire(cases: dict[str, Sequence[Case]]) -> list[Case]:
    """Each provider's own cases (by wire name), each led by its wire for the ``wire``
    argument and named ``{wire}-{case}``."""
    chosen = {w.name: w for w in WIRES}
    return [
        pytest.param(chosen[name], *case.values, id=f"{name}-{case.id}", marks=case.marks)
        for name, wire_cases in cases.items()
        for case in wire_cases
    ]


# --- construction ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url", ["", "not a url", "ftp://example.test", "ftp://example.test/v1", "/v1"]
)
def test_bad_base_url_is_refused(wire: Wire, base_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        wire.make(None, base_url=base_url)


def test_empty_model_is_refused(wire: Wire) -> None:
    with pytest.raises(ValueError, match="model"):
        wire.make(None, model="")


def test_model_property_repr_and_protocol(wire: Wire) -> None:
    provider = wire.make(None, model="model-1-mini", api_key=API_KEY)
    assert provider.model == "model-1-mini"
    assert isinstance(provider, Provider)
    assert API_KEY not in repr(provider)
    assert "model-1-mini" in repr(provider)


# --- HTTP errors -----------------------------------------------------------------------

ANTHROPIC_STATUSES = [
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
OPENAI_STATUSES = [
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


@pytest.mark.parametrize(
    ("wire", "status", "payload", "cls", "words"),
    by_wire({"anthropic": ANTHROPIC_STATUSES, "openai": OPENAI_STATUSES}),
)
async def test_error_status_maps_to_typed_exception(
    wire: Wire, status: int, payload: bytes, cls: type[ProviderError], words: str
) -> None:
    server, body = streaming(payload, status=status, headers=JSON)
    async with client_for(server) as client:
        provider = wire.make(client, api_key=API_KEY)
        with pytest.raises(ProviderError) as caught:
            async with provider.stream(REQUEST):
                raise AssertionError("the context must not be entered")
    error = caught.value
    assert type(error) is cls
    assert error.status_code == status
    assert error.provider == wire.provider
    assert words in str(error)
    assert str(status) in str(error)
    assert wire.url in str(error)
    assert API_KEY not in str(error)
    assert API_KEY not in repr(error.args)
    assert body.closed


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
    wire: Wire, headers: dict[str, str], low: float | None, high: float | None
) -> None:
    server, _ = streaming(wire.rate_limited, status=429, headers={**JSON, **headers})
    async with client_for(server) as client:
        with pytest.raises(RateLimitError) as caught:
            async with wire.make(client).stream(REQUEST):
                pass
    retry_after = caught.value.retry_after
    if low is None:
        assert retry_after is None
    else:
        assert retry_after is not None
        assert low <= retry_after <= (high or low)
    assert caught.value.retryable


async def test_secrets_in_extra_headers_stay_out_of_errors(wire: Wire) -> None:
    payload = wire.error_body("bad token Bearer PROXY-SECRET")
    server, _ = streaming(payload, status=401, headers=JSON)
    async with client_for(server) as client:
        provider = wire.make(client, headers={"Authorization": "Bearer PROXY-SECRET"})
        with pytest.raises(AuthenticationError) as caught:
            await collect(provider)
    assert "bad token" in str(caught.value)
    assert "PROXY-SECRET" not in str(caught.value)


# An Azure AD token or a gateway's key, passed as a whole Authorization header.
TOKEN = "eyJhbGciOiJSUzI1NiJ9.TOPSECRET.c2ln"


async def test_a_bearer_token_echoed_without_its_scheme_is_masked(wire: Wire) -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        scheme, token = request.headers["authorization"].split()
        message = f"token {token} has expired (send a fresh {scheme} token)"
        return httpx.Response(401, headers=JSON, content=wire.error_body(message))

    async with client_for(echo) as client:
        provider = wire.make(client, headers={"Authorization": f"Bearer {TOKEN}"})
        with pytest.raises(AuthenticationError) as caught:
            await collect(provider)
    # The scheme's name is no secret and stays readable.
    assert "token [redacted] has expired (send a fresh Bearer token)" in str(caught.value)
    assert "TOPSECRET" not in repr(caught.value.args)


def test_secrets_hold_the_credential_after_a_scheme_but_not_a_short_word() -> None:
    secrets = collect_secrets(
        None,
        {"Authorization": f"Bearer {TOKEN}", "X-Auth-Mode": "per request", "X-Title": "my app"},
    )
    # The whole values of headers named like a secret, the token alone, and no word
    # short enough to be common text ("request", which is everywhere in error messages).
    assert set(secrets) == {f"Bearer {TOKEN}", TOKEN, "per request"}
    # Longest first: a secret that holds another is masked whole, not in pieces.
    assert secrets[0] == f"Bearer {TOKEN}"


# A proxy or gateway page that echoes the request it refused, key and all. The key sits
# where an excerpt of 200 characters would cut it in two, so masking after the cut would
# leave half of it.
KEY = API_KEY.encode()
ECHO_PAGE = b"<html><body>" + b"x" * 150 + b" x-api-key: " + KEY + b"</body></html>"
ECHO_TITLE = b"<html><head><title>denied for " + KEY + b"</title></head></html>"
ECHO_EVENT = b"event: error\ndata: " + ECHO_PAGE + b"\n\n"
ECHO_PAYLOAD = b"data: " + ECHO_PAGE + b"\n\n"
ECHO_EVENT_JSON = b'event: error\ndata: {"type":"error"} ' + KEY + b"\n\n"
ECHO_EVENT_NAME = b"event: response." + KEY + b"\ndata: {}\n\n"
HTML = "text/html"
EVENTS = "text/event-stream"
ECHOES = [
    pytest.param(403, HTML, ECHO_PAGE, PermissionDeniedError, "key: [re", id="403-page"),
    pytest.param(502, HTML, ECHO_TITLE, ServerError, "for [redacted]", id="502-title"),
    pytest.param(200, HTML, ECHO_TITLE, MalformedStreamError, "for [redacted]", id="200-title"),
    pytest.param(200, HTML, ECHO_PAGE, MalformedStreamError, "key: [re", id="200-html-page"),
    pytest.param(200, EVENTS, ECHO_EVENT, ProviderError, "key: [re", id="error-event"),
    pytest.param(200, EVENTS, ECHO_PAYLOAD, MalformedStreamError, "key: [re", id="payload"),
    pytest.param(200, EVENTS, ECHO_EVENT_JSON, ProviderError, "} [redacted]", id="event-json"),
]
# OpenAIChat names the Responses API event it was sent by mistake; AnthropicMessages skips
# events it does not know.
ECHO_RESPONSES_EVENT = pytest.param(
    200, EVENTS, ECHO_EVENT_NAME, MalformedStreamError, "response.[re", id="responses-event"
)


@pytest.mark.parametrize(
    ("wire", "status", "content_type", "body", "cls", "shown"),
    by_wire({"anthropic": ECHOES, "openai": [*ECHOES, ECHO_RESPONSES_EVENT]}),
)
async def test_a_key_echoed_by_the_server_is_masked(
    wire: Wire, status: int, content_type: str, body: bytes, cls: type[ProviderError], shown: str
) -> None:
    server, _ = streaming(body, status=status, headers={"content-type": content_type})
    async with client_for(server) as client:
        with pytest.raises(ProviderError) as caught:
            await collect(wire.make(client, api_key=API_KEY))
    error = caught.value
    assert type(error) is cls
    # The body is shown, with the key masked (the mask itself may be cut short).
    assert shown in str(error)
    for piece in (API_KEY, API_KEY[:12], API_KEY[-12:]):
        assert piece not in str(error)
        assert piece not in repr(error.args)


async def test_200_with_html_body_is_malformed(wire: Wire) -> None:
    page = b"<!doctype html><html><head><title>Captive portal login</title></head></html>"
    server, body = streaming(page, headers={"content-type": "text/html; charset=utf-8"})
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError) as caught:
            async with wire.make(client).stream(REQUEST):
                raise AssertionError("the context must not be entered")
    assert "text/html" in str(caught.value)
    assert "Captive portal login" in str(caught.value)
    assert caught.value.status_code == 200
    assert body.closed


# httpx's aiter_bytes dies of the DecodingError with its inner aiter_raw still suspended,
# out of trurn's reach: that one generator is left to the GC.
@pytest.mark.filterwarnings("ignore:Async generator 'httpx.:ResourceWarning")
@pytest.mark.parametrize(
    ("status", "cls"), [(502, ServerError), (200, MalformedStreamError)], ids=["502", "200-html"]
)
async def test_a_body_that_does_not_decode_still_gives_the_status(
    wire: Wire, status: int, cls: type[ProviderError]
) -> None:
    # A proxy's page that says it is gzip but is not: the status still tells what happened.
    gzip_html = {"content-type": "text/html", "content-encoding": "gzip"}
    server, body = streaming(b"<html>Bad Gateway</html>", status=status, headers=gzip_html)
    async with client_for(server) as client:
        with pytest.raises(ProviderError) as caught:
            async with wire.make(client).stream(REQUEST):
                raise AssertionError("the context must not be entered")
    assert type(caught.value) is cls
    assert caught.value.status_code == status
    assert caught.value.retryable is (status == 502)
    assert "a body that could not be decoded" in str(caught.value)
    assert body.closed


@NOTHING_LEFT_TO_THE_GC
async def test_a_huge_error_page_is_read_only_in_part(wire: Wire) -> None:
    page = [b"<html>" + b"x" * 25_000, b"y" * 25_000, b"z" * 25_000, b"w" * 25_000]
    server, body = streaming(page, status=502, headers={"content-type": "text/html"})
    async with client_for(server) as client:
        with pytest.raises(ServerError, match=r"HTTP 502 Bad Gateway from .*: <html>xxx"):
            await collect(wire.make(client))
    assert body.sent == 3  # 64 KiB are enough for any error message
    assert body.closed
    gc.collect()  # nothing of the body's reading is left half-way (see the mark)


async def test_a_body_that_does_not_decode_while_sending_is_malformed(wire: Wire) -> None:
    # httpx reads a body while sending to follow a redirect, or, as here, a mock transport
    # reads the content it is given.
    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            502, headers={"content-encoding": "gzip"}, content=b"not gzip", request=request
        )

    async with client_for(broken) as client:
        with pytest.raises(MalformedStreamError, match="could not decode the body from"):
            async with wire.make(client).stream(REQUEST):
                raise AssertionError("the context must not be entered")


# --- transport errors ------------------------------------------------------------------


async def test_unreachable_server(wire: Wire) -> None:
    def refused(request: httpx.Request) -> Exception:
        return httpx.ConnectError("[Errno 111] Connection refused", request=request)

    async with failing_client(refused) as client:
        with pytest.raises(ProviderConnectionError) as caught:
            async with wire.make(client, api_key=API_KEY).stream(REQUEST):
                pass
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert wire.url in str(caught.value)
    assert "Connection refused" in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert caught.value.retryable


async def test_connect_timeout(wire: Wire) -> None:
    def slow(request: httpx.Request) -> Exception:
        return httpx.ConnectTimeout("timed out", request=request)

    async with failing_client(slow) as client:
        with pytest.raises(ProviderTimeout) as caught:
            async with wire.make(client).stream(REQUEST):
                pass
    assert isinstance(caught.value.__cause__, httpx.ConnectTimeout)
    assert wire.url in str(caught.value)


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
async def test_transport_error_mid_stream(
    wire: Wire, failure: Exception, cls: type[ProviderError]
) -> None:
    server, body = streaming([wire.text_start + wire.text("partial")], then=failure)
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(cls) as caught:
            await consume(wire.make(client), received)
    assert received == [[TextDelta("partial")]]
    assert caught.value.__cause__ is failure
    assert "mid-reply" in str(caught.value)
    assert body.closed


# --- broken streams --------------------------------------------------------------------


async def test_stream_cut_inside_an_event_is_malformed(wire: Wire) -> None:
    cut = wire.text("never")[:-20]
    server, body = streaming([wire.text_start + wire.text("a"), cut])
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError, match=wire.unfinished):
            await consume(wire.make(client), received)
    assert received == [[TextDelta("a")]]
    assert body.closed


@pytest.mark.parametrize(
    ("wire", "payload"),
    by_wire(
        {
            w.name: [pytest.param(payload, id=name) for name, payload in w.bad_payloads.items()]
            for w in WIRES
        }
    ),
)
async def test_malformed_payload_after_good_events(wire: Wire, payload: bytes) -> None:
    stream = wire.text_start + wire.text("good") + payload + wire.text("never")
    server, body = streaming(stream)
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(MalformedStreamError) as caught:
            await consume(wire.make(client), received)
    # The good chunk of the same read is delivered first; nothing after the bad payload is.
    assert received == [[TextDelta("good")]]
    assert wire.not_an_event in str(caught.value)
    assert isinstance(caught.value.__cause__, Exception)
    assert body.closed


def anthropic_error_event(
    kind: str, message: str, cls: type[ProviderError], name: str = ""
) -> Case:
    error = {"type": "error", "error": {"details": None, "type": kind, "message": message}}
    return pytest.param(anthropic_wire.event(error) + b"trailing", message, cls, id=name or kind)


def openai_error_chunk(error: dict[str, Any] | str, cls: type[ProviderError], name: str) -> Case:
    message = error if isinstance(error, str) else error["message"]
    return pytest.param(openai_wire.sse({"error": error}, "[DONE]"), message, cls, id=name)


@pytest.mark.parametrize(
    ("wire", "payload", "message", "cls"),
    by_wire(
        {
            "anthropic": [
                anthropic_error_event("overloaded_error", "Overloaded", OverloadedError),
                anthropic_error_event("rate_limit_error", "Rate limited", RateLimitError),
                anthropic_error_event("api_error", "Internal server error", ServerError),
                anthropic_error_event("invalid_request_error", "Bad thing", BadRequestError),
                anthropic_error_event(
                    "invalid_request_error",
                    "prompt is too long: 5 > 4",
                    ContextOverflowError,
                    "prompt-too-long",
                ),
                anthropic_error_event(
                    "authentication_error", "invalid x-api-key", AuthenticationError
                ),
                anthropic_error_event("permission_error", "not allowed", PermissionDeniedError),
                anthropic_error_event("not_found_error", "no such model", NotFoundError),
                anthropic_error_event("mystery_error", "who knows", ProviderError),
            ],
            "openai": [
                openai_error_chunk(
                    {"message": "Provider returned error", "code": 400}, BadRequestError, "400"
                ),
                openai_error_chunk(
                    {"message": "context_length_exceeded", "code": "context_length_exceeded"},
                    ContextOverflowError,
                    "overflow",
                ),
                openai_error_chunk({"message": "Rate limit", "code": 429}, RateLimitError, "429"),
                openai_error_chunk({"message": "Upstream failed", "code": 502}, ServerError, "502"),
                openai_error_chunk(
                    {"message": "Overloaded", "type": "overloaded_error"},
                    OverloadedError,
                    "overloaded",
                ),
                openai_error_chunk({"message": "odd", "code": "weird"}, ProviderError, "unknown"),
                openai_error_chunk("a plain string error", ProviderError, "string"),
            ],
        }
    ),
)
async def test_error_in_the_stream_maps_to_typed_exception(
    wire: Wire, payload: bytes, message: str, cls: type[ProviderError]
) -> None:
    server, body = streaming([wire.text_start + wire.text("so far"), payload])
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(ProviderError) as caught:
            await consume(wire.make(client), received)
    assert type(caught.value) is cls
    assert received == [[TextDelta("so far")]]
    assert message in str(caught.value)
    assert caught.value.status_code is None
    assert caught.value.provider == wire.provider
    assert body.closed


async def test_error_event_is_raised_after_the_batch_that_precedes_it(wire: Wire) -> None:
    error_event, cls, words = wire.error_event
    server, body = streaming(wire.text_start + wire.text("partial") + error_event)  # one read
    received: list[list[Chunk]] = []
    async with client_for(server) as client:
        with pytest.raises(cls) as caught:
            await consume(wire.make(client), received)
    assert received == [[TextDelta("partial")]]
    for word in words:
        assert word in str(caught.value)
    assert caught.value.status_code is None  # sent inside a 200 stream
    assert body.closed


# --- closing ---------------------------------------------------------------------------


async def test_response_closed_when_cancelled_while_waiting_for_bytes(
    wire: Wire, autojump_clock: trio.testing.MockClock
) -> None:
    server, body = streaming([wire.text_start + wire.text("first")], hang=True)
    received: list[Chunk] = []
    async with client_for(server) as client:
        with trio.move_on_after(5) as scope:
            async with wire.make(client).stream(REQUEST) as stream:
                assert stream.response is not None
                assert not stream.response.is_closed
                async for batch in stream:
                    received.extend(batch)
    assert scope.cancelled_caught
    assert received == [TextDelta("first")]
    assert stream.response is not None
    assert stream.response.is_closed
    assert body.closed


@NOTHING_LEFT_TO_THE_GC
async def test_response_closed_when_cancelled_in_the_consumer(
    wire: Wire, autojump_clock: trio.testing.MockClock
) -> None:
    server, body = streaming([wire.text_start + wire.text("first"), wire.text("second")])
    received: list[Chunk] = []
    async with client_for(server) as client:
        with trio.move_on_after(5) as scope:
            async with wire.make(client).stream(REQUEST) as stream:
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
    wire: Wire, autojump_clock: trio.testing.MockClock
) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with client_for(never) as client:
        with trio.move_on_after(5) as scope:
            async with wire.make(client).stream(REQUEST):
                raise AssertionError("the context must not be entered")
    assert scope.cancelled_caught


@NOTHING_LEFT_TO_THE_GC
async def test_response_closed_when_consumer_raises(wire: Wire) -> None:
    server, body = streaming([wire.text_start + wire.text("first"), wire.text("second")])

    async def buggy_consumer(provider: Provider) -> None:
        async with provider.stream(REQUEST) as stream:
            async for _ in stream:
                raise KeyError("consumer bug")

    async with client_for(server) as client:
        with pytest.raises(KeyError):
            await buggy_consumer(wire.make(client))
    assert body.closed
    assert body.sent == 1


LEAVE_MID_REPLY = ["break", "raise", "cancel"]


async def _leave_mid_reply(provider: Provider, how: str, patience: float = 5) -> list[Chunk]:
    """Stream a reply and leave it from the loop body after its first batch (for "cancel",
    once ``patience`` seconds have passed)."""
    received: list[Chunk] = []
    with trio.move_on_after(patience):
        try:
            async with provider.stream(REQUEST) as stream:
                async for batch in stream:
                    received.extend(batch)
                    if how == "break":
                        break
                    if how == "raise":
                        raise KeyError("consumer bug")
                    await trio.sleep_forever()  # cancelled at the consumer's own checkpoint
        except KeyError:
            pass
    return received


@NOTHING_LEFT_TO_THE_GC
@pytest.mark.parametrize("how", LEAVE_MID_REPLY)
async def test_leaving_mid_reply_leaves_nothing_to_the_gc(
    wire: Wire, how: str, autojump_clock: trio.testing.MockClock
) -> None:
    server, body = streaming([wire.text_start + wire.text("first"), wire.text("second")])
    async with client_for(server) as client:
        received = await _leave_mid_reply(wire.make(client), how)
    assert received == [TextDelta("first")]
    assert body.closed
    # A generator left suspended warns when collected (an error here, see the mark).
    gc.collect()


@NOTHING_LEFT_TO_THE_GC
@pytest.mark.parametrize("how", LEAVE_MID_REPLY)
async def test_leaving_mid_reply_over_a_real_connection_leaves_nothing_to_the_gc(
    wire: Wire, how: str
) -> None:
    # httpcore's own chain of generators, over a socket, in real (short) time.
    reply = Reply("a b c d e f", text_chunks=6, chunk_delay=0.002)
    async with open_scripted_server([reply]) as server, httpx.AsyncClient() as client:
        base_url = server.base_url.removesuffix("/v1") if wire.name == "anthropic" else None
        provider = wire.make(client, base_url=base_url or server.base_url)
        received = await _leave_mid_reply(provider, how, patience=0.05)
    assert received
    gc.collect()


async def test_body_is_drained_after_the_end_so_nothing_is_abandoned(wire: Wire) -> None:
    # Bytes after the end of the reply are read (and ignored) before the stream ends.
    server, body = streaming([wire.whole, wire.text("after the end"), b""])
    async with client_for(server) as client:
        chunks = flat(await collect(wire.make(client)))
    assert chunks[:3] == [TextDelta("Hel"), TextDelta("lo"), Finish("stop")]
    assert TextDelta("after the end") not in chunks
    assert body.sent == 3
    assert body.closed


async def test_drain_gives_up_on_a_server_that_never_ends(
    wire: Wire, autojump_clock: trio.testing.MockClock
) -> None:
    server, body = streaming([wire.whole], hang=True)
    async with client_for(server) as client:
        start = trio.current_time()
        chunks = flat(await collect(wire.make(client)))
        waited = trio.current_time() - start
    assert chunks[:3] == [TextDelta("Hel"), TextDelta("lo"), Finish("stop")]
    assert 0 < waited <= 2.0
    assert body.closed


async def test_stream_can_be_entered_only_once_and_iterated_only_inside(wire: Wire) -> None:
    server, _ = streaming(wire.whole)
    async with client_for(server) as client:
        stream = wire.make(client).stream(REQUEST)
        with pytest.raises(RuntimeError, match="inside its 'async with'"):
            await stream.__anext__()
        async with stream as batches:
            async for _ in batches:
                pass
        with pytest.raises(RuntimeError, match="once"):
            async with stream:
                pass


async def test_owned_client_is_closed_by_aclose(wire: Wire) -> None:
    provider = wire.make(None)
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


async def test_owned_client_closed_on_leaving_async_with(wire: Wire) -> None:
    async with wire.make(None) as provider:
        provider.stream(REQUEST)
        client = provider._client
    assert client is not None
    assert client.is_closed


async def test_injected_client_is_not_closed(wire: Wire) -> None:
    server, _ = streaming(wire.whole)
    async with client_for(server) as client:
        async with wire.make(client) as provider:
            await collect(provider)
        await provider.aclose()
        assert not client.is_closed
    assert client.is_closed  # closed by its owner, the test


async def test_aclose_without_client_is_a_checkpoint(wire: Wire) -> None:
    provider = wire.make(None)
    with trio.testing.assert_checkpoints():
        await provider.aclose()
