"""A generic reducer kernel: pure transitions in, broadcast events out.

A :class:`Reducer` is a pure function ``(state, signal) -> Transition``. A
:class:`Nucleus` drives one over signals, keeps the current state and publishes each
transition's events to its subscribers. The agent's stream reducer is one reducer
among others; any state machine (a traffic light, an order workflow) runs on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import msgspec

__all__ = ["Reducer", "Transition"]

StateT = TypeVar("StateT")
EventT = TypeVar("EventT")
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

    def __call__(
        self, state: StateT, signal: SignalT_contra, /
    ) -> Transition[StateT, EventT]: ...
