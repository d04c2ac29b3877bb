"""The conversation history a turn reads and appends to, in memory or bound to a file.

``Context()`` keeps the history in memory. ``Context(path)`` binds it to a JSONL
session file: :meth:`Context.restore` loads (and repairs) what the file holds and
takes its writer lock; from then on every message the turn adds is queued as a record
and written by :meth:`Context.flush` as whole lines, in one shielded write.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import trio

from ._errors import SessionIdError
from ._journal import FsyncPolicy, Journal, open_journal, validate_session_id
from ._messages import AssistantMessage, Message, ToolCall, ToolMessage, ToolStatus, Usage
from ._records import Header, MessageRecord, Record, TurnEnd, TurnStart

__all__ = [
    "Context",
    "SessionRecoveryWarning",
    "get_last_total_tokens",
    "get_last_usage",
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
        self._journal: Journal | None = None
        # Records not written yet: the file lags memory by exactly these.
        self._pending: list[Record] = []
        self._busy = False
        self._open_turn: str | None = None  # the turn started and not yet ended in the file
        self.last_seq = 0
        """The highest event seq recorded in this session (restored from its file)."""
        self.torn_tail: bytes | None = None
        """The bytes of a last line a crash cut short, found and dropped by restore."""

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
        """
        if self._closed:
            raise trio.ClosedResourceError(f"{self.path} was closed: restore it again to add to it")
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

    def mark_turn_start(self, turn_id: str, parent_turn_id: str | None, *, seq: int) -> None:
        """Record that a turn began (a no-op in memory)."""
        if self._journal is not None:
            self._pending.append(TurnStart(turn_id=turn_id, parent_turn_id=parent_turn_id, seq=seq))
            self._open_turn = turn_id

    def mark_turn_end(self, turn_id: str, stop_reason: str, usage: Usage, *, seq: int) -> None:
        """Record that a turn ended (a no-op in memory, and for a turn never started).

        A turn ends once: a second call (a turn whose final sync failed, then aborted)
        replaces the end marker still pending.
        """
        if self._journal is None or self._open_turn != turn_id:
            return
        self._pending = [
            r for r in self._pending if not (isinstance(r, TurnEnd) and r.turn_id == turn_id)
        ]
        self._pending.append(
            TurnEnd(turn_id=turn_id, stop_reason=stop_reason, usage=usage, seq=seq)
        )

    # -- the file ------------------------------------------------------------------------

    async def restore(self) -> Context:
        """Load the session file into this context and keep it open for writing.

        Creates the file if it does not exist. A torn last line (a crash mid-write) is
        dropped and kept in :attr:`torn_tail`; any other bad line raises
        :class:`~trurn.SessionCorruptError` naming the file and line, and nothing is
        rewritten. Tool calls left without a result get an ``"interrupted"`` one, which
        is written at once. Returns ``self``.
        """
        if self.path is None:
            raise RuntimeError("this Context has no path: it lives in memory only")
        if self._journal is not None:
            raise RuntimeError(f"{self.path} is already restored")
        journal = await open_journal(self.path, fsync=self._fsync, create=self._create)
        contents = journal.contents
        self._journal = journal
        self._closed = False
        self.torn_tail = contents.torn_tail
        if contents.torn_tail is not None:
            warnings.warn(
                f"{self.path}: dropped a torn last line of {len(contents.torn_tail)} bytes "
                "(the process ended while writing it); the history before it is intact",
                SessionRecoveryWarning,
                stacklevel=2,
            )
        self._messages = [r.message for r in contents.records if isinstance(r, MessageRecord)]
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
        try:
            await self.flush()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def flush(self) -> None:
        """Write the records added since the last flush, as whole lines in one write.

        For an in-memory context it does nothing and is not even a checkpoint (the turn
        calls it after every step). The write itself is shielded: a cancel that arrives
        before it leaves every record pending, one that arrives during it waits for it.
        If the disk fails (:class:`~trurn.SessionWriteError`), the file stays valid and
        the records stay pending, to be written by the next flush.
        """
        journal = self._journal
        if journal is None or not self._pending:
            return
        records = self._pending
        self._pending = []
        try:
            await journal.append(records)
        except BaseException:
            self._pending[:0] = records
            raise

    async def sync(self) -> None:
        """Flush, then force the file to disk unless the fsync policy is ``"never"``."""
        await self.flush()
        if self._journal is not None:
            await self._journal.sync()

    async def aclose(self) -> None:
        """Write what is pending, sync, and release the file (shielded); idempotent."""
        journal, self._journal = self._journal, None
        if journal is None:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                if self._pending:
                    records, self._pending = self._pending, []
                    await journal.append(records)
            finally:
                await journal.aclose()

    async def __aenter__(self) -> Context:
        if self.path is not None and self._journal is None:
            await self.restore()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        where = "in memory" if self.path is None else str(self.path)
        return f"<trurn.Context {where}, {len(self._messages)} messages>"


class SessionRecoveryWarning(UserWarning):
    """Restoring a session dropped something a crash left half-written."""


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
