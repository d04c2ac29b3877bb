"""Provider-neutral stream chunks: what every provider adapter turns wire bytes into.

A provider yields these in batches (one batch per network read); the stream
reducer folds them into events and an assembled :class:`~trurn.AssistantMessage`.
:class:`~trurn.Usage` is a chunk too.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ._messages import Usage

__all__ = [
    "Chunk",
    "Finish",
    "ReasoningDelta",
    "ServerToolBlock",
    "TextDelta",
    "ThinkingSignature",
    "ToolCallDelta",
]


class TextDelta(msgspec.Struct, frozen=True):
    """A piece of the assistant's visible text."""

    text: str


class ReasoningDelta(msgspec.Struct, frozen=True):
    """A piece of the model's reasoning (``reasoning_content``, ``reasoning``, thinking)."""

    text: str


class ThinkingSignature(msgspec.Struct, frozen=True, kw_only=True):
    """Closes a reasoning block that must be echoed back: its signature, or redacted data."""

    signature: str | None = None
    redacted: str | None = None


class ToolCallDelta(msgspec.Struct, frozen=True, kw_only=True):
    """A fragment of a tool call.

    ``index`` is the provider's position of the call in the reply, when it sends
    one; ``id`` and ``name`` usually arrive only on the first fragment;
    ``arguments`` is a piece of the JSON argument text, to be concatenated.
    """

    index: int | None = None
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class ServerToolBlock(msgspec.Struct, frozen=True):
    """A block the provider ran itself (Anthropic ``server_tool_use``, web search
    results): kept verbatim in the reply, surfaced as an event, never run locally."""

    block: dict[str, Any]


class Finish(msgspec.Struct, frozen=True):
    """Why the provider ended the reply: ``"stop"``, ``"tool_calls"``, ``"length"``..."""

    reason: str


Chunk = (
    TextDelta
    | ReasoningDelta
    | ThinkingSignature
    | ToolCallDelta
    | ServerToolBlock
    | Usage
    | Finish
)
"""Anything a provider yields."""
