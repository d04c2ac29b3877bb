"""The conversation every client benchmark plays, as plain constants.

One turn: the user asks; the model calls ``lookup`` (arguments streamed in pieces); the
client runs it and sends the result; the model calls ``lookup`` again; then it answers
in ``FINAL_TEXT_CHUNKS`` pieces. Both clients and the scripted server read these
constants, and this module imports nothing but the standard library, so the baseline
worker never loads trurn.

The turn is played over either wire format (``WIRES``): OpenAI Chat Completions or
Anthropic Messages. The scripted server answers both from the same script, so the
conversation is the same; only its spelling, and so the number of streamed events,
differs.
"""

from __future__ import annotations

from typing import Any, Literal

Wire = Literal["openai", "anthropic"]
WIRES: tuple[Wire, ...] = ("openai", "anthropic")

MODEL = "bench-model"
USER_MESSAGE = "Look up alpha, then beta, and tell me what you found."

TOOL_NAME = "lookup"
TOOL_DESCRIPTION = "Look a key up in the benchmark's table."
# What trurn's @tool derives from ``async def lookup(key: str) -> str``; the baseline
# sends this literal, and the conversation check in run.py proves the two agree.
TOOL_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"key": {"type": "string"}},
    "required": ["key"],
    "additionalProperties": False,
}

# The model's two tool calls, one per reply, and how many pieces their arguments come in.
TOOL_KEYS = ("alpha", "beta")
ARGUMENT_CHUNKS = 3

FINAL_TEXT = (
    "I looked up both keys for you. The key alpha maps to value-of-alpha and the key beta "
    "maps to value-of-beta; neither lookup reported a problem, so these are the values "
    "currently stored in the table, and nothing else needs to be checked right now."
)
FINAL_TEXT_CHUNKS = 34

# Data events per reply, as the scripted server sends them to a client that asks for
# usage: the role chunk, the content, the finish chunk and the usage chunk; a tool call
# adds one chunk for its id and name. ``[DONE]`` is not counted.
_TOOL_REPLY_CHUNKS = 1 + 1 + ARGUMENT_CHUNKS + 1 + 1
_FINAL_REPLY_CHUNKS = 1 + FINAL_TEXT_CHUNKS + 1 + 1
CHUNKS_PER_TURN = len(TOOL_KEYS) * _TOOL_REPLY_CHUNKS + _FINAL_REPLY_CHUNKS
REQUESTS_PER_TURN = len(TOOL_KEYS) + 1

# The same replies as Anthropic events: message_start, one content block (its start, a
# ping after the first block's start, its deltas, its stop), message_delta and
# message_stop. Every event is counted (the ping and message_stop too).
_MESSAGE_EVENTS = 1 + 1 + 1  # message_start, message_delta, message_stop
_BLOCK_EVENTS = 1 + 1 + 1  # content_block_start, ping, content_block_stop
_TOOL_REPLY_EVENTS = _MESSAGE_EVENTS + _BLOCK_EVENTS + ARGUMENT_CHUNKS
_FINAL_REPLY_EVENTS = _MESSAGE_EVENTS + _BLOCK_EVENTS + FINAL_TEXT_CHUNKS
EVENTS_PER_TURN: dict[Wire, int] = {
    "openai": CHUNKS_PER_TURN,
    "anthropic": len(TOOL_KEYS) * _TOOL_REPLY_EVENTS + _FINAL_REPLY_EVENTS,
}
"""Streamed events (SSE ``data:`` payloads) per turn, by wire; ``[DONE]`` not counted."""


def tool_result(key: str) -> str:
    """What ``lookup`` answers: trivial on purpose, so only the client's plumbing counts."""
    return "value-of-" + key
