"""A Context bound to a JSONL session file: write-through, restore, repair, cancellation."""

from __future__ import annotations

import errno
import functools
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from fakes import HANG, FakeProvider, assert_valid_history, text_reply, tool_reply

import trurn
from trurn import events
from trurn._chunks import TextDelta
from trurn._context import SessionRecoveryWarning, unanswered_tool_calls
from trurn._journal import LINGER, FileOps, open_journal, read_journal
from trurn._messages import AssistantMessage, Message, ToolCall, ToolMessage, UserMessage
from trurn._records import Header, MessageRecord, TurnEnd, TurnStart


@trurn.tool
async def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"sunny in {city}"


@trurn.tool
async def slow(seconds: float) -> str:
    """Takes a while."""
    await trio.sleep(seconds)
    return "done"


async def reload(path: Path) -> list[Message]:
    async with trurn.Context(path) as context:
        return list(context.messages)


async def test_a_turn_is_written_through_and_restored(tmp_path: Path) -> None:
    path = tmp_path / "s1.jsonl"
    provider = FakeProvider(
        [tool_reply(("c1", "get_weather", '{"city": "Oslo"}')), text_reply("Sunny.")]
    )
    async with trurn.Context(path) as context:
        result = await trurn.Agent(provider, tools=[get_weather]).run_turn(context, "Oslo?")
    contents = await read_journal(path)
    kinds = [type(r).__name__ for r in contents.records]
    assert kinds == [
        "Header",
        "TurnStart",
        "MessageRecord",
        "MessageRecord",
        "MessageRecord",
        "MessageRecord",
        "TurnEnd",
    ]
    header = contents.records[0]
    assert isinstance(header, Header)
    assert header.session_id == "s1"
    end = contents.records[-1]
    assert isinstance(end, TurnEnd)
    assert (end.turn_id, end.stop_reason) == (result.turn_id, "completed")
    seqs = [r.seq for r in contents.records[1:]]
    assert seqs == sorted(seqs)
    assert seqs[0] > 0
    assert await reload(path) == result.messages
    assert (path.stat().st_mode & 0o777) == 0o600


async def test_a_second_turn_after_restore_appends(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    async with trurn.Context(path) as context:
        await trurn.Agent(FakeProvider([text_reply("one")])).run_turn(context, "a")
    provider = FakeProvider([text_reply("two")])
    async with trurn.Context(path) as context:
        await trurn.Agent(provider).run_turn(context, "b")
    # The second request carried the restored history.
    assert [type(m).__name__ for m in provider.requests[0].messages] == [
        "UserMessage",
        "AssistantMessage",
        "UserMessage",
    ]
    assert [m.content for m in await reload(path)] == ["a", "one", "b", "two"]


async def test_a_path_context_must_be_opened_first(tmp_path: Path) -> None:
    context = trurn.Context(tmp_path / "s.jsonl")
    with pytest.raises(RuntimeError, match="not open"):
        await trurn.Agent(FakeProvider([])).run_turn(context, "x")
    assert not (tmp_path / "s.jsonl").exists()


async def test_one_writer_per_session_file(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    async with trurn.Context(path):
        with pytest.raises(trurn.SessionLockedError, match="already open"):
            await trurn.Context(path).restore()


async def test_restore_gives_a_crashed_turns_tool_calls_an_interrupted_result(
    tmp_path: Path,
) -> None:
    # A process killed between a tool call and its result: the file ends with the call.
    path = tmp_path / "crash.jsonl"
    call = ToolCall(id="c1", name="get_weather", arguments={"city": "Rome"})
    async with await open_journal(path, create=True) as journal:
        await journal.append(
            [
                Header(session_id="crash"),
                TurnStart(turn_id="t1"),
                MessageRecord(message=UserMessage("Rome?")),
                MessageRecord(message=AssistantMessage(tool_calls=[call])),
            ]
        )
    messages = await reload(path)
    assert_valid_history(messages)
    last = messages[-1]
    assert isinstance(last, ToolMessage)
    assert (last.tool_call_id, last.status) == ("c1", "interrupted")
    # The repair was written, so reading the file again without restoring shows it: the
    # result, and an end marker for the turn the crash left open.
    contents = await read_journal(path)
    repaired, end = contents.records[-2:]
    assert isinstance(repaired, MessageRecord)
    assert repaired.message == last
    assert isinstance(end, TurnEnd)
    assert (end.turn_id, end.stop_reason) == ("t1", "interrupted")
    assert repaired.seq == end.seq == max(r.seq for r in contents.records)


async def test_a_torn_last_line_is_reported_dropped_and_the_next_turn_appends_cleanly(
    tmp_path: Path,
) -> None:
    path = tmp_path / "torn.jsonl"
    async with trurn.Context(path) as context:
        await trurn.Agent(FakeProvider([text_reply("one")])).run_turn(context, "a")
    with path.open("ab") as file:
        file.write(b'{"kind":"message","seq":9,"message":{"role":"user","con')
    with pytest.warns(SessionRecoveryWarning, match="dropped a torn last line of 55 bytes"):
        context = await trurn.Context(path).restore()
    async with context:
        assert context.torn_tail is not None
        assert context.torn_tail.startswith(b'{"kind":"message"')
        assert [m.content for m in context.messages] == ["a", "one"]
        await trurn.Agent(FakeProvider([text_reply("two")])).run_turn(context, "b")
    contents = await read_journal(path)
    assert contents.torn_tail is None
    assert [m.content for m in await reload(path)] == ["a", "one", "b", "two"]


async def test_a_restore_that_raises_closes_the_file_and_leaves_the_context_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "torn.jsonl"
    async with trurn.Context(path) as context:
        context.append(UserMessage("hello"))
    with path.open("ab") as file:
        file.write(b'{"kind":"mess')
    context = trurn.Context(path, messages=[UserMessage("before")])
    with warnings.catch_warnings():
        warnings.simplefilter("error", SessionRecoveryWarning)  # as python -W error does
        with pytest.raises(SessionRecoveryWarning, match="dropped a torn last line"):
            async with context:
                pytest.fail("the block must not run")
    assert not context.is_open
    assert [m.content for m in context.messages] == ["before"]
    assert context.torn_tail is None
    assert context.last_seq == 0
    # The lock and the claim were released: the file opens again, its tail cut off.
    async with trurn.Context(path) as again:
        assert [m.content for m in again.messages] == ["hello"]
        assert again.torn_tail is None
    # And the context itself can be restored now.
    async with context:
        assert [m.content for m in context.messages] == ["hello"]


async def test_a_corrupt_line_names_the_file_and_line_and_nothing_is_rewritten(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.jsonl"
    async with trurn.Context(path) as context:
        await trurn.Agent(FakeProvider([text_reply("one")])).run_turn(context, "a")
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(2, b'{"kind": "message", "message": {"role": "wizard"}}\n')
    path.write_bytes(b"".join(lines))
    before = path.read_bytes()
    with pytest.raises(trurn.SessionCorruptError, match=r"bad\.jsonl.*line 3") as caught:
        await trurn.Context(path).restore()
    assert caught.value.line == 3
    assert path.read_bytes() == before


# --- cancellation at every stage ----------------------------------------------------------
#
# Cancels are driven by events, not by time: file writes run in worker threads, and a
# virtual clock jumps while they do.


def scripted() -> FakeProvider:
    first = [
        [TextDelta("Let me ")],
        [TextDelta("check.")],
        *tool_reply(("c1", "slow", '{"seconds": 2}'), ("c2", "get_weather", '{"city": "A"}')),
    ]
    return FakeProvider([first, text_reply("", "All ", "done.")])


async def run_cancelled_at(path: Path, k: int | None) -> list[events.Event]:
    """Run the scripted turn, cancelling it when its ``k``-th event is published."""
    seen: list[events.Event] = []
    with trio.CancelScope() as scope:

        def on_event(event: events.Event) -> None:
            seen.append(event)
            if len(seen) == k:
                scope.cancel()

        async with trurn.Context(path) as context:
            agent = trurn.Agent(scripted(), tools=[slow, get_weather])
            await agent.run_turn(context, "go", on_event=on_event)
    return seen


async def test_a_turn_cancelled_at_any_event_leaves_a_valid_file(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    everything = await run_cancelled_at(tmp_path / "whole.jsonl", None)
    assert isinstance(everything[-1], events.TurnFinished)
    for k in range(1, len(everything)):
        path = tmp_path / f"cancel-{k}.jsonl"
        seen = await run_cancelled_at(path, k)
        assert isinstance(seen[-1], events.TurnFinished), k
        messages = await reload(path)
        assert_valid_history(messages)
        assert messages[0] == UserMessage("go")
        contents = await read_journal(path)
        end = contents.records[-1]
        assert isinstance(end, TurnEnd), k  # every turn is closed in the file
        assert end.stop_reason == "aborted", k
        assert contents.torn_tail is None


async def test_cancelled_mid_stream_the_partial_reply_is_on_disk(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "partial.jsonl"
    provider = FakeProvider([[[TextDelta("Half an ")], [TextDelta("answer")], HANG]])
    with trio.CancelScope() as scope:

        def on_event(event: events.Event) -> None:
            if isinstance(event, events.AssistantDelta) and event.text == "answer":
                scope.cancel()

        async with trurn.Context(path) as context:
            await trurn.Agent(provider).run_turn(context, "x", on_event=on_event)
    messages = await reload(path)
    last = messages[-1]
    assert isinstance(last, AssistantMessage)
    assert (last.content, last.aborted) == ("Half an answer", True)
    contents = await read_journal(path)
    end = contents.records[-1]
    assert isinstance(end, TurnEnd)
    assert end.stop_reason == "aborted"


async def test_a_restored_session_continues_its_seq_numbers(tmp_path: Path) -> None:
    path = tmp_path / "seq.jsonl"
    async with trurn.Context(path) as context:
        await trurn.Agent(FakeProvider([text_reply("one")])).run_turn(context, "a")
    first = (await read_journal(path)).records
    # A new process: a new agent, whose own seq starts from 0.
    async with trurn.Context(path) as context:
        restored_seq = context.last_seq
        assert restored_seq == max(r.seq for r in first)
        seen: list[events.Event] = []
        agent = trurn.Agent(FakeProvider([text_reply("two")]))
        await agent.run_turn(context, "b", on_event=seen.append)
    assert seen[0].seq == restored_seq + 1
    assert context.last_seq == seen[-1].seq
    seqs = [r.seq for r in (await read_journal(path)).records[1:]]
    assert seqs == sorted(seqs)


async def test_a_closed_context_refuses_new_messages(tmp_path: Path) -> None:
    async with trurn.Context(tmp_path / "s.jsonl") as context:
        pass
    with pytest.raises(trio.ClosedResourceError, match="was closed"):
        context.append(UserMessage("lost"))


async def test_a_file_name_that_is_not_a_session_id_says_where_the_id_came_from(
    tmp_path: Path,
) -> None:
    with pytest.raises(trurn.SessionIdError, match=r"comes from the file name 'my notes\.jsonl'"):
        trurn.Context(tmp_path / "my notes.jsonl")
    context = trurn.Context(tmp_path / "my notes.jsonl", session_id="notes")
    assert context.session_id == "notes"


async def test_create_false_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await trurn.Context(tmp_path / "gone.jsonl", create=False).restore()
    assert not (tmp_path / "gone.jsonl").exists()


# --- the background writer ----------------------------------------------------------------


async def until(done: Callable[[], bool]) -> None:
    """Wait (real time, at most 5 s) for what the writer thread does in the background."""
    with trio.fail_after(5):
        while not done():  # noqa: ASYNC110 (a thread's progress, no Event to wait on)
            await trio.sleep(LINGER / 4)


def writer_threads() -> int:
    """How many threads are running a journal's background writer loop right now."""
    count = 0
    for frame in sys._current_frames().values():
        current = frame
        while current is not None:
            if current.f_code.co_name == "_serve_sync":
                count += 1
                break
            current = current.f_back
    return count


def contents_now(path: Path) -> list[str]:
    """The message contents in the file right now (a torn last line is left out)."""
    records = trurn._journal.parse_journal(path.read_bytes(), path).records
    return [str(r.message.content) for r in records if isinstance(r, MessageRecord)]


class Gate:
    """File writes that wait, in their worker thread, until the test opens the gate."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.writes = 0

    def write(self, fd: int, data: bytes) -> int:
        self.writes += 1
        assert self.open.wait(10)
        return os.write(fd, data)


async def test_inside_async_with_a_flush_hands_over_and_sync_waits(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    await (await trurn.Context(path).restore()).aclose()  # the header, written ungated
    gate = Gate()
    async with trurn.Context(path, _file_ops=FileOps(write=gate.write)) as context:
        context.append(UserMessage("a"))
        with trio.testing.assert_no_checkpoints():
            await context.flush()  # returns while the write waits at the gate
        assert contents_now(path) == []
        gate.open.set()
        # The writer gets it into the file without anyone waiting for it.
        await until(lambda: contents_now(path) == ["a"])
        assert writer_threads() == 1
        context.append(UserMessage("b"))
        await context.flush()
        context.append(UserMessage("c"))
        await context.sync()
        assert contents_now(path) == ["a", "b", "c"]
    assert writer_threads() == 0  # closing stopped it; nothing runs on
    assert not context.is_open


async def test_a_bare_restore_writes_at_each_flush_without_a_thread(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    context = await trurn.Context(path).restore()
    try:
        context.append(UserMessage("a"))
        await context.flush()
        assert contents_now(path) == ["a"]  # written before flush returned
        assert writer_threads() == 0
        # The same context can then be used with async with (what SessionStore gives).
        async with context:
            await trurn.Agent(FakeProvider([text_reply("one")])).run_turn(context, "b")
            assert writer_threads() == 1
        assert contents_now(path) == ["a", "b", "one"]
    finally:
        await context.aclose()
    assert writer_threads() == 0


async def keep_then_fail(path: Path) -> None:
    async with trurn.Context(path) as context:
        context.append(UserMessage("kept"))
        raise KeyError("mine")


async def enter_twice(path: Path) -> None:
    async with trurn.Context(path) as context, context:
        pass


async def test_errors_and_cancels_leave_async_with_unwrapped(tmp_path: Path) -> None:
    # The writer's nursery must not turn the block's own exception into a group.
    with pytest.raises(KeyError, match="mine"):
        await keep_then_fail(tmp_path / "a.jsonl")
    assert contents_now(tmp_path / "a.jsonl") == ["kept"]
    with trio.CancelScope() as scope:
        async with trurn.Context(tmp_path / "b.jsonl") as context:
            context.append(UserMessage("kept"))
            await context.flush()
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert contents_now(tmp_path / "b.jsonl") == ["kept"]
    assert writer_threads() == 0
    with pytest.raises(RuntimeError, match="already"):
        await enter_twice(tmp_path / "c.jsonl")


class Disk:
    """Writes that go to the OS until ``full``; then a short write and ENOSPC."""

    def __init__(self) -> None:
        self.full = False
        self.refused = 0

    def write(self, fd: int, data: bytes) -> int:
        if not self.full:
            return os.write(fd, data)
        self.refused += 1
        if len(data) > 40 and self.refused == 1:
            return os.write(fd, data[:20])  # part of a line, which must be cut back
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_a_disk_that_fills_up_mid_turn_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    disk = Disk()

    @trurn.tool
    async def fill_the_disk() -> str:
        """Fills the disk."""
        disk.full = True
        return "filled"

    def provider(tool: str) -> FakeProvider:
        return FakeProvider([tool_reply(("c1", tool, "{}")), text_reply("after the tool")])

    tools = [fill_the_disk, get_weather]
    async with trurn.Context(path, _file_ops=FileOps(write=disk.write)) as context:
        agent = trurn.Agent(provider("get_weather"), tools=tools)
        done = await agent.run_turn(context, "first")  # acknowledged: synced at its end
        assert done.stop_reason == "completed"
        acknowledged = contents_now(path)
        assert len(acknowledged) == 4

        agent = trurn.Agent(provider("fill_the_disk"), tools=tools)
        with pytest.raises(trurn.SessionWriteError, match="No space left on device"):
            await agent.run_turn(context, "second")
        assert disk.refused >= 1
        # The file is valid (the short write was cut back) and holds every acknowledged
        # record; what the full disk refused is kept in memory, queued.
        in_file = await read_journal(path)
        assert in_file.torn_tail is None
        assert contents_now(path)[:4] == acknowledged
        assert_valid_history(context.messages)  # the aborted turn closed what it left open

        disk.full = False  # room again: the queued records go out, in order
        await context.sync()
        assert contents_now(path) == [str(m.content) for m in context.messages]
    records = (await read_journal(path)).records
    ends = [r for r in records if isinstance(r, TurnEnd)]
    assert len(ends) == 2  # each turn ended once in the file
    messages = await reload(path)
    assert_valid_history(messages)
    assert [str(m.content) for m in messages][:5] == [*acknowledged, "second"]


# --- a process killed while it writes ------------------------------------------------------

_CHILD = """
import sys
import trio
sys.path.insert(0, sys.argv[2])
from fakes import FakeProvider, text_reply, tool_reply
import trurn

@trurn.tool
async def lookup(key: str) -> str:
    \"\"\"Look a key up.\"\"\"
    await trio.sleep(0.03)  # longer than LINGER: the turn's first records are written
    return "the value of " + key * 40

async def main(path):
    async with trurn.Context(path) as context:
        for turn in range(1, 10_000):
            calls = [(f"c{turn}{k}", "lookup", '{"key": "%s"}' % k) for k in "ab"]
            provider = FakeProvider([tool_reply(*calls), text_reply(f"answer {turn}")])
            agent = trurn.Agent(provider, tools=[lookup])
            await agent.run_turn(context, f"question {turn}")
            print(turn, flush=True)  # acknowledged: run_turn returned after the sync

trio.run(main, sys.argv[1])
"""


async def run_and_kill(path: Path, acks: int, delay: float) -> int:
    """Run turns in a child process; SIGKILL it ``delay`` s after its ``acks``-th
    acknowledged turn; the number of turns it acknowledged."""
    command = [sys.executable, "-c", _CHILD, str(path), str(Path(__file__).parent)]
    seen = 0
    async with trio.open_nursery() as nursery:
        run = functools.partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
        process = await nursery.start(run)
        assert process.stdout is not None
        buffer = b""
        while seen < acks:
            data = await process.stdout.receive_some()
            assert data, "the child ended before it was killed"
            buffer += data
            seen = buffer.count(b"\n")
        await trio.sleep(delay)
        process.send_signal(signal.SIGKILL)
        # Acknowledgments printed before the kill count too.
        while data := await process.stdout.receive_some():
            buffer += data
    assert process.returncode == -signal.SIGKILL
    return buffer.count(b"\n")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
async def test_a_process_killed_mid_append_loses_no_acknowledged_turn(tmp_path: Path) -> None:
    # A turn takes about 35 ms, 30 of them in its tools: kills land before, during
    # and after the tool calls of the turn after the last acknowledged one.
    moments = [(1, 0.0), (1, 0.015), (2, 0.033), (1, 0.05)]
    acknowledged: dict[int, int] = {}

    async def one(number: int, acks: int, delay: float) -> None:
        acknowledged[number] = await run_and_kill(tmp_path / f"k{number}.jsonl", acks, delay)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:  # the children run side by side
            for number, (acks, delay) in enumerate(moments):
                nursery.start_soon(one, number, acks, delay)
    for number, turns in acknowledged.items():
        path = tmp_path / f"k{number}.jsonl"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SessionRecoveryWarning)  # a torn line is fine
            async with trurn.Context(path) as context:
                messages = list(context.messages)
        assert unanswered_tool_calls(messages) == []
        assert_valid_history(messages)
        texts = [m.content for m in messages]
        for turn in range(1, turns + 1):  # every acknowledged turn, whole and in order
            start = texts.index(f"question {turn}")
            assert texts[start + 2 : start + 5] == [
                "the value of " + "a" * 40,
                "the value of " + "b" * 40,
                f"answer {turn}",
            ], (number, turn)
        ends = [r for r in (await read_journal(path)).records if isinstance(r, TurnEnd)]
        assert [e.stop_reason for e in ends[:turns]] == ["completed"] * turns


class CancelledAtTheEnd(trurn.Context):
    """A session whose end-of-turn sync is where the caller's cancel lands, before or
    after the records (the end marker among them) are handed to the writer."""

    scope: trio.CancelScope | None = None
    after_handover = False

    async def sync(self) -> None:
        if self.scope is not None and self._open_turn is not None:
            if self.after_handover:
                await self.flush()  # inside ``async with``: hands over, does not wait
            self.scope.cancel()
        await super().sync()


@pytest.mark.parametrize(
    ("after_handover", "stop_reason"), [(True, "completed"), (False, "aborted")]
)
async def test_a_cancel_during_the_final_sync_reports_what_the_file_says(
    tmp_path: Path, after_handover: bool, stop_reason: str
) -> None:
    path = tmp_path / "s.jsonl"
    seen: list[events.Event] = []
    agent = trurn.Agent(FakeProvider([text_reply("done")]))
    async with CancelledAtTheEnd(path) as context:
        context.after_handover = after_handover
        with trio.CancelScope() as scope:
            context.scope = scope
            await agent.run_turn(context, "hi", on_event=seen.append)
        assert scope.cancelled_caught
        context.scope = None
    # Once the end marker is with the writer, the file will say the turn completed,
    # and so do the events; before that, both say it was aborted.
    ends = [r for r in (await read_journal(path)).records if isinstance(r, TurnEnd)]
    assert [end.stop_reason for end in ends] == [stop_reason]
    finished = [e for e in seen if isinstance(e, events.TurnFinished)]
    assert [e.stop_reason for e in finished] == [stop_reason]
    assert any(isinstance(e, events.RunAborted) for e in seen) == (stop_reason == "aborted")
