"""Replay for subscribers that reconnect: the events they missed, then the live ones.

A subscriber that lost its connection knows the ``seq`` of the last event it saw
(``since``). :func:`subscribe_since` subscribes to the live events first (so nothing
published meanwhile is missed), then reads the session (:func:`session_records`: the
:class:`~trurn.Context` writes what it holds, then the file is read) and delivers, on
one channel, the events :func:`missed_events` finds there, then the live events that
come after them.

Two kinds of replay, chosen turn by turn:

exact
    a turn whose events were persisted (``EventRecord``; see
    :func:`persisted_event_types`) is replayed from them: the very events, with their
    own ``seq``, of the kinds the persist policy kept.
synthesised
    any other turn is replayed from its message and turn records: ``turn_started``,
    ``assistant_final``, ``user_message`` (a message steered into the turn),
    ``tool_exit`` and ``turn_finished``. Deltas, ``tool_call``, ``tool_output``,
    ``error``, ``run_aborted`` and the other kinds are not replayed.

A turn that ended always replays a ``turn_finished``: an exact turn whose own was not
persisted (its kind was not kept, or the process ended before that record was written,
which the turn does not wait for) gets one made from its end marker.

Which seq a synthesised event gets (the table follows how the turn records: a record's
``seq`` is the seq of the last event published before it, ``s`` below):

=====================  ==========  =========================================================
record                 event       seq
=====================  ==========  =========================================================
``TurnStart``          turn_       ``s``: the turn records its start right after publishing
(+ its user message)   started     ``turn_started`` (exact)
assistant message      assistant_  ``s + 1``: recorded right before ``assistant_final`` is
                       final       published (exact while one turn of the agent emits)
steered user message   user_       ``s + 1``: recorded right before it is announced
                       message
k tool results         tool_exit   ``s - k + 1 .. s``, in call order: the real ``tool_exit``
recorded together                  events came before the record, among ``tool_call`` and
                                   ``tool_output`` events, so only their window is known
``TurnEnd``            turn_       ``s``: the end marker is the exception, it holds the
                       finished    seq ``turn_finished`` gets, published right after the
                                   marker is synced (exact while one turn of the agent
                                   emits)
=====================  ==========  =========================================================

then each seq is raised, where needed, to one more than the seq before it (results
closed after a cut-off reply are recorded with seq 0 or with the reply's seq; this puts
their ``tool_exit`` right after the ``assistant_final``, which is where the turn
publishes them). Records outside a turn (imported or forked history) and the repairs
that ``restore`` adds after a crash (``"interrupted"`` results and turn ends) were never
published, so nothing is replayed for them. A turn records its tool results when the
last tool of the reply is done, so the ``tool_exit`` of a tool that finished before the
reconnect while another still runs is not replayed; persist events where that matters.

The invariant (tested): the events :func:`missed_events` returns have strictly
increasing seqs, all greater than ``since``, and replaying from ``since`` gives exactly
the events of the full replay whose seq is greater than ``since``. :func:`subscribe_since`
then delivers the live events whose seq is greater than the last replayed one (the
*resume point*; ``since`` when nothing was replayed). So the subscriber sees every seq
at most once, in increasing order, and every live event after the resume point: with
every event persisted, replay plus live is the uninterrupted stream.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol, cast, get_args

import trio

from . import events
from ._broadcast import Policy
from ._context import Context
from ._journal import read_journal
from ._messages import AssistantMessage, ToolMessage, UserMessage
from ._records import EventRecord, MessageRecord, Record, TurnEnd, TurnStart

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "DELTA_EVENT_TYPES",
    "PersistEvents",
    "Subscribable",
    "events_to_persist",
    "missed_events",
    "persisted_event_types",
    "session_records",
    "subscribe_since",
]

# -- which events become records ---------------------------------------------------------

DELTA_EVENT_TYPES = frozenset({"assistant_delta", "assistant_reasoning_delta", "tool_call_delta"})
"""The high-frequency events ``persist_events=True`` leaves out (one per streamed chunk)."""

PersistEvents = bool | Collection[str]
"""``False`` (no event is persisted), ``True`` (every event but :data:`DELTA_EVENT_TYPES`),
or the event types to persist, by name (``{"assistant_final", "tool_exit"}``)."""

_EVENT_CLASSES: dict[str, type[events.BaseEvent]] = {
    cls.__struct_config__.tag: cls for cls in get_args(events.Event)
}


def persisted_event_types(persist_events: PersistEvents) -> frozenset[type[events.BaseEvent]]:
    """The event classes a ``persist_events`` setting persists (pure; build it once).

    Raises ``ValueError`` naming what is wrong: a string instead of a collection of
    them, an item that is not a string, an unknown event type.
    """
    if persist_events is True:
        return frozenset(
            cls for name, cls in _EVENT_CLASSES.items() if name not in DELTA_EVENT_TYPES
        )
    if persist_events is False:
        return frozenset()
    if isinstance(persist_events, str):
        raise ValueError(
            f"persist_events must be a bool or a collection of event types, got the string "
            f"{persist_events!r} (write {{{persist_events!r}}} for that one type)"
        )
    names = list(persist_events)
    not_str = [name for name in names if not isinstance(name, str)]
    if not_str:
        raise ValueError(f"persist_events names event types as strings, got {not_str[0]!r}")
    unknown = sorted(set(names) - _EVENT_CLASSES.keys())
    if unknown:
        raise ValueError(
            f"persist_events names unknown event types {unknown}; "
            f"known: {', '.join(sorted(_EVENT_CLASSES))}"
        )
    return frozenset(_EVENT_CLASSES[name] for name in names)


def events_to_persist(
    kinds: frozenset[type[events.BaseEvent]], batch: Sequence[events.BaseEvent]
) -> list[events.Event]:
    """The events of a stamped ``batch`` that become ``EventRecord``s, in order (pure).

    ``kinds`` comes from :func:`persisted_event_types`; when it is empty, skip the call.
    """
    return cast("list[events.Event]", [event for event in batch if type(event) in kinds])


# -- the events a subscriber missed (pure) -----------------------------------------------


def _check_since(since: int) -> int:
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        raise ValueError(f"since must be an event seq (an int >= 0), got {since!r}")
    return since


def missed_events(records: Iterable[Record], since: int) -> list[events.Event]:
    """The events published after ``since`` that ``records`` (a session) can replay.

    Pure. Turns with persisted events are replayed from them, the others are
    synthesised from their records (see the module docstring for the seqs). The result
    has strictly increasing seqs, all greater than ``since``. Synthesised events are new
    objects; persisted ones are the records' own (do not mutate them).

    Raises ``ValueError`` if ``since`` is not an int >= 0.
    """
    _check_since(since)
    records = list(records)
    persisted = [record.event for record in records if isinstance(record, EventRecord)]
    covered = {event.turn_id for event in persisted}
    finished = {event.turn_id for event in persisted if isinstance(event, events.TurnFinished)}
    synthesised = _synthesise(records, covered, finished)
    replay = sorted([*persisted, *synthesised], key=lambda event: event.seq)
    missed: list[events.Event] = []
    last = since
    for event in replay:
        # Also drops a seq seen twice, which only a batch written twice (an fsync error,
        # then the same records again) can cause.
        if event.seq > last:
            missed.append(event)
            last = event.seq
    return missed


def _synthesise(
    records: Sequence[Record], covered: Collection[str], finished: Collection[str]
) -> list[events.Event]:
    """The synthesised events of the turns not in ``covered`` (exact turns), and the
    ``turn_finished`` of ended turns not in ``finished``, with their final seqs."""
    placed: list[events.Event] = []
    last = 0
    for estimate, event in _estimates(records, covered, finished):
        last = max(estimate, last + 1)
        event.seq = last
        placed.append(event)
    return placed


def _estimates(
    records: Sequence[Record], covered: Collection[str], finished: Collection[str]
) -> Iterator[tuple[int, events.Event]]:
    """Each synthesised event with the seq the module docstring's table gives it."""
    position = 0  # the highest record seq so far: a record's seq may lag (a repair, seq 0)
    turn: TurnStart | None = None  # the turn being read, None outside one
    exact = False  # whether that turn replays its persisted events
    text: str | None = None  # its last assistant text, for turn_finished
    index = 0
    while index < len(records):
        record = records[index]
        index += 1
        position = max(position, record.seq)
        if isinstance(record, TurnStart):
            turn, exact, text = record, record.turn_id in covered, None
            if exact:
                continue
            prompt = ""
            if index < len(records):
                first = records[index]
                if isinstance(first, MessageRecord) and isinstance(first.message, UserMessage):
                    prompt = first.message.content
                    index += 1
            yield position, _turn_started(turn, prompt)
        elif turn is None:
            continue
        elif isinstance(record, TurnEnd):
            # Not for a repair made by restore, nor a turn_finished that was persisted.
            if record.stop_reason != "interrupted" and turn.turn_id not in finished:
                aborted = record.stop_reason in ("aborted", "error")
                ended = events.TurnFinished(
                    stop_reason=record.stop_reason,
                    usage=record.usage,
                    text=None if aborted else text,
                    turn_id=turn.turn_id,
                )
                yield position, ended
            turn = None
        elif exact:
            if isinstance(record, MessageRecord) and isinstance(record.message, AssistantMessage):
                text = record.message.content
        elif isinstance(record, MessageRecord):
            message = record.message
            if isinstance(message, AssistantMessage):
                text = message.content
                yield position + 1, events.AssistantFinal(message=message, turn_id=turn.turn_id)
            elif isinstance(message, UserMessage):
                yield position + 1, events.UserInjected(text=message.content, turn_id=turn.turn_id)
            elif isinstance(message, ToolMessage):
                # The results recorded together (one seq) are placed as a batch.
                results = [message]
                while index < len(records):
                    after = records[index]
                    if not (
                        isinstance(after, MessageRecord)
                        and isinstance(after.message, ToolMessage)
                        and after.seq <= position
                    ):
                        break
                    results.append(after.message)
                    index += 1
                exits = [
                    events.ToolExit.of(result, turn_id=turn.turn_id)
                    for result in results
                    if result.status != "interrupted"  # a repair made by restore
                ]
                for offset, exit_event in enumerate(exits, start=1 - len(exits)):
                    yield position + offset, exit_event


def _turn_started(start: TurnStart, prompt: str) -> events.TurnStarted:
    # Older records keep the parent and the root, not the whole chain: then it is
    # known only for the top-level turn and its children.
    root = start.root_turn_id or (start.turn_id if start.depth == 0 else "")
    if start.chain:
        chain = list(start.chain)
    elif start.depth == 0:
        chain = [start.turn_id]
    elif start.depth == 1 and start.parent_turn_id is not None:
        chain = [start.parent_turn_id, start.turn_id]
    else:
        chain = []
    return events.TurnStarted(
        input=prompt,
        parent_turn_id=start.parent_turn_id,
        root_turn_id=root,
        depth=start.depth,
        chain=chain,
        turn_id=start.turn_id,
    )


# -- reading a session -------------------------------------------------------------------


async def session_records(context: Context) -> list[Record]:
    """Every record of ``context``'s session made before this call, and maybe later ones.

    Always a checkpoint. First :meth:`Context.sync <trurn.Context.sync>`: the records
    the context holds but has not written yet go to the file, and the call waits until
    they are written (and fsynced, as the context's policy says; shielded, like any
    sync). Then the file is read. The file only ever grows by whole records, in order,
    so what is read is the session as it was at some moment after the call began: every
    record made before it, and perhaps some made since. A session whose file does not
    exist yet has no records.

    Raises ``ValueError`` for a context without a file, what ``sync`` raises
    (:class:`~trurn.SessionWriteError`) and what :func:`read_journal` raises.
    """
    path = _session_path(context)
    await context.sync()
    try:
        contents = await read_journal(path)
    except FileNotFoundError:
        return []
    return list(contents.records)


def _session_path(context: Context) -> Path:
    if context.path is None:
        raise ValueError("this Context lives in memory only: it has no session to replay")
    return context.path


# -- subscribing from a seq --------------------------------------------------------------


class Subscribable(Protocol):
    """Where live events come from: a :class:`~trurn.Broadcast` or an :class:`~trurn.Agent`."""

    def subscribe(
        self, *, max_buffer: int = ..., policy: Policy = ...
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[events.Event]]: ...


def subscribe_since(
    source: Subscribable,
    context: Context,
    since: int,
    *,
    max_buffer: int = 256,
    policy: Policy = "wait",
) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[events.Event]]:
    """Resume a subscription after the event ``since``: the missed events, then live ones::

        async with subscribe_since(agent, context, since=last_seen) as events:
            async for event in events:
                ...

    On entering, it subscribes to ``source`` (with ``max_buffer`` and ``policy``, as
    ``source.subscribe`` does), then reads ``context``'s session
    (:func:`session_records`). The channel then delivers :func:`missed_events` of the
    session after ``since``, and after them the live events whose seq is greater than
    the last one replayed (and every ``events_dropped`` notice), as the module docstring
    says. Live events published while the session is read wait in the live
    subscription's buffer, so the ``policy`` applies to them as to any other.

    Live events come from every turn of the source, replayed ones from ``context``'s
    session only: with several sessions on one agent, live events of the others published
    before the resume point are not delivered.

    Entering is a checkpoint; if it is cancelled, nothing stays subscribed. The channel
    is fed by a task that lives inside the ``async with`` block; leaving the block
    (however) stops it and unsubscribes. The channel has no buffer of its own: what waits
    for the reader is the replay (read in full, as the session file is) and the live
    subscription's ``max_buffer`` events. When the live subscription ends (a
    ``"disconnect"`` subscriber that fell behind), the channel ends after the replay and
    what was buffered.

    Raises ``ValueError`` (from this call, before ``async with``) for a ``since`` that
    is not an int >= 0, a context without a file, or what ``source.subscribe`` refuses
    (``max_buffer``, ``policy``); on entering, what :func:`session_records` raises.
    """
    _check_since(since)
    _session_path(context)
    live = source.subscribe(max_buffer=max_buffer, policy=policy)
    return _resumed(live, context, since)


@asynccontextmanager
async def _resumed(
    live_subscription: AbstractAsyncContextManager[trio.MemoryReceiveChannel[events.Event]],
    context: Context,
    since: int,
) -> AsyncIterator[trio.MemoryReceiveChannel[events.Event]]:
    async with live_subscription as live:
        replay = missed_events(await session_records(context), since)
        resume_point = replay[-1].seq if replay else since
        send, receive = trio.open_memory_channel[events.Event](0)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_feed, replay, resume_point, live, send)
                try:
                    with receive:
                        yield receive
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            error = _sole_error(group)
        else:
            return
        # Raised outside the except clause, so the caller's exception comes out as it
        # was raised: not inside a group made by the feeder's nursery, no new context.
        raise error


def _sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception ``group`` stands for: the body's error (a cancellation that
    arrived while the block was being left adds nothing to it), else the group."""
    _, errors = group.split(trio.Cancelled)
    if errors is None:
        return group.exceptions[0]
    if len(errors.exceptions) == 1:
        return errors.exceptions[0]
    return group


async def _feed(
    replay: list[events.Event],
    resume_point: int,
    live: trio.MemoryReceiveChannel[events.Event],
    send: trio.MemorySendChannel[events.Event],
) -> None:
    with send:
        try:
            for event in replay:
                await send.send(event)
            async for event in live:
                if event.seq > resume_point or isinstance(event, events.EventsDropped):
                    await send.send(event)
        except trio.BrokenResourceError:
            pass  # the reader closed its channel: nobody is left to feed
