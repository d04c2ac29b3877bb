"""The conversation history a turn reads and appends to, in memory or bound to a file.

``Context()`` keeps the history in memory. ``Context(path)`` binds it to a JSONL
session file: :meth:`Context.restore` loads (and repairs) what the file holds and
takes its writer lock; from then on every message the turn adds is queued as a record,
handed to the file by :meth:`Context.flush` and written as whole lines. Inside
``async with`` a background writer (one worker thread per open session) writes them
without the turn waiting; :meth:`Context.sync`, at the end of each turn, is where the
turn waits until they are in the file.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType

import trio

from ._compaction import prompt_messages
from ._errors import SessionError, SessionIdError
from ._journal import (
    OS_FILE_OPS,
    FileOps,
    FsyncPolicy,
    Journal,
    open_journal,
    validate_session_id,
)
from ._lineage import TurnLineage
from ._messages import AssistantMessage, Message, ToolCall, ToolMessage, ToolStatus, Usage
from ._records import (
    Compaction,
    EventRecord,
    Header,
    MessageRecord,
    Record,
    TurnEnd,
    TurnStart,
    check_message,
    compaction_error,
)
from ._stream import PendingCall, StreamState
from .events import Event

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "Context",
    "SessionRecoveryWarning",
    "get_last_total_tokens",
    "get_last_usage",
    "get_tool_call_delta",
    "get_tool_call_deltas",
    "unanswered_tool_calls",
]

INTERRUPTED = "Interrupted: the session ended before this tool call finished."


class Context:
    """A conversation's messages, oldest first, optionally bound to a session file.

    The system prompt is not part of the history: the agent adds it to every request,
    so it survives anything done to the history.

    With a ``path``, call :meth:`restore` (or use ``async with``) before the first
    turn: it creates the file (mode 0600) if needed, loads its history, gives every tool
    call that a crash left without a result an ``"interrupted"`` one (persisted), and
    takes the writer lock (a second writer, in this process or another, gets
    :class:`~trurn.SessionLockedError`). ``fsync`` says when writes are forced to disk:
    ``"turn"`` (at the end of each turn), ``"record"`` (every write) or ``"never"``.
    ``session_id`` defaults to the file name without its extension. ``create=False``
    makes :meth:`restore` refuse a missing file (``FileNotFoundError``) instead of
    starting a new session there.

    ``async with Context(path) as context:`` (or ``async with`` a context that
    :class:`~trurn.SessionStore` restored) also runs a background writer for the
    block: flushes then cost no wait and no checkpoint, and each turn waits once, at
    its end. The block's body runs inside the writer's nursery. After a bare
    ``await context.restore()`` there is no writer, and every flush writes in a worker
    thread of its own and waits for it: the same file, at a higher cost per turn.
    ``_file_ops`` replaces the OS calls that write the file (tests: a full disk).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        work_dir: str | os.PathLike[str] | None = None,
        session_id: str | None = None,
        messages: Iterable[Message] = (),
        fsync: FsyncPolicy = "turn",
        create: bool = True,
        _file_ops: FileOps = OS_FILE_OPS,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.work_dir = None if work_dir is None else Path(work_dir)
        if session_id is None and self.path is not None:
            try:
                session_id = validate_session_id(self.path.stem)
            except SessionIdError as exc:
                raise SessionIdError(
                    f"{exc} (the session id comes from the file name {self.path.name!r}; "
                    "pass session_id=... or rename the file)",
                    path=self.path,
                ) from None
        self.session_id = None if session_id is None else validate_session_id(session_id)
        self._fsync: FsyncPolicy = fsync
        self._create = create
        self._closed = False
        self._messages: list[Message] = list(messages)
        self._file_ops = _file_ops
        self._journal: Journal | None = None
        # The nursery of the background writer, from __aenter__ to __aexit__.
        self._writer: AbstractAsyncContextManager[trio.Nursery] | None = None
        # Records not handed to the journal yet (flush does), which queues them until
        # they are written: the file lags memory by these and the journal's queue.
        self._pending: list[Record] = []
        self._busy = False
        self._served = False  # an agent's serve() runs the turns of this context
        self._open_turn: str | None = None  # the turn started and not yet ended in the file
        self._ended_turn: str | None = None  # the last turn whose end marker was handed over
        self.last_seq = 0
        """The highest event seq recorded in this session (restored from its file)."""
        self.torn_tail: bytes | None = None
        """The bytes of a last line a crash cut short, found and dropped by restore."""
        self._streaming = StreamState()  # the reply being streamed, or the last one
        self._compaction: Compaction | None = None  # the newest compaction marker
        self._compacted_at = 0  # how many messages the history had when it was made

    @property
    def is_open(self) -> bool:
        """Whether the session file is open for writing (after :meth:`restore`)."""
        return self._journal is not None

    @property
    def messages(self) -> Sequence[Message]:
        """The history (a live read-only view: no copy is made)."""
        return self._messages

    # -- changing the history (synchronous: writing is flush's job) --------------------

    def append(self, message: Message, *, seq: int = 0) -> None:
        """Add one message at the end (written to the file by the next :meth:`flush`).

        ``seq`` is the seq of the last event published before it, kept in its record.
        Raises ``ValueError`` (and adds nothing) for a message a session file could not
        hold as given: a non-finite number in tool arguments.
        """
        if self._closed:
            raise trio.ClosedResourceError(f"{self.path} was closed: restore it again to add to it")
        if self._journal is not None:
            check_message(message)
        self._messages.append(message)
        if self._journal is not None:
            self._pending.append(MessageRecord(message=message, seq=seq))

    def extend(self, messages: Iterable[Message], *, seq: int = 0) -> None:
        """Add messages at the end, in order."""
        for message in messages:
            self.append(message, seq=seq)

    def close_tool_calls(
        self, status: ToolStatus, content: str, *, seq: int = 0
    ) -> list[ToolMessage]:
        """Give every tool call of the last assistant message that has no result one.

        Returns the synthetic results it appended (in call order), so the history is
        valid to send to a provider again, whatever interrupted the turn.
        """
        results = [
            ToolMessage(tool_call_id=call.id, name=call.name, content=content, status=status)
            for call in unanswered_tool_calls(self._messages)
        ]
        self.extend(results, seq=seq)
        return results

    def mark_turn_start(self, lineage: TurnLineage, *, seq: int) -> None:
        """Record that a turn began, with its place among nested turns (a no-op in memory)."""
        if self._journal is not None:
            start = TurnStart(
                turn_id=lineage.turn_id,
                parent_turn_id=lineage.parent_turn_id,
                root_turn_id=lineage.root_turn_id,
                depth=lineage.depth,
                chain=list(lineage.chain),
                seq=seq,
            )
            self._pending.append(start)
            self._open_turn = lineage.turn_id

    def mark_turn_end(self, turn_id: str, stop_reason: str, usage: Usage, *, seq: int) -> None:
        """Record that a turn ended (a no-op in memory, and for a turn never started).

        A turn ends once: a second call replaces the end marker not yet flushed, and
        once flushed (queued in the file, even if its write then failed and waits to be
        retried) the turn has ended and later calls do nothing.
        """
        if self._journal is None or self._open_turn != turn_id:
            return
        self._pending = [
            r for r in self._pending if not (isinstance(r, TurnEnd) and r.turn_id == turn_id)
        ]
        self._pending.append(
            TurnEnd(turn_id=turn_id, stop_reason=stop_reason, usage=usage, seq=seq)
        )

    def turn_end_is_final(self, turn_id: str) -> bool:
        """Whether the end marker of ``turn_id`` was handed to the file, so the file will
        say how that turn ended whatever happens next (always ``False`` in memory)."""
        return self._journal is not None and self._ended_turn == turn_id

    def record_events(self, events: Iterable[Event]) -> None:
        """Queue ``events`` as event records (written by the next :meth:`flush`; a
        no-op in memory). The agent does it for the types its ``persist_events`` names."""
        if self._journal is not None:
            self._pending.extend(EventRecord(event=event, seq=event.seq) for event in events)

    # -- compaction: what is sent to the model, never what is kept ----------------------

    @property
    def compaction(self) -> Compaction | None:
        """The newest compaction marker, or ``None`` if the history was never compacted."""
        return self._compaction

    def compact(self, summary: str, first_kept: int, user_intent: str | None, *, seq: int) -> None:
        """From now on send ``summary`` in place of the messages before ``first_kept``.

        Only a marker is added (and written by the next :meth:`flush`); every message
        stays in :attr:`messages` and in the file.
        """
        error = compaction_error(first_kept, len(self._messages))
        if error is not None:
            raise ValueError(f"cannot compact: {error}")
        marker = Compaction(
            summary=summary, first_kept=first_kept, user_intent=user_intent, seq=seq
        )
        self._compaction = marker
        self._compacted_at = len(self._messages)
        if self._journal is not None:
            self._pending.append(marker)

    def prompt_messages(self) -> list[Message]:
        """The history as the model is sent it: after a compaction, its summary and then
        the messages kept verbatim (see :func:`trurn._compaction.prompt_messages`)."""
        return prompt_messages(self._messages, self._compaction)

    def usage_since_compaction(self) -> Usage | None:
        """The newest usage reported after the latest compaction (earlier ones measure a
        prompt that is no longer sent), or ``None``."""
        for index in range(len(self._messages) - 1, self._compacted_at - 1, -1):
            message = self._messages[index]
            if isinstance(message, AssistantMessage) and message.usage is not None:
                return message.usage
        return None

    # -- the file ------------------------------------------------------------------------

    async def restore(self) -> Context:
        """Load the session file into this context and keep it open for writing.

        Creates the file if it does not exist. A torn last line (a crash mid-write) is
        dropped and kept in :attr:`torn_tail`; any other bad line raises
        :class:`~trurn.SessionCorruptError` naming the file and line, and nothing is
        rewritten. Tool calls left without a result get an ``"interrupted"`` one, which
        is written at once. Returns ``self``.

        If it raises (a write fails, the :class:`SessionRecoveryWarning` is made an
        error, a cancel), the file is closed and released and the context is as it was
        before: not open. What was written by then (repairs) stays in the file, valid.
        """
        if self.path is None:
            raise RuntimeError("this Context has no path: it lives in memory only")
        if self._journal is not None:
            raise RuntimeError(f"{self.path} is already restored")
        journal = await open_journal(
            self.path, fsync=self._fsync, create=self._create, file_ops=self._file_ops
        )
        # Restoring sets attributes and changes no object they held but _pending (copied
        # here), so this is the context as it was, to go back to if restoring fails.
        before = dict(vars(self), _pending=list(self._pending))
        try:
            await self._load(journal)
        except BaseException:
            vars(self).update(before)
            with trio.CancelScope(shield=True):
                await journal.aclose()
            raise
        return self

    async def _load(self, journal: Journal) -> None:
        """Load what ``journal`` holds, write the repairs, then warn of a torn line."""
        assert self.path is not None
        contents = journal.contents
        header = contents.header
        if header is not None and self.session_id not in (None, header.session_id):
            raise SessionError(
                f"{self.path} holds session {header.session_id!r}, not {self.session_id!r} "
                "(the file was copied or renamed; pass session_id= to open it as what it "
                "is, or fork it to make a copy under a new id)",
                path=self.path,
            )
        self._journal = journal
        self._closed = False
        self.torn_tail = contents.torn_tail
        self._messages = [r.message for r in contents.records if isinstance(r, MessageRecord)]
        self._compaction, self._compacted_at = _latest_compaction(contents.records)
        self.last_seq = max((r.seq for r in contents.records), default=0)
        if contents.header is None:
            session_id = self.session_id or validate_session_id(self.path.stem)
            work_dir = None if self.work_dir is None else str(self.work_dir)
            self._pending.append(Header(session_id=session_id, work_dir=work_dir))
        # Repair what a crash left: results for tool calls that never got one, and an
        # end marker for a turn that never ended.
        self.close_tool_calls("interrupted", INTERRUPTED, seq=self.last_seq)
        self._open_turn = _unfinished_turn(contents.records)
        if self._open_turn is not None:
            self.mark_turn_end(self._open_turn, "interrupted", Usage(), seq=self.last_seq)
        await self.flush()
        if contents.torn_tail is not None:
            warnings.warn(
                f"{self.path}: dropped a torn last line of {len(contents.torn_tail)} bytes "
                "(the process ended while writing it); the history before it is intact",
                SessionRecoveryWarning,
                stacklevel=3,  # the caller of restore
            )

    async def flush(self) -> None:
        """Hand the records added since the last flush to the file, to be written as
        whole lines.

        In memory it does nothing. Inside ``async with`` it does not wait either, and is
        not a checkpoint (the turn calls it after every step): the background writer
        writes the records within about :data:`~trurn._journal.LINGER` seconds. It
        raises the :class:`~trurn.SessionWriteError` of an earlier background write that
        failed (a full disk); the file was cut back to its last whole line, and those
        records stay queued and go out with a later flush, :meth:`sync` or
        :meth:`aclose`. Without a background writer (a bare :meth:`restore`) flush writes
        in a worker thread and waits, shielded; a cancel before the write leaves the
        records queued for the next flush.
        """
        journal = self._journal
        if journal is None:
            return
        if journal.writing_behind:
            self._hand_over(journal)
            journal.flush_nowait()
        elif self._pending or journal.unwritten:
            self._hand_over(journal)
            await journal.flush()

    def _hand_over(self, journal: Journal) -> None:
        """Queue the pending records in the journal (encoded now, written later)."""
        if not self._pending:
            return
        records, self._pending = self._pending, []
        try:
            journal.enqueue(records)
        except BaseException:
            self._pending[:0] = records
            raise
        turn = self._open_turn
        if turn is not None and any(
            isinstance(r, TurnEnd) and r.turn_id == turn for r in reversed(records)
        ):
            self._ended_turn, self._open_turn = turn, None

    async def sync(self) -> None:
        """Get every record added so far into the file and wait for it, fsynced unless
        the policy is ``"never"``: the turn's acknowledgment point.

        A cancel that arrives before it raises ``Cancelled`` with the records still
        pending (so an aborting turn can still replace its end marker); the wait itself
        is shielded, so once it began the records are written even if the caller is
        cancelled. Raises :class:`~trurn.SessionWriteError` if the write or the fsync
        fails; the records stay queued, as for :meth:`flush`.
        """
        journal = self._journal
        if journal is None:
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        self._hand_over(journal)
        await journal.sync()

    async def aclose(self) -> None:
        """Write what is pending, sync, stop the background writer and release the file
        (shielded); idempotent. Raises :class:`~trurn.SessionWriteError` if records
        could not be written (the file stays valid and is released anyway)."""
        journal, self._journal = self._journal, None
        if journal is None:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                self._hand_over(journal)
            finally:
                await journal.aclose()

    async def __aenter__(self) -> Context:
        """Restore the session (unless restored already) and start its background
        writer, which lives until the block ends."""
        if self.path is None:
            return self
        if self._writer is not None:
            raise RuntimeError(f"{self.path} is open in an 'async with' block already")
        if self._journal is None:
            await self.restore()
        assert self._journal is not None
        writer = trio.open_nursery()
        nursery = await writer.__aenter__()
        try:
            # Running before the block starts, so every flush in it is handed over.
            await nursery.start(self._journal.serve_writer)
        except BaseException as exc:
            try:
                await self.aclose()
            finally:
                await _leave_nursery(writer, exc)
            raise
        self._writer = writer
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            await self.aclose()
            return
        try:
            await self.aclose()  # stops the writer, so its nursery ends at once
        except BaseException as error:
            await _leave_nursery(writer, error)
            raise
        await _leave_nursery(writer, exc)

    def __repr__(self) -> str:
        where = "in memory" if self.path is None else str(self.path)
        return f"<trurn.Context {where}, {len(self._messages)} messages>"


class SessionRecoveryWarning(UserWarning):
    """Restoring a session dropped something a crash left half-written."""


async def _leave_nursery(
    nursery: AbstractAsyncContextManager[trio.Nursery], exc: BaseException | None
) -> None:
    """Exit a nursery entered in ``__aenter__`` while ``exc`` ends the block.

    The writer's task never raises, so the nursery can only wrap ``exc`` itself in an
    exception group; ``exc`` then goes on as it is, as if the block had no nursery.
    Nothing cancels the nursery's own scope, so it never swallows ``exc``.
    """
    try:
        await nursery.__aexit__(
            None if exc is None else type(exc),
            exc,
            None if exc is None else exc.__traceback__,
        )
    except BaseExceptionGroup as group:
        if exc is None or len(group.exceptions) != 1 or group.exceptions[0] is not exc:
            raise


def _latest_compaction(records: Sequence[Record]) -> tuple[Compaction | None, int]:
    """The newest compaction marker of a file, and how many messages came before it."""
    latest: Compaction | None = None
    at = 0
    count = 0
    for record in records:
        if isinstance(record, MessageRecord):
            count += 1
        elif isinstance(record, Compaction):
            latest, at = record, count
    return latest, at


def _unfinished_turn(records: Sequence[Record]) -> str | None:
    """The id of the last turn that started and has no end marker, if any."""
    for record in reversed(records):
        if isinstance(record, TurnEnd):
            return None
        if isinstance(record, TurnStart):
            return record.turn_id
    return None


def unanswered_tool_calls(messages: Sequence[Message]) -> list[ToolCall]:
    """The tool calls of the last assistant message that have no result after it."""
    answered: set[str] = set()
    for message in reversed(messages):
        if isinstance(message, ToolMessage):
            answered.add(message.tool_call_id)
        elif isinstance(message, AssistantMessage):
            return [call for call in message.tool_calls if call.id not in answered]
        else:
            return []
    return []


def get_tool_call_deltas(context: Context) -> list[PendingCall]:
    """The tool calls of the reply being streamed (or of the last reply), as far as
    they have arrived: the provider's index, the id, the name and the arguments' JSON
    text so far. Empty before the first reply; reset when the next reply starts."""
    return list(context._streaming.calls)


def get_tool_call_delta(context: Context, key: str | int) -> PendingCall | None:
    """One of :func:`get_tool_call_deltas`, by tool call id (a str) or index (an int)."""
    for call in context._streaming.calls:
        if (call.id if isinstance(key, str) else call.index) == key:
            return call
    return None


def get_last_usage(context: Context) -> Usage | None:
    """The token usage of the newest assistant message that reported one."""
    for message in reversed(context.messages):
        if isinstance(message, AssistantMessage) and message.usage is not None:
            return message.usage
    return None


def get_last_total_tokens(context: Context) -> int | None:
    """``total_tokens`` of :func:`get_last_usage`, or ``None``."""
    usage = get_last_usage(context)
    return None if usage is None else usage.total_tokens
