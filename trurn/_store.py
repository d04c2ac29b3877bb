"""Where session files live, and what can be done with a whole session.

Layout (OTURN's, in JSONL)::

    <root>/YYYYMMDD/<session_id>.jsonl                 the session file (local date at creation)
    <work_dir>/.trurn/sessions/<session_id>.jsonl      a symlink to it, when a work dir is known

``<root>`` is ``global_sessions_root``, else ``$TRURN_HOME/global_sessions``, else
``~/.trurn/global_sessions``; ``meta_dirname`` renames ``.trurn`` in both places.

:class:`SessionStore` creates, opens, lists, forks, deletes, exports and imports sessions.
It knows files and whole sessions; appending to a session is :class:`~trurn.Context`'s
job, and lines and records are the journal's. A new file (create, fork, import) is
written whole to a temporary file and linked into place, so no reader ever sees half of
it (or an empty one), and never over an existing file: two sessions never share one.
Reading (list, fork, export) never changes a file and works while the session is open
for writing; it reads only files in the store, never a device or FIFO a link leads to.

Every file operation runs in a worker thread (``trio.to_thread.run_sync``), so the event
loop never waits on the disk. Each operation's files are made in one thread call, which
runs to its end even if the caller is cancelled meanwhile; the cancel is raised after.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import errno
import functools
import json
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import msgspec
import trio

from . import _journal
from ._context import Context
from ._errors import (
    SessionCorruptError,
    SessionError,
    SessionExistsError,
    SessionNotFoundError,
    SessionWriteError,
)
from ._journal import FsyncPolicy, index_journal, parse_journal, validate_session_id
from ._messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
)
from ._records import (
    Compaction,
    Header,
    MessageRecord,
    Record,
    compaction_error,
    encode_lines,
)

__all__ = [
    "SessionExistsError",
    "SessionInfo",
    "SessionNotFoundError",
    "SessionStore",
    "parse_markdown",
    "render_markdown",
]

DEFAULT_META_DIRNAME = ".trurn"
SESSIONS_DIRNAME = "sessions"
GLOBAL_DIRNAME = "global_sessions"
SUFFIX = ".jsonl"
MARKDOWN_FORMAT = 1
TITLE_LENGTH = 80

_DATE_DIR = re.compile(r"\A[0-9]{8}\Z")


# -- errors ------------------------------------------------------------------------------


# -- listing -----------------------------------------------------------------------------


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`SessionStore.list` tells about one session, read from its file.

    ``path`` is the session file (the target of a work dir's link); ``created_at`` comes
    from the header and ``updated_at`` is the file's modification time (both unix
    times; ``created_at`` is ``None`` when the file has no header). ``title`` is the
    first user message, on one line and shortened. ``last_usage`` is the usage of the
    newest assistant message that reported one. ``error`` is set, and the counts left
    empty, when the file cannot be read (missing, corrupt, from a newer trurn); its
    ``updated_at`` is then the modification time of the file, or of the link when that
    is all there is, so a broken session keeps its place in the listing. Only the
    lines these come from are decoded (see :func:`~trurn._journal.index_journal`): a
    line damaged past its start elsewhere is reported when the session is opened.
    """

    session_id: str
    path: Path
    created_at: float | None = None
    updated_at: float = 0.0
    title: str | None = None
    message_count: int = 0
    last_usage: Usage | None = None
    work_dir: str | None = None
    error: str | None = None


def shorten_title(text: str, limit: int = TITLE_LENGTH) -> str:
    """``text`` on one line (runs of whitespace become one space), at most ``limit`` long."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def summarize(
    session_id: str, path: Path, index: _journal.JournalIndex, updated_at: float
) -> SessionInfo:
    """A :class:`SessionInfo` from a file's index (pure).

    Decodes messages from the start until the first user message and from the end until
    the newest usage, usually a few lines of a long session.
    """
    header = index.header
    title = next(
        (shorten_title(m.content) for m in index.messages() if isinstance(m, UserMessage)), None
    )
    last_usage = next(
        (
            m.usage
            for m in index.messages(newest_first=True)
            if isinstance(m, AssistantMessage) and m.usage is not None
        ),
        None,
    )
    return SessionInfo(
        session_id=session_id,
        path=path,
        created_at=None if header is None else header.created_at,
        updated_at=updated_at,
        title=title,
        message_count=index.message_count,
        last_usage=last_usage,
        work_dir=None if header is None else header.work_dir,
    )


def _newest_first(info: SessionInfo) -> tuple[float, float, str]:
    return (info.updated_at, info.created_at or 0.0, info.session_id)


def _read_info_sync(root: Path, session_id: str, path: Path) -> tuple[SessionInfo, bool]:
    """Stat and read one session file (worker thread); ``True`` when the file is missing.

    Only a file in the store is read: a work dir's link leading anywhere else (to
    ``/dev/zero``, a FIFO, another user's file) is reported in ``error``, not followed.
    """
    updated_at = None
    try:
        if not os.path.exists(path):  # a link whose file is gone, or a file deleted meanwhile
            raise FileNotFoundError(path)
        target = _session_target_sync(root, path, session_id, "read")
        updated_at = os.stat(target).st_mtime
        index = index_journal(_read_session_sync(target, session_id, "read"), target)
        header = index.header
        if header is not None and header.session_id != session_id:
            raise _header_mismatch(session_id, target, header.session_id, "read")
        info = summarize(session_id, target, index, updated_at)
    except FileNotFoundError:
        where = os.readlink(path) if os.path.islink(path) else path
        error = f"the session file {where} is missing"
        return _broken(session_id, path, error, updated_at), True
    except (OSError, SessionError) as exc:
        error = str(exc) if isinstance(exc, SessionError) else f"{path}: {exc.strerror or exc}"
        return _broken(session_id, path, error, updated_at), False
    return info, False


def _broken(session_id: str, path: Path, error: str, updated_at: float | None) -> SessionInfo:
    """The listing of a session that cannot be read: dated by its file's modification
    time if known, else its link's (never followed: it may lead out of the store)."""
    if updated_at is None:
        try:
            updated_at = os.lstat(path).st_mtime
        except OSError:
            updated_at = 0.0
    return SessionInfo(session_id=session_id, path=path, error=error, updated_at=updated_at)


def _scan_local_sync(sessions_dir: Path) -> list[tuple[str, Path]]:
    try:
        names = os.listdir(sessions_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return _session_files(sessions_dir, names)


def _scan_global_sync(root: Path) -> list[tuple[str, Path]]:
    try:
        dates = sorted((d for d in os.listdir(root) if _DATE_DIR.match(d)), reverse=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found: list[tuple[str, Path]] = []
    for date in dates:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            found.extend(_session_files(root / date, os.listdir(root / date)))
    return found


def _session_files(directory: Path, names: Iterable[str]) -> list[tuple[str, Path]]:
    # Temporary files end in ".tmp"; anything else that is not a session fails the id check.
    found = []
    for name in sorted(names):
        stem = name[: -len(SUFFIX)]
        if name.endswith(SUFFIX) and _journal_id_ok(stem):
            found.append((stem, directory / name))
    return found


def _journal_id_ok(stem: str) -> bool:
    try:
        validate_session_id(stem)
    except SessionError:
        return False
    return True


def _resolve(path: Path) -> Path:
    """The file a work dir's link points to; any other path as it is."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def is_session_file(real: Path, real_root: Path, session_id: str) -> bool:
    """Whether ``real`` (a resolved path) is ``<real_root>/<YYYYMMDD>/<session_id>.jsonl``
    (pure): the only files the store writes to or removes."""
    return (
        real.name == session_id + SUFFIX
        and _DATE_DIR.match(real.parent.name) is not None
        and real.parent.parent == real_root
    )


def _session_target_sync(root: Path, path: Path, session_id: str, doing: str) -> Path:
    """The session file ``path`` stands for, checked to lie in the store (worker thread).

    ``path`` is a work dir's link or a date dir's entry. Whatever it resolves to (through
    any number of links) must be ``<root>/<YYYYMMDD>/<session_id>.jsonl``, so a link
    planted in a work dir can never make the store write to, or remove, another file.
    Raises :class:`SessionError` naming ``path`` and where it leads, before anything is
    touched (``doing`` says what was refused). The file itself need not exist.
    """
    real = Path(os.path.realpath(path))
    if not is_session_file(real, Path(os.path.realpath(root)), session_id):
        leads = f"is a link to {os.readlink(path)}" if os.path.islink(path) else "is not a link"
        raise SessionError(
            f"refusing to {doing} session {session_id!r}: {path} {leads} (resolved: {real}),"
            f" not the session file {root}/<YYYYMMDD>/{session_id}{SUFFIX};"
            " nothing was changed (remove the link if it is stale)",
            path=path,
        )
    return _resolve(path)


def _open_session_sync(path: Path, session_id: str, doing: str) -> int:
    """Open a session file to read it (worker thread): a descriptor on a regular file.

    ``O_NONBLOCK``: a FIFO in the file's place must not hang the thread (a regular file
    ignores the flag). A directory or device there raises :class:`SessionError`;
    ``FileNotFoundError`` and other ``OSError`` come out as they are.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise SessionError(
                f"refusing to {doing} session {session_id!r}: {path} is {what},"
                " not a session file; nothing was changed",
                path=path,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_session_sync(path: Path, session_id: str, doing: str) -> bytes:
    """The bytes of a session file, read without taking its lock (worker thread)."""
    fd = _open_session_sync(path, session_id, doing)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _parse_session_sync(path: Path, session_id: str) -> _journal.JournalContents:
    """Read and parse a session file (worker thread: a long one takes a while)."""
    return parse_journal(_read_session_sync(path, session_id, "read"), path)


def _check_header_sync(path: Path, session_id: str, doing: str) -> None:
    """Refuse a file whose header names another session (worker thread).

    A missing file, an empty one or one whose first line is not a header at all passes:
    restoring or deleting reports those in its own terms.
    """
    try:
        fd = _open_session_sync(path, session_id, doing)
    except FileNotFoundError:
        return
    try:
        first = _read_first_line_sync(fd)
    finally:
        os.close(fd)
    probe = header_probe(first)
    if probe is not None and probe.session_id is not None and probe.session_id != session_id:
        raise _header_mismatch(session_id, path, probe.session_id, doing)


def _header_mismatch(session_id: str, path: Path, found: str, doing: str) -> SessionError:
    return SessionError(
        f"refusing to {doing} session {session_id!r}: line 1 of {path} is the header of"
        f" session {found!r}, not the header of session {session_id!r} (was the file copied"
        " or renamed? fork copies a session under a new id); nothing was changed",
        path=path,
    )


# -- writing whole files -----------------------------------------------------------------


def _write_new_file(path: Path, data: bytes, *, fsync: bool) -> None:
    """Put ``data`` at ``path`` whole (mode 0600), never over an existing file (worker thread).

    The data goes to a temporary file in the same directory, which is then hard-linked
    to ``path``: ``link`` fails with ``FileExistsError`` when the name is taken, so of
    two writers one loses, and a reader finds no file or the whole one. (Reserving the
    name first with an empty file would let a concurrent :meth:`SessionStore.open` take
    the empty file for a new session and write to it, only to lose it when the data is
    moved over it.) Where the file system has no hard links, the name is reserved with
    ``O_EXCL`` and the data moved over the reservation.
    """
    temporary = _write_temporary(path, data, fsync=fsync)
    try:
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            reserved = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(reserved)
            try:
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    if fsync:
        _fsync_directory(path.parent)


# What link() fails with where a file system has no hard links (FAT, some network and
# FUSE file systems).
_NO_HARD_LINKS = frozenset(
    getattr(errno, name)
    for name in ("EPERM", "EOPNOTSUPP", "ENOTSUP", "ENOSYS")
    if hasattr(errno, name)
)


def _replace_file(path: Path, data: bytes, *, fsync: bool) -> None:
    """Write ``data`` to a temporary file next to ``path`` and move it over ``path``."""
    temporary = _write_temporary(path, data, fsync=fsync)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if fsync:
        _fsync_directory(path.parent)


def _write_temporary(path: Path, data: bytes, *, fsync: bool) -> str:
    """A new temporary file (mode 0600) next to ``path`` holding ``data``; its name."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return temporary


def _fsync_directory(directory: Path) -> None:
    # Makes the new name durable on POSIX; Windows cannot open a directory this way.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and each missing parent with mode 0700 (worker thread).

    ``os.makedirs(mode=...)`` gives the mode to the last level only; the others would
    get the umask's default, readable by everyone. Directories that exist already are
    left as they are (they may be the user's, like a work dir).
    """
    missing: list[Path] = []
    current = directory
    while not os.path.exists(current) and current.parent != current:
        missing.append(current)
        current = current.parent
    for level in reversed(missing):
        try:
            os.mkdir(level, 0o700)
        except FileExistsError:
            if not os.path.isdir(level):  # made by someone else meanwhile: fine if a dir
                raise


def _make_dir(directory: Path, what: str) -> None:
    try:
        _make_private_dirs(directory)
    except OSError as exc:
        raise SessionWriteError(
            f"cannot create the {what} {directory}: {exc.strerror or exc}", path=directory
        ) from exc


def _existing_link_target(link: Path) -> Path | None:
    """What already sits at ``link`` and still counts as a session, or ``None``.

    A dangling symlink (its session was deleted) does not count: it is replaced.
    """
    if not os.path.lexists(link):
        return None
    if os.path.islink(link) and not os.path.exists(link):
        return None
    return Path(os.path.realpath(link))


def _check_within_sync(work_dir: Path, links_dir: Path, session_id: str) -> None:
    """Refuse a work dir's sessions dir that leads out of the work dir (worker thread).

    In a cloned repository, ``.trurn`` or ``.trurn/sessions`` may be a symlink to
    anywhere; the store must not make directories or links there. A link that resolves
    to a place inside the work dir is fine; levels not made yet resolve as they would.
    Raises :class:`SessionError` naming the directory.
    """
    real_work = os.path.realpath(work_dir)
    real = os.path.realpath(links_dir)
    try:
        inside = os.path.commonpath([real_work, real]) == real_work
    except ValueError:  # on another drive (Windows)
        inside = False
    if not inside:
        raise SessionError(
            f"refusing to create session {session_id!r}: the work dir's sessions dir"
            f" {links_dir} leads out of the work dir {work_dir} (resolved: {real});"
            " nothing was written (make it an ordinary directory)",
            path=links_dir,
        )


def _publish_sync(
    file: Path, link: Path | None, work_dir: Path | None, data: bytes, *, fsync: bool
) -> None:
    """Create a session: its file in the date dir and its link in the work dir (worker thread).

    Checks every directory first, so a bad work dir fails before any file exists. If
    the link cannot be made, the new file is removed again.
    """
    if work_dir is not None and not os.path.isdir(work_dir):
        raise SessionWriteError(f"the work dir {work_dir} is not a directory", path=work_dir)
    if work_dir is not None and link is not None:
        _check_within_sync(work_dir, link.parent, file.stem)
    _make_dir(file.parent, "session date dir")
    if link is not None:
        _make_dir(link.parent, "work dir's sessions dir")
        existing = _existing_link_target(link)
        if existing is not None:
            raise SessionExistsError(
                f"a session {file.stem!r} already exists in {work_dir}: {link} -> {existing}",
                path=link,
            )
    try:
        _write_new_file(file, data, fsync=fsync)
    except FileExistsError as exc:
        raise SessionExistsError(
            f"a session {file.stem!r} already exists today: {file}"
            " (two sessions never share a file; choose another id or open that one)",
            path=file,
        ) from exc
    except OSError as exc:
        raise SessionWriteError(
            f"cannot write the session file {file}: {exc.strerror or exc}", path=file
        ) from exc
    if link is None:
        return
    try:
        if os.path.lexists(link):  # a dangling link, checked above
            os.unlink(link)
        os.symlink(file, link)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(file)
        raise SessionWriteError(
            f"cannot link {link} to the session file {file}: {exc.strerror or exc}"
            " (the session was not created)",
            path=link,
        ) from exc


# -- Markdown ----------------------------------------------------------------------------
#
# The export is for people, and it reads back exactly: next to each rendered message is
# a marker line, ``<!-- trurn:message {...} -->``, holding the message as JSON. The
# parser reads only marker lines (at the start of a line), so the rendering may change
# freely. Rendered text never starts a line with "<!-- trurn:" (see _guard), and the
# JSON never contains "<", ">" or "--", so a marker is one HTML comment a Markdown viewer
# hides.

_MARKER_PREFIX = "<!-- trurn:"
_MARKER = re.compile(r"\A<!-- trurn:([a-z_]+) (.*) -->\Z")


class _SessionMarker(msgspec.Struct, frozen=True, kw_only=True):
    format: int
    session_id: str | None = None
    created_at: float | None = None
    model: str | None = None
    work_dir: str | None = None


class _CompactionMarker(msgspec.Struct, frozen=True, kw_only=True):
    summary: str
    user_intent: str | None = None
    first_kept: int


class ParsedExport(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`parse_markdown` found: the session marker and the records, in order."""

    session: _SessionMarker
    records: list[MessageRecord | Compaction]


_marker_encoder = msgspec.json.Encoder()
_session_marker_decoder = msgspec.json.Decoder(_SessionMarker)
_message_decoder: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)
_compaction_decoder = msgspec.json.Decoder(_CompactionMarker)


def _marker(kind: str, value: object) -> str:
    text = _marker_encoder.encode(value).decode()
    # "<", ">" and "-" only occur inside JSON strings ("-" also in numbers, but never
    # twice in a row), where their \u escapes mean the same.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("--", "-\\u002d")
    return f"{_MARKER_PREFIX}{kind} {text} -->"


def _guard(text: str) -> str:
    """Text for the Markdown body: no HTML comment opens, so no line looks like a marker."""
    return text.replace("<!--", "&lt;!--")


def _inline(text: str) -> str:
    """A name or id from the model or provider for a heading: guarded, on one line (the
    marker holds it as it is)."""
    return _guard(" ".join(text.splitlines()))


def _fenced(text: str, lang: str = "") -> str:
    """``text`` in a fenced block whose fence is longer than any backtick run inside."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    # Inside a fence HTML is shown as typed, so only lines that would read as markers
    # need changing (a leading space).
    body = "\n".join(
        " " + line if line.startswith(_MARKER_PREFIX) else line for line in text.split("\n")
    )
    return f"{fence}{lang}\n{body}\n{fence}"


def _quoted(text: str) -> str:
    return "\n".join("> " + line if line else ">" for line in _guard(text).split("\n"))


def _render_tool_call(call: ToolCall) -> str:
    title = f"**Tool call** `{_inline(call.name)}` (`{_inline(call.id)}`)"
    if call.arguments_error is not None:
        note = f"_The arguments are not valid JSON: {_guard(call.arguments_error)}_"
        return f"{title}\n\n{note}\n\n{_fenced(call.arguments_raw, 'text')}"
    arguments = json.dumps(call.arguments, indent=2, ensure_ascii=False, default=str)
    return f"{title}\n\n{_fenced(arguments, 'json')}"


def _render_message(message: Message) -> str:
    parts: list[str]
    if isinstance(message, SystemMessage):
        parts = ["## System", _guard(message.content)]
    elif isinstance(message, UserMessage):
        parts = ["## User", _guard(message.content)]
    elif isinstance(message, ToolMessage):
        heading = (
            f"## Tool result: `{_inline(message.name)}` (`{_inline(message.tool_call_id)}`),"
            f" {message.status}"
        )
        parts = [heading]
        if message.arguments is not None:  # a before_tool hook changed the call
            ran = json.dumps(message.arguments, indent=2, ensure_ascii=False, default=str)
            parts += ["_Ran with arguments changed by a hook:_", _fenced(ran, "json")]
        parts.append(_fenced(message.content, "text"))
    else:
        heading = "## Assistant" + (f" ({_inline(message.model)})" if message.model else "")
        if message.aborted:
            heading += ", cut short"
        parts = [heading]
        thoughts = [message.reasoning or ""] + [
            block.text or ("(redacted thinking)" if block.redacted else "")
            for block in message.thinking
        ]
        thinking = "\n\n".join(t for t in thoughts if t)
        if thinking:
            parts.append(
                f"<details>\n<summary>Reasoning</summary>\n\n{_quoted(thinking)}\n\n</details>"
            )
        if message.content:
            parts.append(_guard(message.content))
        parts.extend(_render_tool_call(call) for call in message.tool_calls)
        if message.usage is not None:
            usage = message.usage
            parts.append(
                f"_Tokens: {usage.input_tokens} in, {usage.output_tokens} out,"
                f" {usage.total_tokens} total_"
            )
    return "\n\n".join([*parts[:1], _marker("message", message), *parts[1:]])


def _local_time(unix: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(unix).astimezone().isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):  # outside what the platform's time handles
        return f"{unix!r} (unix time)"


def render_markdown(header: Header | None, records: Iterable[Record], *, session_id: str) -> str:
    """A session as a Markdown transcript that :func:`parse_markdown` reads back (pure).

    Messages and compaction markers are kept; turn markers and events are not.
    """
    session = _SessionMarker(
        format=MARKDOWN_FORMAT,
        session_id=session_id,
        created_at=None if header is None else header.created_at,
        model=None if header is None else header.model,
        work_dir=None if header is None else header.work_dir,
    )
    facts = []
    if session.created_at is not None:
        facts.append(f"- Created: {_local_time(session.created_at)}")
    if session.work_dir is not None:
        facts.append(f"- Work dir: `{_inline(session.work_dir)}`")
    if session.model is not None:
        facts.append(f"- Model: `{_inline(session.model)}`")
    blocks = [f"# Session {session_id}", _marker("session", session)]
    if facts:
        blocks.append("\n".join(facts))
    for record in records:
        if isinstance(record, MessageRecord):
            blocks.append(_render_message(record.message))
        elif isinstance(record, Compaction):
            marker = _CompactionMarker(
                summary=record.summary, user_intent=record.user_intent, first_kept=record.first_kept
            )
            text = [f"## Compaction (keeps messages from #{record.first_kept} on)"]
            text.append(_marker("compaction", marker))
            text.append(_quoted(record.summary))
            if record.user_intent:
                text.append(f"**User intent:** {_guard(record.user_intent)}")
            blocks.append("\n\n".join(text))
    return "\n\n".join(blocks) + "\n"


def parse_markdown(text: str, source: str | os.PathLike[str]) -> ParsedExport:
    """Read back what :func:`render_markdown` wrote (pure; ``source`` only names errors).

    Only marker lines count; the rendering between them is ignored. Raises
    :class:`~trurn.SessionCorruptError` naming the source and line for a file that does
    not start with a session marker, a marker that is not well formed, or a marker whose
    JSON is not what it should be.
    """
    source = os.fspath(source)

    def error(number: int, reason: str) -> SessionCorruptError:
        return SessionCorruptError(f"{source}: line {number}: {reason}", path=source, line=number)

    session: _SessionMarker | None = None
    records: list[MessageRecord | Compaction] = []
    messages = 0  # in records so far
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.startswith(_MARKER_PREFIX):
            continue
        match = _MARKER.match(line)
        if match is None:
            raise error(number, "a trurn marker that is not '<!-- trurn:<kind> <json> -->'")
        kind, payload = match.groups()
        if session is None and kind != "session":
            raise error(number, f"a {kind!r} marker before the session marker")
        try:
            if kind == "session":
                if session is not None:
                    raise error(number, "a second session marker")
                session = _session_marker_decoder.decode(payload)
                if session.format > MARKDOWN_FORMAT:
                    raise error(
                        number,
                        f"written in export format {session.format}; this trurn reads up to"
                        f" {MARKDOWN_FORMAT}",
                    )
            elif kind == "message":
                records.append(MessageRecord(message=_message_decoder.decode(payload)))
                messages += 1
            elif kind == "compaction":
                found = _compaction_decoder.decode(payload)
                problem = compaction_error(found.first_kept, messages)
                if problem is not None:
                    raise error(number, problem)
                records.append(
                    Compaction(
                        summary=found.summary,
                        user_intent=found.user_intent,
                        first_kept=found.first_kept,
                    )
                )
            else:
                raise error(number, f"unknown trurn marker kind {kind!r}")
        except msgspec.ValidationError as exc:
            raise error(number, f"the {kind} marker does not hold a {kind}: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise error(number, f"the {kind} marker does not hold JSON: {exc}") from exc
    if session is None:
        raise error(
            1, "not a trurn Markdown export: no '<!-- trurn:session {...} -->' line was found"
        )
    return ParsedExport(session=session, records=records)


def _read_text_sync(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SessionCorruptError(
            f"{path}: line {line}: not UTF-8 text (a trurn Markdown export is UTF-8)",
            path=path,
            line=line,
        ) from exc


# -- deleting ----------------------------------------------------------------------------


def _open_key_sync(path: Path, session_id: str) -> tuple[int, _journal.FileKey]:
    """A descriptor on the session file to delete, and its (device, inode) key."""
    fd = _open_session_sync(path, session_id, "delete")
    info = os.fstat(fd)
    return fd, (info.st_dev, info.st_ino)


class _HeaderProbe(msgspec.Struct):
    """What the store needs of a header; other fields (even a newer format's) are ignored."""

    kind: str = ""
    session_id: str | None = None
    work_dir: str | None = None


_header_probe_decoder = msgspec.json.Decoder(_HeaderProbe)
_FIRST_LINE_LIMIT = 1 << 20


def _read_first_line_sync(fd: int) -> bytes:
    """The file's bytes up to and including its first newline (worker thread).

    At most about 1 MiB; all of the file when it has no newline and is shorter.
    """
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while b"\n" not in data and len(data) < _FIRST_LINE_LIMIT:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\n")[0] + (b"\n" if b"\n" in data else b"")


def header_probe(start: bytes) -> _HeaderProbe | None:
    """The header on the first line of ``start``, or ``None`` if it is no header (pure)."""
    try:
        probe = _header_probe_decoder.decode(start.partition(b"\n")[0])
    except msgspec.MsgspecError:
        return None
    return probe if probe.kind == "header" else None


def header_of(start: bytes, session_id: str) -> _HeaderProbe | None:
    """The header on the first line of ``start`` if it is the header of ``session_id``,
    else ``None`` (pure)."""
    probe = header_probe(start)
    return probe if probe is not None and probe.session_id == session_id else None


def holds_no_record(start: bytes) -> bool:
    """Whether ``start``, a file's first line as :func:`_read_first_line_sync` read it, is
    a whole file that holds no record yet: empty, or a header cut short by a crash before
    its newline (pure). Such a file is a session that never got going."""
    if b"\n" in start or len(start) >= _FIRST_LINE_LIMIT:
        return False
    try:
        parse_journal(start, "")
    except SessionError:
        return False
    return True


def _delete_locked_sync(fd: int, file: Path, links: Sequence[Path]) -> None:
    """Remove the links, then the file, holding its OS lock (worker thread).

    The file is removed only if ``file`` still names the file open as ``fd`` (the one
    whose header was checked); otherwise nothing is.
    """
    _journal.lock_exclusive(fd, str(file))  # another process writing: SessionLockedError
    opened = os.fstat(fd)
    try:
        now = os.lstat(file)
    except FileNotFoundError:
        now = None
    if now is None or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
        raise SessionError(
            f"refusing to delete {file}: it was replaced while being deleted", path=file
        )
    for link in links:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
    os.unlink(file)


def _links_to_sync(file: Path, candidates: Iterable[Path]) -> list[Path]:
    found = []
    for link in candidates:
        if os.path.islink(link) and os.path.realpath(link) == os.path.realpath(file):
            found.append(link)
    return found


# -- the store ---------------------------------------------------------------------------


def new_session_id(now: float, token: str) -> str:
    """``YYYYMMDD-HHMMSS-<token>`` in local time: ids sort by creation, to the second."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + token


def date_dirname(now: float) -> str:
    """The date dir of a session created at unix time ``now``: ``YYYYMMDD``, local time."""
    return time.strftime("%Y%m%d", time.localtime(now))


def _check_meta_dirname(name: str) -> str:
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
    ):
        raise ValueError(f"meta_dirname must be a single directory name, got {name!r}")
    return name


class SessionStore:
    """Creates and finds session files in the global date dirs and work dirs' links.

    ``global_sessions_root`` is where the date dirs go; without it, ``TRURN_HOME``
    (from ``env``, which defaults to ``os.environ``) gives ``$TRURN_HOME/global_sessions``,
    and otherwise ``~/<meta_dirname>/global_sessions`` (``HOME`` from ``env`` when set).
    ``meta_dirname`` is the name of the per-work-dir directory (``.trurn``). ``clock``
    gives the time for new ids, date dirs and headers (tests pass a fixed one).

    Operations that return a :class:`~trurn.Context` return it restored: open for
    writing and holding the session's writer lock until ``await ctx.aclose()`` (or use
    it as ``async with await store.create(...) as ctx``).

    Ids are unique per day and per work dir: :meth:`create` refuses an id whose file
    exists in today's date dir or whose link exists in the work dir. The same id on
    another day from another work dir is allowed; :meth:`open` without a work dir then
    finds the newest.
    """

    def __init__(
        self,
        *,
        meta_dirname: str = DEFAULT_META_DIRNAME,
        global_sessions_root: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta_dirname = _check_meta_dirname(meta_dirname)
        env = os.environ if env is None else env
        if global_sessions_root is not None:
            root = Path(global_sessions_root)
        elif env.get("TRURN_HOME"):
            root = Path(env["TRURN_HOME"]) / GLOBAL_DIRNAME
        else:
            home = Path(env["HOME"]) if env.get("HOME") else Path.home()
            root = home / self.meta_dirname / GLOBAL_DIRNAME
        # os.path.abspath reads the current directory once; no file is touched.
        self.root = Path(os.path.abspath(root))
        self._clock = clock

    def __repr__(self) -> str:
        return f"<trurn.SessionStore {str(self.root)!r} meta_dirname={self.meta_dirname!r}>"

    # -- paths (pure) --------------------------------------------------------------------

    def sessions_dir(self, work_dir: str | os.PathLike[str]) -> Path:
        """``<work_dir>/<meta_dirname>/sessions``: where a work dir's links are."""
        return Path(os.path.abspath(work_dir)) / self.meta_dirname / SESSIONS_DIRNAME

    def link_path(self, work_dir: str | os.PathLike[str], session_id: str) -> Path:
        """The work dir's link for ``session_id`` (the id is validated)."""
        return self.sessions_dir(work_dir) / (validate_session_id(session_id) + SUFFIX)

    def global_path(self, session_id: str, created_at: float) -> Path:
        """The session file of ``session_id`` created at unix time ``created_at``."""
        filename = validate_session_id(session_id) + SUFFIX
        return self.root / date_dirname(created_at) / filename

    # -- creating ------------------------------------------------------------------------

    async def create(
        self,
        work_dir: str | os.PathLike[str] | None = None,
        session_id: str | None = None,
        *,
        fsync: FsyncPolicy = "turn",
    ) -> Context:
        """Create a session and return its restored :class:`~trurn.Context`.

        Without ``session_id`` a fresh one is made (``YYYYMMDD-HHMMSS-<8 hex>``). A given
        id is validated first (:class:`~trurn.SessionIdError`, before any file is
        touched). The file starts with a header (the id, the work dir, no model yet).
        Raises :class:`SessionExistsError` naming the existing file when the id is
        taken today or in the work dir, :class:`~trurn.SessionWriteError` when a
        directory cannot be made or written (no session file or link is left behind),
        and :class:`~trurn.SessionError` naming the work dir's sessions dir when it is a
        symlink leading out of the work dir (before anything is written).
        """
        return await self._create_with(work_dir, session_id, None, (), fsync=fsync)

    async def _create_with(
        self,
        work_dir: str | os.PathLike[str] | None,
        session_id: str | None,
        model: str | None,
        records: Sequence[MessageRecord | Compaction],
        *,
        fsync: FsyncPolicy,
    ) -> Context:
        if session_id is not None:
            validate_session_id(session_id)
        work = await _absolute(work_dir)
        attempts = 1 if session_id is not None else 5
        for attempt in range(attempts):
            now = self._clock()
            sid = session_id or new_session_id(now, secrets.token_hex(4))
            file = self.global_path(sid, now)
            link = None if work is None else self.link_path(work, sid)
            header = Header(
                session_id=sid,
                ts=now,
                created_at=now,
                model=model,
                work_dir=None if work is None else str(work),
            )
            data = encode_lines([header, *records])
            try:
                await trio.to_thread.run_sync(
                    functools.partial(_publish_sync, file, link, work, data, fsync=fsync != "never")
                )
            except SessionExistsError:
                if attempt + 1 == attempts:
                    raise
                continue
            break
        return await Context(file, work_dir=work, session_id=sid, fsync=fsync).restore()

    # -- finding -------------------------------------------------------------------------

    async def find(
        self, session_id: str, *, work_dir: str | os.PathLike[str] | None = None
    ) -> Path:
        """The file of ``session_id``: the work dir's link when it has one, else the
        newest date dir's file. Raises :class:`SessionNotFoundError`, and
        :class:`~trurn.SessionError` naming the link when it leads anywhere but to
        ``<root>/<YYYYMMDD>/<session_id>.jsonl``, naming the file when it is not a
        regular file or its header names another session."""
        path, _ = await self._locate(session_id, work_dir, "use")
        return path

    async def _locate(
        self, session_id: str, work_dir: str | os.PathLike[str] | None, doing: str
    ) -> tuple[Path, Path]:
        """``find``'s path and the checked session file it stands for: in the store, not
        a directory or a device, and not headed by another session's header."""
        validate_session_id(session_id)
        link = None if work_dir is None else self.link_path(work_dir, session_id)
        filename = session_id + SUFFIX

        def search() -> Path | None:
            if link is not None and os.path.lexists(link):
                return link
            try:
                dates = sorted(d for d in os.listdir(self.root) if _DATE_DIR.match(d))
            except (FileNotFoundError, NotADirectoryError):
                return None
            for date in reversed(dates):
                if os.path.lexists(self.root / date / filename):
                    return self.root / date / filename
            return None

        def search_and_check() -> tuple[Path, Path] | None:
            # One thread call: the checks see what the search found.
            found = search()
            if found is None:
                return None
            target = _session_target_sync(self.root, found, session_id, doing)
            _check_header_sync(target, session_id, doing)
            return found, target

        located = await trio.to_thread.run_sync(search_and_check)
        if located is None:
            where = f"in {link.parent} or " if link is not None else ""
            raise SessionNotFoundError(
                f"no session {session_id!r} {where}under {self.root}", path=link
            )
        return located

    async def open(
        self,
        session_id: str,
        *,
        work_dir: str | os.PathLike[str] | None = None,
        fsync: FsyncPolicy = "turn",
    ) -> Context:
        """Continue the session ``session_id``: its restored :class:`~trurn.Context`.

        Looks in the work dir's links first, then in the global date dirs, newest date
        first. Raises :class:`SessionNotFoundError` (also when a link's file is gone;
        a missing file is never made anew), :class:`~trurn.SessionError` naming the link
        when it leads anywhere but ``<root>/<YYYYMMDD>/<session_id>.jsonl``, and naming
        the file when it is a directory or its header names another session (nothing is
        written), :class:`~trurn.SessionLockedError` when it is open for writing
        already, :class:`~trurn.SessionWriteError` when it cannot be opened for writing
        (a read-only file or file system), and what restoring raises for a corrupt
        file.
        """
        path, target = await self._locate(session_id, work_dir, "open")
        work = await _absolute(work_dir)
        # create=False: a file deleted since it was found is reported, not made anew.
        context = Context(target, work_dir=work, session_id=session_id, fsync=fsync, create=False)
        try:
            return await context.restore()
        except FileNotFoundError as exc:
            raise _deleted(session_id, path, target) from exc
        except OSError as exc:
            raise SessionWriteError(
                f"cannot open {target} for writing: {exc.strerror or exc}; nothing was"
                " changed (it can still be read: fork or export_markdown)",
                path=target,
            ) from exc

    async def _read(self, session_id: str, path: Path, target: Path) -> _journal.JournalContents:
        """The records of a session file that :meth:`_locate` found, read without its lock."""
        try:
            return await trio.to_thread.run_sync(_parse_session_sync, target, session_id)
        except FileNotFoundError as exc:
            raise _deleted(session_id, path, target) from exc
        except OSError as exc:
            raise SessionError(f"cannot read {target}: {exc.strerror or exc}", path=target) from exc

    async def continue_latest(
        self, work_dir: str | os.PathLike[str], *, fsync: FsyncPolicy = "turn"
    ) -> Context | None:
        """Open the work dir's newest session (see :meth:`list`), or return ``None``
        when it has none. Links whose file is gone are skipped; a corrupt newest session
        raises rather than silently falling back to an older one."""
        for info, missing in await self._list_local(work_dir):
            if not missing:
                return await self.open(info.session_id, work_dir=work_dir, fsync=fsync)
        return None

    # -- listing -------------------------------------------------------------------------

    async def list(
        self, work_dir: str | os.PathLike[str] | None = None
    ) -> builtins.list[SessionInfo]:
        """The sessions of ``work_dir`` (its links), or all of them (the date dirs)
        without one; most recently written first.

        Read-only. A file that cannot be read is listed with ``error`` set rather than
        breaking the listing. Each file is read in its own worker thread call, and only
        the lines :class:`SessionInfo` comes from are decoded.
        """
        if work_dir is not None:
            return [info for info, _ in await self._list_local(work_dir)]
        found = await trio.to_thread.run_sync(_scan_global_sync, self.root)
        return await _read_infos(self.root, found)

    async def _list_local(
        self, work_dir: str | os.PathLike[str]
    ) -> builtins.list[tuple[SessionInfo, bool]]:
        found = await trio.to_thread.run_sync(_scan_local_sync, self.sessions_dir(work_dir))
        infos = [
            await trio.to_thread.run_sync(_read_info_sync, self.root, sid, p) for sid, p in found
        ]
        infos.sort(key=lambda pair: _newest_first(pair[0]), reverse=True)
        return infos

    # -- forking, deleting ---------------------------------------------------------------

    async def fork(
        self,
        session_id: str,
        *,
        upto: int | None = None,
        new_session_id: str | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        fsync: FsyncPolicy = "turn",
    ) -> Context:
        """Copy the first ``upto`` messages (all when ``None``) of a session into a new
        one and return the new one's restored :class:`~trurn.Context`.

        The source is found as :meth:`open` finds it (``work_dir``'s links first) and
        only read, so it may be open for writing meanwhile. The new session gets a fresh
        id (or ``new_session_id``), a new header (the source's model, ``work_dir``) and
        a link in ``work_dir``. Compaction markers made within the copied part are kept;
        turn markers and events are not. A tool call whose result lies past ``upto``
        gets an ``"interrupted"`` result when the copy is restored. The new file appears
        whole (temporary file, then ``os.replace``). Raises ``ValueError`` for an
        ``upto`` outside ``0..message count``.
        """
        if new_session_id is not None:
            validate_session_id(new_session_id)
        if upto is not None and (isinstance(upto, bool) or not isinstance(upto, int)):
            raise TypeError(f"upto must be an int or None, got {type(upto).__name__}")
        path, target = await self._locate(session_id, work_dir, "fork")
        contents = await self._read(session_id, path, target)
        count = sum(isinstance(r, MessageRecord) for r in contents.records)
        if upto is not None and not 0 <= upto <= count:
            raise ValueError(
                f"upto must be between 0 and {count} (the messages of {target}), got {upto}"
            )
        records = _prefix(contents.records, count if upto is None else upto)
        header = contents.header
        model = None if header is None else header.model
        return await self._create_with(work_dir, new_session_id, model, records, fsync=fsync)

    async def delete(
        self, session_id: str, *, work_dir: str | os.PathLike[str] | None = None
    ) -> None:
        """Remove a session: the work dir's link, the link in the work dir its header
        names, and the file.

        Found as :meth:`open` finds it. Refuses with :class:`~trurn.SessionLockedError`
        while the session is open for writing, in this process or (through its OS lock)
        another; while it deletes, nobody can open it. A link whose file is already gone
        is just removed. Only ever removes ``<root>/<YYYYMMDD>/<session_id>.jsonl`` whose
        header names ``session_id`` (or that holds no record yet: empty, or its header cut
        short by a crash), and links to it: a link leading anywhere else, or a file
        without that header, raises :class:`~trurn.SessionError` and nothing is removed.
        """
        path, target = await self._locate(session_id, work_dir, "delete")
        candidates = [path] if path != target else []
        try:
            fd, key = await trio.to_thread.run_sync(_open_key_sync, target, session_id)
        except FileNotFoundError:
            # A dangling link, or a file deleted meanwhile: nothing left to remove.
            with contextlib.suppress(FileNotFoundError):
                await trio.to_thread.run_sync(os.unlink, path)
            return
        try:
            # Claimed, so a Context in this process cannot open it meanwhile.
            _journal.claim(key, target, f"{target} (being deleted)", doing="delete")
            try:
                start = await trio.to_thread.run_sync(_read_first_line_sync, fd)
                header = header_of(start, session_id)
                if header is None and not holds_no_record(start):
                    raise SessionError(
                        f"refusing to delete {target}: its first line is not the header of"
                        f" session {session_id!r}; nothing was removed",
                        path=target,
                    )
                if header is not None and header.work_dir is not None:
                    candidates.append(self.link_path(header.work_dir, session_id))
                if work_dir is not None:
                    candidates.append(self.link_path(work_dir, session_id))
                links = await trio.to_thread.run_sync(_links_to_sync, target, candidates)
                await trio.to_thread.run_sync(_delete_locked_sync, fd, target, links)
            finally:
                _journal.release(key)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(os.close, fd)

    # -- Markdown ------------------------------------------------------------------------

    async def export_markdown(
        self,
        session_id: str,
        dest: str | os.PathLike[str],
        *,
        work_dir: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Write a session as a Markdown transcript to ``dest`` and return its path.

        Headings per message, tool calls with their JSON arguments and tool results in
        fenced blocks, reasoning in a collapsed section; next to each message its exact
        JSON in a ``<!-- trurn:message ... -->`` comment, which :meth:`import_markdown`
        reads back. Read-only on the session; ``dest`` is replaced whole (temporary file,
        then ``os.replace``), mode 0600 like the session.
        """
        path, target = await self._locate(session_id, work_dir, "export")
        contents = await self._read(session_id, path, target)
        text = render_markdown(contents.header, contents.records, session_id=session_id)
        destination = Path(await trio.Path(dest).absolute())
        try:
            await trio.to_thread.run_sync(
                lambda: _replace_file(destination, text.encode("utf-8"), fsync=False)
            )
        except OSError as exc:
            raise SessionWriteError(
                f"cannot write {destination}: {exc.strerror or exc}", path=destination
            ) from exc
        return destination

    async def import_markdown(
        self,
        source: str | os.PathLike[str],
        *,
        work_dir: str | os.PathLike[str] | None = None,
        session_id: str | None = None,
        fsync: FsyncPolicy = "turn",
    ) -> Context:
        """Make a new session from a Markdown file written by :meth:`export_markdown`.

        The messages (and compaction markers) come back exactly; the new session gets a
        fresh id (or ``session_id``) and the exported model. A file not in that format
        raises :class:`~trurn.SessionCorruptError` naming the line; nothing is created.
        """
        if session_id is not None:
            validate_session_id(session_id)
        path = Path(source)
        text = await trio.to_thread.run_sync(_read_text_sync, path)
        parsed = parse_markdown(text, path)
        return await self._create_with(
            work_dir, session_id, parsed.session.model, parsed.records, fsync=fsync
        )


def _deleted(session_id: str, path: Path, target: Path) -> SessionNotFoundError:
    return SessionNotFoundError(
        f"the session {session_id!r} was deleted: {path} points to {target}, which is missing",
        path=path,
    )


def _prefix(records: Sequence[Record], upto: int) -> list[MessageRecord | Compaction]:
    """The first ``upto`` messages and the compaction markers among them, seq reset."""
    kept: list[MessageRecord | Compaction] = []
    count = 0
    for record in records:
        if isinstance(record, MessageRecord):
            if count == upto:
                break
            kept.append(MessageRecord(message=record.message))
            count += 1
        elif isinstance(record, Compaction):
            kept.append(
                Compaction(
                    summary=record.summary,
                    user_intent=record.user_intent,
                    first_kept=record.first_kept,
                )
            )
    return kept


async def _absolute(path: str | os.PathLike[str] | None) -> Path | None:
    # trio.Path.absolute reads the current directory in a worker thread.
    return None if path is None else Path(await trio.Path(path).absolute())


async def _read_infos(root: Path, found: Sequence[tuple[str, Path]]) -> list[SessionInfo]:
    infos = [(await trio.to_thread.run_sync(_read_info_sync, root, sid, p))[0] for sid, p in found]
    infos.sort(key=_newest_first, reverse=True)
    return infos
