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

from collections.abc import AsyncGenerator, Mapping
from types import TracebackType
from typing import Any, Literal, NoReturn, cast

import httpx
import msgspec
import trio

from .._chunks import Chunk, Finish, ReasoningDelta, TextDelta, ToolCallDelta
from .._errors import (
    MalformedStreamError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
)
from .._messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
)
from .._sse import SSEDecoder
from ._base import Request, ToolSpec
from ._http import (
    WireError,
    describe_url,
    error_from_payload,
    error_from_response,
    excerpt,
    mask,
)

__all__ = ["OpenAIChat"]

_PROVIDER = "openai-chat"
_DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
# How much of an error body we read: enough for any JSON error, bounded for a huge page.
_ERROR_BODY_LIMIT = 65536
# After [DONE], how much more body (bytes) and time (seconds) we read before closing.
_DRAIN_LIMIT = 65536
_DRAIN_GRACE = 1.0
# Header and query parameter names whose values are masked in errors ("sig": Azure SAS).
_SECRET_HINTS = ("auth", "key", "token", "secret", "cookie", "sig", "password")


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
_RESERVED_FIELDS = frozenset({"model", "messages", "stream", "stream_options"})
# The option fields ``extra_body`` may replace: they are left out of the encoded Struct
# (set to their ``None`` default) so the spliced-in value is the only one on the wire.
_OPTION_FIELDS = frozenset(_WireRequest.__struct_fields__) - _RESERVED_FIELDS
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

    ``request.extra_body`` is merged in last, at the JSON level: the Struct is encoded
    without the options ``extra_body`` replaces, ``extra_body`` is encoded on its own,
    and the two objects are spliced into one (no dict is built from the Struct). Raises
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
    extra = request.extra_body
    if not extra:
        return _encoder.encode(body)
    return _merge_extra_body(body, extra)


def _tool_choice(request: Request) -> str | _WireNamedToolChoice | None:
    choice = request.tool_choice
    if choice is None or choice in _TOOL_CHOICE_MODES:
        return choice
    if not any(spec.name == choice for spec in request.tools):
        names = ", ".join(repr(spec.name) for spec in request.tools)
        raise ValueError(
            f"tool_choice {choice!r} is not 'auto', 'none', 'required' or the name of one "
            f"of the request's tools ({names})"
        )
    return _WireNamedToolChoice(type="function", function=_WireFunctionName(name=choice))


def _merge_extra_body(body: _WireRequest, extra: Mapping[str, Any]) -> bytes:
    # Splicing two encoded objects keeps the history (the bulk of the body) out of any
    # dict: it is encoded once, straight from the Structs, as without extra_body.
    replaced: dict[str, None] = {}
    for key in extra:
        if not isinstance(key, str):
            raise ValueError(f"extra_body keys must be strings, got {key!r}")
        if key in _RESERVED_FIELDS:
            raise ValueError(
                f"extra_body may not set {key!r}: trurn sets model, messages, stream and "
                "stream_options itself (use Request.model to change the model)"
            )
        if key in _OPTION_FIELDS:
            replaced[key] = None
    try:
        tail = _encoder.encode(extra if isinstance(extra, dict) else dict(extra))
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValueError(f"extra_body does not encode as JSON: {exc}") from exc
    if replaced:
        body = msgspec.structs.replace(body, **replaced)
    head = _encoder.encode(body)
    # head is a non-empty object ("model" is always there): b'{...}'; tail is b'{...}'.
    if tail == b"{}":
        return head
    return head[:-1] + b"," + tail[1:]


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


class _ChatStream:
    """One streaming call: an async context manager that yields itself, an async
    iterator of chunk batches.

    Entering sends the request and checks the response; iterating reads it; leaving
    closes it. Errors the provider sends inside the stream are raised on the
    iteration *after* the batch holding the chunks decoded before them, so no partial
    output is lost.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        request: httpx.Request,
        url_text: str,
        secrets: tuple[str, ...],
    ) -> None:
        self._client = client
        self._request = request
        self._secrets = secrets
        self._url = url_text
        self._response: httpx.Response | None = None
        self._bytes: AsyncGenerator[bytes, None] | None = None
        self._sse = SSEDecoder()
        self._error: ProviderError | None = None
        self._finish_reason: str | None = None
        # No more chunks will come: [DONE], an error, the end of the body, or closed.
        self._done = False
        # [DONE] or an in-stream error arrived before the end of the body.
        self._drain_pending = False
        self._entered = False

    @property
    def response(self) -> httpx.Response | None:
        """The HTTP response once the context is entered (status, headers such as
        ``x-request-id``); closed when the context is left."""
        return self._response

    async def __aenter__(self) -> _ChatStream:
        """Send the request and wait for the response headers (a checkpoint).

        Raises the typed :class:`~trurn.ProviderError` for a non-2xx status, a reply that
        is not an event stream, a timeout or a connection failure. If this raises or is
        cancelled, no response is left open.
        """
        if self._entered:
            raise RuntimeError("a provider stream can be entered only once")
        self._entered = True
        try:
            response = await self._client.send(self._request, stream=True)
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(
                f"no answer from {self._url} in time ({type(exc).__name__})", provider=_PROVIDER
            ) from exc
        except httpx.TransportError as exc:
            raise ProviderConnectionError(
                f"could not reach {self._url}: {self._describe(exc)}", provider=_PROVIDER
            ) from exc
        try:
            if not response.is_success:
                body = await self._read_some(response)
                raise error_from_response(response, body, provider=_PROVIDER, secrets=self._secrets)
            content_type = response.headers.get("content-type")
            if content_type is not None and not _is_event_stream(content_type):
                body = await self._read_some(response)
                raise MalformedStreamError(
                    f"expected an event stream from {self._url} but got {content_type!r}: "
                    f"{excerpt(body)}",
                    status_code=response.status_code,
                    provider=_PROVIDER,
                )
        except BaseException:
            await response.aclose()
            raise
        self._response = response
        self._bytes = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the response (a checkpoint). Safe on error and under cancellation."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP response; idempotent."""
        self._done = True
        byte_iter, self._bytes = self._bytes, None
        try:
            if byte_iter is not None:
                await byte_iter.aclose()
        finally:
            if self._response is not None:
                try:
                    await self._response.aclose()  # idempotent in httpx
                except httpx.TransportError:
                    pass  # the connection is dead already; there is nothing left to close

    def __aiter__(self) -> _ChatStream:
        return self

    async def __anext__(self) -> list[Chunk]:
        """The chunks of the next network read (a checkpoint); never an empty batch.

        Raises :class:`StopAsyncIteration` after ``[DONE]`` or the end of the body (a
        body that ends with a finish reason but no ``[DONE]`` is complete);
        :class:`~trurn.MalformedStreamError` for a payload that is not a chunk, or a body
        that ended before the reply finished; :class:`~trurn.ProviderConnectionError` /
        :class:`~trurn.ProviderTimeout` when the connection fails mid-reply; the typed
        :class:`~trurn.ProviderError` for an error the provider sent in the stream.

        An error found in the middle of a read is raised by the *next* call, after the
        chunks decoded before it were returned. After ``[DONE]`` (or such an error), the
        next call first reads what is left of the body, at most 64 KiB for at most a
        second, so the connection can be reused. Cancellation while waiting for bytes
        ends the iteration; leaving the ``async with`` block closes the response.
        """
        if self._done:
            await self._end()
        byte_iter = self._bytes
        if byte_iter is None:
            raise RuntimeError("iterate a provider stream inside its 'async with' block")
        while True:
            try:
                data = await byte_iter.__anext__()
            except StopAsyncIteration:
                self._done = True
                if self._finish_reason is None:
                    raise MalformedStreamError(
                        f"stream from {self._url} ended before the reply finished "
                        "(no finish_reason and no [DONE])",
                        provider=_PROVIDER,
                    ) from None
                raise
            except httpx.TimeoutException as exc:
                self._done = True
                raise ProviderTimeout(
                    f"{self._url} stopped sending mid-reply ({type(exc).__name__})",
                    provider=_PROVIDER,
                ) from exc
            except httpx.TransportError as exc:
                self._done = True
                raise ProviderConnectionError(
                    f"connection to {self._url} failed mid-reply: {self._describe(exc)}",
                    provider=_PROVIDER,
                ) from exc
            except httpx.DecodingError as exc:
                self._done = True
                raise MalformedStreamError(
                    f"could not decode the body from {self._url}: {exc}", provider=_PROVIDER
                ) from exc
            except BaseException:  # Cancelled, KeyboardInterrupt: httpx's iterator is gone
                self._done = True
                raise
            batch = self._decode(data)
            if batch:
                return batch
            if self._done:
                await self._end()

    async def _end(self) -> NoReturn:
        """Finish iteration: drain the body if [DONE] or an error left some of it unread,
        then raise the pending in-stream error, or StopAsyncIteration."""
        if self._drain_pending:
            self._drain_pending = False
            await self._drain()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        raise StopAsyncIteration

    async def _drain(self) -> None:
        # What follows [DONE] (or an in-stream error) is normally just the end of the body.
        # Reading it lets httpcore put the connection back in the pool, and lets httpx's
        # nested async generators finish instead of being collected half-way (which Trio
        # reports as a ResourceWarning). A server that keeps sending, or keeps the
        # response open, gets a bounded amount of patience, then the response is closed.
        byte_iter = self._bytes
        if byte_iter is None:
            return
        budget = _DRAIN_LIMIT
        with trio.move_on_after(_DRAIN_GRACE):
            try:
                async for data in byte_iter:
                    budget -= len(data)
                    if budget < 0:
                        break
            except httpx.HTTPError:
                pass  # the reply is complete; a failure after it changes nothing

    def _decode(self, data: bytes) -> list[Chunk]:
        # The hot path: runs once per network read.
        chunks: list[Chunk] = []
        for event in self._sse.feed(data):
            if event.event != "message":
                if event.event == "error":  # Groq: "event: error" with {"error": {...}}
                    self._fail(self._error_event(event.data))
                    break
                continue  # other event types are not part of this API; skip them
            payload = event.data
            if payload.startswith(b"[DONE]"):
                self._done = self._drain_pending = True
                break
            try:
                wire = _chunk_decoder.decode(payload)
            except msgspec.DecodeError as exc:
                malformed = MalformedStreamError(
                    f"stream from {self._url} sent a data payload that is not a chat "
                    f"completion chunk ({exc}): {excerpt(payload)}",
                    provider=_PROVIDER,
                )
                malformed.__cause__ = exc
                self._fail(malformed)
                break
            for choice in wire.choices:
                if choice.index == 0:  # with n > 1, the other choices are not ours
                    self._add_choice(choice, chunks)
            if wire.usage is not None:
                chunks.append(_usage(wire.usage))
            if wire.error is not None:
                self._fail(
                    error_from_payload(wire.error, provider=_PROVIDER, secrets=self._secrets)
                )
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

    def _fail(self, error: ProviderError) -> None:
        self._error = error
        self._done = self._drain_pending = True

    def _error_event(self, data: bytes) -> ProviderError:
        try:
            wire = _chunk_decoder.decode(data)
        except msgspec.DecodeError:
            wire = None
        if wire is None or wire.error is None:
            return ProviderError(
                f"error in stream from {self._url}: {excerpt(data)}", provider=_PROVIDER
            )
        return error_from_payload(wire.error, provider=_PROVIDER, secrets=self._secrets)

    def _describe(self, exc: Exception) -> str:
        return mask(str(exc) or type(exc).__name__, self._secrets)

    async def _read_some(self, response: httpx.Response) -> bytes:
        """Up to ``_ERROR_BODY_LIMIT`` bytes of the body, for an error message."""
        parts: list[bytes] = []
        size = 0
        pieces = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
        try:
            async for piece in pieces:
                parts.append(piece)
                size += len(piece)
                if size >= _ERROR_BODY_LIMIT:
                    break
        except httpx.TransportError:
            pass  # the status alone still says what went wrong
        finally:
            await pieces.aclose()
        return b"".join(parts)[:_ERROR_BODY_LIMIT]


def _secret_values(pairs: Mapping[str, str]) -> list[str]:
    """The values in ``pairs`` whose names hint at a secret, to mask in error messages."""
    return [
        value
        for name, value in pairs.items()
        if value and any(hint in name.lower() for hint in _SECRET_HINTS)
    ]


def _is_event_stream(content_type: str) -> bool:
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


# --- the provider ------------------------------------------------------------------------


class OpenAIChat:
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
        try:
            base = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"OpenAIChat base_url is not a URL: {exc}") from exc
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(
                f"OpenAIChat base_url must be an http(s) URL, got {describe_url(base)!r}"
            )
        if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise ValueError(
                "OpenAIChat max_tokens_field must be 'max_tokens' or 'max_completion_tokens', "
                f"got {max_tokens_field!r}"
            )
        self._model = model
        url = base.copy_with(path=base.path.rstrip("/") + "/chat/completions")
        if query:
            url = url.copy_merge_params(query)
        self._url = url
        # For error messages; computed once, as parsing URLs costs more than a chunk does.
        self._url_text = describe_url(self._url)
        self._max_tokens_field = max_tokens_field
        self._headers = httpx.Headers(
            {"Accept": "text/event-stream", "Content-Type": "application/json"}
        )
        secrets: list[str] = []
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
            secrets.append(api_key)
        if headers:
            self._headers.update(headers)
            secrets.extend(_secret_values(headers))
        if query:
            secrets.extend(_secret_values(query))
        self._secrets = tuple(secrets)
        self._client = client
        self._owns_client = client is None
        self._closed = False

    @property
    def model(self) -> str:
        """The default model name."""
        return self._model

    def __repr__(self) -> str:
        return f"OpenAIChat({self._model!r}, base_url={describe_url(self._url)!r})"

    def stream(self, request: Request) -> _ChatStream:
        """Stream the reply to ``request``: ``async with provider.stream(request) as batches``.

        Nothing is sent until the context is entered. See :class:`_ChatStream` for what
        entering, iterating and leaving do.
        """
        if self._closed:
            raise trio.ClosedResourceError("this OpenAIChat provider was closed")
        body = encode_request(request, model=self._model, max_tokens_field=self._max_tokens_field)
        client = self._client
        if client is None:
            client = self._client = httpx.AsyncClient(timeout=_DEFAULT_TIMEOUT)
        http_request = client.build_request("POST", self._url, content=body, headers=self._headers)
        return _ChatStream(client, http_request, self._url_text, self._secrets)

    async def aclose(self) -> None:
        """Close the HTTP client the provider made itself (a checkpoint); idempotent.

        An injected client is left open: it belongs to the caller.
        """
        self._closed = True
        client, self._client = self._client, None
        if self._owns_client and client is not None:
            await client.aclose()
        else:
            await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> OpenAIChat:
        await trio.lowlevel.checkpoint()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
