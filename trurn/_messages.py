"""The conversation's data: messages, tool calls and token usage.

Everything here is a plain ``msgspec.Struct``: no I/O, no behaviour beyond small
derived properties, so messages encode to JSON as they are and are cheap to copy.
Messages form one tagged union on ``role``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "AssistantMessage",
    "Message",
    "SystemMessage",
    "ThinkingBlock",
    "ToolCall",
    "ToolMessage",
    "ToolStatus",
    "Usage",
    "UserMessage",
]


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token usage of one model reply, or summed over a turn with ``+``.

    ``Usage`` is also the provider-neutral chunk a provider yields when the
    server reports usage.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    reasoning_tokens: int = 0
    cached_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
        )


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """One tool call the model asked for.

    ``arguments`` is the parsed JSON object (``{}`` when the model sent an empty
    string); ``arguments_raw`` is the exact text the model produced, kept so that
    a call whose arguments were not valid JSON can still be shown and replayed.
    ``arguments_error`` says why the raw text did not parse, or is ``None``.
    """

    id: str
    name: str
    arguments: dict[str, Any] = {}
    arguments_raw: str = ""
    arguments_error: str | None = None


class ThinkingBlock(msgspec.Struct, frozen=True, kw_only=True):
    """A reasoning block that must be sent back verbatim (Anthropic thinking).

    ``signature`` authenticates ``text``; ``redacted`` holds the opaque data of a
    redacted block. Providers that only stream plain reasoning text leave this empty.
    """

    text: str = ""
    signature: str | None = None
    redacted: str | None = None


class SystemMessage(msgspec.Struct, frozen=True, tag_field="role", tag="system"):
    """The system prompt."""

    content: str


class UserMessage(msgspec.Struct, frozen=True, tag_field="role", tag="user"):
    """What the user said."""

    content: str


class AssistantMessage(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="role", tag="assistant"
):
    """One model reply, assembled from its streamed chunks.

    ``server_blocks`` are blocks the provider ran itself (web search), kept verbatim
    so they can be sent back. ``finish_reason`` is the provider's reason (``"stop"``,
    ``"tool_calls"``, ``"length"``, ``"content_filter"``...). ``aborted`` marks a reply cut short by
    cancellation or a stream error: its text is what arrived before that.
    """

    content: str | None = None
    tool_calls: list[ToolCall] = []
    reasoning: str | None = None
    thinking: list[ThinkingBlock] = []
    server_blocks: list[dict[str, Any]] = []
    usage: Usage | None = None
    model: str | None = None
    finish_reason: str | None = None
    aborted: bool = False


ToolStatus = Literal["ok", "error", "cancelled", "denied", "timeout", "interrupted"]


class ToolMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="role", tag="tool"):
    """The result of one tool call, as the model will read it.

    ``status`` is ``"ok"`` for a normal result; ``"error"`` when the tool failed,
    its arguments were invalid or it does not exist; ``"cancelled"`` when the turn
    was cancelled before it finished; ``"denied"`` when a person or the tool's precheck
    refused it; ``"timeout"`` when it ran past its timeout;
    ``"interrupted"`` when a restored session found the call without a result (the
    process ended mid-call).
    """

    tool_call_id: str
    name: str
    content: str
    status: ToolStatus = "ok"
    arguments: dict[str, Any] | None = None
    """Set when a ``before_tool`` hook changed the call: the arguments it ran with."""

    @property
    def is_error(self) -> bool:
        return self.status != "ok"


Message = SystemMessage | UserMessage | AssistantMessage | ToolMessage
"""Any message of a conversation; a tagged union on ``role``."""
