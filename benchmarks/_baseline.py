"""The baseline: the benchmark turn written by hand with trio, httpx and msgspec only.

This is what a competent engineer writes without a framework, and it sends exactly the
requests trurn sends (same JSON bodies, same headers; run.py checks this on every run):
one streamed ``POST`` per model reply, SSE lines split by hand from ``aiter_bytes()``,
each ``data:`` payload decoded by one module-level ``msgspec`` decoder into a minimal
chunk Struct, text and tool-call arguments accumulated, arguments decoded into a Struct,
the tool awaited, its result appended to the messages, and the next request sent.

What it leaves out is exactly what trurn adds: typed events and their broadcast, a
history of typed messages, typed errors, cancellation clean-up, tool-call validation
errors the model can read.
"""

from __future__ import annotations

import httpx
import msgspec
from _scenario import MODEL, TOOL_DESCRIPTION, TOOL_NAME, TOOL_PARAMETERS, tool_result

__all__ = ["Outcome", "run_turn"]

_MAX_STEPS = 10
_HEADERS = {"Accept": "text/event-stream", "Content-Type": "application/json"}
_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": TOOL_DESCRIPTION,
            "parameters": TOOL_PARAMETERS,
        },
    }
]


class _FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    total_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None


class _LookupArguments(msgspec.Struct, forbid_unknown_fields=True):
    key: str


_encoder = msgspec.json.Encoder()
_chunk_decoder = msgspec.json.Decoder(_Chunk)
_arguments_decoder = msgspec.json.Decoder(_LookupArguments)


class _PendingCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class _Reply:
    __slots__ = ("calls", "chunks", "finish_reason", "text", "total_tokens")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: dict[int, _PendingCall] = {}
        self.finish_reason: str | None = None
        self.total_tokens = 0
        self.chunks = 0

    def add(self, chunk: _Chunk) -> None:
        self.chunks += 1
        if chunk.usage is not None:
            self.total_tokens += chunk.usage.total_tokens
        for choice in chunk.choices:
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    self.text.append(delta.content)
                for part in delta.tool_calls or ():
                    self._add_call_part(part)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason

    def _add_call_part(self, part: _ToolCallDelta) -> None:
        call = self.calls.get(part.index)
        if call is None:
            call = self.calls[part.index] = _PendingCall()
        if part.id:
            call.id = part.id
        function = part.function
        if function is not None:
            if function.name:
                call.name = function.name
            if function.arguments:
                call.arguments.append(function.arguments)


class Outcome(msgspec.Struct):
    """What one turn produced: the final text, the tool calls made, chunks, tokens."""

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
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "tools": _TOOLS,
        }
    )
    reply = _Reply()
    async with client.stream("POST", url, content=body, headers=_HEADERS) as response:
        response.raise_for_status()
        rest = b""
        # Read to the end of the body, past [DONE], so the connection goes back to the pool.
        async for data in response.aiter_bytes():
            if rest:
                data = rest + data
            lines = data.split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    reply.add(_chunk_decoder.decode(line[6:]))
    return reply


async def run_turn(client: httpx.AsyncClient, url: str, message: str) -> Outcome:
    """Play one turn against the Chat Completions endpoint ``url``."""
    messages: list[object] = [{"role": "user", "content": message}]
    tool_calls = chunks = total_tokens = 0
    for _ in range(_MAX_STEPS):
        reply = await _stream_reply(client, url, messages)
        chunks += reply.chunks
        total_tokens += reply.total_tokens
        if not reply.calls:
            return Outcome("".join(reply.text), tool_calls, chunks, total_tokens)
        calls = [reply.calls[index] for index in sorted(reply.calls)]
        assistant: dict[str, object] = {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(call.arguments)},
                }
                for call in calls
            ],
        }
        if reply.text:
            assistant["content"] = "".join(reply.text)
        messages.append(assistant)
        for call in calls:
            if call.name != TOOL_NAME:
                raise RuntimeError(f"the model called an unknown tool {call.name!r}")
            arguments = _arguments_decoder.decode("".join(call.arguments))
            result = await _lookup(arguments.key)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
            tool_calls += 1
    raise RuntimeError(f"no final answer after {_MAX_STEPS} model calls")
