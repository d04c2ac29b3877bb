"""The conversation history a turn reads and appends to.

``Context()`` keeps the history in memory. (The sessions layer binds a Context to a
JSONL file; the in-memory behaviour here is what every Context shares.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._messages import AssistantMessage, Message, ToolCall, ToolMessage, ToolStatus, Usage

__all__ = ["Context", "get_last_total_tokens", "get_last_usage", "unanswered_tool_calls"]


class Context:
    """A conversation's messages, oldest first.

    The system prompt is not part of the history: the agent adds it to every
    request, so it survives anything done to the history.
    """

    def __init__(self, messages: Iterable[Message] = ()) -> None:
        self._messages: list[Message] = list(messages)
        self._busy = False

    @property
    def messages(self) -> Sequence[Message]:
        """The history (a live read-only view: no copy is made)."""
        return self._messages

    def append(self, message: Message) -> None:
        """Add one message at the end."""
        self._messages.append(message)

    def extend(self, messages: Iterable[Message]) -> None:
        """Add messages at the end, in order."""
        self._messages.extend(messages)

    def close_tool_calls(self, status: ToolStatus, content: str) -> list[ToolMessage]:
        """Give every tool call of the last assistant message that has no result one.

        Returns the synthetic results it appended (in call order), so the history is
        valid to send to a provider again, whatever interrupted the turn.
        """
        missing = unanswered_tool_calls(self._messages)
        results = [
            ToolMessage(tool_call_id=call.id, name=call.name, content=content, status=status)
            for call in missing
        ]
        self._messages.extend(results)
        return results

    def __repr__(self) -> str:
        return f"<trurn.Context with {len(self._messages)} messages>"


def unanswered_tool_calls(messages: Sequence[Message]) -> list[ToolCall]:
    """The tool calls of the last assistant message that have no result after it."""
    answered: set[str] = set()
    for message in reversed(messages):
        if isinstance(message, ToolMessage):
            answered.add(message.tool_call_id)
        elif isinstance(message, AssistantMessage):
            return [call for call in message.tool_calls if call.id not in answered]
        else:
            return []
    return []


def get_last_usage(context: Context) -> Usage | None:
    """The token usage of the newest assistant message that reported one."""
    for message in reversed(context.messages):
        if isinstance(message, AssistantMessage) and message.usage is not None:
            return message.usage
    return None


def get_last_total_tokens(context: Context) -> int | None:
    """``total_tokens`` of :func:`get_last_usage`, or ``None``."""
    usage = get_last_usage(context)
    return None if usage is None else usage.total_tokens
