"""The agent: a provider, tools and options, plus the event broadcast of its turns.

:class:`Agent` holds what stays the same from turn to turn; the turn itself is in
:mod:`trurn._turn`. :func:`run_turn` is the one-call front door: one bounded turn on
a fresh in-memory history.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal

import trio

from . import events
from ._approvals import ApprovalPolicy, Approvals, Approver, Chooser, check_timeout
from ._broadcast import Broadcast, Policy
from ._compaction import Compactor
from ._context import Context
from ._errors import ProviderError
from ._hooks import Hooks, check_hooks
from ._inbox import DEFAULT_MAX_PENDING, Inbox
from ._lineage import DEFAULT_MAX_DEPTH
from ._policies import (
    DEFAULT_LOOP_DETECTION,
    IterationPolicy,
    LoopDetection,
    check_iteration_policy,
    check_max_turn_tokens,
)
from ._replay import PersistEvents, persisted_event_types, subscribe_since
from ._retry import NO_RETRY, RetryPolicy
from ._tools import BaseTool, tool_map
from ._turn import OnEvent, OnProgress, TurnControl, TurnResult, check_open, play_turn
from .providers import Provider, ToolSpec

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["Agent", "open_agent", "run_turn"]

_FINAL_EVENTS = (events.RunAborted, events.TurnFinished)


DEFAULT_RETRY = RetryPolicy()
DEFAULT_COMPACTION = Compactor()  # compacts (with a model summary) only on a context overflow


def _is_final(event: events.Event) -> bool:
    return isinstance(event, _FINAL_EVENTS)


def _dropped(count: int) -> events.Event:
    return events.EventsDropped(count=count)


class Agent:
    """A model provider with tools, a system prompt and options, ready to run turns.

    One agent can run turns on many :class:`Context` objects, one turn per context
    at a time. Every event of every turn goes to the agent's subscribers (see
    :meth:`subscribe`) with a ``seq`` that increases across turns.

    ``temperature``, ``max_tokens``, ``reasoning_effort``, ``tool_choice``, ``stop``,
    ``seed``, ``parallel_tool_calls``, ``extra_body`` and ``model`` go into every request
    (see :class:`trurn.providers.Request`; ``None`` leaves the provider's default).
    ``max_steps`` bounds the model calls of one turn; ``max_concurrent_tools`` how
    many tool calls of one reply run at once; ``retry`` when a model call that failed
    before any output is tried again (``None``: never). ``compaction`` when the
    history is summarised to fit the context window (see :class:`trurn.Compactor`; by
    default only when the provider says a request is too long; ``None``: never).
    ``max_depth`` bounds how deeply turns of this agent may nest inside other turns'
    tools (subagents): a turn at a greater depth raises
    :class:`~trurn.SubagentDepthError` before it starts.

    ``require_approval`` says which tool calls wait for a person: ``True`` (all),
    ``False`` (none, unless a tool's precheck asks), a set of tool names, or a
    callable(call) -> bool. ``approver`` answers approval requests (sync or async,
    given the ``approval_request`` event, returning a bool or an
    :class:`~trurn.ApprovalDecision`), and ``chooser`` the tools' choices (returning
    one of the choices); whether or not they are set, any task may answer with
    :meth:`respond` / :meth:`respond_choice`, and the first answer wins. A wait has no
    deadline but the caller's cancel scope. ``tool_timeout`` bounds each tool call that
    declares no ``timeout`` of its own (seconds; past it the model reads a
    ``"timeout"`` result, and a sync tool's thread is abandoned, running on until it
    returns).

    ``hooks`` are :class:`~trurn.Hooks` the turn awaits at fixed points (before each
    request and tool, after each tool, before it finishes, at its end); a hook that
    raises, or runs past ``hook_timeout`` seconds, is reported as an ``error`` event and
    changes nothing. ``max_pending`` bounds the messages waiting for :meth:`serve`.

    ``loop_detection`` stops a turn whose tool calls repeat (the same call ``repeats``
    times in a row, or a cycle of up to ``max_cycle`` calls repeated as often) with
    ``stop_reason="loop_detected"``; ``mode="warn_then_stop"`` warns the model once
    first (see :class:`~trurn.LoopDetection`; ``None`` turns it off).
    ``max_turn_tokens`` ends a turn with ``stop_reason="budget_exceeded"`` before a
    model call once its replies have used that many tokens (the reply that crosses the
    budget is kept, so a turn can overshoot by one call).

    ``persist_events`` writes events into the session file of the context a turn runs
    on, so :meth:`subscribe` can replay them exactly after a reconnect: ``True`` (all
    but the per-chunk deltas), a set of event type names, or ``False`` (none; a
    reconnecting subscriber then gets events rebuilt from the messages).
    """

    def __init__(
        self,
        provider: Provider,
        *,
        tools: Iterable[BaseTool | Callable[..., Any]] = (),
        system: str | None = None,
        max_steps: int = 50,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        reasoning_effort: str | None = None,
        tool_choice: str | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        parallel_tool_calls: bool | None = None,
        extra_body: Mapping[str, Any] | None = None,
        iteration_policy: IterationPolicy | None = None,
        max_concurrent_tools: int = 8,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        compaction: Compactor | None = DEFAULT_COMPACTION,
        max_depth: int = DEFAULT_MAX_DEPTH,
        require_approval: ApprovalPolicy = False,
        approver: Approver | None = None,
        chooser: Chooser | None = None,
        tool_timeout: float | None = None,
        hooks: Sequence[Hooks] = (),
        hook_timeout: float | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        loop_detection: LoopDetection | None = DEFAULT_LOOP_DETECTION,
        max_turn_tokens: int | None = None,
        persist_events: PersistEvents = False,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        if max_concurrent_tools < 1:
            raise ValueError(f"max_concurrent_tools must be at least 1, got {max_concurrent_tools}")
        self.provider = provider
        self.tools = tool_map(tools)
        self.tool_specs: Sequence[ToolSpec] = tuple(t.spec() for t in self.tools.values())
        self._approvals = Approvals(
            require_approval, approver=approver, chooser=chooser, tool_names=self.tools
        )
        self.tool_timeout = check_timeout(tool_timeout, "tool_timeout")
        self.system = system
        self.max_steps = max_steps
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.reasoning_effort = reasoning_effort
        self.tool_choice = tool_choice
        self.stop = stop
        self.seed = seed
        self.parallel_tool_calls = parallel_tool_calls
        self.extra_body = extra_body
        self.iteration_policy = check_iteration_policy(iteration_policy)
        self.max_concurrent_tools = max_concurrent_tools
        self.retry = retry or NO_RETRY
        self.compactor = None if compaction is None else compaction.bound_to(provider)
        if max_depth < 0:
            raise ValueError(f"max_depth must be >= 0, got {max_depth}")
        self.max_depth = max_depth
        self.hooks = check_hooks(hooks)
        self.hook_timeout = check_timeout(hook_timeout, "hook_timeout")
        self._inbox = Inbox(max_pending)
        self.loop_detection = loop_detection
        self.max_turn_tokens = check_max_turn_tokens(max_turn_tokens)
        self._persisted = persisted_event_types(persist_events)
        self._turns: dict[str, TurnControl] = {}  # the turns running now, for cancel()
        self._hub: Broadcast[events.Event] = Broadcast(is_final=_is_final, on_drop=_dropped)
        self._emitting = False  # an emitter of this agent is publishing (see _turn._Emitter)
        self._emit_waiters = trio.lowlevel.ParkingLot()
        # Closing events stamped while another emitter was publishing: it delivers them.
        self._final_batches: collections.deque[Sequence[events.BaseEvent]] = collections.deque()
        self._seq = 0

    def subscribe(
        self,
        *,
        max_buffer: int = 256,
        policy: Policy = "wait",
        since: int | None = None,
        context: Context | None = None,
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[events.Event]]:
        """Receive every event of this agent's turns: ``async with agent.subscribe() as s``.

        To resume after a disconnect, give the ``seq`` of the last event seen and the
        session's ``context``: the channel first delivers what that session recorded
        after ``since`` (exactly, with ``persist_events``; else rebuilt from the
        messages, without the deltas), then the live events after those, each ``seq``
        once (see :func:`trurn._replay.subscribe_since`).

        ``policy`` says what happens when this subscriber's ``max_buffer`` events are
        waiting unread: ``"wait"`` makes the turn wait (backpressure); ``"drop"`` drops
        events for this subscriber and tells it how many with an ``events_dropped``
        event (the final events of a turn are never dropped); ``"disconnect"`` ends
        this subscription. A slow ``"drop"`` or ``"disconnect"`` subscriber never slows
        the turn or the other subscribers.
        """
        if since is None and context is None:
            return self._hub.subscribe(max_buffer=max_buffer, policy=policy)
        if since is None or context is None:
            raise ValueError("resuming a subscription needs both since=<seq> and context=")
        return subscribe_since(self._hub, context, since, max_buffer=max_buffer, policy=policy)

    async def run_turn(
        self,
        context: Context,
        message: str,
        *,
        on_event: OnEvent | None = None,
        on_progress: OnProgress | None = None,
    ) -> TurnResult:
        """Run one turn: add ``message`` to ``context`` and talk to the model until it
        answers without tools or a limit stops the turn. Always a checkpoint.

        The new messages are appended to ``context`` as they happen. ``on_event`` is
        called with every event of this turn, in ``seq`` order, after the subscribers
        got it (sync or async; the turn waits for it). ``on_progress`` gets
        exoclaw-style progress: the model's interim text and a tool hint
        (``name("arg")``) whenever it calls tools.

        Whatever ends a turn early, the history is left valid to send again (every
        tool call has a result) and ``run_aborted`` then ``turn_finished`` are
        published, so subscribers always see the end of a turn:

        - Cancelling the caller cancels the turn: the stream and the tools stop, and
          unfinished tool calls get a ``"cancelled"`` result. ``on_event`` is still
          called (shielded) with the closing events, so it must not block forever.
        - A :class:`~trurn.ProviderError` (HTTP error, broken stream) is raised after an
          ``error`` event; text that had streamed is kept as an aborted reply.
        - An exception from ``on_event``, ``on_progress`` or the iteration policy ends
          the turn and is raised as it is; it never reaches the model as a tool result.

        Raises ``RuntimeError`` if a turn is already running on ``context``.
        """
        return await play_turn(self, context, message, on_event=on_event, on_progress=on_progress)

    def respond(self, request_id: str, approved: bool, *, reason: str | None = None) -> None:
        """Answer the ``approval_request`` ``request_id``: approve the call, or deny it
        (the model reads ``reason``). Never blocks; call it from any task (from another
        thread: ``trio.from_thread.run_sync(agent.respond, ...)``).

        Raises :class:`~trurn.UnknownRequestError` when no such request is open (never
        made, a choice request, or expired because its tool call ended: the turn was
        cancelled or finished), :class:`~trurn.RequestAnsweredError` when it was
        already answered (by the ``approver`` or an earlier call), and ``TypeError``
        for an ``approved`` that is not a bool.
        """
        self._approvals.respond(request_id, approved, reason=reason)

    def respond_choice(self, request_id: str, choice: str) -> None:
        """Answer the ``choice_request`` ``request_id`` with ``choice``. Never blocks.

        Raises :class:`~trurn.InvalidChoiceError` for a choice that was not offered
        (the request stays open for a valid one), and the errors of :meth:`respond`.
        """
        self._approvals.respond_choice(request_id, choice)

    def pending_requests(self) -> list[events.ApprovalRequest | events.ChoiceRequest]:
        """The approval and choice requests waiting for an answer, oldest first: what a
        UI that connects (or reconnects) mid-turn should show."""
        return self._approvals.pending()

    # -- a long-lived agent ------------------------------------------------------------

    async def serve(
        self,
        context: Context,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run a turn on ``context`` for each message sent, one after another, until
        cancelled: ``await nursery.start(agent.serve, context)``.

        Messages come from :meth:`send` and :meth:`send_nowait`, which work from the
        moment ``serve`` has started until it ends; then the waiting messages are
        dropped and sending raises ``trio.ClosedResourceError``. A message sent with
        ``steer=True`` while a turn runs joins that turn before its next model call;
        other messages wait for the next turn. A turn that fails on a
        :class:`~trurn.ProviderError` has published its ``error``, ``run_aborted`` and
        ``turn_finished`` events, and the agent goes on with the next message; any other
        exception ends ``serve``. One ``serve`` per agent, and per context, at a time
        (``RuntimeError``); while it runs, the context takes turns only from it
        (``run_turn`` on it raises ``RuntimeError``).
        """
        if self._inbox.is_open:
            raise RuntimeError("this agent is already serving")
        check_open(context)
        if context._served:
            raise RuntimeError("another agent is already serving this context")
        self._inbox.open()
        context._served = True
        try:
            task_status.started()
            while True:
                message = await self._inbox.get()
                try:
                    await play_turn(self, context, message, steering=self._inbox)
                except ProviderError:
                    continue
        finally:
            context._served = False
            self._inbox.close()

    async def send(self, message: str, *, steer: bool = False) -> None:
        """Give :meth:`serve` a message, waiting while ``max_pending`` are queued.

        ``steer=True`` lets a running turn take it before its next model call instead
        of waiting for the next turn. Raises ``trio.ClosedResourceError`` if the agent
        is not serving.
        """
        await self._inbox.put(message, steer=steer)

    def send_nowait(self, message: str, *, steer: bool = False) -> None:
        """:meth:`send` without waiting: ``trio.WouldBlock`` if the queue is full."""
        self._inbox.put_nowait(message, steer=steer)

    def pending_messages(self) -> list[str]:
        """The messages waiting for :meth:`serve`, oldest first."""
        return self._inbox.pending()

    def clear_pending(self) -> int:
        """Drop the messages waiting for :meth:`serve`; returns how many there were."""
        return self._inbox.clear()

    def cancel(
        self, mode: Literal["now", "after_turn"] = "now", *, reason: str | None = None
    ) -> bool:
        """Stop this agent's running turns; returns whether any was running.

        ``"now"`` cancels them at once (the stream and tools stop); ``"after_turn"``
        lets the current step finish (the model's reply and its tool calls) and ends
        the turn before the next model call. Either way the turn publishes
        ``run_aborted`` (with ``reason``) and ``turn_finished``, keeps what arrived, and
        returns a :class:`TurnResult` with ``stop_reason="aborted"`` (it does not raise);
        but a turn whose running step was its last (the model answered without tools)
        completes as usual after ``"after_turn"``. With no turn running it does nothing:
        the next turn is not affected. Calling it again is harmless (the first
        ``reason`` is kept), and ``"now"`` after ``"after_turn"`` hurries the stop.
        """
        if mode not in ("now", "after_turn"):
            raise ValueError(f"mode must be 'now' or 'after_turn', got {mode!r}")
        for control in list(self._turns.values()):
            control.cancel(now=mode == "now", reason=reason)
        return bool(self._turns)

    def __repr__(self) -> str:
        return f"<trurn.Agent model={self.model or self.provider.model!r} tools={list(self.tools)}>"


async def run_turn(
    *,
    provider: Provider,
    message: str,
    system: str | None = None,
    tools: Iterable[BaseTool | Callable[..., Any]] | None = None,
    model: str | None = None,
    max_iterations: int = 40,
    temperature: float | None = None,
    max_tokens: int | None = None,
    reasoning_effort: str | None = None,
    iteration_policy: IterationPolicy | None = None,
    on_progress: OnProgress | None = None,
    on_event: OnEvent | None = None,
    retry: RetryPolicy | None = DEFAULT_RETRY,
) -> TurnResult:
    """Run one bounded agent turn and return its result: an agent called like a function.

    The turn starts from an empty history (plus ``system``), may call the model up to
    ``max_iterations`` times, and returns a :class:`TurnResult` with the final text,
    the tool calls, every new message, the summed usage and the stop reason.
    """
    agent = Agent(
        provider,
        tools=tools or (),
        system=system,
        max_steps=max_iterations,
        model=model,
        temperature=temperature,
        max_tokens=max_tokens,
        reasoning_effort=reasoning_effort,
        iteration_policy=iteration_policy,
        retry=retry,
    )
    return await agent.run_turn(Context(), message, on_event=on_event, on_progress=on_progress)


@asynccontextmanager
async def open_agent(
    provider: Provider, context: Context | None = None, **options: Any
) -> AsyncIterator[Agent]:
    """An :class:`Agent` serving ``context`` (a fresh in-memory one by default) in a
    nursery this context manager owns::

        async with trurn.open_agent(provider, tools=[...]) as agent:
            await agent.send("hello")

    ``options`` are :class:`Agent`'s keywords. Leaving the block cancels whatever is
    running (as ``agent.cancel("now")`` would, but the turn's caller is cancelled too)
    and drops the messages still waiting.
    """
    agent = Agent(provider, **options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.serve, Context() if context is None else context)
            try:
                yield agent
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery wraps what the block raised: one error comes out as it is, so
        # ``except`` clauses around the block work as they would without it.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
