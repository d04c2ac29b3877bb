"""The agent: a provider, tools and options, plus the event broadcast of its turns.

:class:`Agent` holds what stays the same from turn to turn; the turn itself is in
:mod:`trurn._turn`. :func:`run_turn` is the one-call front door: one bounded turn on
a fresh in-memory history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from . import events
from ._broadcast import Broadcast, Policy
from ._context import Context
from ._retry import NO_RETRY, RetryPolicy
from ._tools import BaseTool, tool_map
from ._turn import IterationPolicy, OnEvent, OnProgress, TurnResult, play_turn
from .providers import Provider, ToolSpec

__all__ = ["Agent", "run_turn"]

_FINAL_EVENTS = (events.RunAborted, events.TurnFinished)


DEFAULT_RETRY = RetryPolicy()


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
    before any output is tried again (``None``: never).
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
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        if max_concurrent_tools < 1:
            raise ValueError(f"max_concurrent_tools must be at least 1, got {max_concurrent_tools}")
        self.provider = provider
        self.tools = tool_map(tools)
        self.tool_specs: Sequence[ToolSpec] = tuple(t.spec() for t in self.tools.values())
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
        self.iteration_policy = iteration_policy
        self.max_concurrent_tools = max_concurrent_tools
        self.retry = retry or NO_RETRY
        self._hub: Broadcast[events.Event] = Broadcast(is_final=_is_final, on_drop=_dropped)
        self._emitting = False  # an emitter of this agent is publishing (see _turn._Emitter)
        self._emit_waiters = trio.lowlevel.ParkingLot()
        self._seq = 0

    def subscribe(
        self, *, max_buffer: int = 256, policy: Policy = "wait"
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[events.Event]]:
        """Receive every event of this agent's turns: ``async with agent.subscribe() as s``.

        ``policy`` says what happens when this subscriber's ``max_buffer`` events are
        waiting unread: ``"wait"`` makes the turn wait (backpressure); ``"drop"`` drops
        events for this subscriber and tells it how many with an ``events_dropped``
        event (the final events of a turn are never dropped); ``"disconnect"`` ends
        this subscription. A slow ``"drop"`` or ``"disconnect"`` subscriber never slows
        the turn or the other subscribers.
        """
        return self._hub.subscribe(max_buffer=max_buffer, policy=policy)

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
