"""Every event trurn publishes, as one tagged union of ``msgspec`` Structs.

Events are plain data (no futures, no callbacks), so each one encodes to JSON as it
is; :func:`encode` and :func:`decode` use one module-level encoder and decoder.
Every event carries ``type`` (its tag, from the OTURN vocabulary), ``seq`` (monotonic
per agent, stamped when it is published) and ``turn_id``.

Order of one turn::

    turn_started
      [user_message]*                                    -- steering, or a hook's follow-up
      [compaction_started, compaction]                   -- the history was summarised
      message_sent, (assistant_reasoning_delta | assistant_delta | tool_call_delta)*,
      assistant_final                                    -- once per model reply
      (tool_call, [approval_request, approval_answered],
       (tool_output | choice_request | choice_answered)*,
       tool_exit)*                                       -- per tool call, error on failure
      ... repeated while the model asks for tools ...
    [run_aborted]                                        -- cancelled, or a fatal error
    turn_finished                                        -- always last

An ``approval_request`` or ``choice_request`` stays open until its ``*_answered`` event,
or until the ``tool_exit`` of its tool call (a cancelled or timed-out call drops its
requests, and the agent then refuses answers to them as expired), or the end of the
turn. A UI can close its prompt on whichever comes first.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import msgspec

from ._messages import AssistantMessage, ToolCall, ToolMessage, ToolStatus, Usage

__all__ = [
    "ApprovalAnswered",
    "ApprovalRequest",
    "AssistantDelta",
    "AssistantFinal",
    "AssistantReasoningDelta",
    "BaseEvent",
    "ChoiceAnswered",
    "ChoiceRequest",
    "Compacted",
    "CompactionStarted",
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
    "UserInjected",
    "decode",
    "encode",
]


class BaseEvent(msgspec.Struct, tag_field="type", kw_only=True):
    """Fields every event has. ``seq`` and ``turn_id`` are stamped on publish; ``type``
    is the event's name (its JSON tag)."""

    seq: int = 0
    turn_id: str = ""

    @property
    def type(self) -> str:
        """The event's name, as in its JSON: ``"assistant_delta"``, ``"turn_finished"``."""
        return cast(str, type(self).__struct_config__.tag)


class TurnStarted(BaseEvent, tag="turn_started"):
    """A turn began with this user input.

    A turn started from inside another turn's tool (a subagent) names its parent,
    the top-level turn it runs under, its ``depth`` (0 at the top) and the ``chain``
    of turn ids from the root down to itself.
    """

    input: str
    parent_turn_id: str | None = None
    root_turn_id: str = ""
    depth: int = 0
    chain: list[str] = msgspec.field(default_factory=list)


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


class CompactionStarted(BaseEvent, tag="compaction_started"):
    """The history is about to be compacted before the next model call.

    ``reason`` is ``"threshold"`` (the next request was estimated at
    ``estimated_tokens``, over the agent's threshold) or ``"overflow"`` (the provider
    rejected the request as too long for its context window).
    """

    reason: Literal["threshold", "overflow"]
    estimated_tokens: int


class Compacted(BaseEvent, tag="compaction"):
    """The older part of the history was replaced, in what the model is sent, by
    ``summary``; the session file keeps every message. ``first_kept`` is the index of
    the first message still sent verbatim, ``summarised`` how many messages the
    summary covers."""

    summary: str
    first_kept: int
    summarised: int


class ToolCallStarted(BaseEvent, tag="tool_call"):
    """A tool call is about to run (its arguments are complete).

    ``preview`` is the tool's own one-line description of what this call will do
    (:meth:`trurn.BaseTool.preview`), for UIs; ``None`` when the tool gives none.
    """

    call: ToolCall
    preview: str | None = None


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

    @classmethod
    def of(cls, result: ToolMessage, *, turn_id: str = "") -> ToolExit:
        """The ``tool_exit`` that announces ``result``."""
        return cls(
            tool_call_id=result.tool_call_id,
            name=result.name,
            status=result.status,
            content=result.content,
            turn_id=turn_id,
        )


class ApprovalRequest(BaseEvent, tag="approval_request"):
    """A tool call waits for approval: answer with ``agent.respond(request_id, ...)``.

    ``call`` is the call (its id, tool name and arguments) and ``preview`` the tool's
    description of it. ``reason``, ``reasons`` and ``metadata`` come from the tool's
    precheck (its message, its reasons, anything else it wants shown); they are empty
    when only the agent's ``require_approval`` asked.
    """

    request_id: str
    call: ToolCall
    preview: str | None = None
    reason: str | None = None
    reasons: list[str] = []
    metadata: dict[str, Any] = {}


class ApprovalAnswered(BaseEvent, tag="approval_answered"):
    """Approval request ``request_id`` got its answer.

    ``by`` is ``"approver"`` (the agent's callback) or ``"respond"`` (``agent.respond``).
    ``reason`` is the denial's reason; when the approver failed, the call is denied
    and ``reason`` says how it failed.
    """

    request_id: str
    tool_call_id: str
    approved: bool
    by: str
    reason: str | None = None


class ChoiceRequest(BaseEvent, tag="choice_request"):
    """A tool asks the user to pick one of ``choices``: answer with
    ``agent.respond_choice(request_id, choice)``."""

    request_id: str
    tool_call_id: str
    prompt: str
    choices: list[str]
    hint: str | None = None


class ChoiceAnswered(BaseEvent, tag="choice_answered"):
    """Choice request ``request_id`` got its answer.

    ``by`` is ``"chooser"`` (the agent's callback) or ``"respond"``
    (``agent.respond_choice``). ``choice`` is ``None`` when the chooser failed; the
    tool then gets a :class:`~trurn.ToolError` instead of a choice.
    """

    request_id: str
    tool_call_id: str
    choice: str | None
    by: str


class RunAborted(BaseEvent, tag="run_aborted"):
    """The turn stopped early: ``reason`` is ``"cancelled"``, ``"interrupted"``
    (KeyboardInterrupt) or ``"error"``; ``message`` is the reason given to
    :meth:`~trurn.Agent.cancel`, if any."""

    reason: str
    message: str | None = None


class UserInjected(BaseEvent, tag="user_message"):
    """A message sent with ``steer=True`` joined the running turn before a model call."""

    text: str


class Error(BaseEvent, tag="error"):
    """Something went wrong; ``error_type`` names the exception class.

    Tool failures carry their ``tool_call_id`` and do not end the turn; provider
    failures end it (a ``run_aborted`` follows).
    """

    message: str
    error_type: str
    tool_call_id: str | None = None


class EventsDropped(BaseEvent, tag="events_dropped"):
    """Sent to a subscriber that missed ``count`` events: one with the ``"drop"`` policy
    that was full, or a full ``"wait"`` subscriber when an ending turn's final events
    (``run_aborted``, ``turn_finished``) took the place of older ones, which never waits.
    Its ``seq`` and ``turn_id`` are unset (``0``, ``""``): it is a notice from the
    subscription, not an event of a turn."""

    count: int


class TurnFinished(BaseEvent, tag="turn_finished"):
    """The turn ended; always its last event.

    ``stop_reason``: ``"completed"``, ``"max_iterations"``, ``"policy"``,
    ``"loop_detected"``, ``"budget_exceeded"``, ``"length"``, ``"content_filter"``,
    ``"aborted"`` or ``"error"``.
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
    | ApprovalAnswered
    | ChoiceRequest
    | ChoiceAnswered
    | Retrying
    | CompactionStarted
    | Compacted
    | RunAborted
    | UserInjected
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
