"""A generic reducer kernel: pure transitions in, broadcast events out.

A :class:`Reducer` is a pure function ``(state, signal) -> Transition``. A
:class:`Nucleus` drives one over signals, keeps the current state and publishes each
transition's events to its subscribers. The agent's stream reducer is one reducer
among others; any state machine (a traffic light, an order workflow) runs on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Generic, Protocol, TypeVar

import msgspec
import trio

from ._broadcast import Broadcast, Policy

__all__ = ["Nucleus", "Reducer", "Transition"]

StateT = TypeVar("StateT")
EventT = TypeVar("EventT")
SignalT = TypeVar("SignalT")
SignalT_contra = TypeVar("SignalT_contra", contravariant=True)


class Transition(msgspec.Struct, Generic[StateT, EventT], frozen=True):
    """What a reducer returns: the next state, the events to publish, and whether
    the machine has reached a terminal state (after which it ignores signals)."""

    state: StateT
    events: Sequence[EventT] = ()
    terminal: bool = False


class Reducer(Protocol[StateT, SignalT_contra, EventT]):
    """A pure function from a state and a signal to a :class:`Transition`.

    It must not do I/O or mutate ``state``: the nucleus may keep the old state.
    """

    def __call__(self, state: StateT, signal: SignalT_contra, /) -> Transition[StateT, EventT]: ...


class Nucleus(Generic[StateT, SignalT, EventT]):
    """Drive a :class:`Reducer` over signals: keep its state, publish its events.

    ::

        nucleus = Nucleus(initial_state, reducer)
        async with nucleus.subscribe() as events:
            ...
            final_state = await nucleus.run(signals)

    Each step's events go out as one batch on :attr:`broadcast` (a new
    :class:`~trurn.Broadcast` unless one is given, e.g. a hub shared with other
    publishers). The nucleus never closes its broadcast: call ``nucleus.broadcast.close()``
    when subscribers should see :exc:`trio.EndOfChannel`.
    """

    def __init__(
        self,
        initial_state: StateT,
        reducer: Reducer[StateT, SignalT, EventT],
        *,
        broadcast: Broadcast[EventT] | None = None,
    ) -> None:
        self._state = initial_state
        self._reducer = reducer
        self._terminal = False
        self._broadcast: Broadcast[EventT] = Broadcast() if broadcast is None else broadcast
        self._stepping = trio.Lock()  # steps take turns: one publishes at a time

    @property
    def state(self) -> StateT:
        """The state after the last step that returned or was cancelled while publishing."""
        return self._state

    @property
    def terminal(self) -> bool:
        """Whether a step reached a terminal state; later steps do nothing."""
        return self._terminal

    @property
    def broadcast(self) -> Broadcast[EventT]:
        """The hub this nucleus publishes on."""
        return self._broadcast

    def subscribe(
        self, *, max_buffer: int = 256, policy: Policy = "wait"
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[EventT]]:
        """Subscribe to the events of later steps; see :meth:`Broadcast.subscribe`."""
        return self._broadcast.subscribe(max_buffer=max_buffer, policy=policy)

    async def step(self, signal: SignalT) -> Transition[StateT, EventT]:
        """Apply one signal: reduce, store the new state, publish its events as one batch.

        A checkpoint. Steps of one nucleus from several tasks take turns, in the order
        they came. Once :attr:`terminal`, it ignores the signal and returns
        ``Transition(state, (), True)`` (still a checkpoint).

        Cancellation: cancelled on entry (or while waiting for another step), nothing
        happened. Cancelled while publishing (waiting for a full ``"wait"``
        subscriber), the new state is already stored and the events were delivered as
        :meth:`Broadcast.publish` describes.

        Raises:
          Exception: whatever the reducer raises; the state is then unchanged and
            nothing is published.
          trio.BusyResourceError: another publisher (not a step of this nucleus) is
            publishing on a shared broadcast; nothing was reduced.
          trio.ClosedResourceError: the broadcast was closed (the new state is stored).
        """
        async with self._stepping:
            # No schedule point from this check to publish's own, so a cancel lands
            # here (nothing happened) or not before the events are out.
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._terminal:
                return Transition(self._state, (), True)
            if self._broadcast.publishing:
                raise trio.BusyResourceError(
                    "another task is publishing on this nucleus's broadcast; nothing was reduced"
                )
            transition = self._reducer(self._state, signal)
            self._state = transition.state
            self._terminal = transition.terminal
            await self._broadcast.publish(transition.events)
        return transition

    async def run(self, signals: AsyncIterable[SignalT]) -> StateT:
        """Step through ``signals`` until a terminal state or their end; return the state.

        A checkpoint on every path. It stops taking signals once terminal (it returns at
        once if already terminal) and does not close ``signals``. Cancellation leaves the
        state of the last step that stored one (see :meth:`step`).
        """
        if self._terminal:
            await trio.lowlevel.checkpoint()
            return self._state
        stepped = False
        async for signal in signals:
            await self.step(signal)
            stepped = True
            if self._terminal:
                break
        if not stepped:
            await trio.lowlevel.checkpoint()
        return self._state
