"""The turn loop: one user message in, model replies and tool calls until an answer.

Read :func:`play_turn` top to bottom, then :class:`_Turn` (its steps); that is the
whole turn::

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

import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec
import trio

from . import events
from ._compaction import Compactor, estimate_tokens, plan_compaction
from ._context import Context
from ._errors import ContextOverflowError, ProviderError, TrurnError, unwrapped
from ._hooks import Block, HookRunner
from ._inbox import Inbox
from ._lineage import CURRENT_TURN as _current_turn
from ._lineage import lineage_for
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
from ._policies import (
    LIMIT_STOP_REASONS,
    IterationPolicy,
    TurnGuard,
    continue_answer,
    limit_hook,
    limit_text,
    with_note,
)
from ._replay import events_to_persist
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


class TurnResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one turn produced.

    ``text`` is the last assistant text of the turn (``None`` if there was none);
    ``tool_calls`` every tool call the model made, in order; ``messages`` every
    message the turn added to the history, the user message first; ``usage`` the
    tokens of all the turn's model calls; ``stop_reason`` why it ended
    (``"completed"``, ``"max_iterations"``, ``"policy"``, ``"loop_detected"``,
    ``"budget_exceeded"``, ``"length"``, ``"content_filter"``, or ``"aborted"`` after
    :meth:`~trurn.Agent.cancel`).
    """

    text: str | None
    tool_calls: list[ToolCall]
    messages: list[Message]
    usage: Usage
    stop_reason: str
    turn_id: str


class TurnControl:
    """What :meth:`trurn.Agent.cancel` reaches in a running turn: its cancel scope
    (``mode="now"``) and a flag read at each step boundary (``mode="after_turn"``)."""

    __slots__ = ("reason", "scope", "stop_requested")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.stop_requested = False
        self.reason: str | None = None

    def cancel(self, *, now: bool, reason: str | None) -> None:
        if self.reason is None:
            self.reason = reason
        self.stop_requested = True
        if now:
            self.scope.cancel()


async def play_turn(
    agent: Agent,
    context: Context,
    message: str,
    *,
    on_event: OnEvent | None = None,
    on_progress: OnProgress | None = None,
    steering: Inbox | None = None,
) -> TurnResult:
    """Run one turn of ``agent`` on ``context``; see :meth:`trurn.Agent.run_turn`.

    ``steering`` (given by :meth:`trurn.Agent.serve`) is where messages sent with
    ``steer=True`` wait; the turn adds them to the history before each model call.
    """
    if context._busy:
        raise RuntimeError("a turn is already running on this context")
    if context._served and steering is None:
        raise RuntimeError(
            "an agent is serving this context: give it messages with agent.send(...)"
        )
    check_open(context)
    turn = _Turn(agent, context, on_event, steering)
    finished = False
    context._busy = True
    agent._turns[turn.id] = turn.control
    token = _current_turn.set(turn.lineage)
    try:
        # Cancelled by agent.cancel(mode="now"), and by the emitter if ``on_event`` raises
        # (that error is re-raised below).
        with turn.emit.scope:
            await turn.begin(message)
            stop_reason = "max_iterations"
            for iteration in range(agent.max_steps):
                reason = await turn.stop_before_request(iteration)
                if reason is None:
                    reason = await turn.step(iteration, on_progress)
                if reason is not None:
                    stop_reason = reason
                    break
            result = await turn.finish(stop_reason)
            finished = True
            await context.flush()  # the turn_finished record, with persist_events
        if turn.emit.callback_error is not None:
            raise turn.emit.callback_error
        if not finished:  # agent.cancel(mode="now") cancelled the scope
            if turn.ended is not None and turn.end_is_decided():
                await turn.announce_end()
                result = turn.result(turn.ended.stop_reason)
            else:
                await _abort(
                    context,
                    turn.emit,
                    "cancelled",
                    turn.usage,
                    message=turn.control.reason,
                    announced=turn.abort_announced(),
                )
                result = turn.result("aborted")
            finished = True
    except BaseException as exc:
        if finished:  # a turn that already announced its end is not aborted after it
            raise
        if turn.end_is_decided():  # a cancel, or a failed sync, after the end was written
            await turn.announce_end()
        else:
            reason = _abort_reason(exc)
            announced = reason == "cancelled" and turn.abort_announced()
            await _abort(context, turn.emit, reason, turn.usage, error=exc, announced=announced)
        raise
    finally:
        _current_turn.reset(token)
        context._busy = False
        del agent._turns[turn.id]
    return result


def check_open(context: Context) -> None:
    """Raise ``RuntimeError`` if ``context`` has a session file that is not open."""
    if context.path is not None and not context.is_open:
        raise RuntimeError(
            f"{context.path} is not open: use 'async with Context(path) as context' "
            "(or await context.restore()) before running a turn on it"
        )


class _Turn:
    """One turn's state and its steps; :func:`play_turn` drives it and handles its end.

    Each step method returns a stop reason to end the turn, or ``None`` to go on.
    """

    def __init__(
        self, agent: Agent, context: Context, on_event: OnEvent | None, steering: Inbox | None
    ) -> None:
        self.id = "turn_" + secrets.token_hex(8)
        self.lineage = lineage_for(self.id, _current_turn.get(), max_depth=agent.max_depth)
        # A restored session continues its seq numbers, so records of old and new turns
        # never share one (a subscriber resuming from a seq relies on that).
        agent._seq = max(agent._seq, context.last_seq)
        self.agent = agent
        self.context = context
        self.emit = _Emitter(agent, self.id, on_event, context)
        self.hooks = HookRunner(agent.hooks, self.emit, agent.hook_timeout)
        self.control = TurnControl(self.emit.scope)
        self.guard = TurnGuard(
            loop_detection=agent.loop_detection, max_turn_tokens=agent.max_turn_tokens
        )
        self.steering = steering
        self.start = len(context.messages)
        self.usage = Usage()
        self.tool_calls: list[ToolCall] = []
        self.replies = 0
        self.ended: events.TurnFinished | None = None  # once the end marker is handed over
        # The run_aborted of cancel("after_turn"), once it is being published.
        self.abort_notice: events.RunAborted | None = None

    async def begin(self, message: str) -> None:
        """Announce the turn and add the user's message to the history."""
        lineage = self.lineage
        started = events.TurnStarted(
            input=message,
            parent_turn_id=lineage.parent_turn_id,
            root_turn_id=lineage.root_turn_id,
            depth=lineage.depth,
            chain=list(lineage.chain),
        )
        await self.emit([started])
        self.context.mark_turn_start(lineage, seq=self.emit.last_seq)
        self.context.append(UserMessage(message), seq=self.emit.last_seq)
        await self.context.flush()

    async def stop_before_request(self, iteration: int) -> str | None:
        """Before a model call: a cancel asked for after the step, steering messages,
        the token budget and the iteration policy."""
        if self.control.stop_requested:  # agent.cancel(mode="after_turn")
            self.abort_notice = events.RunAborted(reason="cancelled", message=self.control.reason)
            await self.emit([self.abort_notice])
            return "aborted"
        budget = self.guard.before_request(self.usage)
        if budget.stop_reason is not None:
            return budget.stop_reason
        policy = self.agent.iteration_policy
        if policy is not None:
            answer = await policy.should_continue(iteration, self.tool_calls)
            if not continue_answer(policy, answer):
                return "policy"
        # Taken only once the turn goes on (else they wait for the next turn), and all
        # added to the history before any is announced, so a cancel loses none.
        texts = self.steering.take_steering() if self.steering is not None else []
        if texts:
            self.context.extend((UserMessage(text) for text in texts), seq=self.emit.last_seq)
            await self.emit([events.UserInjected(text=text) for text in texts])
        return None

    async def step(self, iteration: int, on_progress: OnProgress | None) -> str | None:
        """One model reply, then the tool calls it asks for."""
        agent, context, emit = self.agent, self.context, self.emit
        reply = await _next_reply(agent, context, emit, self.hooks, step=iteration + 1)
        self.replies += 1
        if reply.usage is not None:
            self.usage += reply.usage
        self.tool_calls.extend(reply.tool_calls)

        if reply.finish_reason == "length" or reply.finish_reason == "content_filter":
            # A cut-off reply's tool calls may be truncated: do not run them.
            note = f"Not run: the reply was cut off ({reply.finish_reason})."
            await self._close_calls(note)
            return reply.finish_reason
        if reply.finish_reason == "pause_turn" and not reply.tool_calls:
            return None  # the provider paused a long server-side step: send it back
        if not reply.tool_calls:
            follow_up = await self.hooks.before_finish(reply.content)
            if follow_up is None:
                return "completed"
            if iteration + 1 == agent.max_steps:
                return "max_iterations"  # no step left to send the model back to
            context.append(UserMessage(follow_up), seq=emit.last_seq)
            await emit([events.UserInjected(text=follow_up)])
            return None

        verdict = self.guard.after_reply(reply)
        if verdict.action == "stop":  # the model is looping: its calls do not run
            assert verdict.note is not None
            await self._close_calls(verdict.note)
            return verdict.stop_reason
        if on_progress is not None:
            await _report_progress(on_progress, reply)
        await _run_tools(agent, context, emit, self.hooks, reply.tool_calls, note=verdict.note)
        await context.flush()
        return None

    async def _close_calls(self, note: str) -> None:
        """Give the reply's calls a result saying why they did not run."""
        closed = self.context.close_tool_calls("error", note, seq=self.emit.last_seq)
        if closed:
            await self.emit([events.ToolExit.of(result) for result in closed])

    def end_is_decided(self) -> bool:
        """Whether a cancel or an error came too late to abort the turn: its
        ``turn_finished`` was being published (then it reaches every subscriber anyway),
        or its end marker was handed to the file (which will say the turn ended as it
        did, once written: a failed sync leaves it queued for the next write)."""
        return self.ended is not None and (
            self.ended.seq != 0 or self.context.turn_end_is_final(self.id)
        )

    def abort_announced(self) -> bool:
        """Whether the ``run_aborted`` of ``cancel("after_turn")`` went out: stamped, it
        reaches every subscriber even if a cancel interrupts its delivery (it is a final
        event), so an abort after it must not publish a second one."""
        return self.abort_notice is not None and self.abort_notice.seq != 0

    async def announce_end(self) -> None:
        """Publish ``turn_finished`` after a late cancel, unless it is already out."""
        assert self.ended is not None
        if self.ended.seq == 0:
            await self.emit.final([self.ended])

    def result(self, stop_reason: str, text: str | None = None) -> TurnResult:
        new_messages = list(self.context.messages[self.start :])
        return TurnResult(
            text=text if text is not None else _last_text(new_messages),
            tool_calls=self.tool_calls,
            messages=new_messages,
            usage=self.usage,
            stop_reason=stop_reason,
            turn_id=self.id,
        )

    async def finish(self, stop_reason: str) -> TurnResult:
        """End the turn: the policy's last word, hooks, durable records, ``turn_finished``."""
        text = None
        on_limit = limit_hook(self.agent.iteration_policy)
        if on_limit is not None and stop_reason in LIMIT_STOP_REASONS:
            text = limit_text(await on_limit(self.replies, self.tool_calls, stop_reason))
        result = self.result(stop_reason, text)
        await self.hooks.on_turn_end(result)
        # Durable before announced: the turn's records reach the disk (per the
        # context's fsync policy) before subscribers hear it finished. The end marker
        # holds the seq turn_finished is about to get, so a restored session goes on
        # after it.
        self.context.mark_turn_end(self.id, stop_reason, self.usage, seq=self.emit.next_seq())
        self.ended = events.TurnFinished(
            stop_reason=stop_reason, usage=self.usage, text=result.text
        )
        await self.context.sync()
        await self.emit([self.ended])
        return result


async def _next_reply(
    agent: Agent, context: Context, emit: _Emitter, hooks: HookRunner, *, step: int
) -> AssistantMessage:
    """The next model reply, the history compacted first if it has grown too large.

    With ``agent.compactor`` set, a request estimated over its threshold is compacted
    before it is sent, and one the provider rejects as too long for its context window
    is compacted and sent once more (if there is anything left to compact).
    """
    compactor = agent.compactor
    if compactor is None:
        return await _stream_reply(agent, context, emit, hooks, step=step)
    estimate = estimate_tokens(
        context.prompt_messages(),
        last_usage=context.usage_since_compaction(),
        chars_per_token=compactor.chars_per_token,
    )
    if compactor.over_threshold(estimate):
        await _compact(compactor, context, emit, "threshold", estimate)
    try:
        return await _stream_reply(agent, context, emit, hooks, step=step)
    except ContextOverflowError:
        if not await _compact(compactor, context, emit, "overflow", estimate):
            raise
    return await _stream_reply(agent, context, emit, hooks, step=step)


async def _compact(
    compactor: Compactor,
    context: Context,
    emit: _Emitter,
    reason: Literal["threshold", "overflow"],
    estimate: int,
) -> bool:
    """Summarise the older part of the history and send the summary in its place.

    Returns whether it did. Nothing to compact (see
    :func:`~trurn._compaction.plan_compaction`) or a summariser that fails (an
    ``error`` event says why) leaves the history as it was; the turn goes on.
    """
    plan = plan_compaction(
        context.messages, keep_recent=compactor.keep_recent, previous=context.compaction
    )
    if plan is None:
        return False
    await emit([events.CompactionStarted(reason=reason, estimated_tokens=estimate)])
    assert compactor.policy is not None  # the agent binds a default policy
    try:
        summary = await compactor.policy.summarise(plan)
    except Exception as exc:
        message = f"compaction failed: {_describe(exc)}"
        await emit([events.Error(message=message, error_type=type(exc).__name__)])
        return False
    context.compact(summary, plan.first_kept, plan.user_intent, seq=emit.last_seq)
    compacted = events.Compacted(
        summary=summary, first_kept=plan.first_kept, summarised=len(plan.to_summarise)
    )
    await emit([compacted])
    await context.flush()
    return True


async def _stream_reply(
    agent: Agent, context: Context, emit: _Emitter, hooks: HookRunner, *, step: int
) -> AssistantMessage:
    """Stream one model reply, publishing its events; append it to the history.

    A retryable provider error before any chunk was consumed is retried as
    ``agent.retry`` says, with a ``retry`` event before each wait. Once output has
    arrived nothing is retried: if the stream then fails or is cancelled, the text
    that arrived is kept in the history as an aborted reply (without its unfinished
    tool calls) and the error is raised.
    """
    messages = context.prompt_messages()
    if hooks.has("before_request"):
        messages = await hooks.before_request(messages)
    request = _build_request(agent, messages)
    attempt = 0
    while True:
        attempt += 1
        state = context._streaming = StreamState()
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
                    context._streaming = state  # for get_tool_call_deltas()
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


def _build_request(agent: Agent, messages: list[Message]) -> Request:
    if agent.system:
        messages = [SystemMessage(agent.system), *messages]
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
    agent: Agent,
    context: Context,
    emit: _Emitter,
    hooks: HookRunner,
    calls: Sequence[ToolCall],
    *,
    note: str | None = None,
) -> None:
    """Run one reply's tool calls concurrently (at most ``agent.max_concurrent_tools``
    at once) and append their results in call order. ``before_tool`` hooks may change a
    call's arguments (its result then records them) or block it; ``after_tool`` hooks
    see every result. ``note`` (a loop warning) is appended to the last result, which
    the model reads last.

    When the batch is cancelled (or fails), every call still gets its result in its
    place: the finished ones keep theirs, the others a ``"cancelled"`` one; each result
    whose ``tool_exit`` did not get out is announced then (with :meth:`_Emitter.final`).
    A ``KeyboardInterrupt`` (or any one exception other than ``Cancelled``) comes out
    alone, not in an exception group."""
    results: list[ToolMessage | None] = [None] * len(calls)
    announced = [False] * len(calls)  # whose tool_exit was published
    limiter = trio.CapacityLimiter(agent.max_concurrent_tools)

    async def run_one(position: int, asked: ToolCall) -> None:
        async with limiter:
            call = await hooks.before_tool(asked)
            if isinstance(call, Block):
                result = ToolMessage(
                    tool_call_id=asked.id,
                    name=asked.name,
                    content=f"Blocked: {call.reason}",
                    status="denied",
                )
                results[position] = result
                # Announced like any refused call: tool_call, then its tool_exit.
                await emit([events.ToolCallStarted(call=asked), events.ToolExit.of(result)])
                announced[position] = True
                await hooks.after_tool(asked, result)
                return

            def record(result: ToolMessage) -> None:
                if call is not asked:
                    result = msgspec.structs.replace(result, arguments=call.arguments)
                results[position] = result

            await run_tool_call(
                call,
                agent.tools,
                emit,
                record,
                approvals=agent._approvals,
                tool_timeout=agent.tool_timeout,
            )
            announced[position] = True
            recorded = results[position]  # what the history holds (with a rewrite's arguments)
            assert recorded is not None
            await hooks.after_tool(call, recorded)

    try:
        async with trio.open_nursery() as nursery:
            for position, call in enumerate(calls):
                nursery.start_soon(run_one, position, call)
    except BaseExceptionGroup as group:
        # Tools report their own errors as results, so what comes out of the nursery is
        # cancellation or something fatal (KeyboardInterrupt), possibly in groups nested
        # by a tool's or an approval's own nursery: raise that one exception alone. With
        # the Cancelled split off, one exception left means a chain of one-member groups.
        _, fatal = group.split(trio.Cancelled)
        lone = None if fatal is None else unwrapped(fatal)
        if lone is not None and not isinstance(lone, BaseExceptionGroup):
            raise lone from None
        raise
    finally:
        ordered = [
            result
            if result is not None
            else ToolMessage(
                tool_call_id=call.id,
                name=call.name,
                content="Cancelled: the turn stopped before this call finished.",
                status="cancelled",
            )
            for result, call in zip(results, calls, strict=True)
        ]
        context.extend(with_note(ordered, note) if note else ordered, seq=emit.last_seq)
        unannounced = [r for r, done in zip(ordered, announced, strict=True) if not done]
        if unannounced:  # a cancel came first: closing events never wait for anyone
            await emit.final([events.ToolExit.of(result) for result in unannounced])


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


async def _abort(
    context: Context,
    emit: _Emitter,
    reason: str,
    usage: Usage,
    *,
    error: BaseException | None = None,
    message: str | None = None,
    announced: bool = False,
) -> None:
    """Leave a valid history and the closing events after a cancel or an error.

    ``reason`` is what :func:`_abort_reason` says (``"cancelled"``, ``"interrupted"``,
    ``"error"``); ``error`` the exception that ended the turn, ``message`` the reason
    given to :meth:`~trurn.Agent.cancel`; ``announced`` that the turn's ``run_aborted``
    went out already (see :meth:`_Turn.abort_announced`). The history is repaired first
    (synchronously), so nothing the callbacks do here can leave a tool call without a
    result.
    """
    status: ToolStatus
    if reason == "error":
        assert error is not None
        status, content = "error", f"Not run: the turn stopped on an error ({_describe(error)})."
    else:
        status, content = "cancelled", f"Cancelled: the turn was {reason}."
    closing: list[events.BaseEvent] = []
    if reason == "error":
        assert error is not None
        closing.append(events.Error(message=_describe(error), error_type=type(error).__name__))
    seq = emit.last_seq
    closing.extend(
        events.ToolExit.of(result) for result in context.close_tool_calls(status, content, seq=seq)
    )
    if not announced:
        closing.append(events.RunAborted(reason=reason, message=message))
    stop_reason = "error" if reason == "error" else "aborted"
    closing.append(events.TurnFinished(stop_reason=stop_reason, usage=usage))
    context.mark_turn_end(emit.turn_id, stop_reason, usage, seq=emit.next_seq(len(closing)))
    with trio.CancelScope(shield=True):
        try:
            await context.sync()
        except Exception:
            # The records stay pending in the context and the next flush (or aclose)
            # writes them; the error that ended the turn is the one to raise.
            pass
    await emit.final(closing)
    with trio.CancelScope(shield=True):
        try:
            await context.flush()  # the closing events' records, with persist_events
        except Exception:
            pass  # still pending: the next flush or aclose writes them


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

    __slots__ = ("_agent", "_context", "_on_event", "_turn_id", "callback_error", "scope")

    def __init__(
        self, agent: Agent, turn_id: str, on_event: OnEvent | None, context: Context
    ) -> None:
        self._agent = agent
        self._turn_id = turn_id
        self._on_event = on_event
        self._context = context
        self.scope = trio.CancelScope()
        self.callback_error: Exception | None = None

    @property
    def last_seq(self) -> int:
        """The seq of the last event this agent published."""
        return self._agent._seq

    def next_seq(self, count: int = 1) -> int:
        """The seq the ``count``-th next event of this agent gets, if no other turn of the
        agent publishes first."""
        return self._agent._seq + count

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
        self._context.last_seq = seq  # another agent on this context continues from here
        if agent._persisted:  # Agent(persist_events=...): the session keeps these events
            self._context.record_events(events_to_persist(agent._persisted, batch))

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
            # A cancel lands here or not at all before delivery: stamped events are
            # being published (see end_is_decided), and a final one reaches every
            # subscriber even if a cancel interrupts a wait for a slow one.
            await trio.lowlevel.checkpoint_if_cancelled()
            self._stamp(batch)
            try:
                await agent._hub.publish(batch)  # type: ignore[arg-type]
            except trio.Cancelled:
                if isinstance(batch[-1], events.TurnFinished):
                    with trio.CancelScope(shield=True):
                        await self._call_back(batch)
                raise
            if self._on_event is not None:
                await self._call_back(batch)
        finally:
            agent._emitting = False
            if agent._final_batches:
                _deliver_final_batches(agent)
            if agent._emit_waiters:
                agent._emit_waiters.unpark()

    async def final(self, batch: Sequence[events.BaseEvent]) -> None:
        """Publish while the turn is being torn down: shielded, and never waiting for
        a subscriber (a full one has older events evicted, see
        :meth:`Broadcast.publish_nowait`). If another turn of the agent is publishing
        (waiting for a slow subscriber), the batch is handed to it and leaves right
        after its own, so subscribers still get every seq in order. ``on_event`` still
        gets every event at once (unless it already failed), so it must not block
        indefinitely."""
        with trio.CancelScope(shield=True):
            self._stamp(batch)
            agent = self._agent
            if agent._emitting:
                agent._final_batches.append(batch)
            else:
                agent._hub.publish_nowait(batch)  # type: ignore[arg-type]
            await self._call_back(batch)


def _deliver_final_batches(agent: Agent) -> None:
    """Publish the closing batches other turns stamped while this emitter published
    (see :meth:`_Emitter.final`), without waiting for any subscriber."""
    while agent._final_batches:
        batch = agent._final_batches.popleft()
        try:
            agent._hub.publish_nowait(batch)  # type: ignore[arg-type]
        except trio.ClosedResourceError:
            pass  # the agent's subscribers are gone meanwhile: nobody is owed them
