"""What the scripted server answers: replies, faults, the parsed request, and a demo model.

A *script* is either a sequence of :class:`Reply` (one per request, in order) or a
function from the parsed :class:`ChatRequest` to a :class:`Reply`. Everything here is
plain data and pure functions; the server in ``_server.py`` turns a reply into bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from .._messages import Usage

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "DropConnection",
    "EndWithoutDone",
    "ErrorChunk",
    "Fault",
    "FunctionDefinition",
    "MalformedChunk",
    "MessagesMessage",
    "MessagesRequest",
    "MessagesTool",
    "Reply",
    "RequestFunctionCall",
    "RequestToolCall",
    "Script",
    "ScriptedToolCall",
    "StatusError",
    "StreamOptions",
    "ToolDefinition",
    "demo_model",
]


# --------------------------------------------------------------------------- the request


class RequestFunctionCall(msgspec.Struct, frozen=True):
    """The function part of a tool call the client sent back in its history."""

    name: str
    arguments: str = ""


class RequestToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call inside an assistant message of the request's history."""

    id: str
    function: RequestFunctionCall
    type: str = "function"


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message of the request's ``messages``.

    ``content`` is a string, a list of content parts (``{"type": "text", "text": ...}``)
    or ``None``; :attr:`text` flattens it to a string.
    """

    role: str
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[RequestToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    reasoning_content: str | None = None

    @property
    def text(self) -> str:
        """The message's text: ``content`` itself, or its text parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(
            part["text"]
            for part in self.content
            if part.get("type") == "text" and isinstance(part.get("text"), str)
        )


class FunctionDefinition(msgspec.Struct, frozen=True, kw_only=True):
    """A function tool offered in the request: name, description, JSON Schema."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the request's ``tools``."""

    type: str = "function"
    function: FunctionDefinition | None = None


class StreamOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The request's ``stream_options``."""

    include_usage: bool = False


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed ``POST /v1/chat/completions`` body (fields the server does not know are ignored)."""

    model: str
    messages: list[ChatMessage]
    tools: list[ToolDefinition] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    reasoning_effort: str | None = None

    @property
    def tool_names(self) -> list[str]:
        """Names of the function tools the request offers, in order."""
        return [t.function.name for t in self.tools or () if t.function is not None]

    @property
    def include_usage(self) -> bool:
        """Whether the client asked for a final usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


# --------------------------------------------------------------------------- Anthropic requests
# A POST /v1/messages body, parsed, then normalised into a ChatRequest so one script
# (and demo_model) answers both endpoints.


class MessagesTool(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of an Anthropic request's ``tools``."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class MessagesMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message of an Anthropic request: a string or a list of content blocks."""

    role: str
    content: str | list[dict[str, Any]]


class MessagesRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed ``POST /v1/messages`` body (fields the server does not know are ignored)."""

    model: str
    max_tokens: int
    messages: list[MessagesMessage]
    system: str | list[dict[str, Any]] | None = None
    tools: list[MessagesTool] | None = None
    tool_choice: dict[str, Any] | None = None
    stream: bool = False
    temperature: float | None = None
    stop_sequences: list[str] | None = None
    thinking: dict[str, Any] | None = None

    def to_chat(self) -> ChatRequest:
        """The same conversation as a :class:`ChatRequest`, which scripts receive.

        ``system`` becomes a system message; text blocks become ``content``; thinking
        becomes ``reasoning_content``; ``tool_use`` blocks become ``tool_calls`` (their
        ``input`` encoded as JSON); each ``tool_result`` block becomes a ``tool`` message,
        in place. Other blocks (images, server tools) are left out.
        """
        messages: list[ChatMessage] = []
        if self.system:
            messages.append(ChatMessage(role="system", content=_blocks_text(self.system)))
        for message in self.messages:
            messages.extend(_chat_messages(message))
        tools = [
            ToolDefinition(
                function=FunctionDefinition(
                    name=tool.name, description=tool.description, parameters=tool.input_schema
                )
            )
            for tool in self.tools or ()
        ]
        return ChatRequest(
            model=self.model,
            messages=messages,
            tools=tools or None,
            tool_choice=self.tool_choice,
            stream=self.stream,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
        )


def _blocks_text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(
        block["text"]
        for block in content
        if block.get("type") == "text" and isinstance(block.get("text"), str)
    )


def _chat_messages(message: MessagesMessage) -> list[ChatMessage]:
    if isinstance(message.content, str):
        return [ChatMessage(role=message.role, content=message.content)]
    out: list[ChatMessage] = []
    text: list[str] = []
    thinking: list[str] = []
    calls: list[RequestToolCall] = []
    for block in message.content:
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thinking.append(block["thinking"])
        elif kind == "tool_use":
            arguments = msgspec.json.encode(block.get("input", {})).decode()
            calls.append(
                RequestToolCall(
                    id=str(block.get("id", "")),
                    function=RequestFunctionCall(str(block.get("name", "")), arguments),
                )
            )
        elif kind == "tool_result":
            content = block.get("content", "")
            out.append(
                ChatMessage(
                    role="tool",
                    tool_call_id=str(block.get("tool_use_id", "")),
                    content=content if isinstance(content, (str, list)) else str(content),
                )
            )
    if text or thinking or calls or not out:
        out.append(
            ChatMessage(
                role=message.role,
                content="".join(text),
                tool_calls=calls or None,
                reasoning_content="".join(thinking) or None,
            )
        )
    return out


# --------------------------------------------------------------------------- faults


def _check_position(value: int, field: str, fault: str) -> None:
    if value < 0:
        raise ValueError(f"{fault}.{field} must be >= 0, got {value}")


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_one_line(text: str, where: str) -> None:
    if "\r" in text or "\n" in text:
        raise ValueError(f"{where} must not contain a line break, got {text!r}")


class StatusError(msgspec.Struct, frozen=True, tag_field="fault", tag="status_error"):
    """Answer with an HTTP error status instead of a stream.

    The body is an OpenAI-style error, ``{"error": {"message", "type", "param", "code"}}``;
    ``message``, ``type`` and ``code`` default to what OpenAI sends for that status. On
    the Anthropic endpoint it is Anthropic's ``{"type": "error", "error": {"type",
    "message"}}``, with Anthropic's defaults (401 ``authentication_error``, 429
    ``rate_limit_error``, 500 ``api_error``, 529 ``overloaded_error``, 400
    ``invalid_request_error``...), and ``code`` is not sent.
    ``retry_after`` (seconds) becomes a ``Retry-After`` header; ``headers`` are added as
    they are. ``body`` replaces the JSON body verbatim (with ``content_type``), e.g. to
    send an HTML page, possibly with status 200.
    """

    status: int = 500
    message: str | None = None
    type: str | None = None
    code: str | None = None
    retry_after: float | None = None
    headers: dict[str, str] = {}
    body: str | None = None
    content_type: str = "application/json"

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"StatusError.status must be in 200..599, got {self.status}")
        if self.retry_after is not None and not (
            math.isfinite(self.retry_after) and self.retry_after >= 0
        ):
            raise ValueError(f"StatusError.retry_after must be >= 0, got {self.retry_after}")
        for name, value in self.headers.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"StatusError.headers: {name!r} is not a valid header name")
            _check_one_line(value, f"StatusError.headers[{name!r}]")
        _check_one_line(self.content_type, "StatusError.content_type")


class MalformedChunk(msgspec.Struct, frozen=True, tag_field="fault", tag="malformed_chunk"):
    """Send ``data: <data>`` (not JSON by default) instead of the chunk at index ``at``.

    Chunk indices count the reply's ``data:`` events from 0 (the role chunk; on the
    Anthropic endpoint, ``message_start``, pings included). An ``at`` past the last
    chunk puts the bad event just before ``data: [DONE]`` (or ``message_stop``). The
    rest of the stream is sent normally.
    """

    at: int
    data: str = "{not json"

    def __post_init__(self) -> None:
        _check_position(self.at, "at", "MalformedChunk")
        _check_one_line(self.data, "MalformedChunk.data")


class ErrorChunk(msgspec.Struct, frozen=True, tag_field="fault", tag="error_chunk"):
    """After ``after`` chunks, send ``data: {"error": {...}}`` and end the stream (no [DONE]).

    On the Anthropic endpoint: ``event: error`` with ``{"type": "error", "error":
    {"type", "message"}}`` (the default ``server_error`` is sent as ``api_error``).
    """

    after: int
    message: str = "The server had an error while processing your request."
    type: str = "server_error"
    code: str | None = None

    def __post_init__(self) -> None:
        _check_position(self.after, "after", "ErrorChunk")


class DropConnection(msgspec.Struct, frozen=True, tag_field="fault", tag="drop_connection"):
    """After ``after`` chunks, close the connection without ending the chunked body."""

    after: int

    def __post_init__(self) -> None:
        _check_position(self.after, "after", "DropConnection")


class EndWithoutDone(msgspec.Struct, frozen=True, tag_field="fault", tag="end_without_done"):
    """After ``after`` chunks, end the response cleanly, without [DONE] (or, on the
    Anthropic endpoint, without ``message_stop``).

    Pick ``after`` before the finish chunk to also leave out ``finish_reason``.
    """

    after: int

    def __post_init__(self) -> None:
        _check_position(self.after, "after", "EndWithoutDone")


Fault = StatusError | MalformedChunk | ErrorChunk | DropConnection | EndWithoutDone
"""Something going wrong on purpose; a tagged union on ``fault``."""


# --------------------------------------------------------------------------- replies


class ScriptedToolCall(msgspec.Struct, frozen=True):
    """A tool call the scripted model makes.

    ``arguments`` is encoded as JSON, or sent verbatim when it is a string (so a test
    can send invalid JSON). ``id`` defaults to ``call_<n>``, ``n`` counting the tool
    calls of the conversation from 1. The argument text is streamed in ``chunks`` pieces.
    """

    name: str
    arguments: dict[str, Any] | str = {}
    id: str | None = None
    chunks: int = 3

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ScriptedToolCall.name must not be empty")
        if self.chunks < 1:
            raise ValueError(f"ScriptedToolCall.chunks must be >= 1, got {self.chunks}")

    @property
    def arguments_text(self) -> str:
        """The argument text as it goes on the wire."""
        if isinstance(self.arguments, str):
            return self.arguments
        return msgspec.json.encode(self.arguments).decode()


class Reply(msgspec.Struct, frozen=True):
    """One scripted model reply.

    Streamed in this order: the role chunk, ``reasoning`` in ``reasoning_chunks``
    pieces (as ``reasoning_content``), ``text`` in ``text_chunks`` pieces, each tool
    call (its id and name first, then its arguments), the ``finish_reason`` chunk
    (default ``"tool_calls"`` when there are tool calls, else ``"stop"``) and, when the
    client asked for it, a usage chunk (``usage`` or a rough estimate from the text
    lengths; ``total_tokens`` of 0 means input + output).

    The server waits ``chunk_delay`` seconds (``trio.sleep``, so virtual clocks apply)
    before each event, ``data: [DONE]`` included. ``fault`` makes the reply go wrong;
    ``model`` overrides the request's model in the chunks.

    On the Anthropic endpoint the same reply is a thinking block (``thinking_delta``
    pieces, then a ``signature_delta``), a text block (``text_delta`` pieces), a
    ``tool_use`` block per call (``input_json_delta`` pieces, ids ``toolu_<n>``), and a
    ``message_delta`` whose stop reason is the finish reason in Anthropic's words
    (``stop`` → ``end_turn``, ``tool_calls`` → ``tool_use``, ``length`` →
    ``max_tokens``, ``content_filter`` → ``refusal``; others as they are). Usage is
    always sent: the prompt in ``message_start`` (cached tokens as
    ``cache_read_input_tokens``), the output in ``message_delta``.
    """

    text: str = ""
    text_chunks: int = 1
    reasoning: str = ""
    reasoning_chunks: int = 1
    tool_calls: list[ScriptedToolCall] = []
    finish_reason: str | None = None
    usage: Usage | None = None
    chunk_delay: float = 0.0
    fault: Fault | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        if self.text_chunks < 1:
            raise ValueError(f"Reply.text_chunks must be >= 1, got {self.text_chunks}")
        if self.reasoning_chunks < 1:
            raise ValueError(f"Reply.reasoning_chunks must be >= 1, got {self.reasoning_chunks}")
        if not (math.isfinite(self.chunk_delay) and self.chunk_delay >= 0):
            raise ValueError(f"Reply.chunk_delay must be >= 0, got {self.chunk_delay}")


Script = Sequence[Reply] | Callable[[ChatRequest], Reply]
"""Replies in order, or a function choosing the reply for each request."""


def estimate_tokens(text: str) -> int:
    """A rough token count: a token is about four characters."""
    return math.ceil(len(text) / 4)


def reply_usage(reply: Reply, request: ChatRequest) -> Usage:
    """The usage the server reports for ``reply``: the scripted one or an estimate."""
    if reply.usage is not None:
        usage = reply.usage
        if usage.total_tokens:
            return usage
        return msgspec.structs.replace(usage, total_tokens=usage.input_tokens + usage.output_tokens)
    prompt = 0
    for message in request.messages:
        prompt += 3 + estimate_tokens(message.text)
        for call in message.tool_calls or ():
            prompt += estimate_tokens(call.function.name + call.function.arguments)
    reasoning = estimate_tokens(reply.reasoning)
    output = reasoning + estimate_tokens(reply.text)
    for tool_call in reply.tool_calls:
        output += estimate_tokens(tool_call.name + tool_call.arguments_text)
    output = max(output, 1)
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        total_tokens=prompt + output,
        reasoning_tokens=reasoning,
    )


# --------------------------------------------------------------------------- demo model

_DEFAULT_CITY = "Tokyo"
# "in" followed by a word, then any capitalised words ("in New York today" -> "New York").
_CITY = re.compile(r"\b[Ii]n\s+([^\W\d_][\w'-]*(?:\s+[A-Z][\w'-]*)*)")


def _find_city(text: str) -> str:
    matches = _CITY.findall(text)
    return matches[-1] if matches else _DEFAULT_CITY


def _tool_calls_by_id(request: ChatRequest) -> dict[str, RequestFunctionCall]:
    return {
        call.id: call.function
        for message in request.messages
        if message.role == "assistant"
        for call in message.tool_calls or ()
    }


def _answer_tool_results(request: ChatRequest) -> Reply:
    calls = _tool_calls_by_id(request)
    results: list[ChatMessage] = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        results.append(message)
    sentences = []
    for message in reversed(results):
        call = calls.get(message.tool_call_id or "")
        city = None
        if call is not None and call.name == "get_weather":
            try:
                arguments = msgspec.json.decode(call.arguments)
            except msgspec.DecodeError:
                arguments = None
            if isinstance(arguments, dict) and isinstance(arguments.get("city"), str):
                city = arguments["city"]
        if city is not None:
            sentences.append(f"In {city} it is {message.text}.")
        else:
            name = call.name if call is not None else "tool"
            sentences.append(f"The {name} tool returned: {message.text}.")
    return Reply(
        text=" ".join(sentences),
        text_chunks=4,
        reasoning="The tool answered, so I can reply now.",
        reasoning_chunks=2,
    )


def demo_model(request: ChatRequest) -> Reply:
    """trurn's built-in offline model: a deterministic weather assistant.

    - The last message is from the user and the request offers ``get_weather``: say
      "Let me check the weather." and call ``get_weather`` with the city named after
      "in" in the user's text (``"Tokyo"`` when there is none).
    - The last messages are tool results: quote them ("In Tokyo it is sunny."), in
      several chunks, after a short reasoning delta.
    - Otherwise: a short text saying what it can do.
    """
    last = request.messages[-1] if request.messages else None
    if last is not None and last.role == "tool":
        return _answer_tool_results(request)
    if last is not None and last.role == "user" and "get_weather" in request.tool_names:
        city = _find_city(last.text)
        return Reply(
            text="Let me check the weather.",
            tool_calls=[ScriptedToolCall("get_weather", {"city": city})],
        )
    return Reply(
        text=(
            "Hello! I am trurn's offline demo model. Ask me about the weather in a city "
            "and offer me a get_weather tool, and I will call it."
        ),
        text_chunks=4,
    )
