"""The Anthropic baseline: the benchmark turn over the Messages API, by hand.

The same conversation as ``_baseline.py``, spoken the way Anthropic's API wants it,
and byte for byte the requests trurn's ``AnthropicMessages`` sends (same JSON bodies,
same headers; ``_check.py`` proves it before every run): one streamed
``POST /v1/messages`` per model reply, SSE lines split by hand from
``aiter_bytes()``, each ``data:`` payload decoded by one module-level ``msgspec``
decoder into a flat event Struct holding only the fields this client reads, text and
``input_json_delta`` pieces accumulated per content block, the tool's input decoded
into a Struct, the tool awaited, and its result sent back as a ``tool_result`` block.

The tool's input goes back to the API as the JSON text the model streamed
(``msgspec.Raw``), never decoded into a dict and re-encoded: the cheapest correct
thing a hand-written client can do, so the comparison is not flattered.

Like the OpenAI baseline it has no typed events, no history of typed messages, no
typed errors, no cancellation clean-up and no tool errors the model can read.
"""

from __future__ import annotations

import httpx
import msgspec
from _scenario import MODEL, TOOL_DESCRIPTION, TOOL_NAME, TOOL_PARAMETERS, tool_result

__all__ = ["ANTHROPIC_VERSION", "MAX_TOKENS", "Outcome", "run_turn"]

_MAX_STEPS = 10
# What AnthropicMessages sends when neither the caller nor the request says otherwise.
ANTHROPIC_VERSION = "2023-06-01"
MAX_TOKENS = 4096
_HEADERS = {
    "Accept": "text/event-stream",
    "Content-Type": "application/json",
    "anthropic-version": ANTHROPIC_VERSION,
}
_TOOLS = [{"name": TOOL_NAME, "input_schema": TOOL_PARAMETERS, "description": TOOL_DESCRIPTION}]


class _Block(msgspec.Struct):
    type: str
    id: str = ""
    name: str = ""


class _Delta(msgspec.Struct):
    # content_block_delta: type and text or partial_json; message_delta: stop_reason.
    type: str = ""
    text: str = ""
    partial_json: str = ""
    stop_reason: str | None = None


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0


class _Message(msgspec.Struct):
    usage: _Usage | None = None


class _Event(msgspec.Struct):
    type: str
    index: int = 0
    delta: _Delta | None = None
    content_block: _Block | None = None
    message: _Message | None = None
    usage: _Usage | None = None


class _LookupArguments(msgspec.Struct, forbid_unknown_fields=True):
    key: str


_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(_Event)
_arguments_decoder = msgspec.json.Decoder(_LookupArguments)


class _ToolUse:
    __slots__ = ("id", "input", "name")

    def __init__(self, id: str, name: str) -> None:
        self.id = id
        self.name = name
        self.input: list[str] = []


class _Reply:
    __slots__ = ("events", "input_tokens", "output_tokens", "stop_reason", "text", "tools")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tools: dict[int, _ToolUse] = {}
        self.stop_reason: str | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.events = 0

    def add(self, event: _Event) -> None:
        self.events += 1
        kind = event.type
        if kind == "content_block_delta":
            delta = event.delta
            if delta is None:
                return
            if delta.type == "text_delta":
                self.text.append(delta.text)
            elif delta.type == "input_json_delta" and delta.partial_json:
                self.tools[event.index].input.append(delta.partial_json)
        elif kind == "content_block_start":
            block = event.content_block
            if block is not None and block.type == "tool_use":
                self.tools[event.index] = _ToolUse(block.id, block.name)
        elif kind == "message_start":
            if event.message is not None and event.message.usage is not None:
                self.input_tokens = event.message.usage.input_tokens
        elif kind == "message_delta":
            if event.delta is not None:
                self.stop_reason = event.delta.stop_reason
            if event.usage is not None:
                self.output_tokens = event.usage.output_tokens
        elif kind == "error":
            raise RuntimeError("the server sent an error event")


class Outcome(msgspec.Struct):
    """What one turn produced: the final text, the tool calls made, events, tokens."""

    text: str
    tool_calls: int
    chunks: int
    total_tokens: int


async def _lookup(key: str) -> str:
    return tool_result(key)


async def _stream_reply(client: httpx.AsyncClient, url: str, messages: list[object]) -> _Reply:
    body = _encoder.encode(
        {
            "model": MODEL,
            "max_tokens": MAX_TOKENS,
            "messages": messages,
            "stream": True,
            "tools": _TOOLS,
        }
    )
    reply = _Reply()
    async with client.stream("POST", url, content=body, headers=_HEADERS) as response:
        response.raise_for_status()
        rest = b""
        # Read to the end of the body, past message_stop, so the connection goes back
        # to the pool. The "event:" lines are skipped: the payload names its type too.
        async for data in response.aiter_bytes():
            if rest:
                data = rest + data
            lines = data.split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line.startswith(b"data: "):
                    reply.add(_event_decoder.decode(line[6:]))
    return reply


async def run_turn(client: httpx.AsyncClient, url: str, message: str) -> Outcome:
    """Play one turn against the Messages endpoint ``url``."""
    messages: list[object] = [{"role": "user", "content": [{"type": "text", "text": message}]}]
    tool_calls = events = total_tokens = 0
    for _ in range(_MAX_STEPS):
        reply = await _stream_reply(client, url, messages)
        events += reply.events
        total_tokens += reply.input_tokens + reply.output_tokens
        if not reply.tools:
            return Outcome("".join(reply.text), tool_calls, events, total_tokens)
        uses = [reply.tools[index] for index in sorted(reply.tools)]
        content: list[object] = []
        if reply.text:
            content.append({"type": "text", "text": "".join(reply.text)})
        results: list[object] = []
        for use in uses:
            if use.name != TOOL_NAME:
                raise RuntimeError(f"the model called an unknown tool {use.name!r}")
            raw = "".join(use.input) or "{}"
            arguments = _arguments_decoder.decode(raw)
            content.append(
                {"type": "tool_use", "id": use.id, "name": use.name, "input": msgspec.Raw(raw)}
            )
            result = await _lookup(arguments.key)
            results.append({"type": "tool_result", "tool_use_id": use.id, "content": result})
            tool_calls += 1
        messages.append({"role": "assistant", "content": content})
        messages.append({"role": "user", "content": results})
    raise RuntimeError(f"no final answer after {_MAX_STEPS} model calls")
