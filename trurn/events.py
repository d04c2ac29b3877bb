"""Every event trurn publishes, as one tagged union of ``msgspec`` Structs.

Events are plain data (no futures, no callbacks), so each one encodes to JSON as it
is; :func:`encode` and :func:`decode` use one module-level encoder and decoder.
Every event carries ``type`` (its tag, from the OTURN vocabulary), ``seq`` (monotonic
per agent, stamped when it is published) and ``turn_id``.

Order of one turn::

    turn_started
      message_sent, (assistant_reasoning_delta | assistant_delta | tool_call_delta)*,
      assistant_final                                    -- once per model reply
      (tool_call, tool_output*, tool_exit)*              -- per tool call, error on failure
      ... repeated while the model asks for tools ...
    [run_aborted]                                        -- cancelled, or a fatal error
    turn_finished                                        -- always last
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ._messages import AssistantMessage, ToolCall, ToolStatus, Usage

__all__ = [
    "ApprovalRequest",
    "AssistantDelta",
    "AssistantFinal",
    "AssistantReasoningDelta",
    "BaseEvent",
    "ChoiceRequest",
    "Error",
    "Event",
    "EventsDropped",
    "MessageSent",
    "Retrying",
    "RunAborted",
    "ServerTool",
    "ToolCallDelta",
    "ToolCallStarted",
    "ToolExit",
    "ToolOutput",
    "TurnFinished",
    "TurnStarted",
    "decode",
    "encode",
]


class BaseEvent(msgspec.Struct, tag_field="type", kw_only=True):
    """Fields every event has. ``seq`` and ``turn_id`` are stamped on publish."""

    seq: int = 0
    turn_id: str = ""


class TurnStarted(BaseEvent, tag="turn_started"):
    """A turn began with this user input."""

    input: str
    parent_turn_id: str | None = None


class MessageSent(BaseEvent, tag="message_sent"):
    """The request for model reply number ``step`` (from 1) was accepted by the provider."""

    step: int
    model: str | None = None


class AssistantDelta(BaseEvent, tag="assistant_delta"):
    """A piece of the assistant's text, as it streams."""

    text: str


class AssistantReasoningDelta(BaseEvent, tag="assistant_reasoning_delta"):
    """A piece of the model's reasoning, as it streams."""

    text: str


class ToolCallDelta(BaseEvent, tag="tool_call_delta"):
    """A fragment of tool call number ``index`` in the current reply.

    ``arguments`` is only this fragment's piece of the JSON text.
    """

    index: int
    tool_call_id: str | None = None
    name: str | None = None
    arguments: str = ""


class AssistantFinal(BaseEvent, tag="assistant_final"):
    """One model reply is complete; ``message`` is the assembled reply.

    The reply that ends a turn has no tool calls. ``message.aborted`` is true when
    the reply was cut short (cancellation, stream error) and holds what arrived.
    """

    message: AssistantMessage

    @property
    def text(self) -> str:
        return self.message.content or ""


class ServerTool(BaseEvent, tag="server_tool"):
    """The provider ran a tool itself (e.g. web search); ``block`` is what it sent."""

    block: dict[str, Any]


class Retrying(BaseEvent, tag="retry"):
    """The model call failed before any output and will be tried again.

    ``attempt`` is the attempt that failed (from 1); the next starts after ``delay``
    seconds. ``error_type`` and ``message`` describe the failure.
    """

    attempt: int
    delay: float
    error_type: str
    message: str


class ToolCallStarted(BaseEvent, tag="tool_call"):
    """A tool call is about to run (its arguments are complete)."""

    call: ToolCall


class ToolOutput(BaseEvent, tag="tool_output"):
    """Output a running tool chose to stream before its result."""

    tool_call_id: str
    text: str
    stream: Literal["stdout", "stderr"] = "stdout"


class ToolExit(BaseEvent, tag="tool_exit"):
    """A tool call ended; ``content`` is the result the model will read."""

    tool_call_id: str
    name: str
    status: ToolStatus
    content: str


class ApprovalRequest(BaseEvent, tag="approval_request"):
    """A tool call waits for approval; answer it with the agent, by ``request_id``."""

    request_id: str
    call: ToolCall
    reason: str | None = None


class ChoiceRequest(BaseEvent, tag="choice_request"):
    """A tool asks the user to pick one of ``choices``; answer by ``request_id``."""

    request_id: str
    tool_call_id: str
    prompt: str
    choices: list[str]
    hint: str | None = None


class RunAborted(BaseEvent, tag="run_aborted"):
    """The turn stopped early: ``reason`` is ``"cancelled"`` or ``"error"``."""

    reason: str


class Error(BaseEvent, tag="error"):
    """Something went wrong; ``error_type`` names the exception class.

    Tool failures carry their ``tool_call_id`` and do not end the turn; provider
    failures end it (a ``run_aborted`` follows).
    """

    message: str
    error_type: str
    tool_call_id: str | None = None


class EventsDropped(BaseEvent, tag="events_dropped"):
    """Sent to a subscriber with the ``"drop"`` policy: ``count`` events it missed."""

    count: int


class TurnFinished(BaseEvent, tag="turn_finished"):
    """The turn ended; always its last event.

    ``stop_reason``: ``"completed"``, ``"max_iterations"``, ``"policy"``,
    ``"length"``, ``"content_filter"``, ``"aborted"`` or ``"error"``.
    """

    stop_reason: str
    usage: Usage
    text: str | None = None


Event = (
    TurnStarted
    | MessageSent
    | AssistantDelta
    | AssistantReasoningDelta
    | ToolCallDelta
    | ServerTool
    | AssistantFinal
    | ToolCallStarted
    | ToolOutput
    | ToolExit
    | ApprovalRequest
    | ChoiceRequest
    | Retrying
    | RunAborted
    | Error
    | EventsDropped
    | TurnFinished
)
"""Any trurn event."""

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def encode(event: BaseEvent) -> bytes:
    """Encode an event to JSON bytes."""
    return _encoder.encode(event)


def decode(data: bytes | str) -> Event:
    """Decode JSON produced by :func:`encode` back into its event Struct.

    Raises ``msgspec.ValidationError`` (naming the bad field) or
    ``msgspec.DecodeError`` for input that is not an event.
    """
    return _decoder.decode(data)
