"""One publisher, many subscribers: a fan-out hub over bounded Trio memory channels.

Each subscriber owns a memory channel of its own size and says what happens when it is
full (its *policy*):

``"wait"``
    backpressure: :meth:`Broadcast.publish` waits until that subscriber has room.
    Nothing is lost, and one slow subscriber slows everybody down.
``"drop"``
    the event is dropped for that subscriber only, counted, and announced: the next
    event that fits comes right after ``on_drop(count)`` (the two need two free slots,
    hence ``max_buffer >= 2`` for such subscribers when there is ``on_drop``). Final events
    (``is_final(event)``) are never dropped: the hub evicts the oldest ordinary items
    from that subscriber's buffer to make room, and counts and announces those instead.
``"disconnect"``
    that subscriber is cut off: it reads what was already buffered, then gets
    :exc:`trio.EndOfChannel`.

A ``"drop"`` or ``"disconnect"`` subscriber never slows the publisher or anybody else,
and memory stays bounded whatever a subscriber does.

Cost: the hot path is one ``send_nowait`` per subscriber per event (full buffers are
detected by :exc:`trio.WouldBlock`, never by asking the channel for statistics) and one
checkpoint per published batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Generic, Literal, TypeVar

import msgspec
import trio

__all__ = ["Broadcast", "BroadcastStatistics", "Policy", "SubscriberStatistics"]

T = TypeVar("T")

Policy = Literal["wait", "drop", "disconnect"]
_POLICIES: tuple[Policy, ...] = ("wait", "drop", "disconnect")

# What a subscriber whose receive channel is gone (or whose send side we closed) raises
# on send: it is removed quietly.
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class SubscriberStatistics(msgspec.Struct, frozen=True):
    """One subscriber, as :meth:`Broadcast.statistics` saw it."""

    policy: Policy
    max_buffer: int
    buffered: int
    """Items in its buffer now (events and drop notices)."""
    dropped: int
    """Events it lost: dropped when it was full, or evicted to make room for a final one."""
    unannounced: int
    """Dropped events not yet announced with ``on_drop`` (0 when the hub has no on_drop)."""


class BroadcastStatistics(msgspec.Struct, frozen=True):
    """A snapshot of a :class:`Broadcast`'s counters.

    While no subscriber comes or goes, ``delivered + dropped == published x subscribers``.
    """

    subscribers: int
    """Subscribers attached now."""
    published: int
    """Events whose delivery started (a cancelled publish counts the event it stopped in)."""
    delivered: int
    """Events sitting in, or taken from, a subscriber's channel (evicted ones excluded)."""
    dropped: int
    """Events a subscriber lost because it was full (including evicted ones)."""
    disconnected: int
    """Subscribers the hub cut off because they were full."""
    closed: bool
    per_subscriber: tuple[SubscriberStatistics, ...]
    """In subscription order."""


def _never(event: object, /) -> bool:
    return False


class _Subscriber(Generic[T]):
    __slots__ = ("dropped", "max_buffer", "missed", "notices", "policy", "receive", "send")

    def __init__(
        self,
        send: trio.MemorySendChannel[T],
        receive: trio.MemoryReceiveChannel[T],
        max_buffer: int,
        policy: Policy,
    ) -> None:
        self.send = send
        # The very object handed to the subscriber, not a clone: a clone would keep the
        # channel open after the subscriber closes its end, and sends would never see
        # BrokenResourceError. The hub only receives from it to evict, which happens
        # only when the buffer is full, so never while the subscriber waits in receive().
        self.receive = receive
        self.max_buffer = max_buffer
        self.policy = policy
        self.dropped = 0
        # Dropped but not yet announced; only counted when the hub has on_drop, so that
        # `if not sub.missed` keeps every subscriber of a hub without on_drop on the fast path.
        self.missed = 0
        # (notice, count) for drop notices that may still be buffered: an evicted notice
        # gives its count back. Found by identity, hence on_drop must build a new object.
        self.notices: deque[tuple[T, int]] = deque(maxlen=max_buffer + 1)


class Broadcast(Generic[T]):
    """Fan events out to subscribers, each with a bounded buffer and a policy.

    Args:
      is_final: tells the events that must never be dropped (the end of a turn, an
        abort). Default: none is.
      on_drop: builds the notice a subscriber receives before the next event that fits
        after it lost ``count`` events (e.g. ``lambda n: EventsDropped(count=n)``). It
        must return a new object on each call. Without it, drops are only counted in
        :meth:`statistics`.

    Subscribers see events in publication order; :meth:`publish` calls from several
    tasks are serialized, so every subscriber sees the same order.
    """

    def __init__(
        self,
        *,
        is_final: Callable[[T], bool] = _never,
        on_drop: Callable[[int], T] | None = None,
    ) -> None:
        self._is_final = is_final
        self._on_drop = on_drop
        # Copy-on-write: publish iterates the tuple it read while subscribers come and go.
        self._subscribers: tuple[_Subscriber[T], ...] = ()
        # One publisher at a time, as trio streams allow one sender: a second concurrent
        # publish is a bug in the caller (trio.BusyResourceError), not something to queue.
        self._publishing = False
        self._closed = False
        self._published = 0
        self._delivered = 0
        self._dropped = 0
        self._disconnected = 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def publishing(self) -> bool:
        """Whether a :meth:`publish` call is running (waiting for a subscriber): another
        one now would raise :class:`trio.BusyResourceError`."""
        return self._publishing

    # -- subscribers -------------------------------------------------------------------

    def subscribe(
        self, *, max_buffer: int = 256, policy: Policy = "wait"
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[T]]:
        """Subscribe for the duration of an ``async with`` block::

            async with hub.subscribe(max_buffer=64, policy="drop") as events:
                async for event in events:
                    ...

        The subscriber receives every event whose delivery starts after it entered the
        block. Leaving the block removes it and closes its channels (not a checkpoint).
        Entering is a checkpoint; if it is cancelled, nothing was subscribed.

        Subscribing to a closed hub yields a channel that is already at its end
        (``receive()`` raises :exc:`trio.EndOfChannel`), as every earlier subscriber
        sees once it has drained its buffer.

        Raises:
          ValueError: ``max_buffer`` is not an int >= 1 (>= 2 for a ``"drop"``
            subscriber when the hub has ``on_drop``), or ``policy`` is unknown (raised
            by this call, before ``async with``).
        """
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
            raise ValueError(f"max_buffer must be an int >= 1, got {max_buffer!r}")
        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {_POLICIES!r}, got {policy!r}")
        if policy == "drop" and self._on_drop is not None and max_buffer < 2:
            raise ValueError(
                "max_buffer must be >= 2 for a 'drop' subscriber of a hub that announces "
                f"drops (on_drop), so a notice and the event after it fit; got {max_buffer}"
            )
        return self._subscription(max_buffer, policy)

    @asynccontextmanager
    async def _subscription(
        self, max_buffer: int, policy: Policy
    ) -> AsyncIterator[trio.MemoryReceiveChannel[T]]:
        await trio.lowlevel.checkpoint()
        send, receive = trio.open_memory_channel[T](max_buffer)
        if self._closed:
            send.close()
            with receive:
                yield receive
            return
        sub = _Subscriber(send, receive, max_buffer, policy)
        self._subscribers = (*self._subscribers, sub)
        try:
            yield receive
        finally:
            self._remove(sub)
            receive.close()

    def _remove(self, sub: _Subscriber[T]) -> None:
        # Closing the send side wakes a publish blocked on this subscriber with
        # ClosedResourceError, which it takes as "this subscriber is gone".
        sub.send.close()
        if sub in self._subscribers:
            self._subscribers = tuple(s for s in self._subscribers if s is not sub)

    def _disconnect(self, sub: _Subscriber[T]) -> None:
        if sub in self._subscribers:
            self._disconnected += 1
        self._remove(sub)

    # -- publishing --------------------------------------------------------------------

    async def publish(self, events: Sequence[T]) -> None:
        """Deliver one batch of events to every subscriber, in order.

        A cancellation point (nothing is delivered if the call is cancelled on entry),
        but a schedule point only when it has to wait: a full ``"wait"`` subscriber
        makes it wait until that subscriber reads. Otherwise the batch is delivered
        without yielding to the scheduler, so a publisher streaming many small batches
        does not pay a scheduler round trip for each (it yields anyway whenever it
        waits for its input, e.g. the network).

        Cancellation while waiting for a ``"wait"`` subscriber: the events before the
        blocked one reached every subscriber; the blocked event reached every subscriber
        that had room for it (a full one never delays the others), but not the full
        ``"wait"`` subscribers still owed it, unless it is a final event: those get it
        then as :meth:`publish_nowait` gives it; the rest of the batch reached nobody.
        Nothing is announced for these, as nothing was dropped by policy: the publisher
        stopped.

        There is one publisher: calling it while another call is still running (waiting
        for a subscriber) raises :class:`trio.BusyResourceError`, as a second concurrent
        ``send_all`` on a trio stream does. Callers with several tasks serialize them
        (the Agent does, with the lock that also orders its ``seq`` numbers).

        Raises:
          trio.ClosedResourceError: the hub was closed before this call.
          trio.BusyResourceError: another publish call is still running.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("publish on a closed Broadcast")
        if self._publishing:
            raise trio.BusyResourceError("another task is already publishing to this Broadcast")
        if not self._subscribers:  # nobody listens: only the count changes
            self._published += len(events)
            return
        self._publishing = True
        published = delivered = 0
        try:
            for event in events:
                published += 1
                delivered_now, owed = self._fan_out(event, nowait=False)
                delivered += delivered_now
                for position, sub in enumerate(owed or ()):
                    try:
                        if await self._send_waiting(sub, event):
                            delivered += 1
                    except trio.Cancelled:
                        if owed is not None and self._is_final(event):
                            # Some subscribers have it already: the rest get it too, as
                            # publish_nowait would give it, so no one misses the end.
                            for rest in owed[position:]:
                                self._offer(rest, event, nowait=True)
                        raise
        finally:
            self._published += published
            self._delivered += delivered
            self._publishing = False

    def publish_nowait(self, events: Sequence[T]) -> None:
        """Deliver one batch without ever blocking; not a checkpoint (for abort paths).

        A full subscriber, whatever its policy, gets final events by eviction of its
        oldest ordinary items (counted and announced); non-final events are dropped for
        full ``"wait"`` and ``"drop"`` subscribers (counted and announced); full
        ``"disconnect"`` subscribers are disconnected.

        It does not wait for a :meth:`publish` in progress in another task, so if one is
        blocked on a ``"wait"`` subscriber, these events may reach some subscribers
        before that batch's remaining events.

        Raises:
          trio.ClosedResourceError: the hub was closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("publish_nowait on a closed Broadcast")
        published = delivered = 0
        try:
            for event in events:
                published += 1
                delivered += self._fan_out(event, nowait=True)[0]
        finally:
            self._published += published
            self._delivered += delivered

    def _fan_out(self, event: T, *, nowait: bool) -> tuple[int, list[_Subscriber[T]] | None]:
        """Give ``event`` to every subscriber that can take it now; the hot loop.

        Returns how many subscribers got it on the fast path (``_offer`` counts the rest
        itself), and the full ``"wait"`` subscribers still owed it, in subscription
        order (never any when ``nowait``: those get the overflow treatment instead).
        """
        delivered = 0
        owed: list[_Subscriber[T]] | None = None
        for sub in self._subscribers:
            if not sub.missed:
                try:
                    sub.send.send_nowait(event)
                except trio.WouldBlock:
                    pass
                except _GONE:
                    self._remove(sub)
                    continue
                else:
                    delivered += 1
                    continue
            if not self._offer(sub, event, nowait=nowait):
                if owed is None:
                    owed = []
                owed.append(sub)
        return delivered, owed

    def close(self) -> None:
        """Close the hub: every subscriber reads what it has buffered, then gets
        :exc:`trio.EndOfChannel`. Not a checkpoint; idempotent.

        A :meth:`publish` blocked on a subscriber returns (the subscribers are gone);
        later publishes raise :exc:`trio.ClosedResourceError`.
        """
        self._closed = True
        subscribers, self._subscribers = self._subscribers, ()
        for sub in subscribers:
            sub.send.close()

    # -- slow paths: a subscriber that is full or has drops to announce ----------------

    def _offer(self, sub: _Subscriber[T], event: T, *, nowait: bool) -> bool:
        """Hand ``event`` to ``sub`` without blocking, announcing earlier drops first.

        Returns False only when ``sub`` is a full ``"wait"`` subscriber and ``nowait`` is
        false: the caller must then wait on it. Counts everything except that case.
        """
        if sub.missed and self._on_drop is not None:
            # A notice and the event after it go in together: a notice alone would take
            # the last slot, the event would be dropped, and a subscriber just keeping up
            # would see nothing but notices. Asking for statistics costs ~1us, paid only
            # while this subscriber has unannounced drops.
            free = sub.max_buffer - sub.send.statistics().current_buffer_used
            if free < 2 or not self._announce(sub):
                return self._full(sub, event, nowait=nowait)
        try:
            sub.send.send_nowait(event)
        except trio.WouldBlock:
            return self._full(sub, event, nowait=nowait)
        except _GONE:
            self._remove(sub)
            return True
        self._delivered += 1
        return True

    def _announce(self, sub: _Subscriber[T]) -> bool:
        """Try to put a drop notice in ``sub``'s buffer; False if there is no room."""
        assert self._on_drop is not None
        count = sub.missed
        notice = self._on_drop(count)
        try:
            sub.send.send_nowait(notice)
        except trio.WouldBlock:
            return False
        except _GONE:
            self._remove(sub)
            return False
        sub.notices.append((notice, count))
        sub.missed = 0
        return True

    def _full(self, sub: _Subscriber[T], event: T, *, nowait: bool) -> bool:
        if sub not in self._subscribers:
            return True  # removed while announcing
        if sub.policy == "disconnect":
            self._disconnect(sub)
        elif sub.policy == "wait" and not nowait:
            return False
        elif self._is_final(event):
            self._force(sub, event)
        else:
            self._drop(sub)
        return True

    def _drop(self, sub: _Subscriber[T]) -> None:
        sub.dropped += 1
        self._dropped += 1
        if self._on_drop is not None:
            sub.missed += 1

    def _force(self, sub: _Subscriber[T], event: T) -> None:
        """Put a final ``event`` into full ``sub`` by evicting its oldest ordinary items.

        Synchronous, so the subscriber cannot observe the buffer being rebuilt. Ordinary
        items are events that are not final, and drop notices (an evicted notice's count
        goes back to ``sub.missed``, so it is announced again in the next notice).
        """
        items: list[T] = []
        try:
            while True:
                items.append(sub.receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            pass
        except trio.ClosedResourceError:
            # The subscriber closed the yielded channel but reads from a clone: the hub
            # cannot evict anything, so it cuts the subscriber off rather than lose the
            # final event silently.
            self._disconnect(sub)
            return
        counts = {id(notice): count for notice, count in sub.notices}
        on_drop = self._on_drop
        kept: list[T] = []
        still_buffered: list[tuple[T, int]] = []
        remaining = len(items)
        # Oldest first: evict ordinary items while the kept ones, the final event and the
        # notice it then needs would not fit.
        for item in items:
            remaining -= 1
            needed = 2 if on_drop is not None and sub.missed else 1
            too_many = len(kept) + 1 + remaining + needed > sub.max_buffer
            if too_many and not self._is_final(item):
                count = counts.get(id(item))
                if count is None:
                    sub.dropped += 1
                    self._dropped += 1
                    self._delivered -= 1
                    if on_drop is not None:
                        sub.missed += 1
                elif on_drop is not None:
                    sub.missed += count
                continue
            kept.append(item)
            if id(item) in counts:
                still_buffered.append((item, counts[id(item)]))
        sub.notices.clear()
        sub.notices.extend(still_buffered)
        # Put back what is kept. It only overflows if the drain took in items that a
        # blocked publish was sending and they are all final: cut the subscriber off
        # (it sees EndOfChannel) rather than lose a final event silently.
        overflow = False
        for item in kept:
            try:
                sub.send.send_nowait(item)
            except trio.WouldBlock:
                overflow = True
        if overflow or len(kept) >= sub.max_buffer:
            self._disconnect(sub)
            return
        # With max_buffer=1 the final event takes the only slot and the notice waits for
        # the next event that fits.
        if on_drop is not None and sub.missed and len(kept) + 2 <= sub.max_buffer:
            self._announce(sub)
        sub.send.send_nowait(event)
        self._delivered += 1

    async def _send_waiting(self, sub: _Subscriber[T], event: T) -> bool:
        """Block until full ``"wait"`` subscriber ``sub`` takes ``event`` (and a drop
        notice first, if one is due). False if the subscriber went away meanwhile."""
        try:
            if sub.missed and self._on_drop is not None:
                count = sub.missed
                notice = self._on_drop(count)
                # Registered before waiting: a publish_nowait may evict it from the
                # buffer while this task is still parked on it.
                entry = (notice, count)
                sub.notices.append(entry)
                sub.missed = 0
                try:
                    await sub.send.send(notice)
                except BaseException:
                    # Not sent (cancelled or gone): the count is still owed.
                    sub.missed += count
                    kept = [e for e in sub.notices if e is not entry]
                    sub.notices.clear()
                    sub.notices.extend(kept)
                    raise
            await sub.send.send(event)
        except _GONE:
            self._remove(sub)
            return False
        return True

    # -- introspection -----------------------------------------------------------------

    def statistics(self) -> BroadcastStatistics:
        """A snapshot of the counters (see :class:`BroadcastStatistics`)."""
        return BroadcastStatistics(
            subscribers=len(self._subscribers),
            published=self._published,
            delivered=self._delivered,
            dropped=self._dropped,
            disconnected=self._disconnected,
            closed=self._closed,
            per_subscriber=tuple(
                SubscriberStatistics(
                    policy=sub.policy,
                    max_buffer=sub.max_buffer,
                    buffered=sub.send.statistics().current_buffer_used,
                    dropped=sub.dropped,
                    unannounced=sub.missed,
                )
                for sub in self._subscribers
            ),
        )
