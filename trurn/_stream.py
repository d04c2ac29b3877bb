"""The stream reducer: provider-neutral chunks in, events and an assembled reply out.

:func:`reduce_stream` is a pure :class:`~trurn.Reducer`: it never does I/O and never
mutates its input state, so it can be tested chunk by chunk and replayed. The turn
folds every chunk of a reply through it, publishes the events it returns, and calls
:func:`assemble` once the stream ends.

Tool-call fragments are matched to calls by the provider's ``index`` when there is
one, by ``id`` when there is no index, and a fragment with neither continues the
latest call. A new ``id`` on an index that already has a different id starts a new
call instead of corrupting the first one.
"""

from __future__ import annotations

from typing import Any

import msgspec

from . import events
from ._chunks import (
    Chunk,
    Finish,
    ReasoningDelta,
    ServerToolBlock,
    TextDelta,
    ThinkingSignature,
    ToolCallDelta,
)
from ._messages import AssistantMessage, ThinkingBlock, ToolCall, Usage
from ._nucleus import Transition

__all__ = ["StreamState", "assemble", "joined", "parse_arguments", "reduce_stream"]

_replace = msgspec.structs.replace

Pieces = tuple["Pieces", str] | None
"""Text as an immutable linked list of the pieces that streamed, newest first.

Appending is O(1) and shares everything before it, so the reducer stays pure without
copying the whole text at every delta (which made long replies quadratic)."""


def joined(pieces: Pieces) -> str:
    """The text that ``pieces`` holds, oldest piece first."""
    parts: list[str] = []
    while pieces is not None:
        pieces, piece = pieces
        parts.append(piece)
    parts.reverse()
    return "".join(parts)


class PendingCall(msgspec.Struct, frozen=True):
    """A tool call still streaming: the provider's index, and what arrived so far."""

    index: int
    id: str
    name: str
    arguments: str


class StreamState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one reply has streamed so far."""

    text: Pieces = None
    reasoning: Pieces = None
    # The reasoning of the thinking block that is still open (not signed yet).
    open_block: Pieces = None
    thinking: tuple[ThinkingBlock, ...] = ()
    calls: tuple[PendingCall, ...] = ()
    server_blocks: tuple[dict[str, Any], ...] = ()
    usage: Usage | None = None
    finish_reason: str | None = None


def reduce_stream(state: StreamState, chunk: Chunk) -> Transition[StreamState, events.BaseEvent]:
    """Fold one chunk into the reply; return the new state and the events to publish."""
    if type(chunk) is TextDelta:
        if not chunk.text:
            return Transition(state)
        return Transition(
            _replace(state, text=(state.text, chunk.text)), (events.AssistantDelta(chunk.text),)
        )
    if type(chunk) is ToolCallDelta:
        return _reduce_tool_call(state, chunk)
    if type(chunk) is ReasoningDelta:
        if not chunk.text:
            return Transition(state)
        return Transition(
            _replace(
                state,
                reasoning=(state.reasoning, chunk.text),
                open_block=(state.open_block, chunk.text),
            ),
            (events.AssistantReasoningDelta(chunk.text),),
        )
    if type(chunk) is Usage:
        return Transition(_replace(state, usage=chunk))
    if type(chunk) is Finish:
        return Transition(_replace(state, finish_reason=chunk.reason))
    if type(chunk) is ServerToolBlock:
        return Transition(
            _replace(state, server_blocks=(*state.server_blocks, chunk.block)),
            (events.ServerTool(block=chunk.block),),
        )
    if type(chunk) is ThinkingSignature:
        block = ThinkingBlock(
            text=joined(state.open_block), signature=chunk.signature, redacted=chunk.redacted
        )
        return Transition(_replace(state, thinking=(*state.thinking, block), open_block=None))
    raise TypeError(f"not a stream chunk: {chunk!r}")


def _reduce_tool_call(
    state: StreamState, delta: ToolCallDelta
) -> Transition[StreamState, events.BaseEvent]:
    calls = state.calls
    position = _locate(calls, delta)
    if position is None:
        index = delta.index if delta.index is not None else len(calls)
        call = PendingCall(index, delta.id or "", delta.name or "", delta.arguments)
        position = len(calls)
        calls = (*calls, call)
    else:
        old = calls[position]
        call = PendingCall(
            old.index,
            old.id or delta.id or "",
            old.name or delta.name or "",
            old.arguments + delta.arguments,
        )
        calls = (*calls[:position], call, *calls[position + 1 :])
    event = events.ToolCallDelta(
        index=position, tool_call_id=delta.id, name=delta.name, arguments=delta.arguments
    )
    return Transition(_replace(state, calls=calls), (event,))


def _locate(calls: tuple[PendingCall, ...], delta: ToolCallDelta) -> int | None:
    """The position of the call this fragment continues, or ``None`` for a new call."""
    if delta.index is not None:
        for position in range(len(calls) - 1, -1, -1):
            call = calls[position]
            if call.index == delta.index:
                if delta.id and call.id and delta.id != call.id:
                    return None  # same index, another id: a new call, not more of this one
                return position
        return None
    if delta.id:
        for position in range(len(calls) - 1, -1, -1):
            if calls[position].id == delta.id:
                return position
        return None
    return len(calls) - 1 if calls else None


def parse_arguments(raw: str) -> tuple[dict[str, Any], str | None]:
    """Parse a tool call's argument text: ``(arguments, error)``.

    Empty text means no arguments (``{}``). Text that is not a JSON object gives
    ``{}`` and an error saying what was wrong.
    """
    if not raw.strip():
        return {}, None
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        return {}, f"arguments are not valid JSON ({exc})"
    if not isinstance(value, dict):
        return {}, f"arguments must be a JSON object, not {type(value).__name__}"
    return value, None


def assemble(state: StreamState, *, call_id_prefix: str = "call") -> AssistantMessage:
    """Build the assistant message from a finished (or interrupted) stream.

    Calls the provider sent without an id get ``f"{call_id_prefix}_{position}"``.
    """
    tool_calls = []
    for position, pending in enumerate(state.calls):
        arguments, error = parse_arguments(pending.arguments)
        tool_calls.append(
            ToolCall(
                id=pending.id or f"{call_id_prefix}_{position}",
                name=pending.name,
                arguments=arguments,
                arguments_raw=pending.arguments,
                arguments_error=error,
            )
        )
    thinking = state.thinking
    if thinking and state.open_block is not None:
        # Reasoning after the last signed block (a provider that signs blocks but was cut off).
        thinking = (*thinking, ThinkingBlock(text=joined(state.open_block)))
    return AssistantMessage(
        content=joined(state.text) or None,
        tool_calls=tool_calls,
        reasoning=joined(state.reasoning) or None,
        thinking=list(thinking),
        server_blocks=list(state.server_blocks),
        usage=state.usage,
        finish_reason=state.finish_reason,
    )
