"""A real OpenAI- and Anthropic-compatible HTTP/1.1 server on loopback, driven by a script.

The server speaks just enough HTTP/1.1 for API clients (request line, headers,
``Content-Length`` bodies, keep-alive) and answers ``POST /v1/chat/completions`` with
a Chat Completions stream: ``text/event-stream`` in a chunked body, one
``data: {json}`` event per chunk, ending with ``data: [DONE]``; and ``POST /v1/messages``
with an Anthropic Messages stream (``event: <type>`` / ``data: {json}`` pairs from
``message_start`` to ``message_stop``). What each reply says, and how it goes wrong,
comes from the script (see ``_script.py``); one script serves both endpoints.

A reply's bytes are built once, before anything is sent, from the reply and the request
(and the clock, for a chunk's ``created``); the async part only reads requests and writes
those bytes. Both endpoints handle a request the same way; what each API says in its own
way (paths, key header, error bodies, events) is one ``_API`` record per endpoint. With
no ``chunk_delay`` the whole response goes out in one write, so the server stays cheap
enough for the benchmark.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from http import HTTPStatus
from typing import Literal, NamedTuple

import msgspec
import trio

from ._script import (
    ChatRequest,
    DropConnection,
    EndWithoutDone,
    ErrorChunk,
    Fault,
    MalformedChunk,
    MessagesRequest,
    Reply,
    Script,
    StatusError,
    reply_usage,
)

__all__ = ["ScriptedServer", "open_scripted_server", "serve_scripted_server"]

_READ_SIZE = 65536
_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
# accept() fails with these when the process or machine is out of sockets or memory;
# waiting a little lets finished connections free some.
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


# --------------------------------------------------------------------------- wire structs


class _WireFunction(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class _WireToolCall(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    id: str | None = None
    type: str | None = None
    function: _WireFunction


class _WireDelta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_WireToolCall] | None = None


class _WireChoice(msgspec.Struct):
    index: int
    delta: _WireDelta
    finish_reason: str | None


class _PromptTokensDetails(msgspec.Struct):
    cached_tokens: int


class _CompletionTokensDetails(msgspec.Struct):
    reasoning_tokens: int


class _WireUsage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: _PromptTokensDetails
    completion_tokens_details: _CompletionTokensDetails


class _WireChunk(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[_WireChoice]
    # OpenAI sends "usage": null on every chunk once include_usage is on; UNSET omits it.
    usage: _WireUsage | msgspec.UnsetType | None = msgspec.UNSET


class _WireError(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _WireErrorBody(msgspec.Struct):
    error: _WireError


class _AnthropicError(msgspec.Struct):
    type: str
    message: str


class _AnthropicErrorBody(msgspec.Struct, tag_field="type", tag="error"):
    error: _AnthropicError


class _AnthropicUsage(msgspec.Struct, omit_defaults=True):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    output_tokens_details: dict[str, int] | None = None


class _AnthropicMessage(msgspec.Struct, kw_only=True):
    id: str
    type: str = "message"
    role: str = "assistant"
    model: str
    content: list[dict[str, object]]
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: _AnthropicUsage


class _MessageStart(msgspec.Struct, tag_field="type", tag="message_start"):
    message: _AnthropicMessage


class _BlockStart(msgspec.Struct, tag_field="type", tag="content_block_start"):
    index: int
    content_block: dict[str, object]


class _TextDelta(msgspec.Struct, tag_field="type", tag="text_delta"):
    text: str


class _InputJSONDelta(msgspec.Struct, tag_field="type", tag="input_json_delta"):
    partial_json: str


class _ThinkingDelta(msgspec.Struct, tag_field="type", tag="thinking_delta"):
    thinking: str


class _SignatureDelta(msgspec.Struct, tag_field="type", tag="signature_delta"):
    signature: str


class _BlockDelta(msgspec.Struct, tag_field="type", tag="content_block_delta"):
    index: int
    delta: _TextDelta | _InputJSONDelta | _ThinkingDelta | _SignatureDelta


class _BlockStop(msgspec.Struct, tag_field="type", tag="content_block_stop"):
    index: int


class _StopDelta(msgspec.Struct):
    stop_reason: str
    stop_sequence: str | None = None


class _MessageDelta(msgspec.Struct, tag_field="type", tag="message_delta"):
    delta: _StopDelta
    usage: _AnthropicUsage


_encoder = msgspec.json.Encoder()
_chat_request_decoder = msgspec.json.Decoder(ChatRequest)
_messages_request_decoder = msgspec.json.Decoder(MessagesRequest)


# --------------------------------------------------------------------------- HTTP parsing


class _HTTPError(Exception):
    """A request the server cannot read; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _HTTPRequest(NamedTuple):
    method: str
    target: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes


_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_NAME = _METHOD
_TARGET = re.compile(r"/[\x21-\x7e]*")
_VERSION = re.compile(r"HTTP/\d\.\d")
_BAD_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Parse a request head (without its final blank line): method, target, headers."""
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise _HTTPError(400, f"Malformed request line: {request_line[:100]!r}")
    method, target, version = parts
    if not _METHOD.fullmatch(method):
        raise _HTTPError(400, f"Malformed method in request line: {method[:100]!r}")
    if not _TARGET.fullmatch(target):
        raise _HTTPError(400, f"Malformed request target: {target[:100]!r}")
    if not _VERSION.fullmatch(version):
        raise _HTTPError(400, f"Malformed HTTP version: {version[:100]!r}")
    if version != "HTTP/1.1":
        raise _HTTPError(505, f"Only HTTP/1.1 is supported, not {version}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name):
            # Also rejects obsolete line folding (a line starting with whitespace).
            raise _HTTPError(400, f"Malformed header line: {line[:100]!r}")
        value = value.strip(" \t")
        if _BAD_VALUE_CHARS.search(value):
            raise _HTTPError(400, f"Control character in header {name!r}")
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "host" not in headers:
        raise _HTTPError(400, "Missing Host header")
    return method, target, headers


def _content_length(headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise _HTTPError(501, "Request bodies must be sent with Content-Length, not chunked")
    text = headers.get("content-length", "0")
    if not text.isdigit() or not text.isascii():
        raise _HTTPError(400, f"Malformed Content-Length: {text[:100]!r}")
    length = int(text)
    if length > _MAX_BODY:
        raise _HTTPError(413, f"Request body too large: {length} bytes (limit {_MAX_BODY})")
    return length


class _RequestReader:
    """Reads HTTP/1.1 requests one after another from one connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def _receive(self) -> bool:
        data = await self._stream.receive_some(_READ_SIZE)
        self._buffer += data
        return bool(data)

    async def read_request(self) -> _HTTPRequest | None:
        """The next request, or ``None`` when the client closed between requests.

        Raises ``_HTTPError`` for a request that cannot be read. Checkpoints.
        """
        buffer = self._buffer
        while True:
            # Clients may send stray CRLFs between requests; RFC 9112 says to skip them.
            while buffer[:2] == b"\r\n":
                del buffer[:2]
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buffer) > _MAX_HEAD:
                raise _HTTPError(431, f"Request head larger than {_MAX_HEAD} bytes")
            if not await self._receive():
                if not buffer:
                    return None
                raise _HTTPError(400, "The connection closed in the middle of a request head")
        if end > _MAX_HEAD:
            raise _HTTPError(431, f"Request head larger than {_MAX_HEAD} bytes")
        method, target, headers = _parse_head(bytes(buffer[:end]))
        del buffer[: end + 4]
        length = _content_length(headers)
        if len(buffer) < length and headers.get("expect", "").lower() == "100-continue":
            await self._stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(buffer) < length:
            if not await self._receive():
                raise _HTTPError(400, "The connection closed before the whole body arrived")
        body = bytes(buffer[:length])
        del buffer[:length]
        return _HTTPRequest(method, target, headers, body)


# --------------------------------------------------------------------------- responses

# (type, code, message) OpenAI sends for a status, when the script does not say.
_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", None, "You are not allowed to use this model."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    529: ("overloaded_error", "overloaded", "Overloaded."),
}

# (type, code, message) Anthropic sends for a status; its errors have no code.
_ANTHROPIC_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("authentication_error", None, "invalid x-api-key"),
    403: (
        "permission_error",
        None,
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", None, "The requested resource could not be found."),
    413: ("request_too_large", None, "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", None, "Number of requests has exceeded your rate limit."),
    500: ("api_error", None, "Internal server error"),
    529: ("overloaded_error", None, "Overloaded"),
}


def _openai_error_body(type: str, message: str, code: str | None) -> bytes:
    return _encoder.encode(_WireErrorBody(_WireError(message, type, None, code)))


def _anthropic_error_body(type: str, message: str, code: str | None) -> bytes:
    return _encoder.encode(_AnthropicErrorBody(_AnthropicError(type=type, message=message)))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Site Overloaded" if status == 529 else "Unknown"


def _default_error(api: _API, status: int) -> tuple[str, str | None, str]:
    """(type, code, message) of ``api``'s error for ``status``."""
    default = api.errors.get(status)
    if default is not None:
        return default
    kind = api.server_error if status >= 500 else "invalid_request_error"
    return kind, None, f"{_reason(status)}."


def _response(
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    headers: Sequence[tuple[str, str]] = (),
    close: bool = False,
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_reason(status)}",
        f"content-type: {content_type}",
        f"content-length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers),
    ]
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _error_response(
    api: _API,
    status: int,
    message: str,
    *,
    type: str | None = None,
    code: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    close: bool = False,
) -> bytes:
    """A JSON error response in ``api``'s format (``type`` defaults from the status)."""
    if type is None:
        type = _default_error(api, status)[0]
    return _response(status, api.error_body(type, message, code), headers=headers, close=close)


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)


def _status_error_response(api: _API, fault: StatusError, *, close: bool) -> bytes:
    headers = list(fault.headers.items())
    if fault.retry_after is not None:
        headers.append(("retry-after", _format_seconds(fault.retry_after)))
    if fault.body is not None:
        body = fault.body.encode()
        return _response(
            fault.status, body, content_type=fault.content_type, headers=headers, close=close
        )
    default_type, default_code, default_message = _default_error(api, fault.status)
    return _error_response(
        api,
        fault.status,
        default_message if fault.message is None else fault.message,
        type=default_type if fault.type is None else fault.type,
        code=default_code if fault.code is None else fault.code,
        headers=headers,
        close=close,
    )


# --------------------------------------------------------------------------- streams

_Ending = Literal["done", "end", "drop"]
_LAST_CHUNK = b"0\r\n\r\n"


def _stream_head(*, close: bool) -> bytes:
    lines = [
        "HTTP/1.1 200 OK",
        "content-type: text/event-stream; charset=utf-8",
        "cache-control: no-cache",
        "transfer-encoding: chunked",
    ]
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _split(text: str, pieces: int) -> list[str]:
    """``text`` cut into at most ``pieces`` non-empty pieces of about equal length."""
    if not text:
        return []
    pieces = min(pieces, len(text))
    size = len(text)
    return [text[i * size // pieces : (i + 1) * size // pieces] for i in range(pieces)]


def _sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def _chunk_frame(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def _first_call_number(request: ChatRequest) -> int:
    """The number of the reply's first tool call. Tool call ids count the conversation's
    calls, so they are unique within it and the same on every run."""
    return 1 + sum(
        len(message.tool_calls or ()) for message in request.messages if message.role == "assistant"
    )


def _chat_events(reply: Reply, request: ChatRequest, number: int) -> list[bytes]:
    """The SSE events of a Chat Completions reply to request ``number`` that goes right,
    without ``[DONE]``."""
    completion_id = f"chatcmpl-scripted-{number}"
    created = int(time.time())
    model = reply.model or request.model
    include_usage = request.include_usage
    usage_field: msgspec.UnsetType | None = None if include_usage else msgspec.UNSET

    def event(delta: _WireDelta, finish_reason: str | None = None) -> bytes:
        chunk = _WireChunk(
            id=completion_id,
            created=created,
            model=model,
            choices=[_WireChoice(0, delta, finish_reason)],
            usage=usage_field,
        )
        return _sse(_encoder.encode(chunk))

    events = [event(_WireDelta(role="assistant", content=""))]
    events.extend(
        event(_WireDelta(reasoning_content=piece))
        for piece in _split(reply.reasoning, reply.reasoning_chunks)
    )
    events.extend(
        event(_WireDelta(content=piece)) for piece in _split(reply.text, reply.text_chunks)
    )
    call_number = _first_call_number(request)
    for index, call in enumerate(reply.tool_calls):
        first = _WireToolCall(
            index=index,
            id=call.id or f"call_{call_number + index}",
            type="function",
            function=_WireFunction(name=call.name, arguments=""),
        )
        events.append(event(_WireDelta(tool_calls=[first])))
        events.extend(
            event(
                _WireDelta(
                    tool_calls=[_WireToolCall(index=index, function=_WireFunction(arguments=piece))]
                )
            )
            for piece in _split(call.arguments_text, call.chunks)
        )
    finish_reason = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    events.append(event(_WireDelta(), finish_reason))
    if include_usage:
        usage = reply_usage(reply, request)
        chunk = _WireChunk(
            id=completion_id,
            created=created,
            model=model,
            choices=[],
            usage=_WireUsage(
                prompt_tokens=usage.input_tokens,
                completion_tokens=usage.output_tokens,
                total_tokens=usage.total_tokens,
                prompt_tokens_details=_PromptTokensDetails(usage.cached_input_tokens),
                completion_tokens_details=_CompletionTokensDetails(usage.reasoning_tokens),
            ),
        )
        events.append(_sse(_encoder.encode(chunk)))
    return events


# Anthropic's stop reasons for the finish reasons a script names the OpenAI way.
_ANTHROPIC_STOP_REASONS = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}
_MESSAGE_STOP_EVENT = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_PING_EVENT = b'event: ping\ndata: {"type":"ping"}\n\n'


def _named(name: bytes, payload: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + payload + b"\n\n"


def _messages_events(reply: Reply, request: ChatRequest, number: int) -> list[bytes]:
    """The SSE events of an Anthropic reply to request ``number`` that goes right, without
    ``message_stop``.

    ``message_start``, a ``ping`` after the first block starts (where the API sends one),
    then a thinking block (``thinking_delta`` pieces and a ``signature_delta``), a text
    block, one ``tool_use`` block per call (``input_json_delta`` pieces), and
    ``message_delta`` with the stop reason and output usage.
    """
    message_id = f"msg_scripted_{number}"
    usage = reply_usage(reply, request)
    # Anthropic counts cached prompt tokens apart from input_tokens.
    start_usage = _AnthropicUsage(
        input_tokens=usage.input_tokens - usage.cached_input_tokens,
        output_tokens=1,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=usage.cached_input_tokens,
    )
    message = _AnthropicMessage(
        id=message_id, model=reply.model or request.model, content=[], usage=start_usage
    )
    events = [_named(b"message_start", _encoder.encode(_MessageStart(message)))]
    index = 0

    def block(
        start: dict[str, object],
        deltas: list[_TextDelta | _InputJSONDelta | _ThinkingDelta | _SignatureDelta],
    ) -> None:
        nonlocal index
        events.append(_named(b"content_block_start", _encoder.encode(_BlockStart(index, start))))
        if index == 0:
            events.append(_PING_EVENT)
        events.extend(
            _named(b"content_block_delta", _encoder.encode(_BlockDelta(index, delta)))
            for delta in deltas
        )
        events.append(_named(b"content_block_stop", _encoder.encode(_BlockStop(index))))
        index += 1

    if reply.reasoning:
        thinking: list[_TextDelta | _InputJSONDelta | _ThinkingDelta | _SignatureDelta] = [
            _ThinkingDelta(piece) for piece in _split(reply.reasoning, reply.reasoning_chunks)
        ]
        thinking.append(_SignatureDelta(f"scripted-signature-{message_id}"))
        block({"type": "thinking", "thinking": "", "signature": ""}, thinking)
    if reply.text:
        block(
            {"type": "text", "text": ""},
            [_TextDelta(piece) for piece in _split(reply.text, reply.text_chunks)],
        )
    for call_number, call in enumerate(reply.tool_calls, _first_call_number(request)):
        pieces = _split(call.arguments_text, call.chunks) or [""]
        block(
            {
                "type": "tool_use",
                "id": call.id or f"toolu_{call_number}",
                "name": call.name,
                "input": {},
            },
            [_InputJSONDelta(piece) for piece in pieces],
        )
    finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    details = {"thinking_tokens": usage.reasoning_tokens} if usage.reasoning_tokens else None
    end_usage = _AnthropicUsage(output_tokens=usage.output_tokens, output_tokens_details=details)
    stop = _StopDelta(_ANTHROPIC_STOP_REASONS.get(finish, finish))
    events.append(_named(b"message_delta", _encoder.encode(_MessageDelta(stop, end_usage))))
    return events


def _apply_fault(
    api: _API, events: list[bytes], fault: Fault | None
) -> tuple[list[bytes], _Ending]:
    """The events actually sent, and how the response ends, once ``fault`` is applied.

    Event positions count every event from 0 (on the Anthropic endpoint: from
    ``message_start``, pings included). An :class:`ErrorChunk` becomes the API's error
    event; its default ``server_error`` type is sent as the API's own (Anthropic's
    ``api_error``).
    """
    if fault is None:
        return [*events, api.end_event], "done"
    if isinstance(fault, MalformedChunk):
        bad = b"data: " + fault.data.encode() + b"\n\n"
        return [*events[: fault.at], bad, *events[fault.at + 1 :], api.end_event], "done"
    if isinstance(fault, ErrorChunk):
        kind = api.server_error if fault.type == "server_error" else fault.type
        error = api.error_frame(api.error_body(kind, fault.message, fault.code))
        return [*events[: fault.after], error], "end"
    if isinstance(fault, DropConnection):
        return events[: fault.after], "drop"
    if isinstance(fault, EndWithoutDone):
        return events[: fault.after], "end"
    raise TypeError(f"{type(fault).__name__} is not a stream fault")


# --------------------------------------------------------------------------- the two APIs


def _decode_messages_request(body: bytes) -> ChatRequest:
    return _messages_request_decoder.decode(body).to_chat()


class _API(NamedTuple):
    """What one endpoint says in its own way. How a request is handled is the same for
    both (:meth:`ScriptedServer._answer`)."""

    path: str
    decode: Callable[[bytes], ChatRequest]  # the body, as the script receives it
    key_header: str  # where the API key goes (a lower-case header name)...
    key_prefix: str  # ...and what stands before it there
    missing_key: str  # the 401 message when the key header is missing
    wrong_key: str  # and when it holds another key
    required_header: str | None  # a header every request must carry
    errors: Mapping[int, tuple[str, str | None, str]]  # status -> (type, code, message)
    server_error: str  # the error type of a 5xx missing from ``errors``
    error_body: Callable[[str, str, str | None], bytes]  # (type, message, code) -> JSON
    events: Callable[[Reply, ChatRequest, int], list[bytes]]  # a reply to request number n
    end_event: bytes  # the event that ends a whole reply
    error_frame: Callable[[bytes], bytes]  # an error body as an event inside the stream


_OPENAI = _API(
    path="/v1/chat/completions",
    decode=_chat_request_decoder.decode,
    key_header="authorization",
    key_prefix="Bearer ",
    missing_key="You didn't provide an API key in an Authorization: Bearer header.",
    wrong_key="Incorrect API key provided.",
    required_header=None,
    errors=_OPENAI_ERRORS,
    server_error="server_error",
    error_body=_openai_error_body,
    events=_chat_events,
    end_event=b"data: [DONE]\n\n",
    error_frame=_sse,
)
_ANTHROPIC = _API(
    path="/v1/messages",
    decode=_decode_messages_request,
    key_header="x-api-key",
    key_prefix="",
    missing_key="x-api-key header is required",
    wrong_key="invalid x-api-key",
    required_header="anthropic-version",
    errors=_ANTHROPIC_ERRORS,
    server_error="api_error",
    error_body=_anthropic_error_body,
    events=_messages_events,
    end_event=_MESSAGE_STOP_EVENT,
    error_frame=partial(_named, b"error"),
)
_APIS = {api.path: api for api in (_OPENAI, _ANTHROPIC)}


class _Stream(NamedTuple):
    """A 200 event stream to send: the reply (for its ``chunk_delay``), its events, and
    how the response ends."""

    reply: Reply
    events: list[bytes]
    ending: _Ending


# --------------------------------------------------------------------------- the server


def _loopback_host(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"host must be a loopback IP address or 'localhost', got {host!r}"
        ) from None
    if not address.is_loopback:
        raise ValueError(f"the scripted server only listens on loopback; {host!r} is not")
    return str(address)


def _check_script(script: Script) -> None:
    if isinstance(script, Sequence):
        for index, reply in enumerate(script):
            if not isinstance(reply, Reply):
                raise TypeError(f"script[{index}] is a {type(reply).__name__}, not a Reply")
    elif not callable(script):
        raise TypeError(
            "script must be a sequence of Reply or a function from ChatRequest to Reply, "
            f"got {type(script).__name__}"
        )


class ScriptedServer:
    """A running scripted server.

    ``base_url`` is what an OpenAI client needs (``http://127.0.0.1:<port>/v1``); the
    Anthropic endpoint is ``{base_url}/messages``. ``requests`` holds every request
    whose body parsed, in the order received (those refused with 401 included), as a
    :class:`ChatRequest` (an Anthropic body is normalised with
    :meth:`MessagesRequest.to_chat`); ``request_bodies`` holds their raw JSON bodies
    and ``request_headers`` their headers (names in lower case), at the same positions.
    ``connections`` counts accepted connections; ``replies_used`` counts the replies a
    sequence script has given so far.
    """

    def __init__(self, script: Script, *, host: str, port: int, api_key: str | None) -> None:
        self.host = host
        self.port = port
        self.requests: list[ChatRequest] = []
        self.request_bodies: list[bytes] = []
        self.request_headers: list[dict[str, str]] = []
        self.connections = 0
        self._script = script
        self._api_key = api_key
        self._replies_used = 0

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of this server, ending in ``/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def replies_used(self) -> int:
        """How many replies of a sequence script were sent (always 0 for a function)."""
        return self._replies_used

    def __repr__(self) -> str:
        return f"<ScriptedServer {self.base_url} requests={len(self.requests)}>"

    def _authorized(self, api: _API, headers: dict[str, str]) -> bool:
        if self._api_key is None:
            return True
        expected = f"{api.key_prefix}{self._api_key}".encode()
        return hmac.compare_digest(headers.get(api.key_header, "").encode(), expected)

    def _unauthorized(self, api: _API, request: _HTTPRequest, *, close: bool) -> bytes:
        message = api.wrong_key if api.key_header in request.headers else api.missing_key
        return _error_response(api, 401, message, code="invalid_api_key", close=close)

    def _record(self, chat: ChatRequest, request: _HTTPRequest) -> None:
        self.requests.append(chat)
        self.request_bodies.append(request.body)
        self.request_headers.append(request.headers)

    def _next_reply(self, request: ChatRequest) -> Reply | None:
        """The reply to ``request``, or ``None`` when a sequence script ran out."""
        script = self._script
        if isinstance(script, Sequence):
            if self._replies_used >= len(script):
                return None
            reply: object = script[self._replies_used]
            self._replies_used += 1
        else:
            # An exception here is the test's own bug: let it crash the server loudly.
            reply = script(request)
        if not isinstance(reply, Reply):
            raise TypeError(f"the script gave a {type(reply).__name__}, not a Reply")
        return reply

    def _exhausted(self) -> str:
        count = len(self._script) if isinstance(self._script, Sequence) else 0
        return (
            f"The scripted server's script ran out of replies: it had {count}, "
            f"and this is request {len(self.requests)}."
        )

    async def _respond(self, stream: trio.SocketStream, request: _HTTPRequest) -> bool:
        """Answer one request; return whether the connection stays open. Checkpoints."""
        keep_alive = "close" not in request.headers.get("connection", "").lower()
        close = not keep_alive
        path = request.target.partition("?")[0]
        api = _APIS.get(path)
        if api is None:  # answered the way OpenAI answers an unknown URL
            message = f"Invalid URL ({request.method} {path})"
            answer: bytes | _Stream = _error_response(_OPENAI, 404, message, close=close)
        else:
            answer = self._answer(api, request, close=close)
        if isinstance(answer, bytes):
            await stream.send_all(answer)
            return keep_alive
        return await self._stream_events(stream, answer, keep_alive=keep_alive)

    def _answer(self, api: _API, request: _HTTPRequest, *, close: bool) -> bytes | _Stream:
        """What to send for ``request`` to ``api``'s endpoint, the way that API would: an
        error response, or the stream of the script's next reply. Records the request
        once its body parsed (a 401 included), and takes a reply from the script."""
        if request.method != "POST":
            message = f"Method {request.method} not allowed on {api.path}; use POST"
            return _error_response(api, 405, message, headers=[("allow", "POST")], close=close)
        authorized = self._authorized(api, request.headers)
        try:
            chat = api.decode(request.body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            if not authorized:
                return self._unauthorized(api, request, close=close)
            return _error_response(api, 400, f"Invalid request body: {exc}", close=close)
        self._record(chat, request)
        if not authorized:
            return self._unauthorized(api, request, close=close)
        if api.required_header is not None and api.required_header not in request.headers:
            message = f"{api.required_header}: header is required"
            return _error_response(api, 400, message, close=close)
        if not chat.stream:
            message = 'The scripted server only streams: send "stream": true'
            return _error_response(api, 400, message, close=close)
        reply = self._next_reply(chat)
        if reply is None:
            message = self._exhausted()
            return _error_response(api, 500, message, code="script_exhausted", close=close)
        if isinstance(reply.fault, StatusError):
            return _status_error_response(api, reply.fault, close=close)
        events, ending = _apply_fault(api, api.events(reply, chat, len(self.requests)), reply.fault)
        return _Stream(reply, events, ending)

    async def _stream_events(
        self, stream: trio.SocketStream, answer: _Stream, *, keep_alive: bool
    ) -> bool:
        """Send a 200 event stream of ``answer``'s events, ended as it says. Checkpoints."""
        reply, events, ending = answer
        head = _stream_head(close=not keep_alive)
        tail = b"" if ending == "drop" else _LAST_CHUNK
        if reply.chunk_delay == 0:
            await stream.send_all(b"".join([head, *map(_chunk_frame, events), tail]))
        else:
            await stream.send_all(head)
            for data in events:
                await trio.sleep(reply.chunk_delay)
                await stream.send_all(_chunk_frame(data))
            if tail:
                await stream.send_all(tail)
        return keep_alive and ending != "drop"

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        reader = _RequestReader(stream)
        while True:
            try:
                request = await reader.read_request()
            except _HTTPError as exc:
                await stream.send_all(_error_response(_OPENAI, exc.status, exc.message, close=True))
                return
            if request is None or not await self._respond(stream, request):
                return

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve_connection(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # The client hung up, maybe mid-stream: that is its right.
        finally:
            # Closed without a checkpoint (unlike ``aclose``), so a cancellation arriving
            # now cannot replace an exception that is on its way out.
            stream.socket.close()


async def serve_scripted_server(
    script: Script,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    task_status: trio.TaskStatus[ScriptedServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``script`` over HTTP on a loopback address until cancelled.

    Use with ``server = await nursery.start(serve_scripted_server, script)``: the
    :class:`ScriptedServer` is handed back once the socket listens (``port=0`` picks a
    free port). ``host`` must be a loopback address (or ``"localhost"``), else
    ``ValueError``. With ``api_key``, requests without ``Authorization: Bearer
    <api_key>`` (or ``x-api-key: <api_key>`` on the Anthropic endpoint) get a 401.

    Each connection runs in its own task; a client hanging up only ends its task.
    Cancelling closes the listener and every connection, mid-stream or not. An
    exception raised by a script function (or a script item that is not a
    :class:`Reply`) propagates out of the server, so the test that started it fails.
    """
    address = _loopback_host(host)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    _check_script(script)
    (listener,) = await trio.open_tcp_listeners(port, host=address)
    bound_port = int(listener.socket.getsockname()[1])
    server = ScriptedServer(script, host=address, port=bound_port, api_key=api_key)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(server)
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                        raise
                    await trio.sleep(0.1)
                    continue
                server.connections += 1
                nursery.start_soon(server._handle_connection, stream)
    finally:
        # Not ``aclose``: its checkpoint, if cancelled, would hide a crash in the nursery.
        listener.socket.close()


@asynccontextmanager
async def open_scripted_server(
    script: Script, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None
) -> AsyncIterator[ScriptedServer]:
    """Run a scripted server for the duration of the ``async with`` block.

    ``async with open_scripted_server([Reply("Hi!")]) as server:`` then point a client at
    ``server.base_url``. Leaving the block cancels the server and closes its
    connections. An exception from the block comes out as it is (not wrapped in an
    exception group).
    """
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        server: ScriptedServer = await nursery.start(
            partial(serve_scripted_server, script, host=host, port=port, api_key=api_key)
        )
        try:
            yield server
        except BaseException as exc:
            # Raised outside the nursery, the body's exception is not wrapped in a group.
            body_error = exc
        finally:
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
