"""SessionStore: the layout of session files and what can be done with whole sessions."""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import trurn._store
from trurn import _journal, events
from trurn._context import Context
from trurn._errors import (
    SessionCorruptError,
    SessionError,
    SessionIdError,
    SessionLockedError,
    SessionWriteError,
)
from trurn._journal import index_journal, open_journal, parse_journal, read_journal
from trurn._messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ThinkingBlock,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
)
from trurn._records import (
    Compaction,
    EventRecord,
    Header,
    MessageRecord,
    Record,
    TurnEnd,
    TurnStart,
    encode_lines,
)
from trurn._store import (
    SessionExistsError,
    SessionNotFoundError,
    SessionStore,
    new_session_id,
    parse_markdown,
    render_markdown,
    shorten_title,
    summarize,
)

# -- helpers -------------------------------------------------------------------------------

DAY1 = time.mktime((2025, 3, 14, 10, 15, 30, 0, 0, -1))  # local time
DAY2 = time.mktime((2025, 3, 15, 9, 0, 0, 0, 0, -1))


class Clock:
    """A settable wall clock for the store."""

    def __init__(self, now: float = DAY1) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_store(tmp_path: Path, clock: Callable[[], float] | None = None) -> SessionStore:
    return SessionStore(global_sessions_root=tmp_path / "root", env={}, clock=clock or Clock())


def work(tmp_path: Path, name: str = "project") -> Path:
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path


def names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def lexists(path: Path) -> bool:
    return os.path.lexists(path)


def files_under(path: Path) -> list[str]:
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir())


async def write_session(
    store: SessionStore, work_dir: Path | None, session_id: str, messages: list[Message]
) -> Path:
    ctx = await store.create(work_dir, session_id)
    ctx.extend(messages)
    await ctx.aclose()
    assert ctx.path is not None
    return ctx.path


def conversation(tag: str = "") -> list[Message]:
    call = ToolCall(id="c1", name="search", arguments={"q": tag}, arguments_raw=f'{{"q":"{tag}"}}')
    return [
        UserMessage(f"Find {tag}\nplease"),
        AssistantMessage(tool_calls=[call], usage=Usage(input_tokens=5, total_tokens=7)),
        ToolMessage(tool_call_id="c1", name="search", content="found"),
        AssistantMessage(content=f"Here is {tag}.", usage=Usage(input_tokens=9, total_tokens=12)),
    ]


# -- layout and knobs ----------------------------------------------------------------------


async def test_create_writes_the_dated_file_and_links_it_from_the_work_dir(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    ctx = await store.create(project, "s1")
    try:
        file = tmp_path / "root" / "20250314" / "s1.jsonl"
        link = project / ".trurn" / "sessions" / "s1.jsonl"
        assert ctx.path == file
        assert ctx.session_id == "s1"
        assert ctx.work_dir == project
        assert ctx.is_open
        assert list(ctx.messages) == []
        assert link.is_symlink()
        assert Path(os.readlink(link)) == file
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        contents = await read_journal(file)
        assert contents.records == [
            Header(session_id="s1", ts=DAY1, created_at=DAY1, model=None, work_dir=str(project))
        ]
        # Restored means open for writing: a second writer is refused.
        with pytest.raises(SessionLockedError):
            await Context(file).restore()
    finally:
        await ctx.aclose()
    assert files_under(tmp_path / "root") == ["20250314/s1.jsonl"]


async def test_create_without_a_work_dir_makes_no_link(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    async with await store.create(session_id="g") as ctx:
        assert ctx.path == tmp_path / "root" / "20250314" / "g.jsonl"
        assert ctx.work_dir is None
    assert files_under(tmp_path) == ["root/20250314/g.jsonl"]


async def test_a_fresh_id_is_time_ordered_and_unique(tmp_path: Path) -> None:
    clock = Clock()
    store = make_store(tmp_path, clock)
    project = work(tmp_path)
    ids = []
    for now in (DAY1, DAY1, DAY2):
        clock.now = now
        async with await store.create(project) as ctx:
            assert ctx.session_id is not None
            ids.append(ctx.session_id)
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", sid) for sid in ids), ids
    assert ids[0].startswith("20250314-101530-")
    assert ids[2].startswith("20250315-090000-")
    assert len(set(ids)) == 3
    assert sorted(ids[1:]) == ids[1:]
    assert len(files_under(tmp_path / "root" / "20250314")) == 2
    assert len(files_under(project / ".trurn" / "sessions")) == 3


def test_the_root_comes_from_the_argument_then_trurn_home_then_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    trurn_home = tmp_path / "th"
    env = {"HOME": str(home), "TRURN_HOME": str(trurn_home)}
    assert SessionStore(env=env).root == trurn_home / "global_sessions"
    assert SessionStore(env=env, global_sessions_root=tmp_path / "r").root == tmp_path / "r"
    assert SessionStore(env={"HOME": str(home)}).root == home / ".trurn" / "global_sessions"
    assert SessionStore(env={"HOME": str(home), "TRURN_HOME": ""}).root == (
        home / ".trurn" / "global_sessions"
    )
    assert SessionStore(env={"HOME": str(home)}, meta_dirname=".agent").root == (
        home / ".agent" / "global_sessions"
    )
    # TRURN_HOME is the whole home: meta_dirname does not apply inside it.
    assert SessionStore(env=env, meta_dirname=".agent").root == trurn_home / "global_sessions"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "a\x00b"])
def test_a_meta_dirname_must_be_one_directory_name(name: str) -> None:
    with pytest.raises(ValueError, match="meta_dirname"):
        SessionStore(meta_dirname=name, env={})


async def test_meta_dirname_renames_the_work_dir_directory(tmp_path: Path) -> None:
    store = SessionStore(
        meta_dirname=".agent", global_sessions_root=tmp_path / "root", env={}, clock=Clock()
    )
    project = work(tmp_path)
    async with await store.create(project, "m"):
        pass
    assert (project / ".agent" / "sessions" / "m.jsonl").is_symlink()
    assert not (project / ".trurn").exists()
    assert [info.session_id for info in await store.list(project)] == ["m"]


async def test_trurn_home_places_sessions(tmp_path: Path) -> None:
    store = SessionStore(env={"TRURN_HOME": str(tmp_path / "th")}, clock=Clock())
    async with await store.create(session_id="t") as ctx:
        assert ctx.path == tmp_path / "th" / "global_sessions" / "20250314" / "t.jsonl"
    assert (tmp_path / "th" / "global_sessions" / "20250314" / "t.jsonl").is_file()


# -- ids -----------------------------------------------------------------------------------

# Then NUL, unicode lookalikes of "/" and ".." and an invisible character, and Windows
# device names.
BAD_IDS = [
    *["../x", "a/b", "..", ".", "x" * 300, "", "a\\b", "a b", "x\n"],
    *["a\x00b", "a\u2215b", "\uff0e\uff0e", "abc\u200b"],
    *["nul.txt", "Con", "com1"],
]


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_a_bad_id_is_refused_before_any_file_is_touched(tmp_path: Path, bad: str) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    (tmp_path / "export.md").write_text("not read\n")
    with pytest.raises(SessionIdError):
        await store.create(project, bad)
    with pytest.raises(SessionIdError):
        await store.open(bad, work_dir=project)
    with pytest.raises(SessionIdError):
        await store.fork(bad)
    with pytest.raises(SessionIdError):
        await store.fork("whatever", new_session_id=bad)
    with pytest.raises(SessionIdError):
        await store.delete(bad, work_dir=project)
    with pytest.raises(SessionIdError):
        await store.import_markdown(tmp_path / "export.md", work_dir=project, session_id=bad)
    with pytest.raises(SessionIdError):
        await store.export_markdown(bad, tmp_path / "out.md")
    assert not (tmp_path / "root").exists()
    assert list(project.iterdir()) == []
    assert names(tmp_path) == ["export.md", "project"]


@given(
    now=st.floats(min_value=0, max_value=2**35, allow_nan=False),
    token=st.text(alphabet="0123456789abcdef", min_size=8, max_size=8),
)
def test_no_fresh_id_is_ever_refused(now: float, token: str) -> None:
    # Digits first, no dot: never a Windows device name either.
    assert _journal.validate_session_id(new_session_id(now, token)) == new_session_id(now, token)


async def test_the_same_id_on_the_same_day_never_shares_a_file(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first, second = work(tmp_path, "one"), work(tmp_path, "two")
    path = await write_session(store, first, "dup", [UserMessage("from one")])
    before = path.read_bytes()
    with pytest.raises(SessionExistsError, match=r"already exists today.*20250314/dup\.jsonl") as e:
        await store.create(second, "dup")
    assert e.value.path == str(path)
    assert not (second / ".trurn" / "sessions" / "dup.jsonl").exists()
    with pytest.raises(SessionExistsError):
        await store.create(first, "dup")
    with pytest.raises(SessionExistsError):
        await store.create(None, "dup")
    assert path.read_bytes() == before
    assert files_under(tmp_path / "root") == ["20250314/dup.jsonl"]


async def test_without_hard_links_a_new_file_is_still_whole_and_never_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FAT and some network file systems refuse link(); the store reserves the name instead.
    def no_link(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_link)
    store = make_store(tmp_path)
    path = await write_session(store, work(tmp_path), "s", [UserMessage("hi")])
    with pytest.raises(SessionExistsError, match="already exists today"):
        await store.create(None, "s")
    contents = await read_journal(path)
    assert [r.message for r in contents.records if isinstance(r, MessageRecord)] == [
        UserMessage("hi")
    ]
    assert files_under(tmp_path / "root") == ["20250314/s.jsonl"]  # no temporary file left


async def test_an_id_linked_in_the_work_dir_is_refused_on_another_day(tmp_path: Path) -> None:
    clock = Clock()
    store = make_store(tmp_path, clock)
    project, other = work(tmp_path, "one"), work(tmp_path, "two")
    await write_session(store, project, "x", [])
    clock.now = DAY2
    with pytest.raises(SessionExistsError, match=r"already exists in .*one"):
        await store.create(project, "x")
    assert files_under(tmp_path / "root") == ["20250314/x.jsonl"]
    # Another work dir on another day: a different file.
    await write_session(store, other, "x", [])
    assert files_under(tmp_path / "root") == ["20250314/x.jsonl", "20250315/x.jsonl"]


# -- open, continue ------------------------------------------------------------------------


async def test_open_finds_the_work_dir_link_first_then_the_newest_date(tmp_path: Path) -> None:
    clock = Clock()
    store = make_store(tmp_path, clock)
    one, two = work(tmp_path, "one"), work(tmp_path, "two")
    old = await write_session(store, one, "x", [UserMessage("day one")])
    clock.now = DAY2
    new = await write_session(store, two, "x", [UserMessage("day two")])

    async with await store.open("x", work_dir=one) as ctx:
        assert ctx.path == old
        assert list(ctx.messages) == [UserMessage("day one")]
        ctx.append(AssistantMessage(content="more"))
    async with await store.open("x") as ctx:
        assert ctx.path == new
        assert list(ctx.messages) == [UserMessage("day two")]
    # A work dir without the link falls back to the global dirs.
    async with await store.open("x", work_dir=work(tmp_path, "three")) as ctx:
        assert ctx.path == new
    # What was appended through the opened context is in the file.
    contents = await read_journal(old)
    assert [r.message for r in contents.records if isinstance(r, MessageRecord)] == [
        UserMessage("day one"),
        AssistantMessage(content="more"),
    ]


async def test_open_an_unknown_or_deleted_session(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    with pytest.raises(SessionNotFoundError, match="no session 'nope'"):
        await store.open("nope", work_dir=project)
    with pytest.raises(LookupError):
        await store.open("nope")
    path = await write_session(store, project, "gone", [])
    path.unlink()
    with pytest.raises(SessionNotFoundError, match="was deleted"):
        await store.open("gone", work_dir=project)
    assert not path.exists()


async def test_open_refuses_a_session_already_open(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    async with await store.create(session_id="busy"):
        with pytest.raises(SessionLockedError):
            await store.open("busy")


async def test_continue_latest_opens_the_most_recently_written(tmp_path: Path) -> None:
    clock = Clock()
    store = make_store(tmp_path, clock)
    project = work(tmp_path)
    assert await store.continue_latest(project) is None
    a = await write_session(store, project, "a", [UserMessage("a")])
    clock.now = DAY2
    b = await write_session(store, project, "b", [UserMessage("b")])
    await write_session(store, None, "elsewhere", [UserMessage("not here")])
    os.utime(a, (DAY2 + 100, DAY2 + 100))
    os.utime(b, (DAY2 + 50, DAY2 + 50))
    ctx = await store.continue_latest(project)
    assert ctx is not None
    async with ctx:
        assert ctx.session_id == "a"
        assert list(ctx.messages) == [UserMessage("a")]
    # A link whose file is gone is skipped.
    a.unlink()
    ctx = await store.continue_latest(project)
    assert ctx is not None
    async with ctx:
        assert ctx.session_id == "b"


async def test_continue_latest_refuses_a_corrupt_newest_session(tmp_path: Path) -> None:
    clock = Clock()
    store = make_store(tmp_path, clock)
    project = work(tmp_path)
    older = await write_session(store, project, "older", [UserMessage("old")])
    clock.now = DAY2
    newer = await write_session(store, project, "newer", [UserMessage("new")])
    os.utime(older, (DAY2, DAY2))
    with newer.open("ab") as file:
        file.write(b"garbage\n")
    os.utime(newer, (DAY2 + 100, DAY2 + 100))
    listed = await store.list(project)
    assert [(info.session_id, info.updated_at) for info in listed] == [
        ("newer", DAY2 + 100),
        ("older", DAY2),
    ]
    assert listed[0].error is not None
    with pytest.raises(SessionCorruptError, match=r"newer\.jsonl: line 3"):
        await store.continue_latest(project)


# -- list ----------------------------------------------------------------------------------


async def test_list_is_newest_first_with_titles_counts_and_usage(tmp_path: Path) -> None:
    clock = Clock()
    store = make_store(tmp_path, clock)
    project, other = work(tmp_path, "one"), work(tmp_path, "two")
    first = await write_session(store, project, "first", conversation("cats"))
    clock.now = DAY2
    long_text = "word " * 40
    second = await write_session(
        store, project, "second", [SystemMessage("sys"), UserMessage(long_text)]
    )
    third = await write_session(store, other, "third", [])
    os.utime(first, (DAY2 + 30, DAY2 + 30))
    os.utime(second, (DAY2 + 20, DAY2 + 20))
    os.utime(third, (DAY2 + 10, DAY2 + 10))

    local = await store.list(project)
    assert [i.session_id for i in local] == ["first", "second"]
    cats, words = local
    assert cats.path == first
    assert cats.title == "Find cats please"
    assert cats.message_count == 4
    assert cats.last_usage == Usage(input_tokens=9, total_tokens=12)
    assert cats.created_at == DAY1
    assert cats.updated_at == DAY2 + 30
    assert cats.work_dir == str(project)
    assert cats.error is None
    assert words.message_count == 2
    assert words.last_usage is None
    assert words.title is not None
    assert len(words.title) == 80
    assert words.title.endswith("…")
    assert words.title == shorten_title(long_text)

    assert [i.session_id for i in await store.list()] == ["first", "second", "third"]
    assert [i.session_id for i in await store.list(other)] == ["third"]
    assert await store.list(work(tmp_path, "empty")) == []
    assert await SessionStore(global_sessions_root=tmp_path / "none", env={}).list() == []


async def test_list_reports_a_bad_file_instead_of_failing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    good = await write_session(store, project, "good", [UserMessage("hi")])
    bad = await write_session(store, project, "bad", [UserMessage("hi")])
    gone = await write_session(store, project, "gone", [])
    with bad.open("ab") as file:
        file.write(b"\x00\xffgarbage\n")
    gone.unlink()
    (project / ".trurn" / "sessions" / "notes.txt").write_text("not a session")
    (tmp_path / "root" / "20250314" / "stray.txt").write_text("not a session")
    (tmp_path / "root" / "misc").mkdir()

    infos = {i.session_id: i for i in await store.list(project)}
    assert set(infos) == {"good", "bad", "gone"}
    assert infos["good"].error is None
    assert infos["good"].message_count == 1
    assert infos["bad"].error is not None
    assert "line 3" in infos["bad"].error
    assert infos["bad"].message_count == 0
    assert infos["gone"].error is not None
    assert "missing" in infos["gone"].error
    assert {i.session_id for i in await store.list()} == {"good", "bad"}
    assert good.read_bytes().count(b"\n") == 2  # listing wrote nothing


# What list() reports, computed from every record (the straightforward way).
def summary_of_all(records: list[Record]) -> tuple[object, ...]:
    header = records[0] if records and isinstance(records[0], Header) else None
    messages = [r.message for r in records if isinstance(r, MessageRecord)]
    title = next((shorten_title(m.content) for m in messages if isinstance(m, UserMessage)), None)
    usages = [m.usage for m in messages if isinstance(m, AssistantMessage) and m.usage]
    return (
        None if header is None else (header.created_at, header.work_dir),
        title,
        len(messages),
        usages[-1] if usages else None,
    )


MARKER = '\n{"kind":"message","seq":0,"ts":1.0,"message":{"role":"user","content":"fake"}}\n'
POOL: list[Record] = [
    MessageRecord(message=SystemMessage("sys")),
    MessageRecord(message=UserMessage("first " + MARKER)),
    MessageRecord(message=UserMessage(MARKER * 2)),
    MessageRecord(message=AssistantMessage(content=MARKER, usage=Usage(input_tokens=1))),
    MessageRecord(message=AssistantMessage(content="no usage")),
    MessageRecord(message=AssistantMessage(content="later", usage=Usage(input_tokens=2))),
    MessageRecord(message=ToolMessage(tool_call_id="c", name="t", content=MARKER)),
    TurnStart(turn_id="t"),
    TurnEnd(turn_id="t", stop_reason="completed", usage=Usage(input_tokens=9)),
    Compaction(summary=MARKER, first_kept=0),
    EventRecord(event=events.AssistantDelta(seq=1, turn_id="t", text=MARKER)),
]


@given(
    picks=st.lists(st.integers(0, len(POOL) - 1), max_size=12),
    header=st.booleans(),
    cut=st.integers(0, 40),
    crlf=st.booleans(),
    respaced=st.integers(-1, 12),
)
def test_list_summarises_as_decoding_every_record_would(
    picks: list[int], header: bool, cut: int, crlf: bool, respaced: int
) -> None:
    records = [Header(session_id="s", created_at=5.0, work_dir="/w")] if header else []
    records += [POOL[i] for i in picks]
    lines = [encode_lines([r]) for r in records]
    if 0 <= respaced < len(lines):  # one line not written as trurn writes (hand-edited)
        lines[respaced] = lines[respaced].replace(b'{"kind":"', b'{ "kind" : "', 1)
    if crlf:
        lines = [line.replace(b"\n", b"\r\n") for line in lines]
    data = b"".join(lines)
    if cut and lines:  # the last line torn
        data = data[: -min(cut, len(lines[-1]) - 1)]
    try:
        expected: object = summary_of_all(parse_journal(data, "f").records)
    except SessionError as exc:
        expected = str(exc)
    try:
        info = summarize("s", Path("f"), index_journal(data, "f"), 0.0)
        found: object = (
            None if info.created_at is None else (info.created_at, info.work_dir),
            info.title,
            info.message_count,
            info.last_usage,
        )
    except SessionError as exc:
        found = str(exc)
    assert found == expected


@pytest.mark.parametrize("first_kept", [-1, 2])
def test_a_compaction_keeping_messages_that_are_not_there_is_refused(first_kept: int) -> None:
    # One message before the marker: it may keep from #0 or #1 on, nothing else.
    records = [
        Header(session_id="s", ts=1.0),
        MessageRecord(message=UserMessage("hi"), ts=1.0),
        Compaction(summary="s", first_kept=1, ts=1.0),
    ]
    good = encode_lines(records)
    assert parse_journal(good, "f.jsonl").records == records
    markdown = render_markdown(records[0], records[1:], session_id="s")
    imported = parse_markdown(markdown, "f.md").records
    assert [msgspec.structs.replace(r, ts=1.0) for r in imported] == records[1:]
    bad = good.replace(b'"first_kept":1', f'"first_kept":{first_kept}'.encode())
    if first_kept >= 0:  # a negative one is no record at all
        with pytest.raises(SessionCorruptError, match=r"f\.jsonl: line 3: a compaction keeping"):
            parse_journal(bad, "f.jsonl")
    bad_markdown = markdown.replace('"first_kept":1', f'"first_kept":{first_kept}')
    assert bad_markdown != markdown
    line = next(
        number
        for number, text in enumerate(bad_markdown.split("\n"), start=1)
        if text.startswith("<!-- trurn:compaction")
    )
    with pytest.raises(SessionCorruptError, match=rf"f\.md: line {line}: a compaction keeping"):
        parse_markdown(bad_markdown, "f.md")


async def test_list_reads_a_long_session_without_decoding_every_line(tmp_path: Path) -> None:
    # Only the header, the first user message and the newest usage are decoded: a line
    # damaged past its start elsewhere is left for restoring to report.
    store = make_store(tmp_path)
    path = await write_session(store, None, "long", conversation("a") * 50)
    lines = path.read_bytes().split(b"\n")
    lines[100] = lines[100][:30] + b"\x00 damaged"
    path.write_bytes(b"\n".join(lines))
    [info] = await store.list()
    assert (info.title, info.message_count, info.error) == ("Find a please", 200, None)
    assert info.last_usage == Usage(input_tokens=9, total_tokens=12)
    with pytest.raises(SessionCorruptError, match="line 101"):
        await store.open("long")


def test_shorten_title() -> None:
    assert shorten_title("  a\n\tb  ") == "a b"
    assert shorten_title("abcdef", limit=4) == "abc…"
    assert shorten_title("abcd", limit=4) == "abcd"


# -- fork ----------------------------------------------------------------------------------


async def test_fork_copies_a_prefix_into_a_new_session(tmp_path: Path) -> None:
    clock = Clock()
    store = make_store(tmp_path, clock)
    project = work(tmp_path)
    source = await write_session(store, project, "src", conversation("x"))
    before = source.read_bytes()
    clock.now = DAY2
    async with await store.fork("src", upto=1, work_dir=project) as ctx:
        assert ctx.session_id is not None
        assert ctx.session_id != "src"
        assert ctx.path == tmp_path / "root" / "20250315" / f"{ctx.session_id}.jsonl"
        assert list(ctx.messages) == conversation("x")[:1]
        forked = ctx.path
    assert source.read_bytes() == before
    assert stat.S_IMODE(forked.stat().st_mode) == 0o600
    assert (project / ".trurn" / "sessions" / forked.name).is_symlink()
    header = (await read_journal(forked)).header
    assert header is not None
    assert (header.session_id, header.created_at) == (forked.stem, DAY2)
    # No temporary file is left next to either file.
    assert not [p for p in files_under(tmp_path / "root") if p.endswith(".tmp")]

    async with await store.fork("src", new_session_id="all") as ctx:
        assert list(ctx.messages) == conversation("x")
    async with await store.fork("src", upto=0, new_session_id="none") as ctx:
        assert list(ctx.messages) == []


async def test_fork_between_a_tool_call_and_its_result_closes_the_call(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    await write_session(store, None, "src", conversation("x"))
    async with await store.fork("src", upto=2, new_session_id="cut") as ctx:
        messages = list(ctx.messages)
    assert messages[:2] == conversation("x")[:2]
    last = messages[2]
    assert isinstance(last, ToolMessage)
    assert (last.tool_call_id, last.status) == ("c1", "interrupted")


async def test_fork_keeps_compaction_markers_of_the_copied_part(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    path = tmp_path / "root" / "20250314" / "src.jsonl"
    path.parent.mkdir(parents=True)
    messages = [UserMessage(str(i)) for i in range(4)]
    async with await open_journal(path, create=True) as journal:
        await journal.append(
            [
                Header(session_id="src"),
                TurnStart(turn_id="t1", seq=1),
                *(MessageRecord(message=m, seq=2) for m in messages[:2]),
                Compaction(summary="early", first_kept=1, seq=3),
                *(MessageRecord(message=m) for m in messages[2:]),
                Compaction(summary="late", first_kept=3),
                TurnEnd(turn_id="t1", stop_reason="completed"),
            ]
        )
    async with await store.fork("src", upto=2, new_session_id="f") as ctx:
        assert ctx.path is not None
        forked = ctx.path
    records = (await read_journal(forked)).records
    assert [type(r).__name__ for r in records] == [
        "Header",
        "MessageRecord",
        "MessageRecord",
        "Compaction",
    ]
    compaction = records[3]
    assert isinstance(compaction, Compaction)
    assert (compaction.summary, compaction.first_kept, compaction.seq) == ("early", 1, 0)


async def test_fork_refuses_a_bad_upto_or_a_taken_id(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    await write_session(store, None, "src", conversation("x"))
    existing = await write_session(store, None, "taken", [UserMessage("keep me")])
    before = existing.read_bytes()
    with pytest.raises(ValueError, match=r"between 0 and 4"):
        await store.fork("src", upto=5)
    with pytest.raises(ValueError, match=r"between 0 and 4"):
        await store.fork("src", upto=-1)
    with pytest.raises(TypeError):
        await store.fork("src", upto=True)
    with pytest.raises(SessionExistsError):
        await store.fork("src", new_session_id="taken")
    with pytest.raises(SessionNotFoundError):
        await store.fork("missing")
    assert existing.read_bytes() == before
    assert files_under(tmp_path / "root") == ["20250314/src.jsonl", "20250314/taken.jsonl"]


async def test_fork_reads_a_session_that_is_open_for_writing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    async with await store.create(session_id="live") as live:
        live.extend(conversation("y"))
        await live.sync()
        async with await store.fork("live", new_session_id="copy") as ctx:
            assert list(ctx.messages) == conversation("y")


# -- delete --------------------------------------------------------------------------------


async def test_delete_removes_the_file_and_the_link(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    path = await write_session(store, project, "d", [UserMessage("bye")])
    keep = await write_session(store, project, "keep", [])
    await store.delete("d", work_dir=project)
    assert not path.exists()
    assert not lexists(project / ".trurn" / "sessions" / "d.jsonl")
    assert keep.exists()
    assert [i.session_id for i in await store.list(project)] == ["keep"]
    with pytest.raises(SessionNotFoundError):
        await store.delete("d", work_dir=project)


async def test_delete_by_id_alone_removes_the_link_its_header_names(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    path = await write_session(store, project, "d", [])
    await store.delete("d")
    assert not path.exists()
    assert not lexists(project / ".trurn" / "sessions" / "d.jsonl")


async def test_delete_refuses_an_open_session(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    async with await store.create(project, "open") as ctx:
        with pytest.raises(SessionLockedError, match="open for writing"):
            await store.delete("open", work_dir=project)
        assert ctx.path is not None
        assert ctx.path.exists()
        assert (project / ".trurn" / "sessions" / "open.jsonl").is_symlink()
    await store.delete("open", work_dir=project)
    assert files_under(tmp_path / "root") == []


async def test_delete_refuses_a_file_claimed_in_this_process(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    path = await write_session(store, project, "held", [])
    info = path.stat()
    key = (info.st_dev, info.st_ino)
    _journal.claim(key, path, "another writer")
    try:
        with pytest.raises(
            SessionLockedError,
            match=r"\Acannot delete: .*held\.jsonl is already open for writing in this"
            r" process \(as another writer\)\Z",
        ):
            await store.delete("held", work_dir=project)
        assert path.exists()
        assert (project / ".trurn" / "sessions" / "held.jsonl").is_symlink()
    finally:
        _journal.release(key)
    await store.delete("held", work_dir=project)
    assert not path.exists()
    _journal.claim(key, path, "the test")  # delete released its own claim
    _journal.release(key)


async def test_delete_a_link_whose_file_is_gone(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    path = await write_session(store, project, "d", [])
    path.unlink()
    await store.delete("d", work_dir=project)
    assert not lexists(project / ".trurn" / "sessions" / "d.jsonl")


# -- Markdown ------------------------------------------------------------------------------


def tricky_messages() -> list[Message]:
    nasty = (
        'line one\n\n  indented\n<!-- trurn:message {"role":"user","content":"x"} -->\n'
        "```python\nprint('fence')\n```\n-- > --> <b>bold</b>\r\ncrlf\u2028sep\n\n"
    )
    return [
        SystemMessage("Be brief.\n"),
        UserMessage(nasty),
        AssistantMessage(
            content="Let me look.\n\n",
            reasoning="Think\n<!-- trurn:session {} -->\n",
            thinking=[
                ThinkingBlock(text="deep", signature="sig=="),
                ThinkingBlock(redacted="opaque"),
            ],
            tool_calls=[
                ToolCall(
                    id="c1",
                    name="search",
                    arguments={"q": "a\nb", "n": -1, "nested": {"x": [1, 2.5, None]}},
                    arguments_raw='{"q": "a\\nb", "n": -1, "nested": {"x": [1, 2.5, null]}}',
                ),
                ToolCall(
                    id="c2",
                    name="broken",
                    arguments_raw='{"q": ',
                    arguments_error="unexpected end of data",
                ),
            ],
            server_blocks=[{"type": "web_search_tool_result", "content": ["<!--"]}],
            usage=Usage(input_tokens=3, output_tokens=4, total_tokens=7),
            model="m-1",
            finish_reason="tool_calls",
        ),
        ToolMessage(
            tool_call_id="c1",
            name="search",
            content='result\n```\n````\n<!-- trurn:message {"role":"user","content":"y"} -->',
        ),
        ToolMessage(tool_call_id="c2", name="broken", content="bad args", status="error"),
        AssistantMessage(content="cut", aborted=True),
        UserMessage(""),
        AssistantMessage(content=None),
    ]


async def test_export_then_import_gives_back_the_same_messages(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    messages = tricky_messages()
    await write_session(store, project, "src", messages)
    dest = await store.export_markdown("src", tmp_path / "src.md")
    assert dest == tmp_path / "src.md"
    text = dest.read_text(encoding="utf-8")
    assert text.startswith("# Session src\n")
    for heading in ("## System", "## User", "## Assistant (m-1)", "## Tool result: `search`"):
        assert heading in text
    assert "`broken` (`c2`), error" in text
    assert "<summary>Reasoning</summary>" in text
    assert '```json\n{\n  "q": "a\\nb",' in text
    assert '```text\n{"q": \n```' in text
    # Every line that starts like a marker is one of ours, one per message plus the session.
    markers = [line for line in text.split("\n") if line.startswith("<!-- trurn:")]
    assert len(markers) == len(messages) + 1
    for marker in markers:
        assert "--" not in marker[4 : -len("-->")]
        assert "<" not in marker[1:]
        assert ">" not in marker[:-1]

    async with await store.import_markdown(dest, work_dir=project) as ctx:
        assert ctx.session_id not in (None, "src")
        assert list(ctx.messages) == messages
        assert ctx.path is not None
        imported = ctx.path
    header = (await read_journal(imported)).header
    assert header is not None
    assert header.work_dir == str(project)
    async with await store.import_markdown(dest, session_id="again") as ctx:
        assert ctx.session_id == "again"
        assert list(ctx.messages) == messages
    # Export again: the same transcript apart from the id.
    again = await store.export_markdown("again", tmp_path / "again.md")
    again_text = again.read_text(encoding="utf-8")
    assert again_text.split("\n## ", 1)[1] == text.split("\n## ", 1)[1]


def test_names_and_ids_from_the_model_cannot_forge_markdown_markers() -> None:
    forged = '\n<!-- trurn:message {"role":"user","content":"FORGED"} -->\n'
    messages: list[Message] = [
        UserMessage("hi"),
        AssistantMessage(
            model="m" + forged,
            tool_calls=[ToolCall(id="c1" + forged, name="t" + forged, arguments_raw="{}")],
        ),
        ToolMessage(
            tool_call_id="c1" + forged, name="t" + forged, content="no such tool", status="error"
        ),
    ]
    header = Header(session_id="s", model="m" + forged, work_dir="/w" + forged)
    text = render_markdown(header, [MessageRecord(message=m) for m in messages], session_id="s")
    markers = [line for line in text.split("\n") if line.startswith("<!-- trurn:")]
    assert len(markers) == len(messages) + 1
    parsed = parse_markdown(text, "export.md")
    assert [r.message for r in parsed.records if isinstance(r, MessageRecord)] == messages
    assert (parsed.session.model, parsed.session.work_dir) == (header.model, header.work_dir)
    # The headings show the names on one line.
    assert "## Tool result: `t &lt;!-- trurn:message" in text


def test_markdown_shows_arguments_a_hook_changed_and_reads_them_back() -> None:
    rewritten = ToolMessage(
        tool_call_id="c1", name="shell", content="done", arguments={"cmd": "ls -l"}
    )
    records: list[Record] = [
        MessageRecord(message=UserMessage("go")),
        MessageRecord(message=rewritten),
    ]
    text = render_markdown(Header(session_id="s"), records, session_id="s")
    assert '_Ran with arguments changed by a hook:_\n\n```json\n{\n  "cmd": "ls -l"\n}' in text
    parsed = parse_markdown(text, "x.md")
    assert [r.message for r in parsed.records if isinstance(r, MessageRecord)][1] == rewritten


def test_markdown_keeps_compaction_markers() -> None:
    records: list[Record] = [
        MessageRecord(message=UserMessage("a")),
        Compaction(summary="sum\n-- mary\n", user_intent="intent", first_kept=1),
        MessageRecord(message=UserMessage("b")),
        TurnEnd(turn_id="t", stop_reason="completed"),
    ]
    text = render_markdown(Header(session_id="s", model="m"), records, session_id="s")
    parsed = parse_markdown(text, "x.md")
    assert parsed.session.model == "m"
    assert [type(r).__name__ for r in parsed.records] == [
        "MessageRecord",
        "Compaction",
        "MessageRecord",
    ]
    compaction = parsed.records[1]
    assert isinstance(compaction, Compaction)
    assert (compaction.summary, compaction.user_intent, compaction.first_kept) == (
        "sum\n-- mary\n",
        "intent",
        1,
    )


SESSION_LINE = '<!-- trurn:session {"format":1} -->'


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("# Notes\n\nJust some Markdown.\n", 1, "not a trurn Markdown export"),
        ("", 1, "not a trurn Markdown export"),
        ('# x\n<!-- trurn:message {"role":"user","content":"a"} -->\n', 2, "before the session"),
        (f"{SESSION_LINE}\n\n<!-- trurn:message {{oops}} -->\n", 3, "does not hold JSON"),
        (f'{SESSION_LINE}\n<!-- trurn:message {{"role":"wizard"}} -->\n', 2, "does not hold a"),
        (f'{SESSION_LINE}\n<!-- trurn:message {{"role":"user"}}\n', 2, "not '<!-- trurn:<kind>"),
        (f"{SESSION_LINE}\n{SESSION_LINE}\n", 2, "a second session marker"),
        (f'{SESSION_LINE}\n<!-- trurn:event {{"a":1}} -->\n', 2, "unknown trurn marker"),
        ('<!-- trurn:session {"format":99} -->\n', 1, "export format 99"),
        ('<!-- trurn:session {"format":"1"} -->\n', 1, "does not hold a session"),
    ],
)
async def test_importing_a_file_not_in_the_export_format_names_the_line(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    store = make_store(tmp_path)
    source = tmp_path / "in.md"
    source.write_text(text, encoding="utf-8")
    with pytest.raises(SessionCorruptError, match=rf"in\.md: line {line}: .*{re.escape(reason)}"):
        await store.import_markdown(source, work_dir=work(tmp_path))
    assert not (tmp_path / "root").exists()
    assert list((tmp_path / "project").iterdir()) == []


async def test_importing_binary_or_missing_files(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    source = tmp_path / "bin.md"
    source.write_bytes(SESSION_LINE.encode() + b"\nok\n\xff\xfe\n")
    with pytest.raises(SessionCorruptError, match=r"line 3: not UTF-8") as caught:
        await store.import_markdown(source)
    assert caught.value.line == 3
    with pytest.raises(FileNotFoundError):
        await store.import_markdown(tmp_path / "missing.md")
    assert not (tmp_path / "root").exists()


async def test_a_crlf_export_still_imports(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    await write_session(store, None, "src", [UserMessage("a\nb\n")])
    dest = await store.export_markdown("src", tmp_path / "src.md")
    dest.write_bytes(dest.read_bytes().replace(b"\n", b"\r\n"))
    async with await store.import_markdown(dest) as ctx:
        assert list(ctx.messages) == [UserMessage("a\nb\n")]


async def test_export_replaces_the_destination_whole(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    await write_session(store, None, "src", [UserMessage("hi")])
    dest = tmp_path / "src.md"
    dest.write_text("old contents that are longer than the new ones" * 100)
    await store.export_markdown("src", dest)
    assert "old contents" not in dest.read_text()
    assert [n for n in names(tmp_path) if n.endswith(".tmp")] == []
    with pytest.raises(SessionWriteError, match="cannot write"):
        await store.export_markdown("src", tmp_path / "no" / "such" / "dir.md")
    with pytest.raises(SessionNotFoundError):
        await store.export_markdown("nope", dest)


# -- directories that cannot be written ----------------------------------------------------


async def test_a_work_dir_where_the_meta_dir_cannot_be_made(tmp_path: Path) -> None:
    # Works as root too: a file where the meta directory should be.
    store = make_store(tmp_path)
    project = work(tmp_path)
    (project / ".trurn").write_text("in the way")
    with pytest.raises(SessionWriteError, match=r"cannot create the work dir's sessions dir"):
        await store.create(project, "s")
    assert files_under(tmp_path / "root") == []
    with pytest.raises(SessionWriteError, match="is not a directory"):
        await store.create(tmp_path / "missing", "s")
    assert not (tmp_path / "missing").exists()


async def test_a_global_root_that_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "root").write_text("in the way")
    store = make_store(tmp_path)
    project = work(tmp_path)
    with pytest.raises(SessionWriteError, match=r"cannot create the session date dir"):
        await store.create(project, "s")
    assert not (project / ".trurn").exists()


def modes_restrict(directory: Path) -> bool:
    """Whether a directory without write permission stops this process (not for root)."""
    probe = directory / "probe"
    probe.mkdir()
    probe.chmod(0o500)
    try:
        (probe / "x").touch()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o700)
    (probe / "x").unlink()
    return False


async def test_read_only_directories_give_a_clear_error(tmp_path: Path) -> None:
    if not modes_restrict(tmp_path):
        pytest.skip("directory modes do not restrict this process (root)")
    store = make_store(tmp_path)
    project = work(tmp_path)
    project.chmod(0o500)
    try:
        with pytest.raises(SessionWriteError, match="Permission denied"):
            await store.create(project, "s")
    finally:
        project.chmod(0o700)
    assert files_under(tmp_path / "root") == []

    # The link cannot be made: the session file is removed again.
    sessions = project / ".trurn" / "sessions"
    sessions.mkdir(parents=True)
    sessions.chmod(0o500)
    try:
        with pytest.raises(SessionWriteError, match=r"cannot link .*was not created"):
            await store.create(project, "s")
    finally:
        sessions.chmod(0o700)
    assert files_under(tmp_path / "root") == []

    day = tmp_path / "root" / "20250314"
    day.chmod(0o500)
    try:
        with pytest.raises(SessionWriteError, match=r"cannot write the session file"):
            await store.create(None, "s")
    finally:
        day.chmod(0o700)
    assert files_under(tmp_path / "root") == []


# -- links that lead out of the store --------------------------------------------------------


def plant_link(project: Path, session_id: str, target: Path) -> Path:
    """A work dir link ``session_id`` -> ``target``, as someone else might leave it."""
    link = project / ".trurn" / "sessions" / f"{session_id}.jsonl"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


async def test_delete_never_removes_a_file_outside_the_store(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = plant_link(project, "x", victim)
    with pytest.raises(SessionError, match=r"refusing to delete session 'x': .*x\.jsonl.*victim"):
        await store.delete("x", work_dir=project)
    assert victim.read_text() == "precious"
    assert link.is_symlink()  # nothing removed, not even the link

    # Neither through a date dir entry that is itself a link out of the store.
    day = tmp_path / "root" / "20250314"
    day.mkdir(parents=True)
    (day / "z.jsonl").symlink_to(victim)
    with pytest.raises(SessionError, match=r"z\.jsonl is a link to .*victim"):
        await store.delete("z")
    assert victim.read_text() == "precious"


async def test_delete_refuses_another_sessions_file_or_a_wrong_header(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    other = await write_session(store, None, "other", [UserMessage("keep")])
    # A link named "x" to the file of "other": the name does not match.
    link = plant_link(project, "x", other)
    with pytest.raises(SessionError, match="refusing to delete session 'x'"):
        await store.delete("x", work_dir=project)
    assert other.exists()
    link.unlink()
    # The right place and name, but the header names another session (or is not one).
    impostor = other.parent / "x.jsonl"
    impostor.write_bytes(other.read_bytes())
    plant_link(project, "x", impostor)
    pattern = r"x\.jsonl is the header of session 'other', not .* 'x'.*nothing was changed"
    with pytest.raises(SessionError, match=pattern):
        await store.delete("x", work_dir=project)
    impostor.write_bytes(b"plain text, no header\n")
    with pytest.raises(SessionError, match="not the header of session 'x'"):
        await store.delete("x")
    assert impostor.exists()
    assert link.is_symlink()
    assert other.exists()


async def test_open_continue_and_fork_never_use_a_file_outside_the_store(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"")  # empty: would read as a new session and get a header
    link = plant_link(project, "x", victim)
    pattern = r"refusing to (open|fork) session 'x': .*x\.jsonl is a link to .*victim\.txt"
    with pytest.raises(SessionError, match=pattern):
        await store.open("x", work_dir=project)
    with pytest.raises(SessionError, match=pattern):
        await store.continue_latest(project)
    with pytest.raises(SessionError, match=pattern):
        await store.fork("x", work_dir=project, new_session_id="copy")
    assert victim.read_bytes() == b""
    # A dangling link out of the store is refused too (open used to create its target).
    link.unlink()
    elsewhere = tmp_path / "elsewhere" / "x.jsonl"
    elsewhere.parent.mkdir()
    link.symlink_to(elsewhere)
    with pytest.raises(SessionError, match=r"refusing to open session 'x'"):
        await store.open("x", work_dir=project)
    assert not elsewhere.exists()
    # A copy of a real session outside the store is no session of the store.
    real = await write_session(store, None, "y", conversation("y"))
    copy = tmp_path / "elsewhere" / "y.jsonl"
    copy.write_bytes(real.read_bytes())
    plant_link(project, "y", copy)
    with pytest.raises(SessionError, match=r"refusing to fork session 'y'"):
        await store.fork("y", work_dir=project)
    with pytest.raises(SessionError, match=r"refusing to export session 'y'"):
        await store.export_markdown("y", tmp_path / "out.md", work_dir=project)
    assert files_under(tmp_path / "root") == ["20250314/y.jsonl"]
    assert not (tmp_path / "out.md").exists()


async def test_open_never_creates_a_file_deleted_after_it_was_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path)
    project = work(tmp_path)
    path = await write_session(store, project, "s", [])

    def delete_first(target: Path, **kwargs: Any) -> Context:
        # Runs after every check open makes: the file vanishes at the worst moment.
        target.unlink()
        return Context(target, **kwargs)

    monkeypatch.setattr(trurn._store, "Context", delete_first)
    with pytest.raises(SessionNotFoundError, match="was deleted"):
        await store.open("s", work_dir=project)
    assert not path.exists()


# -- directory modes -----------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    # Under the usual umask, directories made without an explicit mode are world-readable.
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_every_directory_the_store_makes_is_private(tmp_path: Path, umask_022: None) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    project = work(tmp_path)
    project.chmod(0o755)
    store = SessionStore(env={"HOME": str(home)}, clock=Clock())
    assert store.root == home / ".trurn" / "global_sessions"
    async with await store.create(project, "s"):
        pass
    for made in [
        home / ".trurn",
        home / ".trurn" / "global_sessions",
        home / ".trurn" / "global_sessions" / "20250314",
        project / ".trurn",
        project / ".trurn" / "sessions",
    ]:
        assert mode(made) == 0o700, made
    # What existed already keeps its mode: the user's home and work dir.
    assert mode(home) == 0o755
    assert mode(project) == 0o755

    # A deeper TRURN_HOME: every missing level is private; existing ones are untouched.
    (home / ".trurn" / "global_sessions").chmod(0o750)
    deep = tmp_path / "a" / "b"
    (tmp_path / "a").mkdir(mode=0o755)
    other = SessionStore(env={"TRURN_HOME": str(deep)}, clock=Clock())
    async with await other.create(None, "t"):
        pass
    assert [mode(deep), mode(deep / "global_sessions")] == [0o700, 0o700]
    assert mode(tmp_path / "a") == 0o755
    async with await store.create(None, "u"):
        pass
    assert mode(home / ".trurn" / "global_sessions") == 0o750


# -- files of nothing but zero bytes -------------------------------------------------------


@pytest.mark.parametrize("size", [1, 4096])
async def test_a_file_of_only_zero_bytes_is_corrupt_not_torn(tmp_path: Path, size: int) -> None:
    junk = b"\x00" * size
    with pytest.raises(SessionCorruptError, match=r"line 1: .*only zero bytes") as caught:
        parse_journal(junk, "junk.jsonl")
    assert caught.value.line == 1
    # After complete lines, trailing zeros are still a crash's torn tail.
    good = encode_lines([Header(session_id="s")])
    assert parse_journal(good + junk, "s.jsonl").torn_tail == junk

    store = make_store(tmp_path)
    path = await write_session(store, None, "s", [])
    path.write_bytes(junk)
    with pytest.raises(SessionCorruptError, match=r"s\.jsonl: line 1:"):
        await store.open("s")
    with pytest.raises(SessionCorruptError, match="line 1"):
        await Context(path).restore()
    assert path.read_bytes() == junk  # nothing rewritten
