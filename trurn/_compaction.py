"""Compaction: what to summarise, what the model is sent afterwards, and who summarises.

Everything here is pure except the policies' ``summarise`` (an async seam that a
model-backed policy fills with a provider call). The turn decides *when* to compact
(:func:`estimate_tokens` against a threshold, or a context-overflow error), asks
:func:`plan_compaction` *where* to cut, gets a summary from a :class:`CompactionPolicy`,
appends a :class:`~trurn._records.Compaction` marker, and from then on sends
:func:`prompt_messages` instead of the raw history. Nothing is ever deleted: the marker
only changes what is sent.

The system prompt is not part of the history (the agent adds it to every request), so
no compaction can drop it; OTURN's compaction did, and sent the summary as an assistant
message at position 0 without the user's intent. Here the summary is a user message and
carries the intent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import msgspec
import trio

from ._messages import AssistantMessage, Message, SystemMessage, ToolMessage, Usage, UserMessage
from ._records import Compaction
from ._stream import StreamState, assemble, reduce_stream
from .providers import Provider, Request

__all__ = [
    "DEFAULT_KEEP_RECENT",
    "CompactionPlan",
    "CompactionPolicy",
    "Compactor",
    "ModelSummary",
    "TruncationPolicy",
    "estimate_tokens",
    "message_chars",
    "plan_compaction",
    "prompt_messages",
    "summary_request",
    "truncation_note",
]

DEFAULT_KEEP_RECENT = 6
"""Messages kept verbatim at least, besides the latest user message and what follows it:
about the previous exchange or two, so the model keeps the thread of the conversation."""

_MIN_TO_SUMMARISE = 2
# Replacing one message by a summary of it saves nothing worth a model call.

SUMMARY_HEADER = "[Summary of the earlier conversation, compacted to fit the context window]"
SUMMARY_FOOTER = "[End of summary]"


class CompactionPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Where to cut a history, and what the summary must cover.

    ``first_kept`` is the index (in the full history) of the first message kept
    verbatim; ``to_summarise`` are the messages the new summary stands for (those
    before ``first_kept`` and after the previous compaction's cut, if any);
    ``previous_summary`` is that compaction's summary, which the new one must fold in;
    ``user_intent`` is the text of the latest user message.
    """

    first_kept: int
    to_summarise: list[Message]
    user_intent: str | None = None
    previous_summary: str | None = None


class CompactionPolicy(Protocol):
    """Turns a :class:`CompactionPlan` into the text of a summary.

    ``summarise`` may call a model (see :func:`summary_request`) and is cancellable;
    cancelling it leaves nothing behind, since the marker is only written with its result.
    """

    async def summarise(self, plan: CompactionPlan) -> str: ...


# ---------------------------------------------------------------------------
# Estimating the next request's size


def message_chars(message: Message) -> int:
    """The characters of ``message`` that are sent to the model.

    Counts text, thinking text (sent back verbatim), tool call names and raw arguments
    (or their JSON when the raw text is empty) and tool results. Roles, ids and JSON
    framing are not counted: the estimate is meant to be compared with a threshold that
    leaves headroom, not to be exact.
    """
    if isinstance(message, (SystemMessage, UserMessage)):
        return len(message.content)
    if isinstance(message, ToolMessage):
        return len(message.content)
    chars = len(message.content or "")
    chars += sum(len(block.text) for block in message.thinking)
    for call in message.tool_calls:
        raw = call.arguments_raw or msgspec.json.encode(call.arguments).decode()
        chars += len(call.name) + len(raw)
    return chars


def estimate_tokens(
    messages: Sequence[Message],
    *,
    last_usage: Usage | None = None,
    chars_per_token: float = 4.0,
) -> int:
    """The estimated input tokens of a request that sends ``messages``.

    With ``last_usage`` (the usage the newest assistant message that reported one
    carries, see :func:`~trurn._context.get_last_usage`): its ``input_tokens +
    output_tokens`` covers the history up to and including that assistant message,
    and only the messages after it are estimated from their characters. Without it,
    or when no assistant message in ``messages`` reported usage, every message is
    estimated from its characters (and ``last_usage`` is ignored).

    Assumptions: ``input_tokens`` is the whole prompt, cached tokens included (both
    adapters report it so); the system prompt and tool schemas are in the reported
    usage but not in a characters-only estimate; ``output_tokens`` includes reasoning
    that may not be sent back, so the estimate errs high; ``chars_per_token`` (4 for
    English text, lower for code or other scripts) is a rough average. ``messages`` must
    be what will be sent: after a compaction, the usage reported before it overstates
    the prompt, so pass ``last_usage=None`` until a reply reports usage again.
    """
    if chars_per_token <= 0:
        raise ValueError(f"chars_per_token must be positive, got {chars_per_token!r}")
    start = 0
    base = 0
    if last_usage is not None:
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            if isinstance(message, AssistantMessage) and message.usage is not None:
                start = index + 1
                base = last_usage.input_tokens + last_usage.output_tokens
                break
    chars = sum(message_chars(message) for message in messages[start:])
    return base + math.ceil(chars / chars_per_token)


# ---------------------------------------------------------------------------
# Choosing the cut


def _latest_user_index(messages: Sequence[Message]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if isinstance(messages[index], UserMessage):
            return index
    return None


def plan_compaction(
    messages: Sequence[Message],
    *,
    keep_recent: int = DEFAULT_KEEP_RECENT,
    previous: Compaction | None = None,
) -> CompactionPlan | None:
    """Where to cut ``messages`` (the full history), or ``None`` if not worth it.

    The cut (``first_kept``) is the latest index that satisfies all of:

    - the latest user message (the current intent) and everything after it are kept;
    - at least ``keep_recent`` messages are kept (counted in messages, so a long
      current turn already satisfies it);
    - it does not fall on a tool result, so an assistant message with tool calls and
      its results stay on the same side;
    - it is after the ``previous`` compaction's cut, whose summary the new one folds in.

    ``None`` when there is no user message, no such cut, or fewer than two messages
    to summarise.
    """
    if keep_recent < 0:
        raise ValueError(f"keep_recent must be >= 0, got {keep_recent!r}")
    if previous is not None and previous.first_kept > len(messages):
        raise ValueError(
            f"previous compaction's first_kept ({previous.first_kept}) is past the end of "
            f"the history ({len(messages)} messages)"
        )
    latest_user = _latest_user_index(messages)
    if latest_user is None:
        return None
    floor = previous.first_kept if previous is not None else 0
    cut = min(latest_user, len(messages) - keep_recent)
    while cut > floor and isinstance(messages[cut], ToolMessage):
        cut -= 1
    if cut - floor < _MIN_TO_SUMMARISE:
        return None
    intent = messages[latest_user]
    assert isinstance(intent, UserMessage)
    return CompactionPlan(
        first_kept=cut,
        to_summarise=list(messages[floor:cut]),
        user_intent=intent.content,
        previous_summary=previous.summary if previous is not None else None,
    )


# ---------------------------------------------------------------------------
# What is sent after a compaction


def _summary_text(compaction: Compaction) -> str:
    parts = [SUMMARY_HEADER, compaction.summary.strip()]
    if compaction.user_intent:
        parts.append(f"The user's request when this summary was written:\n{compaction.user_intent}")
    parts.append(SUMMARY_FOOTER)
    return "\n\n".join(parts)


def _kept_start(messages: Sequence[Message], first_kept: int) -> int:
    """``first_kept`` moved so that no kept tool result lacks its call.

    A cut on a tool result moves back to its assistant message (the pair is kept, at
    the cost of repeating what the summary covers); results with no call before them
    at all are skipped.
    """
    start = first_kept
    if start < len(messages) and isinstance(messages[start], ToolMessage):
        back = start
        while back > 0 and isinstance(messages[back], ToolMessage):
            back -= 1
        head = messages[back]
        if isinstance(head, AssistantMessage) and head.tool_calls:
            return back
    while start < len(messages) and isinstance(messages[start], ToolMessage):
        start += 1
    return start


def prompt_messages(messages: Sequence[Message], compaction: Compaction | None) -> list[Message]:
    """The history as sent to the model, given the newest compaction marker.

    Without a compaction, ``messages`` unchanged. With one, a user message carrying the
    summary (framed as such, with the user's intent) and then ``messages[first_kept:]``.
    The result always starts with a user message: when the first kept message is a user
    message, the summary is put in front of its text rather than sent as a second user
    message in a row (some providers require roles to alternate); otherwise the summary
    is its own user message. No kept tool result is left without its call (see
    :func:`_kept_start`). The system prompt is not in the history: the agent adds it to
    every request, so it survives compaction.
    """
    if compaction is None:
        return list(messages)
    if compaction.first_kept > len(messages):
        raise ValueError(
            f"compaction's first_kept ({compaction.first_kept}) is past the end of the "
            f"history ({len(messages)} messages)"
        )
    summary = _summary_text(compaction)
    kept = list(messages[_kept_start(messages, compaction.first_kept) :])
    if kept and isinstance(kept[0], UserMessage):
        return [UserMessage(f"{summary}\n\n{kept[0].content}"), *kept[1:]]
    return [UserMessage(summary), *kept]


# ---------------------------------------------------------------------------
# Asking for a summary

SUMMARY_INSTRUCTION = """\
The conversation below is being compacted to fit the context window. Write a summary \
that will replace it. Keep what is needed to carry on: the user's goals and \
constraints, decisions made, facts learned (names, paths, numbers, identifiers), what \
the tools did and found, errors met, and what remains to do. Be concise; write plain \
text, without calling any tool."""


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[... {len(text) - limit} more characters omitted]"


def _render(message: Message, limit: int) -> str:
    if isinstance(message, SystemMessage):
        return f"### System\n{_clip(message.content, limit)}"
    if isinstance(message, UserMessage):
        return f"### User\n{_clip(message.content, limit)}"
    if isinstance(message, ToolMessage):
        status = "" if message.status == "ok" else f" ({message.status})"
        return f"### Result of tool {message.name}{status}\n{_clip(message.content, limit)}"
    lines = ["### Assistant"]
    if message.content:
        lines.append(_clip(message.content, limit))
    for call in message.tool_calls:
        raw = call.arguments_raw or msgspec.json.encode(call.arguments).decode()
        lines.append(f"[called tool {call.name} with arguments: {_clip(raw, limit)}]")
    return "\n".join(lines)


def summary_request(plan: CompactionPlan, *, max_chars_per_message: int = 4000) -> list[Message]:
    """The messages that ask a model for the summary of ``plan``.

    One user message: the instruction, the previous summary if any, then
    ``plan.to_summarise`` rendered as plain text (tool calls and results included as
    text, so the request holds no tool call without its result and needs no tool
    schemas). Each message's text is clipped to ``max_chars_per_message`` so the request
    itself stays small.
    """
    if max_chars_per_message < 1:
        raise ValueError(f"max_chars_per_message must be >= 1, got {max_chars_per_message!r}")
    parts = [SUMMARY_INSTRUCTION]
    if plan.user_intent:
        parts.append(
            "The user's current request (kept verbatim after the summary):\n"
            + _clip(plan.user_intent, max_chars_per_message)
        )
    if plan.previous_summary:
        parts.append(f"## Summary of what came before\n{plan.previous_summary}")
    parts.append("## Conversation to summarise")
    parts.extend(_render(message, max_chars_per_message) for message in plan.to_summarise)
    return [UserMessage("\n\n".join(parts))]


# ---------------------------------------------------------------------------
# Summarising without a model


def truncation_note(plan: CompactionPlan) -> str:
    """A short note saying what was dropped, for compaction without a model."""
    removed = len(plan.to_summarise)
    counts = {"user": 0, "assistant": 0, "tool": 0}
    tools: list[str] = []
    for message in plan.to_summarise:
        if isinstance(message, UserMessage):
            counts["user"] += 1
        elif isinstance(message, AssistantMessage):
            counts["assistant"] += 1
        elif isinstance(message, ToolMessage):
            counts["tool"] += 1
            if message.name not in tools:
                tools.append(message.name)
    noun = "message was" if removed == 1 else "messages were"
    note = (
        f"{removed} earlier {noun} removed to fit the context window "
        f"({counts['user']} from the user, {counts['assistant']} from the assistant, "
        f"{counts['tool']} tool results"
    )
    note += f" from: {', '.join(tools)})." if tools else ")."
    if plan.previous_summary:
        return f"{plan.previous_summary}\n\n{note}"
    return note


class TruncationPolicy:
    """Compacts without a model: the summary only says what was removed."""

    async def summarise(self, plan: CompactionPlan) -> str:
        """:func:`truncation_note` of ``plan``; a checkpoint, nothing else."""
        await trio.lowlevel.checkpoint()
        return truncation_note(plan)


# ---------------------------------------------------------------------------
# Summarising with a model


class ModelSummary:
    """Asks a model for the summary (see :func:`summary_request`).

    ``provider`` defaults to the agent's own (the :class:`Compactor` fills it in),
    ``model`` to the provider's default; ``max_tokens`` bounds the summary. The request
    has no tools. Cancelling :meth:`summarise` closes the stream and leaves nothing
    behind. A provider error propagates.
    """

    def __init__(
        self,
        provider: Provider | None = None,
        *,
        model: str | None = None,
        max_tokens: int | None = 2048,
        max_chars_per_message: int = 4000,
    ) -> None:
        self.provider = provider
        self.model = model
        self.max_tokens = max_tokens
        self.max_chars_per_message = max_chars_per_message

    async def summarise(self, plan: CompactionPlan) -> str:
        """The model's summary of ``plan``; raises ``ValueError`` if it came back empty."""
        if self.provider is None:
            raise RuntimeError("ModelSummary has no provider: pass one, or use it in an Agent")
        request = Request(
            messages=summary_request(plan, max_chars_per_message=self.max_chars_per_message),
            model=self.model,
            max_tokens=self.max_tokens,
        )
        state = StreamState()
        async with self.provider.stream(request) as batches:
            async for batch in batches:
                for chunk in batch:
                    state = reduce_stream(state, chunk).state
        text = (assemble(state).content or "").strip()
        if not text:
            raise ValueError("the model returned an empty summary")
        return text


class Compactor:
    """When and how an agent compacts its history (``Agent(compaction=...)``).

    Before each model call the next request is estimated (:func:`estimate_tokens`, from
    the newest usage the provider reported plus the characters added since); over
    ``threshold`` tokens, the older part of the history is summarised by ``policy``
    and replaced, in what is sent, by that summary. A request the provider rejects as
    too long (:class:`~trurn.ContextOverflowError`) is compacted and sent once more,
    threshold or not. ``threshold=None`` compacts only on that error.

    ``policy`` is any :class:`CompactionPolicy`: :class:`ModelSummary` (the default,
    on the agent's provider) or :class:`TruncationPolicy` (no model call), or your own.
    ``keep_recent`` is the number of messages always sent verbatim (besides the
    latest user message and what follows it).
    """

    def __init__(
        self,
        threshold: int | None = None,
        *,
        policy: CompactionPolicy | None = None,
        keep_recent: int = DEFAULT_KEEP_RECENT,
        chars_per_token: float = 4.0,
    ) -> None:
        if threshold is not None and threshold < 1:
            raise ValueError(f"threshold must be a positive number of tokens, got {threshold!r}")
        if keep_recent < 0:
            raise ValueError(f"keep_recent must be >= 0, got {keep_recent!r}")
        if chars_per_token <= 0:
            raise ValueError(f"chars_per_token must be positive, got {chars_per_token!r}")
        self.threshold = threshold
        self.policy = policy
        self.keep_recent = keep_recent
        self.chars_per_token = chars_per_token

    def bound_to(self, provider: Provider) -> Compactor:
        """This compactor with a :class:`ModelSummary` on ``provider`` if it has no policy
        (or a ModelSummary without a provider)."""
        policy = self.policy
        if policy is None:
            policy = ModelSummary(provider)
        elif isinstance(policy, ModelSummary) and policy.provider is None:
            policy = ModelSummary(
                provider,
                model=policy.model,
                max_tokens=policy.max_tokens,
                max_chars_per_message=policy.max_chars_per_message,
            )
        else:
            return self
        return Compactor(
            self.threshold,
            policy=policy,
            keep_recent=self.keep_recent,
            chars_per_token=self.chars_per_token,
        )

    def over_threshold(self, estimated_tokens: int) -> bool:
        """Whether a request of ``estimated_tokens`` calls for a compaction first."""
        return self.threshold is not None and estimated_tokens > self.threshold

    def __repr__(self) -> str:
        return f"<trurn.Compactor threshold={self.threshold} policy={self.policy!r}>"
