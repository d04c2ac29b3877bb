"""The turn loop: one user message in, model replies and tool calls until an answer.

Read :func:`play_turn` top to bottom; it is the whole turn::

    user message ─► request ─► stream reply ─► tool calls? ─► run them ─► results ─┐
                       ▲                         │ no                               │
                       └─────────────────────────┼──────────────────────────────────┘
                                                 ▼
                                            TurnResult

Everything a turn starts runs inside it, in the caller's task or in nurseries it
owns, so cancelling the caller (any enclosing cancel scope) stops the HTTP stream
and the tools together. A cancelled or failed turn still leaves a history that is
valid to send to the provider again, and publishes ``run_aborted`` then
``turn_finished``.
"""

from __future__ import annotations

import contextvars
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import msgspec
import trio

from . import events
from ._context import Context
from ._errors import ProviderError, TrurnError
from ._messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolStatus,
    Usage,
    UserMessage,
)
from ._retry import retry_delay
from ._stream import StreamState, assemble, reduce_stream
from ._tools import run_tool_call
from .providers import Request

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from ._agent import Agent

__all__ = ["IterationPolicy", "OnEvent", "OnProgress", "TurnResult", "play_turn"]

OnEvent = Callable[[events.Event], "Awaitable[None] | None"]
"""Called with every event of the turn, in order (a sync or async callable)."""


class OnProgress(Protocol):
    """exoclaw-style progress: the model's interim text, then a hint of the tools it calls."""

    def __call__(self, content: str, *, tool_hint: bool = False) -> Awaitable[None]: ...


class IterationPolicy(Protocol):
    """Decides, before each model call, whether the turn goes on.

    ``iteration`` is the number of model replies so far; ``tool_calls`` every tool
    call of the turn so far, with its arguments. Returning ``False`` ends the turn
    with ``stop_reason="policy"``. The agent's ``max_steps`` stays a hard limit.
    """

    async def should_continue(self, iteration: int, tool_calls: Sequence[ToolCall]) -> bool: ...


class TurnResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one turn produced.

    ``text`` is the last assistant text of the turn (``None`` if there was none);
    ``tool_calls`` every tool call the model made, in order; ``messages`` every
    message the turn added to the history, the user message first; ``usage`` the
    tokens of all the turn's model calls; ``stop_reason`` why it ended
    (``"completed"``, ``"max_iterations"``, ``"policy"``, ``"length"``,
    ``"content_filter"``).
    """

    text: str | None
    tool_calls: list[ToolCall]
    messages: list[Message]
    usage: Usage
    stop_reason: str
    turn_id: str


current_turn_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "trurn_current_turn_id", default=None
)


async def play_turn(
    agent: Agent,
    context: Context,
    message: str,
    *,
    on_event: OnEvent | None = None,
    on_progress: OnProgress | None = None,
) -> TurnResult:
    """Run one turn of ``agent`` on ``context``; see :meth:`trurn.Agent.run_turn`."""
    if context._busy:
        raise RuntimeError("a turn is already running on this context")
    if context.path is not None and not context.is_open:
        raise RuntimeError(
            f"{context.path} is not open: use 'async with Context(path) as context' "
            "(or await context.restore()) before running a turn on it"
        )
    # A restored session continues its seq numbers, so records of old and new turns
    # never share one (a subscriber resuming from a seq relies on that).
    agent._seq = max(agent._seq, context.last_seq)
    turn_id = "turn_" + secrets.token_hex(8)
    emit = _Emitter(agent, turn_id, on_event)
    start = len(context.messages)
    usage = Usage()
    tool_calls: list[ToolCall] = []
    stop_reason = "max_iterations"

    finished = False
    context._busy = True
    parent_turn_id = current_turn_id.get()
    token = current_turn_id.set(turn_id)
    try:
        # The emitter cancels this scope if ``on_event`` raises; the error is re-raised below.
        with emit.scope:
            await emit([events.TurnStarted(input=message, parent_turn_id=parent_turn_id)])
            context.mark_turn_start(turn_id, parent_turn_id, seq=agent._seq)
            context.append(UserMessage(message), seq=agent._seq)
            await context.flush()
            for iteration in range(agent.max_steps):
                policy = agent.iteration_policy
                if policy is not None and not await policy.should_continue(iteration, tool_calls):
                    stop_reason = "policy"
                    break

                reply = await _stream_reply(agent, context, emit, step=iteration + 1)
                if reply.usage is not None:
                    usage += reply.usage
                tool_calls.extend(reply.tool_calls)

                if reply.finish_reason == "length" or reply.finish_reason == "content_filter":
                    # A cut-off reply's tool calls may be truncated: do not run them.
                    closed = context.close_tool_calls(
                        "error", f"Not run: the reply was cut off ({reply.finish_reason})."
                    )
                    if closed:
                        await emit([_exit_event(result) for result in closed])
                    stop_reason = reply.finish_reason
                    break
                if reply.finish_reason == "pause_turn" and not reply.tool_calls:
                    continue  # the provider paused a long server-side step: send it back
                if not reply.tool_calls:
                    stop_reason = "completed"
                    break

                if on_progress is not None:
                    await _report_progress(on_progress, reply)
                await _run_tools(agent, context, emit, reply.tool_calls)
                await context.flush()

            new_messages = list(context.messages[start:])
            text = _last_text(new_messages)
            # Durable before announced: the turn's records reach the disk (per the
            # context's fsync policy) before subscribers hear it finished.
            context.mark_turn_end(turn_id, stop_reason, usage, seq=agent._seq)
            await context.sync()
            await emit([events.TurnFinished(stop_reason=stop_reason, usage=usage, text=text)])
            finished = True
        if emit.callback_error is not None:
            raise emit.callback_error
    except BaseException as exc:
        if not finished:  # a turn that already announced its end is not aborted after it
            await _abort(context, emit, exc, usage)
        raise
    finally:
        current_turn_id.reset(token)
        context._busy = False

    return TurnResult(
        text=text,
        tool_calls=tool_calls,
        messages=new_messages,
        usage=usage,
        stop_reason=stop_reason,
        turn_id=turn_id,
    )


async def _stream_reply(
    agent: Agent, context: Context, emit: _Emitter, *, step: int
) -> AssistantMessage:
    """Stream one model reply, publishing its events; append it to the history.

    A retryable provider error before any chunk was consumed is retried as
    ``agent.retry`` says, with a ``retry`` event before each wait. Once output has
    arrived nothing is retried: if the stream then fails or is cancelled, the text
    that arrived is kept in the history as an aborted reply (without its unfinished
    tool calls) and the error is raised.
    """
    request = _build_request(agent, context)
    attempt = 0
    while True:
        attempt += 1
        state = StreamState()
        consumed = False
        try:
            async with agent.provider.stream(request) as batches:
                model = request.model or agent.provider.model
                await emit([events.MessageSent(step=step, model=model)])
                async for batch in batches:
                    consumed = True
                    published: list[events.BaseEvent] = []
                    for chunk in batch:
                        transition = reduce_stream(state, chunk)
                        state = transition.state
                        published.extend(transition.events)
                    if published:
                        await emit(published)
            break
        except ProviderError as exc:
            delay = None if consumed else retry_delay(agent.retry, attempt, exc)
            if delay is None:
                await _keep_partial(context, emit, state)
                raise
            retrying = events.Retrying(
                attempt=attempt, delay=delay, error_type=type(exc).__name__, message=str(exc)
            )
        except BaseException:
            await _keep_partial(context, emit, state)
            raise
        await emit([retrying])
        await trio.sleep(delay)
    reply = assemble(state, call_id_prefix=f"call_{secrets.token_hex(4)}")
    context.append(reply, seq=agent._seq)
    await emit([events.AssistantFinal(message=reply)])
    await context.flush()
    return reply


async def _keep_partial(context: Context, emit: _Emitter, state: StreamState) -> None:
    """Keep the text of an interrupted reply in the history, marked aborted.

    Only text is kept, and only if it is more than white space: providers reject an
    assistant message of nothing but reasoning or blank text, unfinished tool calls
    never ran, and a server tool call may lack the result that must follow it.
    """
    reply = assemble(state)
    if not (reply.content and reply.content.strip()):
        return
    partial = msgspec.structs.replace(reply, tool_calls=[], server_blocks=[], aborted=True)
    context.append(partial, seq=emit.last_seq)
    await emit.final([events.AssistantFinal(message=partial)])


def _build_request(agent: Agent, context: Context) -> Request:
    messages: list[Message] = list(context.messages)
    if agent.system:
        messages.insert(0, SystemMessage(agent.system))
    return Request(
        messages=messages,
        tools=agent.tool_specs,
        model=agent.model,
        temperature=agent.temperature,
        max_tokens=agent.max_tokens,
        reasoning_effort=agent.reasoning_effort,
        tool_choice=agent.tool_choice,
        stop=agent.stop,
        seed=agent.seed,
        parallel_tool_calls=agent.parallel_tool_calls,
        extra_body=agent.extra_body,
    )


async def _run_tools(
    agent: Agent, context: Context, emit: _Emitter, calls: Sequence[ToolCall]
) -> None:
    """Run one reply's tool calls concurrently (at most ``agent.max_concurrent_tools``
    at once) and append their results in call order, the finished ones even when the
    batch is cancelled."""
    results: list[ToolMessage | None] = [None] * len(calls)
    limiter = trio.CapacityLimiter(agent.max_concurrent_tools)

    async def run_one(position: int, call: ToolCall) -> None:
        def record(result: ToolMessage) -> None:
            results[position] = result

        async with limiter:
            await run_tool_call(call, agent.tools, emit, record)

    try:
        async with trio.open_nursery() as nursery:
            for position, call in enumerate(calls):
                nursery.start_soon(run_one, position, call)
    except BaseExceptionGroup as group:
        # Tools report their own errors as results, so what comes out of the nursery is
        # cancellation or something fatal (KeyboardInterrupt): raise that one exception
        # rather than a group around it.
        _, fatal = group.split(trio.Cancelled)
        if fatal is not None and len(fatal.exceptions) == 1:
            raise fatal.exceptions[0] from None
        raise
    finally:
        context.extend((result for result in results if result is not None), seq=emit.last_seq)


async def _report_progress(on_progress: OnProgress, reply: AssistantMessage) -> None:
    if reply.content and reply.content.strip():
        await on_progress(reply.content.strip())
    await on_progress(", ".join(_tool_hint(call) for call in reply.tool_calls), tool_hint=True)


def _tool_hint(call: ToolCall) -> str:
    """``name("first string argument…")``, short enough for a status line."""
    first = next((v for v in call.arguments.values() if isinstance(v, str)), None)
    if first is None:
        return call.name
    if len(first) > 40:
        first = first[:40] + "…"
    return f'{call.name}("{first}")'


async def _abort(context: Context, emit: _Emitter, exc: BaseException, usage: Usage) -> None:
    """Leave a valid history and the closing events after a cancel or an error.

    The history is repaired first (synchronously), so nothing the callbacks do here can
    leave a tool call without a result.
    """
    reason = _abort_reason(exc)
    status: ToolStatus
    if reason == "error":
        status, content = "error", f"Not run: the turn stopped on an error ({_describe(exc)})."
    else:
        status, content = "cancelled", f"Cancelled: the turn was {reason}."
    closing: list[events.BaseEvent] = []
    if reason == "error":
        closing.append(events.Error(message=_describe(exc), error_type=type(exc).__name__))
    seq = emit.last_seq
    closing.extend(
        _exit_event(result) for result in context.close_tool_calls(status, content, seq=seq)
    )
    closing.append(events.RunAborted(reason=reason))
    stop_reason = "error" if reason == "error" else "aborted"
    closing.append(events.TurnFinished(stop_reason=stop_reason, usage=usage))
    context.mark_turn_end(emit.turn_id, stop_reason, usage, seq=seq)
    with trio.CancelScope(shield=True):
        try:
            await context.sync()
        except Exception:
            # The records stay pending in the context and the next flush (or aclose)
            # writes them; the error that ended the turn is the one to raise.
            pass
    await emit.final(closing)


def _abort_reason(exc: BaseException) -> str:
    """``"cancelled"``, ``"interrupted"`` (KeyboardInterrupt, SystemExit) or ``"error"``."""
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        if rest is None:
            return "cancelled"
        exc = rest.exceptions[0]
    if isinstance(exc, trio.Cancelled):
        return "cancelled"
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "interrupted"
    return "error"


def _describe(exc: BaseException) -> str:
    # trurn's own errors are written to be shown (no secrets in them); anything else
    # may carry a URL or a header, so only its type is published.
    if isinstance(exc, TrurnError):
        return str(exc)
    return type(exc).__name__


def _exit_event(result: ToolMessage) -> events.ToolExit:
    return events.ToolExit(
        tool_call_id=result.tool_call_id,
        name=result.name,
        status=result.status,
        content=result.content,
    )


def _last_text(messages: Sequence[Message]) -> str | None:
    for message in reversed(messages):
        if isinstance(message, AssistantMessage):
            return message.content
    return None


class _Emitter:
    """Stamps events with the agent's next ``seq`` and the turn id, then publishes them
    to the agent's subscribers and to the turn's ``on_event`` callback, in that order.

    Emitters of one agent take turns, so events leave in ``seq`` order even when
    concurrent tools emit while a subscriber applies backpressure. Taking a free turn
    is not a checkpoint, so a batch costs what :meth:`Broadcast.publish` costs: a
    cancellation point, and a schedule point only if a subscriber makes it wait (plus
    what an async ``on_event`` awaits). If ``on_event`` raises, the error is kept in
    ``callback_error`` and ``scope`` (the turn's cancel scope) is cancelled: a broken
    callback ends the turn instead of turning into a tool result the model reads.
    """

    __slots__ = ("_agent", "_on_event", "_turn_id", "callback_error", "scope")

    def __init__(self, agent: Agent, turn_id: str, on_event: OnEvent | None) -> None:
        self._agent = agent
        self._turn_id = turn_id
        self._on_event = on_event
        self.scope = trio.CancelScope()
        self.callback_error: Exception | None = None

    @property
    def last_seq(self) -> int:
        """The seq of the last event this agent published."""
        return self._agent._seq

    @property
    def turn_id(self) -> str:
        return self._turn_id

    def _stamp(self, batch: Sequence[events.BaseEvent]) -> None:
        agent = self._agent
        turn_id = self._turn_id
        seq = agent._seq
        for event in batch:
            seq += 1
            event.seq = seq
            event.turn_id = turn_id
        agent._seq = seq

    async def _call_back(self, batch: Sequence[events.BaseEvent]) -> None:
        on_event = self._on_event
        if on_event is None or self.callback_error is not None:
            return
        try:
            for event in batch:
                outcome = on_event(event)  # type: ignore[arg-type]
                if outcome is not None:
                    await outcome
        except Exception as exc:
            self.callback_error = exc
            self.scope.cancel()

    async def __call__(self, batch: Sequence[events.BaseEvent]) -> None:
        agent = self._agent
        # One emitter at a time per agent, so seq order is delivery order. A bare flag
        # and a parking lot rather than a trio.Lock: this runs for every streamed chunk,
        # and the lock's bookkeeping cost more than the publishing it guards.
        while agent._emitting:
            await agent._emit_waiters.park()
        agent._emitting = True
        try:
            self._stamp(batch)
            await agent._hub.publish(batch)  # type: ignore[arg-type]
            if self._on_event is not None:
                await self._call_back(batch)
        finally:
            agent._emitting = False
            if agent._emit_waiters:
                agent._emit_waiters.unpark()

    async def final(self, batch: Sequence[events.BaseEvent]) -> None:
        """Publish while the turn is being torn down: shielded, and never waiting for
        a subscriber (a full one has older events evicted, see
        :meth:`Broadcast.publish_nowait`). ``on_event`` still gets every event (unless
        it already failed), so it must not block indefinitely."""
        with trio.CancelScope(shield=True):
            self._stamp(batch)
            self._agent._hub.publish_nowait(batch)  # type: ignore[arg-type]
            await self._call_back(batch)
