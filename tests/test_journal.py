"""The session journal: records, whole-line appends, locks, fsync policy, safe reads."""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

import trurn
from trurn import _journal, events
from trurn._journal import (
    LINGER,
    FileOps,
    Journal,
    SessionCorruptError,
    SessionIdError,
    SessionLockedError,
    SessionVersionError,
    SessionWriteError,
    open_journal,
    parse_journal,
    read_journal,
    validate_session_id,
)
from trurn._records import (
    FORMAT_VERSION,
    Compaction,
    EventRecord,
    Header,
    MessageRecord,
    Record,
    TurnEnd,
    TurnStart,
    decode_record,
    encode_line,
    encode_lines,
    is_valid_session_id,
)

# -- helpers -------------------------------------------------------------------------------

HEADER = Header(session_id="s1", ts=1.0, created_at=1.0, model="m", work_dir="/w")


def msg(text: str, seq: int = 0) -> MessageRecord:
    return MessageRecord(seq=seq, ts=2.0, message=trurn.UserMessage(text))


def every_kind() -> list[Record]:
    assistant = trurn.AssistantMessage(
        content="Let me look.\n",
        tool_calls=[
            trurn.ToolCall(id="c1", name="search", arguments={"q": "x"}, arguments_raw='{"q":"x"}'),
            trurn.ToolCall(
                id="c2", name="bad", arguments_raw='{"q": ', arguments_error="truncated JSON"
            ),
        ],
        reasoning="thinking...",
        thinking=[
            trurn.ThinkingBlock(text="step 1", signature="sig=="),
            trurn.ThinkingBlock(redacted="opaque"),
        ],
        server_blocks=[{"type": "web_search_tool_result", "content": [{"url": "u"}]}],
        usage=trurn.Usage(input_tokens=10, output_tokens=5, total_tokens=15),
        model="m",
        finish_reason="tool_calls",
    )
    return [
        HEADER,
        TurnStart(seq=1, ts=2.0, turn_id="t1", parent_turn_id=None),
        MessageRecord(seq=1, ts=2.0, message=trurn.SystemMessage("sys")),
        MessageRecord(seq=1, ts=2.0, message=trurn.UserMessage("line 1\nline 2\u2028 \n")),
        MessageRecord(seq=7, ts=3.0, message=assistant),
        MessageRecord(
            seq=9,
            ts=4.0,
            message=trurn.ToolMessage(
                tool_call_id="c1", name="search", content="Traceback\n  boom", status="error"
            ),
        ),
        MessageRecord(
            seq=10,
            ts=4.0,
            message=trurn.ToolMessage(
                tool_call_id="c2", name="bad", content="cancelled", status="cancelled"
            ),
        ),
        TurnEnd(
            seq=12,
            ts=5.0,
            turn_id="t1",
            stop_reason="completed",
            usage=trurn.Usage(input_tokens=1, output_tokens=2, total_tokens=3),
        ),
        Compaction(seq=12, ts=6.0, summary="we searched\n", user_intent="find x", first_kept=4),
        EventRecord(seq=13, ts=7.0, event=events.AssistantDelta(seq=13, turn_id="t2", text="hi")),
        EventRecord(
            seq=14,
            ts=7.0,
            event=events.TurnFinished(
                seq=14, turn_id="t2", stop_reason="aborted", usage=trurn.Usage()
            ),
        ),
    ]


class CountingOps:
    """FileOps whose fsync calls are counted (writes and truncates go to the OS)."""

    def __init__(self) -> None:
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        os.fsync(fd)

    def ops(self) -> FileOps:
        return FileOps(fsync=self.fsync)


def failing(error: int) -> Callable[..., int]:
    def write(fd: int, data: bytes) -> int:
        raise OSError(error, os.strerror(error))

    return write


async def new_journal(path: Path, records: list[Record] | None = None, **kw: object) -> Journal:
    journal = await open_journal(path, create=True, **kw)  # type: ignore[arg-type]
    await journal.append(records if records is not None else [HEADER])
    return journal


def data_of(path: Path) -> bytes:
    return path.read_bytes()


# -- records -------------------------------------------------------------------------------


def test_every_record_kind_round_trips_with_its_seq() -> None:
    records = every_kind()
    for record in records:
        line = encode_line(record)
        assert line.endswith(b"\n")
        assert line.count(b"\n") == 1
        assert decode_record(line[:-1]) == record
    decoded = parse_journal(encode_lines(records), "x.jsonl").records
    assert decoded == records
    assert [r.seq for r in decoded] == [r.seq for r in records]
    tags = {type(r).__struct_config__.tag for r in decoded}
    assert tags == {"header", "turn_start", "message", "turn_end", "compaction", "event"}


def test_message_details_survive_the_round_trip() -> None:
    assistant = every_kind()[4]
    assert isinstance(assistant, MessageRecord)
    back = decode_record(encode_line(assistant)[:-1])
    assert isinstance(back, MessageRecord)
    message = back.message
    assert isinstance(message, trurn.AssistantMessage)
    assert message.tool_calls[1].arguments_raw == '{"q": '
    assert message.tool_calls[1].arguments_error == "truncated JSON"
    assert message.thinking[0].signature == "sig=="
    assert message.thinking[1].redacted == "opaque"
    assert message.server_blocks == [{"type": "web_search_tool_result", "content": [{"url": "u"}]}]
    assert message.content == "Let me look.\n"


def test_new_records_get_a_timestamp_and_the_current_format() -> None:
    header = Header(session_id="abc")
    assert header.ts > 1_600_000_000
    assert header.format_version == FORMAT_VERSION
    assert header.trurn_version == trurn.__version__


def test_a_non_finite_timestamp_is_refused_before_writing() -> None:
    with pytest.raises(ValueError, match="finite"):
        encode_lines([msg("ok"), MessageRecord(ts=float("inf"), message=trurn.UserMessage("x"))])
    with pytest.raises(ValueError, match="finite"):
        encode_line(MessageRecord(ts=float("nan"), message=trurn.UserMessage("x")))


# -- append and read -------------------------------------------------------------------------


async def test_append_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    records = every_kind()
    async with await open_journal(path, create=True) as journal:
        assert journal.contents.records == []
        await journal.append(records[:3])
        await journal.append(records[3:])
        assert journal.offset == len(data_of(path))
    contents = await read_journal(path)
    assert contents.records == records
    assert contents.header == HEADER
    assert contents.torn_tail is None
    assert contents.end_offset == len(data_of(path))
    # Reopening gives the same records as contents, and appends after them.
    async with await open_journal(path) as journal:
        assert journal.contents.records == records
        await journal.append([msg("more")])
    assert (await read_journal(path)).records == [*records, msg("more")]


async def test_session_file_is_created_0600(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    async with await new_journal(path):
        pass
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await read_journal(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError):
        await open_journal(tmp_path / "nope.jsonl")
    assert not (tmp_path / "nope.jsonl").exists()


async def test_empty_file_is_valid_and_its_first_record_must_be_a_header(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"")
    contents = await read_journal(path)
    assert contents.records == []
    assert contents.header is None
    assert contents.end_offset == 0
    async with await open_journal(path) as journal:
        with pytest.raises(ValueError, match="must be a Header, got 'message'"):
            await journal.append([msg("x")])
        assert data_of(path) == b""
        await journal.append([HEADER, msg("x")])
    assert (await read_journal(path)).records == [HEADER, msg("x")]


async def test_a_record_that_cannot_be_encoded_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    async with await new_journal(path) as journal:
        before = data_of(path)
        bad = MessageRecord(
            message=trurn.AssistantMessage(server_blocks=[{"x": object()}]),
        )
        with pytest.raises(TypeError):
            await journal.append([msg("ok"), bad])
        assert data_of(path) == before


async def test_concurrent_appends_are_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    async with await new_journal(path) as journal:

        async def writer(name: str) -> None:
            for i in range(20):
                await journal.append([msg(f"{name}{i}" * 50), msg(f"{name}{i}!")])

        async with trio.open_nursery() as nursery:
            for name in "abc":
                nursery.start_soon(writer, name)
    records = (await read_journal(path)).records
    assert len(records) == 1 + 3 * 20 * 2
    # Each batch stays together: a record "x!" directly follows its "x..." record.
    for first, second in zip(records[1::2], records[2::2], strict=True):
        assert isinstance(first, MessageRecord)
        assert isinstance(second, MessageRecord)
        assert isinstance(second.message, trurn.UserMessage)
        assert isinstance(first.message, trurn.UserMessage)
        assert second.message.content.endswith("!")
        assert first.message.content.startswith(second.message.content[:-1])


async def test_closed_journal_refuses_appends_and_closes_once(tmp_path: Path) -> None:
    journal = await new_journal(tmp_path / "s.jsonl")
    await journal.aclose()
    await journal.aclose()
    assert journal.closed
    with pytest.raises(trio.ClosedResourceError):
        await journal.append([msg("x")])


# -- cancellation ------------------------------------------------------------------------------


class GatedWrite:
    """A write that waits for the test's go-ahead, so a cancel can arrive mid-write."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def write(self, fd: int, data: bytes) -> int:
        self.started.set()
        assert self.release.wait(10)
        # A short write, to show the whole batch still goes out.
        return os.write(fd, data[: len(data) // 2] or data)


async def test_cancel_during_the_write_still_writes_the_whole_batch(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    await (await new_journal(path)).aclose()
    gate = GatedWrite()
    batch = [msg("a", seq=1), msg("b" * 10_000, seq=2), msg("c", seq=3)]
    returned = False
    async with await open_journal(path, file_ops=FileOps(write=gate.write)) as journal:
        scope = trio.CancelScope()

        async def append() -> None:
            nonlocal returned
            with scope:
                await journal.append(batch)
                returned = True
                await trio.lowlevel.checkpoint()
                pytest.fail("the cancel should arrive at the first checkpoint after append")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(append)
            await trio.to_thread.run_sync(gate.started.wait)
            scope.cancel()
            await trio.sleep(0.01)
            gate.release.set()
        assert scope.cancelled_caught
        assert returned
    assert (await read_journal(path)).records == [HEADER, *batch]


async def test_cancel_before_the_write_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    async with await new_journal(path) as journal:
        before = data_of(path)
        with trio.CancelScope() as scope:
            scope.cancel()
            await journal.append([msg("x")])
        assert scope.cancelled_caught
        assert data_of(path) == before
        await journal.append([msg("y")])
    assert (await read_journal(path)).records == [HEADER, msg("y")]


async def test_cancel_while_waiting_for_another_append_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    await (await new_journal(path)).aclose()
    gate = GatedWrite()
    async with await open_journal(path, file_ops=FileOps(write=gate.write)) as journal:
        second = trio.CancelScope()

        async def append_second() -> None:
            with second:
                await journal.append([msg("second")])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.append, [msg("first")])
            await trio.to_thread.run_sync(gate.started.wait)
            nursery.start_soon(append_second)
            await trio.testing.wait_all_tasks_blocked()
            second.cancel()
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert second.cancelled_caught
    assert (await read_journal(path)).records == [HEADER, msg("first")]


# -- the background writer ---------------------------------------------------------------------


async def until(done: Callable[[], bool]) -> None:
    """Wait (real time, at most 5 s) for what the writer thread does in the background."""
    with trio.fail_after(5):
        while not done():  # noqa: ASYNC110 (a thread's progress, no Event to wait on)
            await trio.sleep(LINGER / 4)


@asynccontextmanager
async def writing_behind(journal: Journal) -> AsyncIterator[Journal]:
    """The journal with its background writer running; closed (which stops it) at the end."""
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.serve_writer)
        try:
            assert journal.writing_behind
            yield journal
        finally:
            await journal.aclose()
    assert not journal.writing_behind


async def test_flush_nowait_needs_a_background_writer(tmp_path: Path) -> None:
    async with await new_journal(tmp_path / "s.jsonl") as journal:
        journal.enqueue([msg("a")])
        with pytest.raises(RuntimeError, match="no background writer"):
            journal.flush_nowait()
        await journal.flush()  # the caller-side way
        assert journal.unwritten == 0
    assert (await read_journal(tmp_path / "s.jsonl")).records == [HEADER, msg("a")]


@pytest.mark.parametrize(("policy", "fsyncs"), [("turn", 1), ("record", 2), ("never", 0)])
async def test_the_writer_writes_in_the_background_and_syncs_per_policy(
    tmp_path: Path, policy: str, fsyncs: int
) -> None:
    path = tmp_path / "s.jsonl"
    await (await new_journal(path)).aclose()
    counter = CountingOps()
    journal = await open_journal(path, fsync=policy, file_ops=counter.ops())  # type: ignore[arg-type]
    async with writing_behind(journal):
        journal.enqueue([msg("a")])
        with trio.testing.assert_no_checkpoints():
            journal.flush_nowait()
        # Written within LINGER, nobody waiting for it.
        await until(lambda: journal.unwritten == 0)
        assert (await read_journal(path)).records == [HEADER, msg("a")]
        journal.enqueue([msg("b")])
        journal.flush_nowait()
        journal.enqueue([msg("c")])
        await journal.sync()  # b and c go out together, before sync returns
        assert journal.unwritten == 0
        assert (await read_journal(path)).records == [HEADER, msg("a"), msg("b"), msg("c")]
        assert counter.fsyncs == fsyncs
    assert counter.fsyncs == fsyncs  # nothing was left to sync on close


async def test_a_failed_background_write_is_reported_by_the_next_flush_and_retried(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.jsonl"
    await (await new_journal(path)).aclose()
    before = data_of(path)
    disk = ShortThenFull()
    journal = await open_journal(path, file_ops=FileOps(write=disk.write))
    async with writing_behind(journal):
        journal.enqueue([msg("a" * 100)])
        journal.flush_nowait()
        await until(lambda: bool(journal._failures))
        assert data_of(path) == before  # the short write was cut back
        journal.enqueue([msg("b")])
        with pytest.raises(SessionWriteError, match="No space left on device"):
            journal.flush_nowait()
        journal.flush_nowait()  # reported once
        with pytest.raises(SessionWriteError, match="No space left on device"):
            await journal.sync()  # tries again, and says so
        assert journal.unwritten > 0
        disk.freed = True
        await journal.sync()  # everything kept goes out, in order
        assert (await read_journal(path)).records == [HEADER, msg("a" * 100), msg("b")]


async def test_a_sync_waits_even_when_cancelled_and_close_stops_the_thread(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.jsonl"
    await (await new_journal(path)).aclose()
    gate = GatedWrite()
    journal = await open_journal(path, file_ops=FileOps(write=gate.write))
    async with writing_behind(journal), trio.open_nursery() as nursery:
        journal.enqueue([msg("a")])
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await journal.sync()  # a cancel before the wait: nothing waited for
        journal.enqueue([msg("b")])

        async def cancel_when_writing() -> None:
            await trio.to_thread.run_sync(gate.started.wait)
            scope.cancel()
            await trio.sleep(0.01)
            gate.release.set()

        nursery.start_soon(cancel_when_writing)
        with trio.CancelScope() as scope:
            await journal.sync()
            returned = True
        assert returned  # the wait is shielded: it ran to its end
        assert (await read_journal(path)).records == [HEADER, msg("a"), msg("b")]
    with pytest.raises(trio.ClosedResourceError):
        journal.enqueue([msg("c")])


async def no_hang(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``scenario`` in a trio loop of its own, in a thread that is given up on after
    5 s: a shielded wait that nothing answers cannot be cancelled, so the test fails
    instead of hanging."""
    with trio.fail_after(5):
        await trio.to_thread.run_sync(trio.run, scenario, abandon_on_cancel=True)


class Buggy:
    """FileOps.write raising what no OS call raises: ``exception``, until ``fixed``."""

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception
        self.fixed = False

    def write(self, fd: int, data: bytes) -> int:
        if self.fixed:
            return os.write(fd, data)
        raise self.exception


@pytest.mark.parametrize("reported_by", ["sync", "background write"])
async def test_an_unexpected_error_in_the_writer_is_answered_and_stops_the_journal(
    tmp_path: Path, reported_by: str
) -> None:
    path = tmp_path / "s.jsonl"
    await (await new_journal(path)).aclose()
    before = data_of(path)
    buggy = Buggy(RuntimeError("a bug in the FileOps"))
    refusal = r"refusing to append: writing failed unexpectedly \(RuntimeError: a bug in the"

    async def scenario() -> None:
        journal = await open_journal(path, file_ops=FileOps(write=buggy.write))
        async with trio.open_nursery() as nursery:
            await nursery.start(journal.serve_writer)
            journal.enqueue([msg("a")])
            queued = list(journal._chunks)
            if reported_by == "sync":
                with pytest.raises(SessionWriteError) as caught:
                    await journal.sync()
                assert str(caught.value).startswith(f"{path}: writing failed: RuntimeError")
                assert isinstance(caught.value.__cause__, RuntimeError)
            else:
                journal.flush_nowait()
                await until(lambda: journal._failed is not None)
            assert list(journal._chunks) == queued  # taken, then queued again, not dropped
            buggy.fixed = True  # what the file holds is unknown: it stays refused
            for attempt in (journal.sync, journal.flush, journal.aclose):
                with pytest.raises(SessionWriteError, match=refusal) as refused:
                    await attempt()  # aclose: "a" was never written
                assert isinstance(refused.value.__cause__, SessionWriteError)
                assert isinstance(refused.value.__cause__.__cause__, RuntimeError)
        assert journal.closed
        assert data_of(path) == before
        await (await open_journal(path)).aclose()  # the file was closed and released

    await no_hang(scenario)


async def test_an_interrupt_in_the_writer_answers_the_sync_and_reaches_trio(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.jsonl"
    await (await new_journal(path)).aclose()
    before = data_of(path)
    refusal = r"refusing to append: writing failed unexpectedly \(KeyboardInterrupt\)"

    async def scenario() -> None:
        journal = await open_journal(path, file_ops=FileOps(write=Buggy(KeyboardInterrupt()).write))

        async def serve_until_interrupted() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(journal.serve_writer)
                journal.enqueue([msg("a")])
                with pytest.raises(SessionWriteError, match=refusal) as caught:
                    await journal.sync()
                assert isinstance(caught.value.__cause__.__cause__, KeyboardInterrupt)
                await trio.sleep_forever()  # until the interrupt cancels the nursery

        with pytest.raises(BaseExceptionGroup) as raised:  # not swallowed
            await serve_until_interrupted()
        interrupts, others = raised.value.split(KeyboardInterrupt)
        assert interrupts is not None
        assert others is None
        assert not journal.writing_behind
        with pytest.raises(SessionWriteError, match=refusal):  # "a" is still queued
            await journal.aclose()
        assert data_of(path) == before
        await (await open_journal(path)).aclose()  # the file was closed and released

    await no_hang(scenario)


def eio(*args: object) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


@pytest.mark.parametrize("broken", ["fsync", "cut back"])
async def test_a_background_failure_that_stops_the_journal_is_the_cause_of_each_refusal(
    tmp_path: Path, broken: str
) -> None:
    path = tmp_path / "s.jsonl"
    await (await new_journal(path)).aclose()
    if broken == "fsync":
        ops = FileOps(fsync=eio)
        first, code = "fsync failed: Input/output error", errno.EIO
    else:
        ops = FileOps(write=ShortThenFull().write, truncate=eio)
        first, code = "write failed: No space left on device", errno.ENOSPC
    journal = await open_journal(path, fsync="record", file_ops=ops)

    def names_the_first_error(refusal: SessionWriteError) -> None:
        assert "refusing to append" in str(refusal)
        assert os.strerror(code) in str(refusal)
        assert str(refusal.__cause__).startswith(f"{path}: {first}; ")
        assert isinstance(refusal.__cause__.__cause__, OSError)
        assert refusal.__cause__.__cause__.errno == code

    closing: list[SessionWriteError] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.serve_writer)
        try:
            journal.enqueue([msg("a" * 100)])
            journal.flush_nowait()
            await until(lambda: journal._failed is not None)
            with pytest.raises(SessionWriteError) as caught:
                journal.flush_nowait()
            names_the_first_error(caught.value)
            for attempt in (journal.flush, journal.sync):
                with pytest.raises(SessionWriteError) as caught:
                    await attempt()
                names_the_first_error(caught.value)
        finally:
            try:
                await journal.aclose()
            except SessionWriteError as error:
                closing.append(error)
    assert len(closing) == (broken == "cut back")  # only then was a record never written
    for error in closing:
        names_the_first_error(error)


# -- torn and corrupt files --------------------------------------------------------------------

TORN = b'{"kind":"message","seq":3,"ts":2.0,"message":{"role":"user","content":"hal'


@pytest.mark.parametrize(
    "tail",
    [
        TORN,
        b'{"ki',
        b"{",
        '{"kind":"message","seq":3,"ts":2.0,"message":{"role":"user","content":"é'.encode()[:-1],
        b"\x00" * 300,
        TORN[:20] + b"\x00" * 50,
    ],
    ids=["mid-record", "mid-tag", "one-byte", "mid-utf8-char", "zeros", "record-then-zeros"],
)
async def test_a_torn_last_line_is_reported_ignored_and_cut_by_the_writer(
    tmp_path: Path, tail: bytes
) -> None:
    path = tmp_path / "s.jsonl"
    good = encode_lines([HEADER, msg("one")])
    path.write_bytes(good + tail)
    contents = await read_journal(path)
    assert contents.records == [HEADER, msg("one")]
    assert contents.torn_tail == tail
    assert contents.end_offset == len(good)
    assert data_of(path) == good + tail  # reading changes nothing

    async with await open_journal(path) as journal:
        assert journal.contents.torn_tail == tail
        assert data_of(path) == good  # the unacknowledged bytes are gone
        await journal.append([msg("two")])
    contents = await read_journal(path)
    assert contents.records == [HEADER, msg("one"), msg("two")]
    assert contents.torn_tail is None


async def test_a_torn_header_leaves_an_empty_session(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(encode_line(HEADER)[:30])
    async with await open_journal(path) as journal:
        assert journal.contents.records == []
        assert data_of(path) == b""
        await journal.append([HEADER])
    assert (await read_journal(path)).records == [HEADER]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"kind":"message","seq":1', "not JSON"),
        (b"not json at all", "not JSON"),
        (b"", "empty line"),
        (b'{"foo": 1}', "missing required field `kind`"),
        (b"[1, 2]", "Expected `object`, got `array`"),
        (b'{"kind":"nope"}', "Invalid value 'nope' - at `$.kind`"),
        (b'{"kind":"message","message":{"role":"robot","content":"x"}}', "`$.message.role`"),
        (b'{"kind":"message","seq":"3","message":{"role":"user","content":"x"}}', "`$.seq`"),
        (b'{"kind":"message","message":{"role":"user","content":7}}', "`$.message.content`"),
        (b'{"kind":"compaction","summary":"s","first_kept":-1}', "`$.first_kept`"),
        (encode_line(HEADER)[:-1], "a header may only be the first record"),
        (b'{"kind":"header","session_id":"s","format_version":0}', "`$.format_version`"),
    ],
)
async def test_a_corrupt_middle_line_names_file_and_line(
    tmp_path: Path, line: bytes, reason: str
) -> None:
    path = tmp_path / "s.jsonl"
    data = encode_line(HEADER) + encode_line(msg("one")) + line + b"\n" + encode_line(msg("x"))
    path.write_bytes(data)
    with pytest.raises(SessionCorruptError) as info:
        await read_journal(path)
    assert info.value.line == 3
    assert info.value.path == str(path)
    assert f"{path}: line 3: " in str(info.value)
    assert reason in str(info.value)
    # A writer refuses the file too, changes nothing and keeps no lock.
    with pytest.raises(SessionCorruptError):
        await open_journal(path)
    assert data_of(path) == data
    path.write_bytes(encode_line(HEADER))
    await (await open_journal(path)).aclose()


async def test_the_first_record_must_be_a_header(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(encode_lines([msg("x"), HEADER]))
    with pytest.raises(SessionCorruptError, match=r"line 1: the first record must be a header"):
        await read_journal(path)


async def test_a_bad_session_id_inside_the_header_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(encode_line(HEADER).replace(b'"s1"', b'"../etc"'))
    with pytest.raises(SessionCorruptError, match=r"line 1: .*`\$\.session_id`"):
        await read_journal(path)


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        bytes(range(128, 256)),
        b"\x00\x01\x02\x03",
        b"plain text, no newline",
    ],
    ids=["png", "high-bytes", "low-bytes", "text-no-newline"],
)
async def test_a_binary_file_is_corrupt_at_line_1(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(data)
    with pytest.raises(SessionCorruptError) as info:
        await read_journal(path)
    assert info.value.line == 1
    with pytest.raises(SessionCorruptError):
        await open_journal(path)
    assert data_of(path) == data


async def test_a_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    newer = b'{"kind":"header","format_version":7,"layout":{"new":"thing"}}\n'
    path.write_bytes(newer + b'{"kind":"hologram","seq":1}\n')
    with pytest.raises(SessionVersionError) as info:
        await read_journal(path)
    assert (info.value.found, info.value.supported) == (7, FORMAT_VERSION)
    assert "version 7" in str(info.value)
    assert f"up to version {FORMAT_VERSION}" in str(info.value)
    assert str(path) in str(info.value)
    with pytest.raises(SessionVersionError):
        await open_journal(path)
    assert data_of(path).startswith(newer)


# -- locks -------------------------------------------------------------------------------------


async def test_a_second_writer_in_the_same_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    link = tmp_path / "link.jsonl"
    link.symlink_to(path)
    async with await new_journal(path):
        for other in (path, link, tmp_path / "." / "s.jsonl"):
            with pytest.raises(SessionLockedError, match="already open for writing in this"):
                await open_journal(other)
    # Released on close.
    async with await open_journal(link) as journal:
        await journal.append([msg("x")])
    assert (await read_journal(path)).records == [HEADER, msg("x")]


def key_of(path: Path) -> tuple[int, int]:
    info = path.stat()
    return (info.st_dev, info.st_ino)


async def test_a_claimed_file_is_refused_until_released(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"")
    key = key_of(path)
    _journal.claim(key, path, "the test")
    try:
        with pytest.raises(
            SessionLockedError,
            match=r"s\.jsonl is already open for writing in this process \(as the test\)",
        ):
            await open_journal(path)
        with pytest.raises(SessionLockedError, match=r"\Acannot delete: .*\(as the test\)\Z"):
            _journal.claim(key, path, "another", doing="delete")
    finally:
        _journal.release(key)
    async with await open_journal(path):  # the journal claims it in turn
        with pytest.raises(SessionLockedError, match=r"\(as .*s\.jsonl\)"):
            _journal.claim(key, tmp_path / "other-name", "the test")
    _journal.claim(key, path, "the test")  # closing released it
    _journal.release(key)
    _journal.release(key)  # releasing twice is harmless


async def test_create_never_goes_through_a_dangling_symlink(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "s.jsonl"
    link.symlink_to(elsewhere / "planted.jsonl")
    with pytest.raises(SessionWriteError) as caught:
        await open_journal(link, create=True)
    message = str(caught.value)
    assert str(link) in message
    assert "does not exist" in message
    assert "nothing was created" in message
    assert list(elsewhere.iterdir()) == []
    assert link.is_symlink()
    with pytest.raises(FileNotFoundError):  # without create, as before
        await open_journal(link)
    # A link to a file that exists is opened as that file.
    (elsewhere / "planted.jsonl").write_bytes(encode_line(HEADER))
    async with await open_journal(link, create=True) as journal:
        await journal.append([msg("x")])
    assert (await read_journal(elsewhere / "planted.jsonl")).records == [HEADER, msg("x")]


def test_concurrent_creators_share_one_file(tmp_path: Path) -> None:
    # Threads, not trio tasks: a second journal in this process would be refused, but
    # _open_sync is also what two processes creating one file run at the same time.
    path = tmp_path / "s.jsonl"
    start = threading.Barrier(8)
    fds: list[int] = []

    def create() -> None:
        start.wait()
        fds.append(_journal._open_sync(path, os.O_RDWR | os.O_APPEND, True))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(fds) == 8
        assert {(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in fds} == {key_of(path)}
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        for fd in fds:
            os.close(fd)


_OTHER_PROCESS = """
import sys, trio
from trurn._journal import SessionLockedError, open_journal

async def main():
    try:
        journal = await open_journal(sys.argv[1])
    except SessionLockedError as exc:
        print("locked:", exc)
        return
    await journal.aclose()
    print("opened")

trio.run(main)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
async def test_a_second_writer_in_another_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    command = [sys.executable, "-c", _OTHER_PROCESS, str(path)]
    async with await new_journal(path):
        result = await trio.run_process(command, capture_stdout=True)
        out = result.stdout.decode()
        assert out.startswith("locked:")
        assert "by another process" in out
        assert str(path) in out
    result = await trio.run_process(command, capture_stdout=True)
    assert result.stdout.decode() == "opened\n"


# -- fsync policy ------------------------------------------------------------------------------


async def test_fsync_record_syncs_every_append(tmp_path: Path) -> None:
    counter = CountingOps()
    async with await new_journal(tmp_path / "s.jsonl", fsync="record", file_ops=counter.ops()) as j:
        assert counter.fsyncs == 1
        await j.append([msg("a"), msg("b")])
        await j.append([msg("c")])
        assert counter.fsyncs == 3
        await j.sync()  # nothing left unsynced
        assert counter.fsyncs == 3
    assert counter.fsyncs == 3


async def test_fsync_turn_syncs_only_when_asked_and_on_close(tmp_path: Path) -> None:
    counter = CountingOps()
    async with await new_journal(tmp_path / "s.jsonl", fsync="turn", file_ops=counter.ops()) as j:
        await j.append([msg("a")])
        await j.append([msg("b")])
        assert counter.fsyncs == 0
        await j.sync()
        assert counter.fsyncs == 1
        await j.sync()  # nothing new since
        assert counter.fsyncs == 1
        await j.append([msg("c")])
    assert counter.fsyncs == 2  # aclose synced the last append


async def test_fsync_never_never_syncs(tmp_path: Path) -> None:
    counter = CountingOps()
    async with await new_journal(tmp_path / "s.jsonl", fsync="never", file_ops=counter.ops()) as j:
        await j.append([msg("a")])
        await j.sync()
    assert counter.fsyncs == 0


async def test_an_unknown_fsync_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync must be one of"):
        await open_journal(tmp_path / "s.jsonl", create=True, fsync="always")  # type: ignore[arg-type]
    assert not (tmp_path / "s.jsonl").exists()


# -- write errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS, errno.EIO])
async def test_a_failed_write_raises_and_leaves_the_file_valid(tmp_path: Path, error: int) -> None:
    path = tmp_path / "s.jsonl"
    await (await new_journal(path)).aclose()
    before = data_of(path)
    journal = await open_journal(path, file_ops=FileOps(write=failing(error)))
    with pytest.raises(SessionWriteError) as info:
        await journal.append([msg("lost")])
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert os.strerror(error) in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == error
    assert data_of(path) == before
    assert journal.unwritten > 0  # kept for the next attempt
    # Closing tries once more, fails the same way, and still closes and unlocks.
    with pytest.raises(SessionWriteError, match=os.strerror(error)):
        await journal.aclose()
    assert journal.closed
    assert (await read_journal(path)).records == [HEADER]
    await (await open_journal(path)).aclose()


class ShortThenFull:
    """Writes part of the first chunk, then the disk is full (ENOSPC), until ``freed``."""

    def __init__(self) -> None:
        self.freed = False

    def write(self, fd: int, data: bytes) -> int:
        if self.freed:
            return os.write(fd, data)
        if len(data) > 10:
            return os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_a_short_write_then_a_full_disk_is_cut_back(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    await (await new_journal(path)).aclose()
    before = data_of(path)
    disk = ShortThenFull()
    async with await open_journal(path, file_ops=FileOps(write=disk.write)) as journal:
        with pytest.raises(SessionWriteError, match="No space left on device"):
            await journal.append([msg("a" * 100), msg("b" * 100)])
        assert data_of(path) == before
        assert journal.offset == len(before)
        # Once there is room again the kept batch goes out first, whole, then the new one.
        disk.freed = True
        await journal.append([msg("c")])
        assert journal.unwritten == 0
    assert (await read_journal(path)).records == [HEADER, msg("a" * 100), msg("b" * 100), msg("c")]


async def test_a_failed_cut_back_stops_the_journal_until_reopened(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    await (await new_journal(path)).aclose()

    def cannot_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    disk = ShortThenFull()
    ops = FileOps(write=disk.write, truncate=cannot_truncate)
    async with await open_journal(path, file_ops=ops) as journal:
        with pytest.raises(SessionWriteError, match="part of a line may be left"):
            await journal.append([msg("a" * 100)])
        disk.freed = True
        with pytest.raises(SessionWriteError, match="refusing to append"):
            await journal.append([msg("b")])
        # Closing says that the queued record was never written.
        with pytest.raises(SessionWriteError, match="refusing to append"):
            await journal.aclose()
    contents = await read_journal(path)
    assert contents.records == [HEADER]
    assert contents.torn_tail is not None
    async with await open_journal(path) as journal:  # opening cuts the torn tail
        await journal.append([msg("c")])
    assert (await read_journal(path)).records == [HEADER, msg("c")]


async def test_a_failed_fsync_raises_and_stops_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    await (await new_journal(path)).aclose()

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    journal = await open_journal(path, fsync="record", file_ops=FileOps(fsync=broken_fsync))
    with pytest.raises(SessionWriteError, match=r"fsync failed.*in the file but may not be"):
        await journal.append([msg("a")])
    with pytest.raises(SessionWriteError, match="refusing to append"):
        await journal.append([msg("b")])
    await journal.aclose()
    assert (await read_journal(path)).records == [HEADER, msg("a")]


async def test_a_failed_fsync_at_turn_end_and_on_close(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    journal = await new_journal(path, fsync="turn", file_ops=FileOps(fsync=broken_fsync))
    with pytest.raises(SessionWriteError, match="fsync failed"):
        await journal.aclose()
    assert journal.closed
    await (await open_journal(path)).aclose()  # the lock was released anyway


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="root ignores file permissions"
)
async def test_read_only_file_and_directory(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(encode_line(HEADER))
    path.chmod(0o400)
    with pytest.raises(PermissionError):
        await open_journal(path)
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            await open_journal(directory / "s.jsonl", create=True)
    finally:
        directory.chmod(0o700)


async def test_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(fifo)
    with pytest.raises(SessionWriteError, match="not a regular file"):
        await open_journal(fifo)


# -- session ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session_id", "problem"),
    [
        ("../x", "path separator"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("", "must not be empty"),
        (".", "cannot be '.'"),
        ("..", "cannot be '..'"),
        ("x" * 200, "at most 128 characters, got 200"),
        ("a b", "contains ' '"),
        ("abc\n", "contains '\\n'"),
        ("naïve", "contains 'ï'"),
        ("a\x00b", "contains '\\x00'"),
    ],
)
def test_bad_session_ids_are_refused(session_id: str, problem: str) -> None:
    with pytest.raises(SessionIdError) as info:
        validate_session_id(session_id)
    assert problem in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, trurn.TrurnError)


@pytest.mark.parametrize(
    "session_id",
    [
        *["ok-id_1.2", "20261121100816405", "a..b", ".hidden", "x" * 128],
        # Only the device names themselves (before any dot) are reserved.
        *["console", "con-1", "COM10", "LPT0", "null", "aux_", "x.nul", ".con", "prn2.txt"],
    ],
)
def test_good_session_ids_pass(session_id: str) -> None:
    assert validate_session_id(session_id) == session_id
    assert msgspec.convert({"session_id": session_id}, Header).session_id == session_id


WINDOWS_DEVICES = ["CON", "con", "Nul", "nul.txt", "Con.1", "aux", "PRN", "COM1", "com9", "LPT1"]


@pytest.mark.parametrize("session_id", [*WINDOWS_DEVICES, "lpt5.tar.gz"])
def test_windows_device_names_are_refused_on_every_platform(session_id: str) -> None:
    with pytest.raises(SessionIdError) as info:
        validate_session_id(session_id)
    device = session_id.partition(".")[0].upper()
    assert f"cannot be {session_id!r}: {device} is a reserved device name on Windows" in str(
        info.value
    )
    assert not is_valid_session_id(session_id)


def accepted(session_id: str) -> bool:
    try:
        validate_session_id(session_id)
    except SessionIdError:
        return False
    return True


@given(
    st.one_of(
        st.text(alphabet="aAcClLmMnNoOpPrRuUxX0159._-/ ", max_size=8),
        st.tuples(st.sampled_from(WINDOWS_DEVICES), st.text(alphabet="a1.", max_size=4)).map(
            "".join
        ),
    )
)
def test_is_valid_session_id_agrees_with_validate_session_id(session_id: str) -> None:
    assert is_valid_session_id(session_id) == accepted(session_id)


def test_a_session_id_that_is_not_a_string() -> None:
    with pytest.raises(SessionIdError, match="must be a str, got int"):
        validate_session_id(5)  # type: ignore[arg-type]


async def test_reading_a_session_parses_it_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long session takes tens of milliseconds to decode: the other tasks go on meanwhile.
    parsed_in: list[threading.Thread] = []
    parse = _journal.parse_journal

    def recording(data: bytes, path: str | os.PathLike[str]) -> _journal.JournalContents:
        parsed_in.append(threading.current_thread())
        return parse(data, path)

    monkeypatch.setattr(_journal, "parse_journal", recording)
    path = tmp_path / "s.jsonl"
    async with trurn.Context(path) as context:
        context.append(trurn.UserMessage("hi"))
    async with trurn.Context(path) as context:
        assert [m.content for m in context.messages] == ["hi"]  # type: ignore[union-attr]
    assert len((await _journal.read_journal(path)).records) == 2
    assert len(parsed_in) == 3
    assert threading.main_thread() not in parsed_in
