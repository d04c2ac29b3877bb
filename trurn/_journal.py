"""One session file as an append-only journal: durable whole-line appends and safe reads.

Writing: :func:`open_journal` opens (or creates, mode ``0600``) the file, takes the one
writer lock on it (within this process and, through ``flock``, across processes), reads
what is there and cuts off a torn last line. Records are then queued and written as
whole lines: a batch is in the file entirely or not at all, whether the caller is
cancelled or the disk fails (a failed batch stays queued for the next attempt). Every
file operation runs in a worker thread, so the event loop never blocks on the disk:
either one per write, awaited by the caller (:meth:`Journal.append`), or one long-lived
background writer (:meth:`Journal.serve_writer`) that writes what
:meth:`Journal.flush_nowait` hands it without the caller waiting, and answers
:meth:`Journal.sync`, where the caller does wait. The writer costs one thread per open
journal, asleep while there is nothing to write.

Reading: :func:`parse_journal` turns the bytes of a file into records (pure), and
:func:`read_journal` is its async shell; :func:`index_journal` finds the header and the
messages without decoding every line, for listing many files. A torn last line (a crash
mid-write) is reported and ignored; any other bad line is an error naming the file and
the line. Reading never changes the file.

Layout, restore repair (synthetic tool results) and compaction belong to the layers
above; this module knows lines and records, not conversations.
"""

from __future__ import annotations

import codecs
import collections
import errno
import math
import os
import pathlib
import queue
import re
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import msgspec
import trio

from ._errors import (
    SessionCorruptError,
    SessionError,
    SessionIdError,
    SessionLockedError,
    SessionVersionError,
    SessionWriteError,
)
from ._messages import Message
from ._records import (
    FORMAT_VERSION,
    Compaction,
    Header,
    MessageRecord,
    Record,
    compaction_error,
    decode_record,
    encode_lines,
    reserved_device_name,
)

__all__ = [
    "OS_FILE_OPS",
    "FileOps",
    "FsyncPolicy",
    "Journal",
    "JournalContents",
    "JournalIndex",
    "SessionCorruptError",
    "SessionError",
    "SessionIdError",
    "SessionLockedError",
    "SessionVersionError",
    "SessionWriteError",
    "claim",
    "index_journal",
    "lock_exclusive",
    "open_journal",
    "parse_journal",
    "read_journal",
    "release",
    "validate_session_id",
]

FsyncPolicy = Literal["turn", "record", "never"]
"""When appended records are forced to disk: at :meth:`Journal.sync` (the turn calls it
at the end of each turn), after every append, or never (the OS decides)."""

MAX_SESSION_ID_LENGTH = 128


# -- session ids -------------------------------------------------------------------------

_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def validate_session_id(session_id: str) -> str:
    """Return ``session_id`` if it can safely be a file name, else raise :class:`SessionIdError`.

    A session id is 1 to 128 characters of ``A-Z a-z 0-9 . _ -``, not ``.`` or ``..``,
    and not a Windows device name (``CON``, ``PRN``, ``AUX``, ``NUL``, ``COM1``-``COM9``,
    ``LPT1``-``LPT9``, in any case, alone or before a dot: ``nul.txt``), on every
    platform, since session files move between machines. Pure: no file is touched.
    """
    if not isinstance(session_id, str):
        raise SessionIdError(f"a session id must be a str, got {type(session_id).__name__}")
    if not session_id:
        raise SessionIdError("a session id must not be empty")
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise SessionIdError(
            f"a session id must be at most {MAX_SESSION_ID_LENGTH} characters,"
            f" got {len(session_id)}"
        )
    if session_id in (".", ".."):
        raise SessionIdError(f"a session id cannot be {session_id!r}")
    if "/" in session_id or "\\" in session_id:
        raise SessionIdError(f"a session id cannot contain a path separator: {session_id!r}")
    bad = sorted(set(session_id) - _ID_CHARS)
    if bad:
        raise SessionIdError(
            "a session id may only contain letters A-Z a-z, digits, '.', '_' and '-';"
            f" {session_id!r} contains {', '.join(map(repr, bad))}"
        )
    device = reserved_device_name(session_id)
    if device is not None:
        raise SessionIdError(
            f"a session id cannot be {session_id!r}: {device} is a reserved device name on"
            " Windows, so its file could not be opened there"
        )
    return session_id


# -- reading -----------------------------------------------------------------------------


class JournalContents(msgspec.Struct, frozen=True, kw_only=True):
    """What a session file holds.

    ``end_offset`` is the byte offset just after the last complete line. ``torn_tail``
    holds the bytes after it when the file does not end in a newline: a record cut short
    by a crash mid-write. Those bytes were never acknowledged by an append, so they are
    left out of ``records``; the caller decides whether to log them. A writer cuts them
    off when it opens the file (see :func:`open_journal`).
    """

    path: str
    records: list[Record]
    end_offset: int
    torn_tail: bytes | None = None

    @property
    def header(self) -> Header | None:
        """The header (always the first record), or ``None`` for an empty file."""
        if self.records and isinstance(self.records[0], Header):
            return self.records[0]
        return None


class _VersionProbe(msgspec.Struct):
    """Just enough of a header to read its format version before anything else."""

    kind: str = ""
    format_version: int = 0


_probe_decoder = msgspec.json.Decoder(_VersionProbe)

# msgspec writes the tag first, so every line trurn writes starts with this.
_RECORD_START = b'{"kind":"'
_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]")


def _is_torn_record(tail: bytes, *, after_lines: bool) -> bool:
    """Whether bytes after the last newline look like the start of a record cut short.

    Zero bytes at the end are what some file systems leave after a crash (the size
    grew, the data never arrived), so they are allowed, but only zeros after complete
    lines (``after_lines``): a file of nothing but zeros was never a session file.
    Anything else (binary data, a line of another format) is not a torn record but a
    corrupt file.
    """
    text = tail.rstrip(b"\x00")
    if not text:
        return after_lines
    if not text.startswith(_RECORD_START[: len(text)]):
        return False
    if _CONTROL_BYTES.search(text):
        return False
    try:
        # final=False: the cut may fall inside a multi-byte character.
        codecs.getincrementaldecoder("utf-8")().decode(text, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _check_version(line: bytes, path: str) -> None:
    # Before the strict decode: a newer header may not fit today's Header at all, and
    # "newer version" is the error the user needs, not "field X is wrong".
    try:
        probe = _probe_decoder.decode(line)
    except msgspec.MsgspecError:
        return
    if probe.kind == "header" and probe.format_version > FORMAT_VERSION:
        raise SessionVersionError(
            f"{path}: written in session format version {probe.format_version}; this trurn"
            f" reads up to version {FORMAT_VERSION} (upgrade trurn to open it)",
            path=path,
            found=probe.format_version,
            supported=FORMAT_VERSION,
        )


def parse_journal(data: bytes, path: str | os.PathLike[str]) -> JournalContents:
    """Decode the bytes of a session file (pure; ``path`` is only named in errors).

    An empty file has no records. The first record must be a :class:`Header` and no
    other record may be one. Raises :class:`SessionVersionError` for a newer format and
    :class:`SessionCorruptError` (file, 1-based line, what was wrong) for any line that
    is not a record, except a torn last line, which is reported in ``torn_tail``.
    """
    path = os.fspath(path)
    _check_no_bom(data, path)
    end_offset = data.rfind(b"\n") + 1
    lines = data[:end_offset].split(b"\n")
    lines.pop()  # what follows the last newline: the tail, handled below
    records = [_decode_line(line, number, path) for number, line in enumerate(lines, start=1)]
    tail = data[end_offset:]
    _check_tail(tail, len(lines), path)
    _check_compactions(records, path)
    return JournalContents(
        path=path, records=records, end_offset=end_offset, torn_tail=tail or None
    )


def _check_compactions(records: Sequence[Record], path: str) -> None:
    """Refuse a compaction marker that keeps messages the file has not reached (it would
    make every later request fail)."""
    messages = 0
    for number, record in enumerate(records, start=1):
        if isinstance(record, MessageRecord):
            messages += 1
        elif isinstance(record, Compaction):
            error = compaction_error(record.first_kept, messages)
            if error is not None:
                raise SessionCorruptError(f"{path}: line {number}: {error}", path=path, line=number)


def _check_no_bom(data: bytes, path: str) -> None:
    if data.startswith(codecs.BOM_UTF8):
        raise SessionCorruptError(
            f"{path}: line 1: not a session record (the file starts with a UTF-8 byte order "
            "mark, which an editor may have added; session files have none)",
            path=path,
            line=1,
        )


def _check_tail(tail: bytes, lines: int, path: str) -> None:
    """Refuse bytes after the last of ``lines`` complete lines unless they are a torn record."""
    if tail and not _is_torn_record(tail, after_lines=lines > 0):
        why = (
            "only zero bytes (binary junk, not a session file)"
            if not tail.strip(b"\x00")
            else "the file does not end in a newline and the last line is not a record cut short"
        )
        raise SessionCorruptError(
            f"{path}: line {lines + 1}: not a session record ({why})", path=path, line=lines + 1
        )


def _decode_line(line: bytes, number: int, path: str) -> Record:
    if number == 1:
        _check_version(line, path)

    def corrupt(reason: str) -> SessionCorruptError:
        return SessionCorruptError(f"{path}: line {number}: {reason}", path=path, line=number)

    if not line.strip():
        raise corrupt("empty line")
    try:
        record = decode_record(line)
    except msgspec.ValidationError as exc:
        raise corrupt(f"not a session record: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise corrupt(f"not JSON: {exc}") from exc
    if number == 1 and not isinstance(record, Header):
        raise corrupt(f"the first record must be a header, got {_kind(record)!r}")
    if number > 1 and isinstance(record, Header):
        raise corrupt("a header may only be the first record")
    return record


def _kind(record: Record) -> str:
    tag = type(record).__struct_config__.tag
    return tag if isinstance(tag, str) else type(record).__name__


# What every line holding a message starts with, after the newline ending the line before
# it. A message's text cannot hold it: JSON escapes a newline inside a string.
_MESSAGE_LINE = b"\n" + _RECORD_START + b'message",'


class JournalIndex:
    """The header and the messages of a session file, each message decoded only when
    :meth:`messages` reaches it. Made by :func:`index_journal`."""

    def __init__(
        self,
        path: str,
        header: Header | None,
        message_count: int,
        *,
        data: bytes = b"",
        lines: int = 0,
        decoded: list[Message] | None = None,
    ) -> None:
        self.path = path
        self.header = header
        self.message_count = message_count
        self._data = data  # its first `lines` lines, each ending in a newline, when set
        self._lines = lines
        self._decoded = decoded

    def messages(self, *, newest_first: bool = False) -> Iterator[Message]:
        """The messages in file order (or newest first), decoded as the iteration reaches
        them. Raises what :func:`parse_journal` raises for a bad line, naming it."""
        if self._decoded is not None:
            return iter(self._decoded[::-1] if newest_first else self._decoded)
        return self._decode(newest_first)

    def _decode(self, newest_first: bool) -> Iterator[Message]:
        data, lines = self._data, self._lines
        end = len(data)
        # Line numbers (for errors) are counted from the nearer end of the file, so a
        # message near it costs a short count.
        before, after = 0, 0  # newlines counted in data[:counted] / data[counted:end]
        counted = end if newest_first else 0
        at = data.rfind(_MESSAGE_LINE, 0, end) if newest_first else data.find(_MESSAGE_LINE, 0, end)
        while at != -1:
            start = at + 1
            stop = data.index(b"\n", start)
            if newest_first:
                after += data.count(b"\n", start, counted)
                number = lines - after + 1
            else:
                before += data.count(b"\n", counted, start)
                number = before + 1
            counted = start
            record = _decode_line(data[start:stop], number, self.path)
            if isinstance(record, MessageRecord):
                yield record.message
            if newest_first:
                at = data.rfind(_MESSAGE_LINE, 0, at)
            else:
                at = data.find(_MESSAGE_LINE, stop, end)


def index_journal(data: bytes, path: str | os.PathLike[str]) -> JournalIndex:
    """The header and messages :func:`parse_journal` would find in ``data``, without
    decoding every line (pure; ``path`` is only named in errors).

    When every line starts as trurn writes a record, only the header is decoded here,
    messages are counted by how their lines start, and :meth:`JournalIndex.messages`
    decodes one line at a time. A file written otherwise (by hand, by another tool) is
    parsed whole. Raises as :func:`parse_journal` does for a byte order mark, the
    header, the last line and every line decoded; a line damaged within, past its
    start, is only noticed if decoded (restoring the session reports it).
    """
    path = os.fspath(path)
    _check_no_bom(data, path)
    end_offset = data.rfind(b"\n") + 1
    lines = data.count(b"\n", 0, end_offset)
    written_by_trurn = data.count(b"\n" + _RECORD_START, 0, end_offset) == max(lines - 1, 0) and (
        lines == 0 or data.startswith(_RECORD_START + b'header",')
    )
    if not written_by_trurn:
        contents = parse_journal(data, path)
        messages = [r.message for r in contents.records if isinstance(r, MessageRecord)]
        return JournalIndex(path, contents.header, len(messages), decoded=messages)
    header = _decode_line(data[: data.index(b"\n")], 1, path) if lines else None
    assert header is None or isinstance(header, Header)  # _decode_line checks line 1
    _check_tail(data[end_offset:], lines, path)
    count = data.count(_MESSAGE_LINE, 0, end_offset)
    return JournalIndex(path, header, count, data=data[:end_offset], lines=lines)


async def read_journal(path: str | os.PathLike[str]) -> JournalContents:
    """Read and parse a session file without taking its lock or changing it.

    A missing file raises ``FileNotFoundError`` as it is. The read and the parse run in
    a worker thread; the call checkpoints. For a file that someone is appending to, the result
    is a consistent prefix (a line being written shows up as ``torn_tail``).
    """
    return await trio.to_thread.run_sync(_read_and_parse, path)


def _read_and_parse(path: str | os.PathLike[str]) -> JournalContents:
    with open(path, "rb") as file:
        return parse_journal(file.read(), path)


# -- writing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FileOps:
    """The OS calls a :class:`Journal` writes with; tests replace them to count fsyncs or
    to simulate a full disk or a short write. Each is called in a worker thread."""

    write: Callable[[int, bytes], int] = os.write
    # Not fdatasync: every append grows the file, so fdatasync must commit the new size
    # (metadata needed to read the data back) and costs the same; measured equal here.
    fsync: Callable[[int], None] = os.fsync
    truncate: Callable[[int, int], None] = os.ftruncate


OS_FILE_OPS = FileOps()

FileKey = tuple[int, int]
"""A file's (device, inode): the same for every path or link that leads to it."""

# Files claimed for writing in this process (see claim), and by whom. flock alone would
# refuse a second writer too on POSIX, but this gives the clearer message and also
# works where flock does not exist.
_claimed: dict[FileKey, str] = {}


def claim(key: FileKey, path: str | os.PathLike[str], holder: str, *, doing: str = "") -> None:
    """Claim the file ``key`` for writing in this process, as ``holder`` (what a refusal
    names: the path it was opened as, say), until :func:`release`.

    :func:`open_journal` claims the file it opens and the store the file it deletes, so
    neither happens to a file that the other has (through any path or link). Raises
    :class:`SessionLockedError` naming ``path`` and the holder when the file is claimed
    already; ``doing`` (``"delete"``) says what was refused. Call it from trio's thread
    only: the check and the claim are then one step. Not a checkpoint.
    """
    other = _claimed.get(key)
    if other is not None:
        refused = f"cannot {doing}: " if doing else ""
        raise SessionLockedError(
            f"{refused}{path} is already open for writing in this process (as {other})",
            path=path,
        )
    _claimed[key] = holder


def release(key: FileKey) -> None:
    """Give up the claim on ``key`` (nothing happens if there is none). Not a checkpoint."""
    _claimed.pop(key, None)


LINGER = 0.02
"""Seconds a flushed record may wait for the background writer.

The first flush that finds nothing planned sets a timer; when it expires, the writer
thread is woken once and writes everything queued by then. A turn shorter than this
wakes the thread only for its final sync, one that is longer has its records written
once per ``LINGER`` at most, and a crash mid-turn loses at most the records of the
last ``LINGER`` seconds (never an acknowledged one)."""


class _WriteFailed(Exception):
    """A write that failed in a worker thread; ``file_valid``: it was cut back whole."""

    def __init__(self, error: OSError, *, file_valid: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.file_valid = file_valid


def _write_whole(ops: FileOps, fd: int, data: bytes, good_offset: int) -> None:
    """Write ``data`` at the end of the file whole (worker thread).

    On an error after part of ``data`` went out (a short write, then ENOSPC), the file
    is cut back to ``good_offset``, the end of the last complete line, so it never keeps
    half a batch.
    """
    written = 0
    try:
        while written < len(data):
            count = ops.write(fd, data[written:] if written else data)
            if count <= 0:
                raise OSError(errno.EIO, "write made no progress")
            written += count
    except OSError as exc:
        if written:
            try:
                ops.truncate(fd, good_offset)
            except OSError:
                raise _WriteFailed(exc, file_valid=False) from exc
        raise _WriteFailed(exc, file_valid=True) from exc


def _take_all(chunks: collections.deque[bytes]) -> list[bytes]:
    taken: list[bytes] = []
    while chunks:
        taken.append(chunks.popleft())
    return taken


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)  # O_APPEND writes ignore the position, reads use it
    chunks: list[bytes] = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def lock_exclusive(fd: int, path: str) -> None:
    """Take the OS writer lock on the open file ``fd`` without waiting (worker thread).

    Raises :class:`SessionLockedError` naming ``path`` when another process holds it.
    The lock goes with the last descriptor of the file.
    """
    if sys.platform == "win32":  # no flock; the in-process registry still applies
        return
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise SessionLockedError(
            f"{path} is open for writing by another process", path=path
        ) from exc


# What the trio side tells the background writer (besides barriers).
_WAKE = "wake"  # write what is queued (the waker task, LINGER after a flush)
_STOP = "stop"  # write everything, sync, close the file and return


@dataclass(frozen=True)
class _Barrier:
    """Write everything queued before this (fsync too if asked), then call ``done`` in
    trio's thread with the error, if any."""

    fsync: bool
    done: Callable[[SessionWriteError | None], None]


class Journal:
    """A session file open for appending, holding its writer lock until :meth:`aclose`.

    Made by :func:`open_journal`. ``contents`` is what the file held when it was opened
    (read under the lock, torn tail already cut off); it is not updated by appends.
    Use it as an async context manager, or call :meth:`aclose` when done.

    Records are queued (:meth:`enqueue`, encoded at once) and written in order, each
    batch as whole lines in one write. Who writes them: without a background writer,
    the caller of :meth:`append`, :meth:`flush`, :meth:`sync` or :meth:`aclose`, in a
    worker thread, waiting for it. With :meth:`serve_writer` running (a
    :class:`~trurn.Context` used with ``async with`` starts it), one long-lived worker
    thread writes queued records within :data:`LINGER` of :meth:`flush_nowait`,
    without the caller waiting; :meth:`sync` is where a caller waits for them.
    Records whose write failed stay queued, in order, and are written by the next
    attempt: nothing queued is dropped while the journal is open.
    """

    def __init__(
        self,
        *,
        path: pathlib.Path,
        fd: int,
        key: FileKey,
        contents: JournalContents,
        fsync: FsyncPolicy,
        file_ops: FileOps,
    ) -> None:
        self.path = path
        self.fsync_policy: FsyncPolicy = fsync
        self.contents = contents
        self._fd = fd
        self._fd_open = True
        self._key = key
        self._ops = file_ops
        # Queued batches of whole lines, oldest first. The trio side appends on the
        # right; the one thread writing at a time pops on the left (and puts a batch
        # back there when its write failed). deque operations are atomic.
        self._chunks: collections.deque[bytes] = collections.deque()
        self._accepted = contents.end_offset  # bytes written or queued
        self._offset = contents.end_offset  # end of the last line written (writer-owned)
        self._synced = contents.end_offset  # how much of it is fsynced (writer-owned)
        self._lock = trio.StrictFIFOLock()  # one caller-side write at a time
        self._closed = False
        self._failed: str | None = None  # why appends are refused after an error
        self._failed_by: SessionWriteError | None = None  # that error, every refusal's cause
        # The background writer (serve_writer).
        self._writer_running = False
        self._writer_stopped = trio.Event()
        self._stop_error: SessionWriteError | None = None
        self._commands: queue.SimpleQueue[object] = queue.SimpleQueue()
        # Its deadline is when the waker task wakes the writer thread (inf: no plan).
        self._wake_scope = trio.CancelScope()
        # The error of the last background write, until flush_nowait reports it. A deque
        # so that taking it is one atomic step the writer thread cannot slip a new one into.
        self._failures: collections.deque[SessionWriteError] = collections.deque(maxlen=1)

    @property
    def offset(self) -> int:
        """Byte offset of the end of the last complete line written."""
        return self._offset

    @property
    def unwritten(self) -> int:
        """Bytes queued and not written yet (0 once everything queued is in the file)."""
        return self._accepted - self._offset

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def writing_behind(self) -> bool:
        """Whether a background writer (:meth:`serve_writer`) is running."""
        return self._writer_running

    # -- the trio side ---------------------------------------------------------------------

    def enqueue(self, records: Sequence[Record]) -> None:
        """Queue ``records`` to be appended as whole lines, in one write, after what is
        queued already. Nothing is written yet; not a checkpoint.

        The records are encoded here, so a record JSON cannot hold raises before
        anything is queued, and so does a closed (``trio.ClosedResourceError``) or
        failed (:class:`SessionWriteError`) journal. The first record of an empty file
        must be a :class:`Header` (``ValueError`` otherwise).
        """
        self._enqueue(records, encode_lines(records))

    def _enqueue(self, records: Sequence[Record], data: bytes) -> None:
        self._check_writable()
        if self._accepted == 0 and records and not isinstance(records[0], Header):
            raise ValueError(
                f"the first record of a session file must be a Header, got {_kind(records[0])!r}"
            )
        if data:
            self._chunks.append(data)
            self._accepted += len(data)

    def flush_nowait(self) -> None:
        """Have the background writer write what is queued, without waiting for it.

        The writer writes within :data:`LINGER` (everything queued by then). Not a
        checkpoint. Raises the :class:`SessionWriteError` of an earlier background write
        that failed and was not reported yet: its records are still queued, the file
        was cut back to its last whole line, and the writer tries again. Raises
        ``RuntimeError`` if no background writer is running.
        """
        if not self._writer_running:
            raise RuntimeError(f"{self.path} has no background writer: await flush() instead")
        self._check_writable()
        failure = self._take_failure() if self._failures else None
        if self.unwritten and self._wake_scope.deadline == math.inf:
            self._wake_scope.deadline = trio.current_time() + LINGER
        if failure is not None:
            raise failure

    def _take_failure(self) -> SessionWriteError | None:
        try:
            return self._failures.popleft()
        except IndexError:  # a barrier cleared it meanwhile: its waiter hears how it went
            return None

    async def append(self, records: Sequence[Record]) -> None:
        """Queue ``records`` (see :meth:`enqueue`) and wait until they are in the file,
        fsynced if the policy is ``"record"``.

        A checkpoint: a cancel that arrives while waiting for another append raises
        ``Cancelled`` with nothing queued; once queued, the records are written and
        waited for in a shielded scope, so a return means every record is in the file.
        A process killed mid-write is different: the file may then keep the first whole
        lines of the batch and a torn last line, which the next open cuts off.

        Raises :class:`SessionWriteError` when the disk fails: the file is cut back to
        its last complete line and the records stay queued for the next append,
        :meth:`flush`, :meth:`sync` or :meth:`aclose`. After a failed fsync, or a failed
        cut, the journal refuses further appends (reopen it: opening cuts a torn tail).
        Raises ``trio.ClosedResourceError`` after :meth:`aclose`.
        """
        data = encode_lines(records)
        async with self._lock:
            self._enqueue(records, data)
            await self._write_out(fsync=self.fsync_policy == "record")

    async def flush(self) -> None:
        """Write what is queued and wait for it (fsynced if the policy is ``"record"``).

        Shielded once begun, like :meth:`append`; raises as :meth:`append` does.
        """
        async with self._lock:
            await self._write_out(fsync=self.fsync_policy == "record")

    async def sync(self) -> None:
        """Write what is queued and force the file to disk, unless the policy is
        ``"never"``, and wait for it. The turn calls it at the end of each turn.

        A checkpoint: a cancel that arrives before it raises ``Cancelled`` without
        waiting; the wait itself is shielded, so once it began what is queued gets
        written and synced even if the caller is cancelled. Raises
        :class:`SessionWriteError` if a write fails (the records stay queued) or the
        fsync fails (the journal then refuses appends).
        """
        fsync = self.fsync_policy != "never"
        if self._writer_running:  # the writer orders the writes: no lock to take
            await trio.lowlevel.checkpoint_if_cancelled()
            await self._write_out(fsync=fsync)
            return
        async with self._lock:
            await self._write_out(fsync=fsync)

    async def _write_out(self, *, fsync: bool) -> None:
        """Get everything queued so far written (and fsynced if asked) and wait for it,
        shielded. The caller holds ``_lock`` unless the background writer runs."""
        self._check_writable()
        if self._offset == self._accepted and (not fsync or self._synced == self._offset):
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope(shield=True):
            if self._writer_running:
                error = await self._barrier(fsync)
                if not self.unwritten:
                    self._wake_scope.deadline = math.inf  # nothing left for a wake-up
            else:
                error = await trio.to_thread.run_sync(self._write_queued_sync, fsync)
        if error is not None:
            raise error

    async def _barrier(self, fsync: bool) -> SessionWriteError | None:
        done = trio.Event()
        errors: list[SessionWriteError | None] = []

        def finished(error: SessionWriteError | None) -> None:
            errors.append(error)
            done.set()

        self._commands.put(_Barrier(fsync, finished))
        await done.wait()
        return errors[0]

    def _check_writable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"the journal of {self.path} is closed")
        if self._failed is not None:
            raise self._refusal()

    async def serve_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the background writer: one worker thread that writes queued records as
        :meth:`flush_nowait` asks, until :meth:`aclose`.

        Run it in a nursery (``await nursery.start(journal.serve_writer)``) and close
        the journal before that nursery ends: it returns only once :meth:`aclose` has
        had everything written, synced and the file closed, and cancelling it does not
        stop it sooner (its thread is never abandoned). Returns at once if the journal
        is closed already. The thread sleeps until there is something to do: a waker
        task wakes it :data:`LINGER` after a flush, and :meth:`sync`, :meth:`flush` and
        :meth:`append` ask it directly; it wakes trio only to answer those.
        """
        # Shielded throughout: once running, callers may wait on the thread (a barrier
        # queued for it), so it must start and run until aclose stops it.
        with trio.CancelScope(shield=True):
            async with self._lock:  # a caller-side write in progress finishes first
                if self._writer_running:
                    raise RuntimeError(f"{self.path} already has a background writer")
                self._writer_running = not self._closed
            task_status.started()
            if not self._writer_running:
                return
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._wake_writer_later)
                    self._stop_error = await trio.to_thread.run_sync(
                        self._serve_sync,
                        trio.lowlevel.current_trio_token(),
                        limiter=trio.CapacityLimiter(1),  # not trio's default 40: one each
                    )
                    nursery.cancel_scope.cancel()
            finally:
                self._writer_running = False
                self._answer_orphans()
                self._writer_stopped.set()

    async def _wake_writer_later(self) -> None:
        """Wake the writer thread when the deadline that flush_nowait set comes.

        A deadline rather than a sleep: planning and dropping a wake-up is then only
        setting a number, and a turn that syncs before it (which drops it) costs this
        task nothing.
        """
        while True:
            with self._wake_scope:
                await trio.sleep_forever()
            self._wake_scope = trio.CancelScope()
            if self.unwritten:
                self._commands.put(_WAKE)

    def _answer_orphans(self) -> None:
        """Answer the barriers a writer thread left behind (it ends early only when
        ``KeyboardInterrupt`` or ``SystemExit`` is raised in it, or never started)."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Barrier):
                stopped = f"{self.path}: the background writer stopped"
                command.done(SessionWriteError(stopped, path=self.path))

    async def aclose(self) -> None:
        """Write what is queued, sync what is not yet synced (policies ``"turn"`` and
        ``"record"``), close the file and release both locks; stops the background
        writer, if one runs, and waits for its thread to end.

        Idempotent. The work is shielded, so the file is closed even if the caller is
        cancelled; ``Cancelled`` is raised after it, at the final checkpoint. Raises
        :class:`SessionWriteError` if queued records could not be written or the last
        fsync fails (the file is closed anyway, and stays valid).
        """
        error: SessionWriteError | None = None
        with trio.CancelScope(shield=True):
            async with self._lock:
                if not self._closed:
                    self._closed = True
                    try:
                        if self._writer_running:
                            self._commands.put(_STOP)
                            await self._writer_stopped.wait()
                            error = self._stop_error
                        if self._fd_open:  # no writer, or one that ended early
                            error = await trio.to_thread.run_sync(self._finish_sync)
                    finally:
                        release(self._key)
        if error is not None:
            raise error
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Journal:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"offset {self._offset}"
        return f"<trurn Journal {str(self.path)!r} fsync={self.fsync_policy!r} {state}>"

    # -- the writing thread ----------------------------------------------------------------
    # Exactly one thread writes at a time: the background writer's while it runs, else a
    # worker thread started by a caller holding _lock. It owns _offset and _synced.

    def _write_queued_sync(self, fsync: bool) -> SessionWriteError | None:
        """Write everything queued in one write, then fsync if asked; the error, if any.

        Whatever the error, the batches not written go back to the front of the queue,
        in order. After a failed fsync, a failed cut-back or an error that is not an
        ``OSError`` (a bug in the :class:`FileOps`, a ``MemoryError``: what the file
        then holds is unknown), the journal refuses appends. Such an error comes back as
        the cause of the :class:`SessionWriteError`; ``KeyboardInterrupt`` and
        ``SystemExit`` are raised, so trio sees them.
        """
        if self._failed is not None:
            return self._refusal() if self._chunks else None
        try:
            self._write_chunks()
            if fsync and self._synced < self._offset:
                self._ops.fsync(self._fd)
                self._synced = self._offset
        except _WriteFailed as failed:
            if failed.file_valid:
                return self._error("write failed", failed.error, "nothing was appended")
            detail = "part of a line may be left at the end; reopen the session to cut it off"
            why = "a write failed and could not be cut back"
            return self._fail(why, "write failed", failed.error, detail)
        except OSError as exc:  # only the fsync raises one as it is (see _write_whole)
            detail = "the records are in the file but may not be on disk; reopen the session"
            why = "earlier records may not be on disk: an fsync failed"
            return self._fail(why, "fsync failed", exc, detail)
        except BaseException as exc:
            detail = "what the file holds is unknown; reopen the session"
            error = self._fail("writing failed unexpectedly", "writing failed", exc, detail)
            if isinstance(exc, Exception):
                return error
            raise
        return None

    def _write_chunks(self) -> None:
        """Write everything queued in one write; on any error it is all queued again."""
        chunks = _take_all(self._chunks)
        if not chunks:
            return
        written = False
        try:
            data = b"".join(chunks)
            _write_whole(self._ops, self._fd, data, self._offset)
            written = True
        finally:
            if not written:
                self._chunks.extendleft(reversed(chunks))
        self._offset += len(data)

    def _finish_sync(self) -> SessionWriteError | None:
        """Write what is queued, fsync per the policy, close the file; the error, if any."""
        try:
            return self._write_queued_sync(self.fsync_policy != "never")
        finally:
            os.close(self._fd)  # also drops the flock
            self._fd_open = False

    def _serve_sync(self, token: trio.lowlevel.TrioToken) -> SessionWriteError | None:
        """The background writer's loop, in its worker thread, until told to stop.

        It sleeps until a command comes: a barrier (answered in trio's thread), a
        wake-up from the waker task, or stop. A failed background write is kept for
        flush_nowait to report; its records stay queued until the next command. After
        an error that fails the journal (see :meth:`_write_queued_sync`) it goes on
        serving, and every later barrier hears the refusal; only ``KeyboardInterrupt``
        or ``SystemExit`` ends it early, after answering the barrier at hand.
        """
        while True:
            command = self._commands.get()
            if command is _STOP:
                return self._finish_sync()
            if isinstance(command, _Barrier):
                self._failures.clear()  # whoever waits on the barrier hears how it went
                try:
                    error = self._write_queued_sync(command.fsync)
                except BaseException:  # the journal failed (_write_queued_sync saw to it)
                    token.run_sync_soon(command.done, self._refusal())
                    raise
                token.run_sync_soon(command.done, error)
                continue
            error = self._write_queued_sync(self.fsync_policy == "record")
            if error is not None:
                self._failures.append(error)

    def _error(self, what: str, exc: BaseException, detail: str) -> SessionWriteError:
        error = SessionWriteError(
            f"{self.path}: {what}: {_describe(exc)}; {detail}", path=self.path
        )
        error.__cause__ = exc
        return error

    def _fail(self, why: str, what: str, exc: BaseException, detail: str) -> SessionWriteError:
        """The error for ``exc`` (see :meth:`_error`), after which appends are refused:
        each refusal says ``why`` and names ``exc``, and has the first such error as
        its cause."""
        error = self._error(what, exc, detail)
        if self._failed is None:
            self._failed, self._failed_by = f"{why} ({_describe(exc)})", error
        return error

    def _refusal(self) -> SessionWriteError:
        error = SessionWriteError(
            f"{self.path}: refusing to append: {self._failed}; reopen the session",
            path=self.path,
        )
        error.__cause__ = self._failed_by
        return error


def _describe(exc: BaseException) -> str:
    """An error as an error message names it: the OS's words for an OSError."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_FSYNC_POLICIES = ("turn", "record", "never")


def _open_sync(path: pathlib.Path, flags: int, create: bool) -> int:
    """Open the file at ``path`` with ``flags``; with ``create``, make it (mode 0600) if it
    is missing (worker thread).

    The file is made with ``O_EXCL``, which never follows a symlink: a plain ``O_CREAT``
    would make a dangling link's target, wherever it points. Such a link raises
    :class:`SessionWriteError` and nothing is made. Of two callers creating one file,
    one makes it and the other opens it.
    """
    try:
        return os.open(path, flags, 0o600)
    except FileNotFoundError:
        if not create:
            raise
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if os.path.islink(path) and not os.path.exists(path):
            raise SessionWriteError(
                f"{path} is a symbolic link to {os.readlink(path)}, which does not exist;"
                " refusing to create a session file through it (nothing was created)",
                path=path,
            ) from None
    return os.open(path, flags, 0o600)  # made by another caller meanwhile


def _open_and_stat(path: pathlib.Path, flags: int, create: bool) -> tuple[int, os.stat_result]:
    """:func:`_open_sync`, and what the file is (worker thread)."""
    fd = _open_sync(path, flags, create)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def _lock_and_parse(fd: int, path: pathlib.Path) -> JournalContents:
    """Take the writer lock, then read and parse the whole file (worker thread: parsing a
    long session takes a while, and the event loop goes on meanwhile)."""
    lock_exclusive(fd, str(path))
    return parse_journal(_read_all(fd), path)


async def open_journal(
    path: str | os.PathLike[str],
    *,
    fsync: FsyncPolicy = "turn",
    create: bool = False,
    file_ops: FileOps = OS_FILE_OPS,
) -> Journal:
    """Open a session file for appending, as its one writer::

        async with await open_journal(path, create=True) as journal:
            if journal.contents.header is None:
                await journal.append([Header(session_id=...)])
            await journal.append([MessageRecord(message=...)])

    (``async with await``, like ``trio.open_file``; a long-lived owner keeps the
    :class:`Journal` and calls :meth:`Journal.aclose`.)

    ``create=True`` creates a missing file with mode ``0600``, but never through a
    symlink whose target is missing (:class:`SessionWriteError`; a link to an existing
    file is opened as that file); otherwise a missing file raises
    ``FileNotFoundError``, and other open errors (a read-only file or directory) come
    out as the ``OSError`` itself. Then it takes the writer lock (a second writer,
    in this process or another, gets :class:`SessionLockedError` naming the file), reads
    and parses the file (:class:`SessionCorruptError`, :class:`SessionVersionError`;
    the result is ``journal.contents``) and, if the last line is torn, cuts it off so
    the next append starts on a clean line: those bytes were never acknowledged by an
    append. That cut is the only change opening makes to an existing file.

    ``fsync`` is the :data:`FsyncPolicy`. ``file_ops`` replaces the OS calls (tests).
    Every file operation runs in a worker thread. If cancelled, nothing stays open.
    """
    if fsync not in _FSYNC_POLICIES:
        raise ValueError(f"fsync must be one of {_FSYNC_POLICIES}, got {fsync!r}")
    absolute = pathlib.Path(os.fspath(await trio.Path(path).absolute()))
    flags = (
        os.O_RDWR
        | os.O_APPEND
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_BINARY", 0)  # Windows would translate newlines otherwise
    )
    fd, info = await trio.to_thread.run_sync(_open_and_stat, absolute, flags, create)
    key: FileKey | None = None
    try:
        if not stat.S_ISREG(info.st_mode):
            raise SessionWriteError(f"{absolute} is not a regular file", path=absolute)
        claim((info.st_dev, info.st_ino), absolute, str(absolute))
        key = (info.st_dev, info.st_ino)
        contents = await trio.to_thread.run_sync(_lock_and_parse, fd, absolute)
        if contents.torn_tail is not None:
            try:
                await trio.to_thread.run_sync(file_ops.truncate, fd, contents.end_offset)
            except OSError as exc:
                raise SessionWriteError(
                    f"{absolute}: cannot cut off the torn last line: {exc.strerror or exc}",
                    path=absolute,
                ) from exc
    except BaseException:
        if key is not None:
            release(key)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(os.close, fd)
        raise
    assert key is not None
    return Journal(path=absolute, fd=fd, key=key, contents=contents, fsync=fsync, file_ops=file_ops)
