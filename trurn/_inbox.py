"""The input queue of a long-lived agent: messages waiting for a turn, or for a step.

:meth:`trurn.Agent.serve` takes messages from an :class:`Inbox` one turn at a time;
:meth:`trurn.Agent.send` puts them in. A message sent with ``steer=True`` while a turn
runs is taken by that turn at its next step boundary (after the tool results, before
the next model call); otherwise it waits for the next turn. The inbox is bounded, so
a producer faster than the model waits (``send``) or is told (``send_nowait`` raises
``trio.WouldBlock``) instead of growing memory without end.
"""

from __future__ import annotations

from collections import deque

import trio

__all__ = ["DEFAULT_MAX_PENDING", "Inbox"]

DEFAULT_MAX_PENDING = 100


class _Item:
    __slots__ = ("steer", "text")

    def __init__(self, text: str, steer: bool) -> None:
        self.text = text
        self.steer = steer


class Inbox:
    """Messages for an agent, oldest first; at most ``max_pending`` at once.

    Closed until a server opens it (:meth:`open`), and closed again when that server
    stops, so a message sent to an agent nobody serves fails loudly
    (``trio.ClosedResourceError``) instead of waiting forever.
    """

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self._items: deque[_Item] = deque()
        self._open = False
        self._readers = trio.lowlevel.ParkingLot()  # the server, waiting for a message
        self._writers = trio.lowlevel.ParkingLot()  # senders, waiting for room

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        self._open = True

    def close(self) -> int:
        """Close the inbox and drop what is waiting; returns how many were dropped.

        Senders waiting for room get ``trio.ClosedResourceError``.
        """
        self._open = False
        dropped = self.clear()
        self._writers.unpark_all()
        self._readers.unpark_all()
        return dropped

    def pending(self) -> list[str]:
        """The texts waiting, oldest first (a copy)."""
        return [item.text for item in self._items]

    def clear(self) -> int:
        """Drop every waiting message; returns how many there were."""
        count = len(self._items)
        self._items.clear()
        self._writers.unpark_all()
        return count

    def _check_open(self) -> None:
        if not self._open:
            raise trio.ClosedResourceError(
                "this agent is not serving: start 'agent.serve(context)' (or use "
                "'trurn.open_agent') before sending it messages"
            )

    def put_nowait(self, text: str, *, steer: bool = False) -> None:
        """Queue ``text``; ``trio.WouldBlock`` if ``max_pending`` messages are waiting."""
        if not isinstance(text, str):
            raise TypeError(f"a message must be a str, got {type(text).__name__}")
        self._check_open()
        if len(self._items) >= self.max_pending:
            raise trio.WouldBlock
        self._items.append(_Item(text, steer))
        self._readers.unpark()

    async def put(self, text: str, *, steer: bool = False) -> None:
        """Queue ``text``, waiting for room if the inbox is full. A checkpoint."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                self.put_nowait(text, steer=steer)
            except trio.WouldBlock:
                await self._writers.park()
            else:
                break
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def get(self) -> str:
        """The oldest message, waiting for one. Raises ``trio.ClosedResourceError`` once
        the inbox is closed and empty."""
        await trio.lowlevel.checkpoint()
        while not self._items:
            self._check_open()
            await self._readers.park()
        self._writers.unpark()
        return self._items.popleft().text

    def take_steering(self) -> list[str]:
        """Remove and return the waiting messages sent with ``steer=True``, in order."""
        if not any(item.steer for item in self._items):
            return []
        taken = [item.text for item in self._items if item.steer]
        kept = [item for item in self._items if not item.steer]
        self._items.clear()
        self._items.extend(kept)
        self._writers.unpark_all()
        return taken
