"""A Context bound to a JSONL session file: write-through, restore, repair, cancellation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing
from fakes import HANG, FakeProvider, text_reply, tool_reply

import trurn
from trurn import events
from trurn._chunks import TextDelta
from trurn._context import SessionRecoveryWarning
from trurn._journal import open_journal, read_journal
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


def assert_valid(messages: Sequence[Message]) -> None:
    """What a provider accepts: every tool call answered, no empty assistant reply."""
    pending: set[str] = set()
    for message in messages:
        if isinstance(message, AssistantMessage):
            assert not pending, pending
            pending = {call.id for call in message.tool_calls}
            if message.aborted:
                assert message.content
                assert message.content.strip()
        elif isinstance(message, ToolMessage):
            assert message.tool_call_id in pending
            pending.discard(message.tool_call_id)
        else:
            assert not pending, pending
    assert not pending, pending


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
    assert_valid(messages)
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
        assert_valid(messages)
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
        assert context.last_seq == max(r.seq for r in first)
        seen: list[events.Event] = []
        agent = trurn.Agent(FakeProvider([text_reply("two")]))
        await agent.run_turn(context, "b", on_event=seen.append)
    assert seen[0].seq == context.last_seq + 1
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
