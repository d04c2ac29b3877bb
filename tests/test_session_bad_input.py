"""Bad input to sessions, at the level users meet it: ``trurn.Context(path)`` and
``SessionStore``.

The journal's own tests (test_journal.py) cover the parser line by line; the store's
(test_store.py) cover its layout and links. Here each kind of bad file or bad id is
met through the public calls, and each test checks three things: the error names the
file (and line) and what was wrong, nothing already stored is lost or rewritten, and
the session can be used again once the cause is gone (no lock or file left behind).

The tests run as root on the test machine, where file modes restrict nothing, so a
read-only file or directory is simulated by failing the OS call that would meet it.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import trurn
from trurn._context import SessionRecoveryWarning
from trurn._errors import (
    SessionCorruptError,
    SessionError,
    SessionExistsError,
    SessionIdError,
    SessionNotFoundError,
    SessionVersionError,
    SessionWriteError,
)
from trurn._journal import FileOps, read_journal
from trurn._messages import AssistantMessage, Message, ToolCall, ToolMessage, UserMessage
from trurn._records import Header, MessageRecord, encode_lines
from trurn._store import SessionStore

DAY = time.mktime((2025, 3, 14, 10, 15, 30, 0, 0, -1))  # local time
DATE = "20250314"


def make_store(tmp_path: Path) -> SessionStore:
    return SessionStore(global_sessions_root=tmp_path / "root", env={}, clock=lambda: DAY)


def work(tmp_path: Path, name: str = "project") -> Path:
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path


def day_dir(tmp_path: Path) -> Path:
    return tmp_path / "root" / DATE


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir())


async def write_session(
    store: SessionStore, work_dir: Path | None, session_id: str, messages: list[Message]
) -> Path:
    context = await store.create(work_dir, session_id)
    context.extend(messages)
    await context.aclose()
    assert context.path is not None
    return context.path


def lexists(path: Path) -> bool:
    return os.path.lexists(path)


def place(tmp_path: Path, session_id: str, data: bytes) -> Path:
    """Put ``data`` where the store keeps the session ``session_id``."""
    path = day_dir(tmp_path) / f"{session_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def session_bytes(session_id: str, *texts: str) -> bytes:
    return encode_lines(
        [Header(session_id=session_id), *(MessageRecord(message=UserMessage(t)) for t in texts)]
    )


async def contents_of(path: Path) -> list[str]:
    """The message texts a fresh Context restores from ``path``."""
    async with trurn.Context(path) as context:
        return [m.content or "" for m in context.messages]


async def append_and_flush(context: trurn.Context, message: Message) -> None:
    context.append(message)
    await context.flush()


async def refused_everywhere(
    store: SessionStore, session_id: str, error: type[Exception], pattern: str
) -> None:
    """open, fork and export all refuse the session with ``error`` matching ``pattern``."""
    with pytest.raises(error, match=pattern):
        await store.open(session_id)
    with pytest.raises(error, match=pattern):
        await store.fork(session_id, new_session_id="copy")
    with pytest.raises(error, match=pattern):
        await store.export_markdown(session_id, store.root.parent / "out.md")
    assert not (store.root.parent / "out.md").exists()


async def listed_error(store: SessionStore, session_id: str) -> str:
    [info] = [i for i in await store.list() if i.session_id == session_id]
    assert info.error is not None
    assert info.message_count == 0
    return info.error


# -- missing ---------------------------------------------------------------------------------


async def test_restore_never_creates_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "s.jsonl"
    with pytest.raises(FileNotFoundError) as caught:
        await trurn.Context(path).restore()
    assert str(path) in str(caught.value)
    assert not (tmp_path / "nowhere").exists()


async def test_fork_and_export_of_a_session_deleted_meanwhile(tmp_path: Path) -> None:
    # The work dir's link is left behind: found, but its file is gone.
    store = make_store(tmp_path)
    project = work(tmp_path)
    path = await write_session(store, project, "gone", [UserMessage("hi")])
    path.unlink()
    with pytest.raises(SessionNotFoundError, match=r"'gone' was deleted: .*gone\.jsonl"):
        await store.fork("gone", work_dir=project)
    with pytest.raises(SessionNotFoundError, match="was deleted"):
        await store.export_markdown("gone", tmp_path / "out.md", work_dir=project)
    assert files_under(tmp_path / "root") == []
    assert not (tmp_path / "out.md").exists()


# -- empty, or cut short before the header was whole -------------------------------------------


async def test_an_empty_file_gets_its_header_on_restore(tmp_path: Path) -> None:
    path = tmp_path / "s1.jsonl"
    path.write_bytes(b"")
    async with trurn.Context(path, work_dir=tmp_path) as context:
        assert list(context.messages) == []
    header = (await read_journal(path)).header
    assert header is not None
    assert (header.session_id, header.work_dir) == ("s1", str(tmp_path))
    assert path.read_bytes().count(b"\n") == 1


@pytest.mark.parametrize("data", [b"", session_bytes("s")[:25]], ids=["empty", "header-cut-short"])
async def test_a_session_that_never_got_its_header_can_be_listed_and_deleted(
    tmp_path: Path, data: bytes
) -> None:
    # What a crash while creating or first restoring a session leaves.
    store = make_store(tmp_path)
    project = work(tmp_path)
    path = await write_session(store, project, "s", [])
    path.write_bytes(data)
    [info] = await store.list(project)
    assert (info.error, info.message_count, info.created_at) == (None, 0, None)
    await store.delete("s", work_dir=project)
    assert files_under(tmp_path / "root") == []
    assert not lexists(project / ".trurn" / "sessions" / "s.jsonl")


# -- truncated -------------------------------------------------------------------------------


async def test_a_truncated_session_is_read_without_change_and_cut_only_by_its_writer(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path)
    path = await write_session(store, None, "s", [UserMessage("one"), UserMessage("two")])
    cut = path.read_bytes()[:-10]  # a crash in the middle of the last line
    path.write_bytes(cut)

    [info] = await store.list()
    assert (info.error, info.message_count) == (None, 1)
    async with await store.fork("s", new_session_id="copy") as copy:
        assert [m.content for m in copy.messages] == ["one"]
    await store.export_markdown("s", tmp_path / "out.md")
    assert path.read_bytes() == cut  # reading never cuts

    with pytest.warns(SessionRecoveryWarning, match=r"s\.jsonl: dropped a torn last line"):
        context = await store.open("s")
    async with context:
        context.append(UserMessage("three"))
    assert await contents_of(path) == ["one", "three"]


# -- binary ----------------------------------------------------------------------------------


async def test_a_compressed_session_file_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    original = session_bytes("s", "hello")
    packed = gzip.compress(original, mtime=0)  # someone compressed it to save space
    path = place(tmp_path, "s", packed)

    for _ in range(2):  # a failed restore keeps no lock: the second fails the same way
        with pytest.raises(SessionCorruptError) as caught:
            await trurn.Context(path).restore()
        assert caught.value.line == 1
        assert str(caught.value).startswith(f"{path}: line 1: ")
        assert len(str(caught.value)) < 300  # the binary is not echoed
    await refused_everywhere(store, "s", SessionCorruptError, r"s\.jsonl: line 1: ")
    assert "line 1" in await listed_error(store, "s")
    assert path.read_bytes() == packed

    path.write_bytes(original)  # unpacked again, it is a session again
    assert await contents_of(path) == ["hello"]


# -- a newer format --------------------------------------------------------------------------


NEWER = (
    b'{"kind":"header","session_id":"s","format_version":2,"layout":"v2"}\n'
    b'{"kind":"hologram","seq":1}\n'
)


async def test_a_session_from_a_newer_trurn_is_refused_but_can_be_deleted(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path)
    path = place(tmp_path, "s", NEWER)
    pattern = r"s\.jsonl: written in session format version 2; .*upgrade trurn"
    with pytest.raises(SessionVersionError, match=pattern):
        await trurn.Context(path).restore()
    await refused_everywhere(store, "s", SessionVersionError, pattern)
    assert "upgrade trurn" in await listed_error(store, "s")
    assert path.read_bytes() == NEWER
    # Deleting needs only the header's id, which every version has.
    await store.delete("s")
    assert not path.exists()


# -- valid JSON that is not a record ---------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "line", "reason"),
    [
        (b"{}\n", 1, "missing required field `kind`"),
        (b'"just a string"\n', 1, "Expected `object`, got `str`"),
        (b"null\n", 1, "Expected `object`, got `null`"),
        (
            encode_lines([MessageRecord(message=UserMessage("no header"))]),
            1,
            "the first record must be a header, got 'message'",
        ),
        # A message without its record around it, as someone editing the file might add.
        (session_bytes("s", "a") + b'{"role":"user","content":"b"}\n', 3, "`kind`"),
        (session_bytes("s", "a") + b'{"kind":"message","message":{}}\n', 3, "`$.message`"),
    ],
    ids=["empty-object", "string", "null", "no-header", "bare-message", "empty-message"],
)
async def test_json_that_is_not_a_record_names_the_file_line_and_field(
    tmp_path: Path, data: bytes, line: int, reason: str
) -> None:
    store = make_store(tmp_path)
    path = place(tmp_path, "s", data)
    with pytest.raises(SessionCorruptError) as caught:
        await store.open("s")
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{path}: line {line}: ")
    assert reason in str(caught.value)
    assert f"line {line}" in await listed_error(store, "s")
    assert path.read_bytes() == data


# -- the same id from two work dirs ----------------------------------------------------------


async def test_two_work_dirs_creating_one_id_at_once_never_share_a_file(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    dirs = [work(tmp_path, "one"), work(tmp_path, "two")]
    made: list[trurn.Context] = []
    refused: list[SessionExistsError] = []

    async def create(work_dir: Path) -> None:
        try:
            made.append(await store.create(work_dir, "dup"))
        except SessionExistsError as exc:
            refused.append(exc)

    async with trio.open_nursery() as nursery:
        for work_dir in dirs:
            nursery.start_soon(create, work_dir)
    [context] = made
    [error] = refused
    async with context:
        context.append(UserMessage("mine"))
    assert files_under(tmp_path / "root") == [f"{DATE}/dup.jsonl"]
    assert error.path == str(context.path)
    winner = context.work_dir
    header = (await read_journal(day_dir(tmp_path) / "dup.jsonl")).header
    assert header is not None
    assert header.work_dir == str(winner)
    links = [d / ".trurn" / "sessions" / "dup.jsonl" for d in dirs]
    assert [lexists(link) for link in links] == [d == winner for d in dirs]


async def test_an_open_racing_a_create_never_writes_to_a_file_about_to_be_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another task opens the session at the moment the new file's data is being written.
    store = make_store(tmp_path)
    outcome: list[object] = []
    real_mkstemp = tempfile.mkstemp

    async def open_and_write() -> None:
        try:
            async with await store.open("x") as context:
                context.append(UserMessage("written by the opener"))
        except SessionNotFoundError as exc:
            outcome.append(exc)
        else:
            outcome.append("opened")

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        if not outcome:
            trio.from_thread.run(open_and_write)
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    async with await store.create(None, "x") as context:
        context.append(UserMessage("written by the creator"))
    assert outcome, "the race was not staged"
    texts = await contents_of(day_dir(tmp_path) / "x.jsonl")
    # Either the opener found nothing, or what it wrote is still there.
    assert isinstance(outcome[0], SessionNotFoundError) or "written by the opener" in texts
    assert "written by the creator" in texts


# -- read-only files and directories ---------------------------------------------------------


def fail_os_open(
    monkeypatch: pytest.MonkeyPatch, error: int, when: Callable[[Path, int], bool]
) -> None:
    """Make ``os.open`` fail with ``error`` for the paths and flags ``when`` picks."""
    real_open = os.open

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if when(Path(os.fsdecode(path)), flags):
            raise OSError(error, os.strerror(error), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("error", [errno.EACCES, errno.EROFS])
async def test_creating_a_session_in_a_read_only_date_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    day_dir(tmp_path).mkdir(parents=True)
    fail_os_open(
        monkeypatch,
        error,
        lambda path, flags: path.parent == day_dir(tmp_path) and bool(flags & os.O_CREAT),
    )
    with pytest.raises(SessionWriteError) as caught:
        await store.create(project, "s")
    message = str(caught.value)
    assert message.startswith(f"cannot write the session file {day_dir(tmp_path)}/s.jsonl: ")
    assert os.strerror(error) in message
    assert files_under(tmp_path / "root") == []
    assert not lexists(project / ".trurn" / "sessions" / "s.jsonl")


async def test_creating_a_session_whose_link_cannot_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)

    def symlink(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(os, "symlink", symlink)
    with pytest.raises(SessionWriteError, match=r"cannot link .*s\.jsonl.*was not created"):
        await store.create(project, "s")
    assert files_under(tmp_path / "root") == []  # the session file was removed again


@pytest.mark.parametrize("error", [errno.EACCES, errno.EROFS])
async def test_a_session_whose_file_became_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    store = make_store(tmp_path)
    path = await write_session(store, None, "s", [UserMessage("kept")])
    before = path.read_bytes()
    with monkeypatch.context() as patch:
        fail_os_open(
            patch, error, lambda p, flags: p == path and bool(flags & (os.O_RDWR | os.O_WRONLY))
        )
        pattern = rf"cannot open {path} for writing: {os.strerror(error)}; .*can still be read"
        with pytest.raises(SessionWriteError, match=pattern):
            await store.open("s")
        with pytest.raises((OSError, SessionError)) as caught:
            await trurn.Context(path).restore()
        assert str(path) in str(caught.value)
        # Reading needs no write access.
        async with await store.fork("s", new_session_id="copy") as copy:
            assert [m.content for m in copy.messages] == ["kept"]
        await store.export_markdown("s", tmp_path / "out.md")
    assert path.read_bytes() == before
    async with await store.open("s") as context:  # writable again: no lock was left
        context.append(UserMessage("more"))
    assert await contents_of(path) == ["kept", "more"]


class FailingWrites:
    """File operations whose writes fail with ``error`` while it is set, as on a file
    system gone read-only or a full disk."""

    def __init__(self) -> None:
        self.error: int | None = None

    def write(self, fd: int, data: bytes) -> int:
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        return os.write(fd, data)


@pytest.mark.parametrize("error", [errno.EROFS, errno.ENOSPC])
async def test_writes_failing_under_an_open_context_lose_nothing(
    tmp_path: Path, error: int
) -> None:
    path = tmp_path / "s.jsonl"
    disk = FailingWrites()
    ops = FileOps(write=disk.write)
    async with trurn.Context(path, _file_ops=ops) as context:
        context.append(UserMessage("stored"))
        await context.sync()
        before = path.read_bytes()

        disk.error = error
        context.append(UserMessage("pending"))
        with pytest.raises(SessionWriteError) as caught:
            await context.sync()
        assert str(caught.value).startswith(f"{path}: ")
        assert os.strerror(error) in str(caught.value)
        assert path.read_bytes() == before
        assert [m.content for m in context.messages] == ["stored", "pending"]

        disk.error = None
        await context.sync()  # the records that failed go out with the next write
    assert await contents_of(path) == ["stored", "pending"]

    # Failing while closing: the error is raised, the file stays valid, the lock is freed.
    context = await trurn.Context(path, _file_ops=ops).restore()
    context.append(UserMessage("lost with the close"))
    disk.error = error
    with pytest.raises(SessionWriteError, match=os.strerror(error)):
        await context.aclose()
    assert await contents_of(path) == ["stored", "pending"]


# -- session ids -----------------------------------------------------------------------------

LOOKALIKES = {
    "nul": "a\x00b",
    "division-slash": "a\u2215b",
    "fullwidth-solidus": "a\uff0fb",
    "one-dot-leaders": "\u2024\u2024",
    "fullwidth-dots": "\uff0e\uff0e",
    "cyrillic-a": "\u0430bc",
    "zero-width-space": "abc\u200b",
    "right-to-left-override": "\u202eabc",
}


@pytest.mark.parametrize("bad", LOOKALIKES.values(), ids=LOOKALIKES.keys())
def test_a_lookalike_session_id_is_refused_before_anything_is_touched(
    tmp_path: Path, bad: str
) -> None:
    offending = next(c for c in bad if not (c.isascii() and (c.isalnum() or c in "._-")))
    with pytest.raises(SessionIdError) as caught:
        trurn.Context(tmp_path / "ok.jsonl", session_id=bad)
    # Shown escaped, so an invisible character is visible in the message.
    assert f"contains {offending!r}" in str(caught.value)
    if "\x00" not in bad:  # a file name cannot hold NUL at all
        with pytest.raises(SessionIdError, match="comes from the file name"):
            trurn.Context(tmp_path / f"{bad}.jsonl")
    assert list(tmp_path.iterdir()) == []  # (the store's calls: test_store.py, BAD_IDS)


# -- links and things that are not files -----------------------------------------------------


@contextlib.contextmanager
def never_read(fifo: Path) -> Iterator[None]:
    """Fail the test, rather than hang it, if anything blocks opening ``fifo`` to read.

    If the block is still running after 2 s, then whenever a reader waits on the FIFO
    a writer opens and closes it, so the reader sees its end and the test can fail.
    """
    done = threading.Event()
    blocked: list[bool] = []

    def watch() -> None:
        if done.wait(2.0):
            return
        while not done.wait(0.05):
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody is waiting to read
                continue
            blocked.append(True)
            os.close(fd)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
    assert not blocked, f"something blocked reading {fifo}"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
async def test_listing_never_reads_through_a_link_out_of_the_store(tmp_path: Path) -> None:
    # A cloned repository can hold any link: to a FIFO, /dev/zero, someone's private file.
    store = make_store(tmp_path)
    project = work(tmp_path)
    outside = tmp_path / "fifo"
    os.mkfifo(outside)
    link = project / ".trurn" / "sessions" / "x.jsonl"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    with never_read(outside):
        [info] = await store.list(project)
        with pytest.raises(SessionError, match=r"refusing to open session 'x': .* link to .*fifo"):
            await store.continue_latest(project)
    assert info.error is not None
    assert f"refusing to read session 'x': {link} is a link to {outside}" in info.error


async def test_a_context_never_creates_a_file_through_a_dangling_link(tmp_path: Path) -> None:
    # A cloned repository can hold a link to where the clone's owner wants a file made.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "chat.jsonl"
    link.symlink_to(elsewhere / "planted.jsonl")
    pattern = rf"{link} is a symbolic link to .*planted\.jsonl, which does not exist"
    with pytest.raises(SessionWriteError, match=pattern):
        await trurn.Context(link).restore()
    with pytest.raises(SessionWriteError, match=pattern):
        async with trurn.Context(link):
            pass
    assert list(elsewhere.iterdir()) == []
    # Once the file exists the link is a way to it, as the store's links are.
    (elsewhere / "planted.jsonl").write_bytes(b"")
    async with trurn.Context(link) as context:
        await append_and_flush(context, UserMessage("hi"))
    assert await contents_of(link) == ["hi"]
    assert b'"hi"' in (elsewhere / "planted.jsonl").read_bytes()


@pytest.mark.parametrize("linked", [".trurn", ".trurn/sessions"])
async def test_a_sessions_dir_linked_out_of_the_work_dir_is_refused(
    tmp_path: Path, linked: str
) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    outside = work(tmp_path, "outside")
    (project / linked).parent.mkdir(parents=True, exist_ok=True)
    (project / linked).symlink_to(outside)
    sessions = project / ".trurn" / "sessions"
    export = tmp_path / "chat.md"
    await store.export_markdown((await write_session(store, None, "src", [])).stem, export)
    before = files_under(tmp_path / "root")
    pattern = rf"{sessions} leads out of the work dir {project} \(resolved: {outside}.*nothing"
    with pytest.raises(SessionError, match=pattern):
        await store.create(project, "s")
    with pytest.raises(SessionError, match=pattern):
        await store.fork("src", work_dir=project)
    with pytest.raises(SessionError, match=pattern):
        await store.import_markdown(export, work_dir=project)
    assert list(outside.iterdir()) == []
    assert files_under(tmp_path / "root") == before


async def test_a_sessions_dir_linked_within_the_work_dir_is_used(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    (project / "state").mkdir()
    (project / ".trurn").symlink_to(project / "state")
    path = await write_session(store, project, "s", [UserMessage("hi")])
    assert (project / "state" / "sessions" / "s.jsonl").resolve() == path
    async with await store.open("s", work_dir=project) as context:
        assert [m.content for m in context.messages] == ["hi"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
async def test_a_fifo_in_the_store_is_refused_without_blocking(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    fifo = day_dir(tmp_path) / "x.jsonl"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    with never_read(fifo):
        pattern = r"x\.jsonl is not a regular file, not a session file"
        await refused_everywhere(store, "x", SessionError, pattern)
        assert "not a regular file" in await listed_error(store, "x")
        with pytest.raises(SessionError, match=pattern):
            await store.delete("x")
    assert fifo.exists()


async def test_a_directory_where_the_session_file_should_be(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    directory = day_dir(tmp_path) / "x.jsonl"
    (directory / "inside").mkdir(parents=True)
    pattern = rf"session 'x': {directory} is a directory, not a session file; nothing"
    await refused_everywhere(store, "x", SessionError, pattern)
    assert "is a directory" in await listed_error(store, "x")
    with pytest.raises(SessionError, match=pattern):
        await store.delete("x")
    with pytest.raises(SessionExistsError, match=r"already exists today: .*x\.jsonl"):
        await store.create(None, "x")
    with pytest.raises((OSError, SessionError)) as caught:
        await trurn.Context(directory).restore()
    assert str(directory) in str(caught.value)
    assert [p.name for p in directory.iterdir()] == ["inside"]


# -- a header naming another session ---------------------------------------------------------


async def test_a_copied_session_file_is_not_taken_for_the_session_it_was_named(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path)
    source = await write_session(store, None, "a", [UserMessage("from a")])
    copy = place(tmp_path, "b", source.read_bytes())
    pattern = (
        rf"refusing to \w+ session 'b': line 1 of {copy} is the header of session 'a',"
        r" not the header of session 'b' \(was the file copied or renamed\? fork copies"
    )
    await refused_everywhere(store, "b", SessionError, pattern)
    error = await listed_error(store, "b")
    assert "is the header of session 'a'" in error
    assert copy.read_bytes() == source.read_bytes()
    # The session the header names is untouched and still opens.
    assert await contents_of(source) == ["from a"]


async def test_context_refuses_a_file_whose_header_names_another_session(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    data = session_bytes("b", "hello")
    path.write_bytes(data)
    context = trurn.Context(path)
    try:
        with pytest.raises(SessionError, match=r"a\.jsonl.*'b'.*'a'|a\.jsonl.*'a'.*'b'"):
            await context.restore()
    finally:
        await context.aclose()
    assert path.read_bytes() == data


# -- numbers JSON cannot hold ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (b'{"kind":"message","seq":1,"ts":1e999,"message":{"role":"user","content":"x"}}', "ts"),
        (
            b'{"kind":"message","message":{"role":"assistant","tool_calls":[{"id":"c",'
            b'"name":"t","arguments":{"n":-1e400}}]}}',
            "message.tool_calls[0].arguments[...]",
        ),
        (b'{"kind":"message","ts":NaN,"message":{"role":"user","content":"x"}}', None),
        (b'{"kind":"message","ts":Infinity,"message":{"role":"user","content":"x"}}', None),
    ],
    ids=["huge-ts", "huge-argument", "nan", "infinity"],
)
async def test_a_number_json_cannot_hold_names_the_line_and_field(
    tmp_path: Path, line: bytes, field: str | None
) -> None:
    data = session_bytes("s", "a") + line + b"\n"
    path = place(tmp_path, "s", data)
    with pytest.raises(SessionCorruptError) as caught:
        await trurn.Context(path).restore()
    assert caught.value.line == 3
    assert str(caught.value).startswith(f"{path}: line 3: ")
    if field is not None:
        assert f"Number out of range - at `$.{field}`" in str(caught.value)
    else:
        assert "not JSON" in str(caught.value)
    assert path.read_bytes() == data


async def test_export_of_a_session_created_at_an_impossible_time(tmp_path: Path) -> None:
    # 1e300 is a finite JSON number, but no date: the export must not fail on it.
    store = make_store(tmp_path)
    line = encode_lines([Header(session_id="s", created_at=1e300, ts=1.0)])
    place(tmp_path, "s", line + session_bytes("s", "hi").split(b"\n", 1)[1])
    exported = await store.export_markdown("s", tmp_path / "out.md")
    assert "- Created: 1e+300 (unix time)" in exported.read_text()
    async with await store.import_markdown(exported, session_id="back") as context:
        assert [m.content for m in context.messages] == ["hi"]


async def test_a_message_holding_nan_is_refused_not_stored_as_null(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    call = ToolCall(id="c", name="t", arguments={"x": math.nan}, arguments_raw='{"x": NaN}')
    async with trurn.Context(path) as context:
        before = path.read_bytes()
        with pytest.raises(ValueError, match="finite"):
            await append_and_flush(context, AssistantMessage(tool_calls=[call]))
        assert path.read_bytes() == before
        context.append(UserMessage("after"))  # the context goes on working
    assert await contents_of(path) == ["after"]


# -- a gigantic line -------------------------------------------------------------------------

GIGANTIC = 8 * 1024 * 1024  # far past any buffer or first-line limit (1 MiB)


async def test_a_gigantic_message_round_trips(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    big = "x" * GIGANTIC
    call = ToolCall(id="c", name="read_file", arguments={})
    messages: list[Message] = [
        UserMessage("y" * GIGANTIC),
        AssistantMessage(tool_calls=[call]),
        ToolMessage(tool_call_id="c", name="read_file", content=big),
    ]
    # fsync "never": what is tested is the size of a line, not how fast the disk syncs.
    async with await store.create(None, "s", fsync="never") as context:
        context.extend(messages)
    async with await store.open("s", fsync="never") as context:
        assert list(context.messages) == messages
    assert context.path is not None
    [info] = await store.list()
    assert (info.error, info.message_count, len(info.title or "")) == (None, 3, 80)
    assert context.path.read_bytes().count(b"\n") == 4


async def test_a_gigantic_line_that_is_not_a_record_gives_a_short_error(tmp_path: Path) -> None:
    good = session_bytes("s", "a")
    data = good + b'{"kind":"message","message":"' + b"z" * GIGANTIC + b"\n"
    path = place(tmp_path, "s", data)
    with pytest.raises(SessionCorruptError) as caught:
        await trurn.Context(path).restore()
    assert caught.value.line == 3
    assert str(caught.value).startswith(f"{path}: line 3: ")
    assert len(str(caught.value)) < 300
    assert path.read_bytes() == data
    # Cut short by a crash instead, it is a torn tail: dropped, and its size reported.
    torn = data[:-1]
    path.write_bytes(torn)
    size = len(torn) - len(good)
    with pytest.warns(SessionRecoveryWarning, match=f"dropped a torn last line of {size} bytes"):
        context = await trurn.Context(path, fsync="never").restore()
    await context.aclose()
    assert path.read_bytes() == good


# -- files edited by hand or on another system -----------------------------------------------


async def test_crlf_line_endings_are_read_and_never_rewritten(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    await write_session(store, project, "s", [])
    crlf = session_bytes("s", "one", "two").replace(b"\n", b"\r\n")
    path = place(tmp_path, "s", crlf)

    [info] = await store.list(project)
    assert (info.error, info.message_count, info.title) == (None, 2, "one")
    async with await store.open("s", work_dir=project) as context:
        assert [m.content for m in context.messages] == ["one", "two"]
        context.append(UserMessage("three"))
    assert path.read_bytes().startswith(crlf)
    assert await contents_of(path) == ["one", "two", "three"]
    async with await store.fork("s", new_session_id="copy") as copy:
        assert len(copy.messages) == 3
    await store.delete("s", work_dir=project)
    assert not path.exists()


async def test_a_byte_order_mark_is_named_in_the_error(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + session_bytes("s", "hi")  # what some editors add on saving
    path = place(tmp_path, "s", data)
    with pytest.raises(SessionCorruptError, match=r"s\.jsonl: line 1: .*byte order mark"):
        await trurn.Context(path).restore()
    assert path.read_bytes() == data


async def test_a_whole_last_record_without_its_newline_is_dropped_as_unacknowledged(
    tmp_path: Path,
) -> None:
    # An append writes "record\n" in one write; a file ending without the newline was cut
    # short mid-append, so its last line was never acknowledged, even if it parses.
    data = session_bytes("s", "one", "two")[:-1]
    path = place(tmp_path, "s", data)
    with pytest.warns(SessionRecoveryWarning, match="torn last line"):
        context = await trurn.Context(path).restore()
    try:
        assert [m.content for m in context.messages] == ["one"]
        context.append(UserMessage("three"))
    finally:
        await context.aclose()
    assert await contents_of(path) == ["one", "three"]
