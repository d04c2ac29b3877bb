"""The Anthropic Messages adapter: ``POST /v1/messages`` with ``"stream": true``.

Anthropic's stream is a sequence of named events: ``message_start`` (usage of the
prompt), one ``content_block_start`` / ``content_block_delta``... / ``content_block_stop``
run per content block (text, thinking, redacted thinking, tool use, and blocks the
server runs itself such as web search), ``message_delta`` (stop reason, output usage),
``message_stop``, with ``ping`` keep-alives anywhere and an ``error`` event when the
server gives up mid-reply. Each ``data:`` payload is decoded straight from bytes by
one module-level decoder; the per-delta path builds no dicts and formats no strings.

Requests are built from wire Structs. Thinking blocks are sent back with their
signatures (the API checks them when a tool result follows thinking), tool results
go back as ``tool_result`` blocks in a user message, and server-run blocks go back
verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx
import msgspec

from .._chunks import (
    Chunk,
    Finish,
    ReasoningDelta,
    ServerToolBlock,
    TextDelta,
    ThinkingSignature,
    ToolCallDelta,
)
from .._errors import ProviderError
from .._messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolMessage,
    Usage,
    UserMessage,
)
from ._base import Request, ToolSpec, check_tool_choice, encode_body
from ._http import WireError, parse_base_url
from ._streaming import HTTPCall, HTTPProvider, SSEResponseStream

__all__ = ["THINKING_BUDGETS", "AnthropicMessages", "encode_request", "stop_reason"]

_PROVIDER = "anthropic-messages"

THINKING_BUDGETS: Mapping[str, int] = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
"""``reasoning_effort`` → extended-thinking ``budget_tokens`` (1024 is the API's minimum).
``"none"`` turns thinking off, as leaving ``reasoning_effort`` out does."""

# Keys of the request body that ``extra_body`` may not replace: they are what the call is.
_RESERVED_KEYS = ("model", "messages", "stream")

# Anthropic's stop reasons in trurn's vocabulary (the OpenAI names the turn loop knows).
# ``pause_turn`` (a long server-tool turn the client should continue by sending the
# reply back) has no OpenAI counterpart and keeps its name; unknown reasons pass as is.
_STOP_REASONS: Mapping[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
    "pause_turn": "pause_turn",
}


def stop_reason(wire: str) -> str:
    """trurn's finish reason for Anthropic's ``stop_reason``.

    ``end_turn`` and ``stop_sequence`` → ``"stop"``, ``tool_use`` → ``"tool_calls"``,
    ``max_tokens`` and ``model_context_window_exceeded`` → ``"length"``, ``refusal`` →
    ``"content_filter"``; ``pause_turn`` and reasons trurn does not know stay as they are.
    """
    return _STOP_REASONS.get(wire, wire)


# --- request wire format ---------------------------------------------------------------


class _TextBlock(msgspec.Struct, tag_field="type", tag="text"):
    text: str


class _ThinkingBlock(msgspec.Struct, tag_field="type", tag="thinking"):
    thinking: str
    signature: str


class _RedactedThinkingBlock(msgspec.Struct, tag_field="type", tag="redacted_thinking"):
    data: str


class _ToolUseBlock(msgspec.Struct, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class _ToolResultBlock(msgspec.Struct, omit_defaults=True, tag_field="type", tag="tool_result"):
    tool_use_id: str
    # Left out (None) for a result with no visible text: the API takes a tool_result
    # without content, but not an empty or blank one.
    content: str | None = None
    is_error: bool = False


# A server block (web search and its results) is sent back as the dict it arrived as.
_Block = (
    _TextBlock
    | _ThinkingBlock
    | _RedactedThinkingBlock
    | _ToolUseBlock
    | _ToolResultBlock
    | dict[str, Any]
)


class _WireMessage(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: list[_Block]


class _WireTool(msgspec.Struct, omit_defaults=True):
    name: str
    input_schema: dict[str, Any]
    description: str = ""


class _WireToolChoice(msgspec.Struct, omit_defaults=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class _WireThinking(msgspec.Struct):
    type: Literal["enabled"]
    budget_tokens: int


class _WireRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    model: str
    # Always set; None only when extra_body replaces it (see encode_body).
    max_tokens: int | None = None
    messages: list[_WireMessage]
    stream: bool
    system: str | None = None
    tools: list[_WireTool] | None = None
    tool_choice: _WireToolChoice | None = None
    temperature: float | None = None
    stop_sequences: list[str] | None = None
    thinking: _WireThinking | None = None


_encoder = msgspec.json.Encoder()


def _assistant_blocks(message: AssistantMessage) -> list[_Block]:
    # The order the API expects when a reply is sent back: thinking first (tool use
    # after thinking is only accepted with the signed thinking blocks before it).
    blocks: list[_Block] = []
    for thought in message.thinking:
        if thought.redacted is not None:
            blocks.append(_RedactedThinkingBlock(thought.redacted))
        elif thought.signature:
            blocks.append(_ThinkingBlock(thought.text, thought.signature))
        # A block without a signature (a reply cut off mid-thought, or reasoning from
        # another provider) cannot be verified by the API, which refuses it: left out.
    blocks.extend(message.server_blocks)
    text = message.content
    if text is not None and _visible(text):
        blocks.append(_TextBlock(text))
    blocks.extend(_ToolUseBlock(call.id, call.name, call.arguments) for call in message.tool_calls)
    return blocks


def _visible(text: str) -> bool:
    """Whether ``text`` has a character that is not white space.

    The API refuses a text block without one ("text content blocks must contain
    non-whitespace text"), so such text is left out of requests.
    """
    return bool(text) and not text.isspace()


def _wire_messages(messages: Sequence[Message]) -> tuple[str | None, list[_WireMessage]]:
    """(system prompt, messages): roles alternate, same-role neighbours are merged.

    Text with nothing but white space is left out (see :func:`_visible`): an assistant
    message left with no blocks is skipped, a tool result is sent without ``content``.
    A user turn (a user message and the tool results and user messages merged with it)
    left with nothing to send is a ``ValueError`` naming the message: dropping it would
    join the assistant replies around it, and padding it would put words in the user's
    mouth.
    """
    system: list[str] = []
    wire: list[_WireMessage] = []
    # Where each wire user message started, for the error about an empty one.
    starts: list[int] = []
    for position, message in enumerate(messages):
        role: Literal["user", "assistant"]
        blocks: list[_Block]
        if isinstance(message, UserMessage):
            text = message.content
            role, blocks = "user", [_TextBlock(text)] if _visible(text) else []
        elif isinstance(message, ToolMessage):
            result = _ToolResultBlock(
                message.tool_call_id,
                message.content if _visible(message.content) else None,
                is_error=message.status != "ok",
            )
            role, blocks = "user", [result]
        elif isinstance(message, AssistantMessage):
            role, blocks = "assistant", _assistant_blocks(message)
            if not blocks:
                continue  # an empty (aborted) reply: the API refuses empty content
        elif isinstance(message, SystemMessage):
            if message.content:
                system.append(message.content)
            continue
        else:
            raise TypeError(f"not a trurn message: {type(message).__name__}")
        if wire and wire[-1].role == role:
            wire[-1].content.extend(blocks)
        else:
            wire.append(_WireMessage(role, blocks))
            starts.append(position)
    for start, sent in zip(starts, wire, strict=True):
        if not sent.content:
            raise ValueError(
                f"messages[{start}] is a user message with no text (empty or only white "
                "space), which the Anthropic API refuses: give it some text, or leave it out"
            )
    return "\n\n".join(system) or None, wire


def _wire_tool(spec: ToolSpec) -> _WireTool:
    return _WireTool(name=spec.name, input_schema=spec.parameters, description=spec.description)


def _tool_choice(request: Request) -> _WireToolChoice | None:
    choice = check_tool_choice(request)
    no_parallel = True if request.parallel_tool_calls is False else None
    if choice is None:
        # Nothing to say unless parallel calls are off, which only a choice can carry.
        return _WireToolChoice("auto", disable_parallel_tool_use=True) if no_parallel else None
    if choice == "auto":
        return _WireToolChoice("auto", disable_parallel_tool_use=no_parallel)
    if choice == "none":
        return _WireToolChoice("none")
    if choice == "required":
        return _WireToolChoice("any", disable_parallel_tool_use=no_parallel)
    return _WireToolChoice("tool", name=choice, disable_parallel_tool_use=no_parallel)


def _thinking_budget(effort: str | None) -> int | None:
    if effort is None or effort == "none":
        return None
    budget = THINKING_BUDGETS.get(effort)
    if budget is None:
        known = ", ".join(repr(name) for name in (*THINKING_BUDGETS, "none"))
        raise ValueError(f"reasoning_effort must be one of {known}, got {effort!r}")
    return budget


def encode_request(request: Request, *, model: str, max_tokens: int) -> bytes:
    """The JSON body of a streaming Messages call for ``request``.

    System messages become ``system`` (joined by blank lines, wherever they stand);
    ``max_tokens`` is ``request.max_tokens`` or the provider's default: the room for the
    answer. With a ``reasoning_effort`` (see :data:`THINKING_BUDGETS`) thinking is
    enabled, and since the API counts thinking towards ``max_tokens``, the request's
    ``max_tokens`` is the thinking budget plus that room, whatever their sizes.
    Text with nothing but white space is left out (see :func:`_wire_messages`).
    ``tool_choice`` and ``parallel_tool_calls=False`` (``disable_parallel_tool_use``)
    go with tools only. ``seed`` has no Anthropic counterpart and is not sent. With
    thinking on, the API refuses a ``temperature`` other than 1 and a forced tool
    choice; trurn sends what it is given, and the API's 400 says what is wrong.
    ``extra_body`` is merged last, replacing the fields it names (see
    :func:`~trurn.providers._base.encode_body`). Raises ``ValueError`` for an unknown
    ``reasoning_effort`` or ``tool_choice``, a ``max_tokens`` below 1, a user message
    with no text but white space (and nothing merged with it), or an ``extra_body`` that
    would replace ``model``, ``messages`` or ``stream``, has a key that is not a string
    or a value that does not encode as JSON.
    """
    if request.max_tokens is not None and request.max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {request.max_tokens}")
    limit = request.max_tokens if request.max_tokens is not None else max_tokens
    budget = _thinking_budget(request.reasoning_effort)
    if budget is not None:
        limit += budget  # the answer keeps all the room asked for
    system, messages = _wire_messages(request.messages)
    tools = [_wire_tool(spec) for spec in request.tools] or None
    body = _WireRequest(
        model=request.model or model,
        max_tokens=limit,
        messages=messages,
        stream=True,
        system=system,
        tools=tools,
        tool_choice=_tool_choice(request) if tools else None,
        temperature=request.temperature,
        stop_sequences=list(request.stop) if request.stop is not None else None,
        thinking=_WireThinking("enabled", budget) if budget is not None else None,
    )
    return encode_body(body, request.extra_body, reserved=_RESERVED_KEYS)


# --- response wire format --------------------------------------------------------------
# Only the fields trurn reads; msgspec skips the rest (citations, cache_creation,
# service_tier, stop_details...) without building it.


class _WireOutputDetails(msgspec.Struct, gc=False):
    thinking_tokens: int | None = None


class _WireUsage(msgspec.Struct, gc=False):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    output_tokens_details: _WireOutputDetails | None = None


class _WireMessageStart(msgspec.Struct, gc=False):
    usage: _WireUsage | None = None


class _WireDelta(msgspec.Struct, gc=False):
    # content_block_delta: type + one payload field; message_delta: stop_reason.
    type: str = ""
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    signature: str | None = None
    stop_reason: str | None = None


class _WireEvent(msgspec.Struct, gc=False):
    type: str = ""
    index: int = 0
    delta: _WireDelta | None = None
    # Only on content_block_start: a dict, since server blocks are kept verbatim.
    content_block: dict[str, Any] | None = None
    message: _WireMessageStart | None = None
    usage: _WireUsage | None = None
    error: WireError | None = None


_event_decoder = msgspec.json.Decoder(_WireEvent)
_json_decoder = msgspec.json.Decoder()


def _pick(later: int | None, earlier: int | None) -> int:
    if later is not None:
        return later
    return earlier or 0


def _combine_usage(start: _WireUsage | None, end: _WireUsage | None) -> Usage:
    """One :class:`~trurn.Usage` from ``message_start``'s and ``message_delta``'s usage.

    ``message_delta`` counts are cumulative, so they win where present. ``input_tokens``
    is the whole prompt: Anthropic's ``input_tokens`` plus the tokens written to and read
    from the prompt cache (which it counts apart); ``cached_input_tokens`` is the latter.
    """
    first = start or _WireUsage()
    last = end or _WireUsage()
    cache_read = _pick(last.cache_read_input_tokens, first.cache_read_input_tokens)
    input_tokens = (
        _pick(last.input_tokens, first.input_tokens)
        + _pick(last.cache_creation_input_tokens, first.cache_creation_input_tokens)
        + cache_read
    )
    output_tokens = _pick(last.output_tokens, first.output_tokens)
    details = last.output_tokens_details or first.output_tokens_details
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        reasoning_tokens=(details.thinking_tokens or 0) if details is not None else 0,
        cached_input_tokens=cache_read,
    )


# --- the stream --------------------------------------------------------------------------

# What the open content block needs at its content_block_stop.
_PLAIN, _THINKING, _SERVER = 0, 1, 2


class _MessagesStream(SSEResponseStream):
    """One streaming Messages call (see :class:`SSEResponseStream` for entering,
    iterating and leaving).

    Iteration stops after ``message_stop``; a body that ends before it is a
    :class:`~trurn.MalformedStreamError`, as is a payload that is not JSON. An ``error``
    event is raised as the typed :class:`~trurn.ProviderError` (``overloaded_error`` →
    :class:`~trurn.OverloadedError`, and so on) after the chunks that came before it.
    """

    _provider = _PROVIDER

    def __init__(self, call: HTTPCall) -> None:
        super().__init__(call)
        self._start_usage: _WireUsage | None = None
        self._finished = False  # Finish was reported
        # The open content block: its index, what its stop needs, and what it gathered.
        self._block_index = -1
        self._block_kind = _PLAIN
        self._block: dict[str, Any] | None = None
        self._parts: list[str] = []

    def _missing_end(self) -> str | None:
        return "no message_stop"  # only message_stop ends a reply

    def _decode(self, data: bytes) -> list[Chunk]:
        # The hot path: runs once per network read.
        chunks: list[Chunk] = []
        for sse in self._sse.feed(data):
            try:
                event = _event_decoder.decode(sse.data)
            except msgspec.DecodeError as exc:
                # An error event we cannot parse is still an error, not bad framing.
                if sse.event == "error":
                    self._fail(self._stream_error(None, sse.data))
                else:
                    self._fail(self._undecodable(sse.data, exc, "a Messages event"))
                break
            kind = event.type
            if kind == "content_block_delta":
                delta = event.delta
                if delta is not None:
                    self._add_delta(event.index, delta, chunks)
            elif kind == "content_block_start":
                error = self._start_block(event, chunks)
                if error is not None:
                    self._fail(error)
                    break
            elif kind == "content_block_stop":
                error = self._stop_block(event.index, chunks)
                if error is not None:
                    self._fail(error)
                    break
            elif kind == "message_delta":
                self._message_delta(event, chunks)
            elif kind == "message_start":
                if event.message is not None:
                    self._start_usage = event.message.usage
            elif kind == "message_stop":
                self._done = self._drain_pending = True
                break
            elif kind == "error" or sse.event == "error":
                self._fail(self._stream_error(event.error, sse.data))
                break
            # "ping", and event types newer than this adapter, carry nothing for us.
        return chunks

    def _add_delta(self, index: int, delta: _WireDelta, chunks: list[Chunk]) -> None:
        kind = delta.type
        if kind == "text_delta":
            if delta.text:
                chunks.append(TextDelta(delta.text))
        elif kind == "input_json_delta":
            piece = delta.partial_json
            if not piece:
                pass  # the API opens every input with an empty piece: nothing to report
            elif index == self._block_index and self._block_kind == _SERVER:
                self._parts.append(piece)
            else:
                chunks.append(ToolCallDelta(index=index, arguments=piece))
        elif kind == "thinking_delta":
            if delta.thinking:
                chunks.append(ReasoningDelta(delta.thinking))
        elif kind == "signature_delta":
            if index == self._block_index and self._block_kind == _THINKING:
                self._parts.append(delta.signature or "")
            elif delta.signature:  # not inside a thinking block we saw open: report it now
                chunks.append(ThinkingSignature(signature=delta.signature))
        # citations_delta: citations are not kept (the text they annotate is), nor are
        # delta types newer than this adapter.

    def _start_block(self, event: _WireEvent, chunks: list[Chunk]) -> ProviderError | None:
        block = event.content_block
        kind = block.get("type") if block is not None else None
        if block is None or not isinstance(kind, str):
            return self._malformed("a content_block_start without a block type")
        self._block_index = event.index
        self._block_kind = _PLAIN
        self._block = None
        self._parts = []
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str) and text:
                chunks.append(TextDelta(text))
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                return self._malformed("a tool_use block without a string id and name")
            # The API opens the input empty and streams it in deltas; a server that sends
            # it whole in the start instead (some compatible ones do) sends no deltas.
            given = block.get("input")
            arguments = _encoder.encode(given).decode() if isinstance(given, dict) and given else ""
            chunks.append(
                ToolCallDelta(index=event.index, id=call_id, name=name, arguments=arguments)
            )
        elif kind == "thinking":
            self._block_kind = _THINKING
            text = block.get("thinking")
            if isinstance(text, str) and text:
                chunks.append(ReasoningDelta(text))
            signature = block.get("signature")
            if isinstance(signature, str) and signature:
                self._parts.append(signature)
        elif kind == "redacted_thinking":
            data = block.get("data")
            if not isinstance(data, str):
                return self._malformed("a redacted_thinking block without string data")
            chunks.append(ThinkingSignature(redacted=data))
        else:
            # server_tool_use, web_search_tool_result and any block type run by the
            # server: kept whole, reported when it is complete (at its stop).
            self._block_kind = _SERVER
            self._block = block
        return None

    def _stop_block(self, index: int, chunks: list[Chunk]) -> ProviderError | None:
        if index != self._block_index:
            return None  # not the block we hold (or a repeated stop): nothing to close
        kind, self._block_kind, self._block_index = self._block_kind, _PLAIN, -1
        parts, self._parts = self._parts, []
        if kind == _THINKING:
            # One signature per thinking block, so the reducer closes exactly this block.
            chunks.append(ThinkingSignature(signature="".join(parts) or None))
        elif kind == _SERVER:
            block, self._block = self._block, None
            assert block is not None
            if parts:
                raw = "".join(parts)
                try:
                    block = {**block, "input": _json_decoder.decode(raw) if raw else {}}
                except msgspec.DecodeError as exc:
                    return self._malformed(
                        f"a {block.get('type')} block whose input is not JSON ({exc})"
                    )
            chunks.append(ServerToolBlock(block))
        return None

    def _message_delta(self, event: _WireEvent, chunks: list[Chunk]) -> None:
        delta = event.delta
        reason = delta.stop_reason if delta is not None else None
        if reason and not self._finished:
            self._finished = True
            chunks.append(Finish(stop_reason(reason)))
        if event.usage is not None:
            chunks.append(_combine_usage(self._start_usage, event.usage))


# --- the provider ------------------------------------------------------------------------


class AnthropicMessages(HTTPProvider):
    """A :class:`~trurn.providers.Provider` for the Anthropic Messages API.

    ``base_url`` is the API's root (``https://api.anthropic.com``); requests go to
    ``{base_url}/v1/messages``, and a ``base_url`` that already ends in ``/v1`` is
    accepted as well. ``api_key`` is sent as ``x-api-key``, only when given; the
    provider never reads environment variables. ``anthropic_version`` is sent as the
    ``anthropic-version`` header; ``headers`` are added to every request (and override
    the defaults, e.g. ``anthropic-beta``). ``max_tokens`` is used when a request does
    not set it, since the API requires it. ``client`` is an ``httpx.AsyncClient`` to
    use; the provider never closes it. Without one, the provider makes its own on first
    use and closes it in :meth:`aclose` (or on leaving ``async with``).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "https://api.anthropic.com",
        api_key: str | None = None,
        client: httpx.AsyncClient | None = None,
        headers: Mapping[str, str] | None = None,
        max_tokens: int = 4096,
        anthropic_version: str = "2023-06-01",
    ) -> None:
        if not model:
            raise ValueError("AnthropicMessages needs a model name")
        base = parse_base_url(base_url, "AnthropicMessages")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(
                f"AnthropicMessages max_tokens must be an int >= 1, got {max_tokens!r}"
            )
        if not anthropic_version or "\n" in anthropic_version or "\r" in anthropic_version:
            raise ValueError(
                f"AnthropicMessages anthropic_version must be one line, got {anthropic_version!r}"
            )
        path = base.path.rstrip("/")
        if not path.endswith("/v1"):
            path += "/v1"
        own_headers = {"anthropic-version": anthropic_version}
        if api_key:
            own_headers["x-api-key"] = api_key
        super().__init__(
            model,
            base.copy_with(path=path + "/messages"),
            headers=own_headers,
            extra_headers=headers,
            api_key=api_key,
            client=client,
        )
        self._max_tokens = max_tokens

    def stream(self, request: Request) -> _MessagesStream:
        """Stream the reply to ``request``: ``async with provider.stream(request) as batches``.

        Nothing is sent until the context is entered. Raises ``ValueError`` at once for
        a request this API cannot express (see :func:`encode_request`). See
        :class:`_MessagesStream` for what entering, iterating and leaving do.
        """
        self._check_open()
        body = encode_request(request, model=self._model, max_tokens=self._max_tokens)
        return _MessagesStream(self._post(body))
