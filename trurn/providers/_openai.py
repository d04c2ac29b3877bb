"""The OpenAI Chat Completions adapter, which also speaks to compatible servers.

Ollama, vLLM, llama.cpp, OpenRouter, Groq, DeepSeek, Azure OpenAI and others serve the
same ``POST /chat/completions`` streaming API, with small differences this adapter
absorbs: reasoning in ``reasoning_content`` or ``reasoning``, SSE comment keep-alives,
error objects sent inside a 200 stream, chunks with no choices, a missing ``[DONE]``.

Requests are built from wire Structs and encoded once; each ``data:`` payload is decoded
straight from bytes into wire Structs by one module-level decoder, and turned into
provider-neutral chunks without dicts, string formatting or logging.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import httpx
import msgspec

from .._chunks import Chunk, Finish, ReasoningDelta, TextDelta, ToolCallDelta
from .._errors import MalformedStreamError, ProviderError
from .._messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
)
from ._base import Request, ToolSpec, check_tool_choice, encode_body
from ._http import WireError, parse_base_url
from ._streaming import HTTPCall, HTTPProvider, SSEResponseStream

__all__ = ["OpenAIChat"]

_PROVIDER = "openai-chat"


# --- request wire format ---------------------------------------------------------------


class _WireFunctionCall(msgspec.Struct):
    name: str
    arguments: str


class _WireToolCall(msgspec.Struct):
    id: str
    type: Literal["function"]
    function: _WireFunctionCall


class _WireSystem(msgspec.Struct, tag_field="role", tag="system"):
    content: str


class _WireUser(msgspec.Struct, tag_field="role", tag="user"):
    content: str


class _WireAssistant(msgspec.Struct, omit_defaults=True, tag_field="role", tag="assistant"):
    content: str | None = None
    tool_calls: list[_WireToolCall] | None = None


class _WireTool(msgspec.Struct, tag_field="role", tag="tool"):
    tool_call_id: str
    content: str


_WireMessage = _WireSystem | _WireUser | _WireAssistant | _WireTool


class _WireFunctionDef(msgspec.Struct):
    name: str
    description: str
    parameters: dict[str, Any]


class _WireToolDef(msgspec.Struct):
    type: Literal["function"]
    function: _WireFunctionDef


class _WireStreamOptions(msgspec.Struct):
    include_usage: bool


class _WireFunctionName(msgspec.Struct):
    name: str


class _WireNamedToolChoice(msgspec.Struct):
    type: Literal["function"]
    function: _WireFunctionName


class _WireRequest(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[_WireMessage]
    stream: bool
    stream_options: _WireStreamOptions
    tools: list[_WireToolDef] | None = None
    tool_choice: str | _WireNamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    reasoning_effort: str | None = None


_encoder = msgspec.json.Encoder()
_STREAM_OPTIONS = _WireStreamOptions(include_usage=True)
# The fields that make the call a streaming chat call; ``extra_body`` may not replace them.
_RESERVED_FIELDS = ("model", "messages", "stream", "stream_options")
_TOOL_CHOICE_MODES = frozenset({"auto", "none", "required"})


def _wire_message(message: Message) -> _WireMessage:
    if isinstance(message, AssistantMessage):
        calls = [
            _WireToolCall(
                id=call.id,
                type="function",
                function=_WireFunctionCall(
                    name=call.name,
                    arguments=_arguments_text(call),
                ),
            )
            for call in message.tool_calls
        ]
        if calls:
            return _WireAssistant(content=message.content, tool_calls=calls)
        # An assistant message needs content or tool calls; an empty reply is sent as "".
        return _WireAssistant(content=message.content or "")
    if isinstance(message, ToolMessage):
        return _WireTool(tool_call_id=message.tool_call_id, content=message.content)
    if isinstance(message, UserMessage):
        return _WireUser(content=message.content)
    if isinstance(message, SystemMessage):
        return _WireSystem(content=message.content)
    raise TypeError(f"not a trurn message: {type(message).__name__}")


def _arguments_text(call: ToolCall) -> str:
    # The model's own text when it was valid JSON (byte-exact history keeps prompt
    # caches warm); "{}" otherwise, since servers may reject a history holding
    # broken JSON and the tool result already told the model what it sent.
    if call.arguments_raw and call.arguments_error is None:
        return call.arguments_raw
    return _encoder.encode(call.arguments).decode()


def _wire_tool(spec: ToolSpec) -> _WireToolDef:
    return _WireToolDef(
        type="function",
        function=_WireFunctionDef(
            name=spec.name, description=spec.description, parameters=spec.parameters
        ),
    )


def encode_request(
    request: Request,
    *,
    model: str,
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
) -> bytes:
    """The JSON body of a streaming Chat Completions call for ``request``.

    Options that are ``None`` are left out. ``tool_choice`` and ``parallel_tool_calls``
    only go with tools (the API refuses them otherwise); a ``tool_choice`` other than
    ``"auto"``, ``"none"`` or ``"required"`` names one of the request's tools and goes
    as ``{"type": "function", "function": {"name": ...}}``. ``stop`` goes as a list
    (an empty one is left out). Reasoning and thinking blocks of earlier replies are
    not sent back: the Chat Completions API has no field for them.

    ``request.extra_body`` is merged in last, replacing the options it names (see
    :func:`~trurn.providers._base.encode_body`). Raises
    :class:`ValueError` for an ``extra_body`` key that would replace ``model``,
    ``messages``, ``stream`` or ``stream_options``, a key that is not a string, a value
    that does not encode as JSON, or a ``tool_choice`` naming a tool the request lacks.
    """
    tools = [_wire_tool(spec) for spec in request.tools] or None
    body = _WireRequest(
        model=request.model or model,
        messages=[_wire_message(message) for message in request.messages],
        stream=True,
        stream_options=_STREAM_OPTIONS,
        tools=tools,
        tool_choice=_tool_choice(request) if tools else None,
        parallel_tool_calls=request.parallel_tool_calls if tools else None,
        temperature=request.temperature,
        stop=list(request.stop) if request.stop else None,
        seed=request.seed,
        reasoning_effort=request.reasoning_effort,
    )
    if max_tokens_field == "max_completion_tokens":
        body.max_completion_tokens = request.max_tokens
    else:
        body.max_tokens = request.max_tokens
    return encode_body(body, request.extra_body, reserved=_RESERVED_FIELDS)


def _tool_choice(request: Request) -> str | _WireNamedToolChoice | None:
    choice = check_tool_choice(request)
    if choice is None or choice in _TOOL_CHOICE_MODES:
        return choice
    return _WireNamedToolChoice(type="function", function=_WireFunctionName(name=choice))


# --- response wire format --------------------------------------------------------------
# Only the fields trurn reads; msgspec skips everything else (logprobs, obfuscation,
# x_groq, content_filter_results, reasoning_details, cost...) without building it.


class _WireFunctionDelta(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class _WireToolCallDelta(msgspec.Struct, gc=False):
    index: int | None = None
    id: str | None = None
    function: _WireFunctionDelta | None = None


class _WireDelta(msgspec.Struct, gc=False):
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_WireToolCallDelta] | None = None


class _WireChoice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _WireDelta | None = None
    finish_reason: str | None = None


class _WirePromptDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class _WireCompletionDetails(msgspec.Struct, gc=False):
    reasoning_tokens: int | None = None


class _WireUsage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: _WirePromptDetails | None = None
    completion_tokens_details: _WireCompletionDetails | None = None
    prompt_cache_hit_tokens: int | None = None  # DeepSeek's name for cached input


class _WireChunk(msgspec.Struct, gc=False):
    choices: list[_WireChoice] = []
    usage: _WireUsage | None = None
    # OpenRouter and others report a failure mid-stream as a chunk with an error object.
    error: WireError | str | None = None


_chunk_decoder = msgspec.json.Decoder(_WireChunk)


def _usage(wire: _WireUsage) -> Usage:
    input_tokens = wire.prompt_tokens or 0
    output_tokens = wire.completion_tokens or 0
    prompt_details = wire.prompt_tokens_details
    cached = prompt_details.cached_tokens if prompt_details is not None else None
    completion_details = wire.completion_tokens_details
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=(
            wire.total_tokens if wire.total_tokens is not None else input_tokens + output_tokens
        ),
        reasoning_tokens=(
            (completion_details.reasoning_tokens or 0) if completion_details is not None else 0
        ),
        cached_input_tokens=(cached if cached is not None else wire.prompt_cache_hit_tokens) or 0,
    )


# --- the stream --------------------------------------------------------------------------


class _ChatStream(SSEResponseStream):
    """One streaming Chat Completions call (see :class:`SSEResponseStream` for entering,
    iterating and leaving).

    Iteration stops after ``[DONE]`` or at the end of the body; a body that ends with a
    finish reason but no ``[DONE]`` is complete, one without a finish reason is a
    :class:`~trurn.MalformedStreamError`, as is a payload that is not a chunk. An
    ``error`` object in a chunk, or an ``event: error`` (Groq), is raised as the typed
    :class:`~trurn.ProviderError` after the chunks that came before it.
    """

    _provider = _PROVIDER

    def __init__(self, call: HTTPCall) -> None:
        super().__init__(call)
        self._finish_reason: str | None = None

    def _missing_end(self) -> str | None:
        return None if self._finish_reason is not None else "no finish_reason and no [DONE]"

    def _responses_api(self, event: str) -> MalformedStreamError:
        # A base_url that leads to OpenAI's newer Responses API: a different wire format
        # (typed response.* events). Say so, rather than report a truncated stream.
        return MalformedStreamError(
            self._mask(
                f"stream from {self._url} is an OpenAI Responses API stream (event {event!r}), "
                "which OpenAIChat does not speak: point base_url at a server with "
                "/chat/completions (Chat Completions)"
            ),
            provider=_PROVIDER,
        )

    def _decode(self, data: bytes) -> list[Chunk]:
        # The hot path: runs once per network read.
        chunks: list[Chunk] = []
        for event in self._sse.feed(data):
            if event.event != "message":
                if event.event == "error":  # Groq: "event: error" with {"error": {...}}
                    self._fail(self._error_event(event.data))
                    break
                if event.event.startswith("response."):
                    self._fail(self._responses_api(event.event))
                    break
                continue  # other event types are not part of this API; skip them
            payload = event.data
            if payload.startswith(b"[DONE]"):
                self._done = self._drain_pending = True
                break
            try:
                wire = _chunk_decoder.decode(payload)
            except msgspec.DecodeError as exc:
                self._fail(self._undecodable(payload, exc, "a chat completion chunk"))
                break
            for choice in wire.choices:
                if choice.index == 0:  # with n > 1, the other choices are not ours
                    self._add_choice(choice, chunks)
            if wire.usage is not None:
                chunks.append(_usage(wire.usage))
            if wire.error is not None:
                self._fail(self._stream_error(wire.error, payload))
                break
        return chunks

    def _add_choice(self, choice: _WireChoice, chunks: list[Chunk]) -> None:
        delta = choice.delta
        if delta is not None:
            if delta.reasoning_content:
                chunks.append(ReasoningDelta(delta.reasoning_content))
            elif delta.reasoning:  # servers that send both send the same text twice
                chunks.append(ReasoningDelta(delta.reasoning))
            if delta.content:
                chunks.append(TextDelta(delta.content))
            if delta.refusal:  # a refusal is what the user gets to read, so it is text
                chunks.append(TextDelta(delta.refusal))
            if delta.tool_calls:
                for call in delta.tool_calls:
                    function = call.function
                    name = function.name if function is not None else None
                    arguments = (function.arguments if function is not None else None) or ""
                    if call.id or name or arguments:
                        chunks.append(
                            ToolCallDelta(
                                index=call.index,
                                id=call.id or None,
                                name=name or None,
                                arguments=arguments,
                            )
                        )
        reason = choice.finish_reason
        # Some servers repeat the finish reason on later chunks; report it once.
        if reason and reason != self._finish_reason:
            self._finish_reason = reason
            chunks.append(Finish(reason))

    def _error_event(self, data: bytes) -> ProviderError:
        try:
            error = _chunk_decoder.decode(data).error
        except msgspec.DecodeError:
            error = None
        return self._stream_error(error, data)


# --- the provider ------------------------------------------------------------------------


class OpenAIChat(HTTPProvider):
    """A :class:`~trurn.providers.Provider` for the OpenAI Chat Completions API.

    ``base_url`` points at any compatible server (``http://localhost:11434/v1`` for
    Ollama, say). ``api_key`` is sent as ``Authorization: Bearer``, only when given; the
    provider never reads environment variables. ``headers`` are added to every request
    (and override the defaults). ``client`` is an ``httpx.AsyncClient`` to use (its
    transport, proxies and limits); the provider never closes it. Without one, the
    provider makes its own on first use and closes it in :meth:`aclose` (or on leaving
    ``async with OpenAIChat(...) as provider``). ``max_tokens_field`` names the field
    that carries ``Request.max_tokens``: ``"max_tokens"``, or ``"max_completion_tokens"``
    for OpenAI's reasoning models, which refuse the former.

    ``headers`` are sent with every request and replace trurn's own of the same name
    (``Authorization`` included): ``{"api-key": ...}`` for Azure OpenAI,
    ``{"HTTP-Referer": ..., "X-Title": ...}`` for OpenRouter. ``query`` holds query
    parameters added to the URL of every request, such as Azure's
    ``{"api-version": "2024-10-21"}``; a query string already in ``base_url`` is kept,
    and ``query`` wins where both name the same parameter. Values of headers and query
    parameters whose names hint at a secret (``auth``, ``key``, ``token``, ``secret``,
    ``sig``...) are masked in error messages, and URLs in errors never show their query.

    The :class:`~trurn.providers.Request` options go on the wire as the API spells them
    (see :func:`encode_request`): ``temperature``, ``max_tokens``, ``stop``, ``seed``,
    ``tool_choice``, ``parallel_tool_calls``, ``reasoning_effort``, a per-request
    ``model``, and ``extra_body`` for anything else the server accepts.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        client: httpx.AsyncClient | None = None,
        headers: Mapping[str, str] | None = None,
        max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
        query: Mapping[str, str] | None = None,
    ) -> None:
        if not model:
            raise ValueError("OpenAIChat needs a model name")
        base = parse_base_url(base_url, "OpenAIChat")
        if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise ValueError(
                "OpenAIChat max_tokens_field must be 'max_tokens' or 'max_completion_tokens', "
                f"got {max_tokens_field!r}"
            )
        url = base.copy_with(path=base.path.rstrip("/") + "/chat/completions")
        if query:
            url = url.copy_merge_params(query)
        super().__init__(
            model,
            url,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            extra_headers=headers,
            api_key=api_key,
            client=client,
        )
        self._max_tokens_field = max_tokens_field

    def stream(self, request: Request) -> _ChatStream:
        """Stream the reply to ``request``: ``async with provider.stream(request) as batches``.

        Nothing is sent until the context is entered. See :class:`_ChatStream` for what
        entering, iterating and leaving do.
        """
        self._check_open()
        body = encode_request(request, model=self._model, max_tokens_field=self._max_tokens_field)
        return _ChatStream(self._post(body))
