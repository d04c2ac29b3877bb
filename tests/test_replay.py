"""Replay for reconnecting subscribers: missed events out of a session, then live ones."""

from __future__ import annotations

import errno
import os
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing
from fakes import FakeProvider, text_reply, tool_reply
from hypothesis import given, settings
from hypothesis import strategies as st

import trurn
from trurn import events
from trurn._broadcast import Broadcast, Policy
from trurn._chunks import Finish, ToolCallDelta
from trurn._journal import FileOps, open_journal, read_journal
from trurn._messages import AssistantMessage, ToolCall, UserMessage
from trurn._records import EventRecord, Header, MessageRecord, Record, TurnEnd, TurnStart
from trurn._replay import (
    DELTA_EVENT_TYPES,
    events_to_persist,
    missed_events,
    persisted_event_types,
    session_records,
    subscribe_since,
)

SYNTHESISED = {"turn_started", "assistant_final", "tool_exit", "turn_finished"}


def tag(event: events.BaseEvent) -> str:
    name = type(event).__struct_config__.tag
    assert isinstance(name, str)
    return name


def seqs(stream: Sequence[events.BaseEvent]) -> list[int]:
    return [event.seq for event in stream]


def assert_increasing(stream: Sequence[events.BaseEvent]) -> None:
    assert all(a < b for a, b in zip(seqs(stream), seqs(stream)[1:], strict=False)), seqs(stream)


@trurn.tool
async def echo(text: str) -> str:
    """Say it back."""
    return text


class Recorder:
    """An ``on_event`` callback: keeps the uninterrupted stream and, when ``persist`` is
    set, queues each event as an ``EventRecord`` in the context, standing in for the
    ``Context.record_events`` the emitter will call."""

    def __init__(self, context: trurn.Context | None = None, persist: bool = False) -> None:
        self.stream: list[events.Event] = []
        self.context = context
        self.persist = persist

    def __call__(self, event: events.Event) -> None:
        self.stream.append(event)
        if self.persist and self.context is not None:
            self.context._pending.append(EventRecord(event=event, seq=event.seq))


def key(event: events.BaseEvent) -> tuple[object, ...]:
    """What identifies the real event a synthesised one stands for."""
    if isinstance(event, events.ToolExit):
        return ("tool_exit", event.tool_call_id)
    if isinstance(event, events.AssistantFinal):
        return ("assistant_final", event.turn_id, msgspec.json.encode(event.message))
    return (tag(event), event.turn_id)


def check_synthesised(replay: Sequence[events.Event], stream: Sequence[events.Event]) -> None:
    """The synthesised replay of a whole session against the stream it stands for.

    Same events of the synthesised kinds, each once; ``turn_started``,
    ``assistant_final`` and ``turn_finished`` equal to the real ones, seq included;
    each ``tool_exit`` equal but for its seq, which lies after its reply's
    ``assistant_final`` and no later than the last real exit of that reply's calls.
    """
    assert_increasing(replay)
    real = [event for event in stream if tag(event) in SYNTHESISED]
    assert Counter(map(key, replay)) == Counter(map(key, real))
    by_key = {key(event): event for event in real}
    finals = [event for event in stream if isinstance(event, events.AssistantFinal)]
    exits = {e.tool_call_id: e for e in stream if isinstance(e, events.ToolExit)}
    for event in replay:
        original = by_key[key(event)]
        if not isinstance(event, events.ToolExit):
            assert event == original
            continue
        assert msgspec.structs.replace(event, seq=original.seq) == original
        final = next(
            f for f in finals if event.tool_call_id in {c.id for c in f.message.tool_calls}
        )
        last_exit = max(exits[call.id].seq for call in final.message.tool_calls)
        assert final.seq < event.seq <= last_exit


# -- which events are persisted ----------------------------------------------------------


def test_persist_false_keeps_nothing_and_true_all_but_deltas() -> None:
    assert persisted_event_types(False) == frozenset()
    kept = persisted_event_types(True)
    for kind in (events.AssistantFinal, events.TurnFinished, events.ToolOutput, events.RunAborted):
        assert kind in kept
    for delta in (events.AssistantDelta, events.AssistantReasoningDelta, events.ToolCallDelta):
        assert delta not in kept
    assert {"assistant_delta", "assistant_reasoning_delta", "tool_call_delta"} == DELTA_EVENT_TYPES


def test_persist_names_pick_exactly_those_types_deltas_included() -> None:
    kinds = persisted_event_types(["assistant_delta", "turn_finished"])
    assert kinds == {events.AssistantDelta, events.TurnFinished}
    batch: list[events.BaseEvent] = [
        events.AssistantDelta(text="a"),
        events.MessageSent(step=1),
        events.TurnFinished(stop_reason="completed", usage=trurn.Usage()),
    ]
    chosen = events_to_persist(kinds, batch)
    assert chosen == [batch[0], batch[2]]
    assert events_to_persist(persisted_event_types(True), batch) == batch[1:]


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("assistant_final", "{'assistant_final'}"),
        (["assistant_final", "nope"], "['nope']"),
        ([1], "1"),
    ],
)
def test_bad_persist_settings_are_refused_by_name(value: object, named: str) -> None:
    with pytest.raises(ValueError, match="persist_events") as info:
        persisted_event_types(value)  # type: ignore[arg-type]
    assert named in str(info.value)


# -- the pure replay ---------------------------------------------------------------------


def cut_off_reply(call_id: str) -> list[object]:
    """A reply cut off (finish "length") in the middle of a tool call's arguments."""
    return [
        [ToolCallDelta(index=0, id=call_id, name="echo"), ToolCallDelta(index=0, arguments='{"t')],
        [Finish("length")],
    ]


async def play(
    path: Path, replies: Sequence[object], prompts: Sequence[str], persist: Sequence[bool]
) -> tuple[list[events.Event], list[Record]]:
    """Run one turn per prompt on a fresh session; the stream and the file's records."""
    provider = FakeProvider(replies)  # type: ignore[arg-type]
    agent = trurn.Agent(provider, tools=[echo])
    stream: list[events.Event] = []
    async with trurn.Context(path) as context:
        for prompt, keep in zip(prompts, persist, strict=True):
            recorder = Recorder(context, persist=keep)
            await agent.run_turn(context, prompt, on_event=recorder)
            stream.extend(recorder.stream)
    return stream, list((await read_journal(path)).records)


async def test_synthesised_replay_of_a_session_with_tools_and_a_cut_off(tmp_path: Path) -> None:
    replies = [
        tool_reply(("c1", "echo", '{"text": "a"}'), ("c2", "nope", "{}"), text="Looking."),
        cut_off_reply("c3"),
        text_reply("Done."),
    ]
    stream, records = await play(tmp_path / "s.jsonl", replies, ["one", "two"], [False, False])
    replay = missed_events(records, 0)
    check_synthesised(replay, stream)
    assert [tag(e) for e in replay] == [
        "turn_started",
        "assistant_final",
        "tool_exit",
        "tool_exit",
        "assistant_final",
        "tool_exit",
        "turn_finished",
        "turn_started",
        "assistant_final",
        "turn_finished",
    ]
    # The exits of the cut-off reply are published right after its assistant_final:
    # the replay gives them their real seqs.
    cut = next(e for e in stream if isinstance(e, events.ToolExit) and e.tool_call_id == "c3")
    assert next(e for e in replay if key(e) == key(cut)) == cut
    # The first turn's prompt and the second turn's final text come through.
    assert isinstance(replay[0], events.TurnStarted)
    assert replay[0].input == "one"
    assert isinstance(replay[-1], events.TurnFinished)
    assert replay[-1].text == "Done."


async def test_persisted_turns_replay_exactly_and_others_are_synthesised(tmp_path: Path) -> None:
    replies = [tool_reply(("c1", "echo", '{"text": "a"}')), text_reply("A."), text_reply("B", "!")]
    stream, records = await play(tmp_path / "s.jsonl", replies, ["one", "two"], [False, True])
    second = stream[-1].turn_id
    replay = missed_events(records, 0)
    first_part = [e for e in replay if e.turn_id != second]
    check_synthesised(first_part, [e for e in stream if e.turn_id != second])
    assert [e for e in replay if e.turn_id == second] == [e for e in stream if e.turn_id == second]
    assert_increasing(replay)
    # From a seq inside the persisted turn: exactly what came after it.
    since = next(e.seq for e in stream if isinstance(e, events.AssistantDelta))
    assert missed_events(records, since) == [e for e in stream if e.seq > since]


async def test_an_aborted_turn_is_replayed_with_its_cancelled_results(tmp_path: Path) -> None:
    started = trio.Event()

    @trurn.tool
    async def wait() -> str:
        """Waits until cancelled."""
        started.set()
        await trio.sleep_forever()
        return "never"

    path = tmp_path / "s.jsonl"
    agent = trurn.Agent(FakeProvider([tool_reply(("c1", "wait", "{}"))]), tools=[wait])
    recorder = Recorder()
    async with trurn.Context(path) as context, trio.open_nursery() as nursery:
        nursery.start_soon(partial(agent.run_turn, context, "go", on_event=recorder))
        await started.wait()
        nursery.cancel_scope.cancel()
    replay = missed_events((await read_journal(path)).records, 0)
    assert [tag(e) for e in replay] == [
        "turn_started",
        "assistant_final",
        "tool_exit",
        "turn_finished",
    ]
    check_kinds = [e for e in replay if not isinstance(e, events.TurnFinished)]
    check_synthesised(check_kinds, [e for e in recorder.stream if tag(e) != "turn_finished"])
    finished = replay[-1]
    real = recorder.stream[-1]
    assert isinstance(finished, events.TurnFinished)
    assert isinstance(real, events.TurnFinished)
    assert finished.stop_reason == real.stop_reason == "aborted"
    # The end marker holds the seq of the real turn_finished, which came after the
    # closing tool_exit and run_aborted.
    assert finished.seq == real.seq


async def test_repairs_after_a_crash_replay_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    call = ToolCall(id="c1", name="echo", arguments={"text": "a"})
    async with await open_journal(path, create=True) as journal:
        await journal.append(
            [
                Header(session_id="s"),
                TurnStart(turn_id="t1", seq=1),
                MessageRecord(message=UserMessage("hi"), seq=1),
                MessageRecord(message=AssistantMessage(tool_calls=[call]), seq=4),
            ]
        )
    async with trurn.Context(path):  # restore adds an "interrupted" result and turn end
        pass
    records = (await read_journal(path)).records
    assert len(records) == 6
    replay = missed_events(records, 0)
    assert [(tag(e), e.seq) for e in replay] == [("turn_started", 1), ("assistant_final", 5)]


@settings(max_examples=25, deadline=None)
@given(
    turns=st.lists(
        st.tuples(
            st.lists(st.lists(st.booleans(), min_size=1, max_size=3), max_size=3),
            st.booleans(),
            st.booleans(),
        ),
        min_size=1,
        max_size=3,
    ),
    where=st.floats(0, 1),
)
def test_replay_of_random_sessions(
    turns: list[tuple[list[list[bool]], bool, bool]], where: float
) -> None:
    """Turns of random shapes: tool rounds of 1-3 calls (known tool or not), ending in a
    text reply or a cut-off one, each turn persisted or not."""
    replies: list[object] = []
    for number, (rounds, cut_off, _) in enumerate(turns):
        for step, calls in enumerate(rounds):
            replies.append(
                tool_reply(
                    *(
                        (f"c{number}_{step}_{i}", "echo" if ok else "nope", '{"text": "x"}')
                        for i, ok in enumerate(calls)
                    )
                )
            )
        replies.append(cut_off_reply(f"c{number}_cut") if cut_off else text_reply("ok", "o", "k"))
    prompts = [f"prompt {n}" for n in range(len(turns))]
    persist = [keep for _, _, keep in turns]
    with tempfile.TemporaryDirectory() as tmp:
        stream, records = trio.run(play, Path(tmp) / "s.jsonl", replies, prompts, persist)
    persisted_turns = {r.event.turn_id for r in records if isinstance(r, EventRecord)}
    full = missed_events(records, 0)
    assert_increasing(full)
    exact = [e for e in full if e.turn_id in persisted_turns]
    assert exact == [e for e in stream if e.turn_id in persisted_turns]
    synthesised = [e for e in stream if e.turn_id not in persisted_turns]
    check_synthesised([e for e in full if e.turn_id not in persisted_turns], synthesised)
    # Replaying from any seq gives the tail of the full replay.
    since = int(where * (stream[-1].seq + 1))
    assert missed_events(records, since) == [e for e in full if e.seq > since]


def test_since_must_be_a_seq() -> None:
    for bad in (-1, True, 1.5, "3"):
        with pytest.raises(ValueError, match="since must be an event seq"):
            missed_events([], bad)  # type: ignore[arg-type]


# -- subscribing from a seq --------------------------------------------------------------


async def read_until_finished(
    channel: trio.MemoryReceiveChannel[events.Event],
) -> list[events.Event]:
    got: list[events.Event] = []
    async for event in channel:
        got.append(event)
        if isinstance(event, events.TurnFinished):
            break
    return got


async def reconnect_mid_turn(
    path: Path, persist: bool
) -> tuple[list[events.Event], list[events.Event], list[events.Event], int, int]:
    """Two turns; a subscriber follows the first live, drops, and reconnects from its
    last seq while the second turn waits in a tool, then follows it to its end.

    Returns the uninterrupted stream, what the subscriber saw before dropping, what it
    saw after reconnecting, the last seq persisted in the file at the reconnect and the
    last seq published before it.
    """
    started, gate = trio.Event(), trio.Event()

    @trurn.tool
    async def wait() -> str:
        """Waits for the test."""
        started.set()
        await gate.wait()
        return "opened"

    provider = FakeProvider(
        [
            tool_reply(("c1", "echo", '{"text": "a"}')),
            text_reply("First.", "Fi", "rst."),
            tool_reply(("c2", "wait", "{}"), ("c3", "echo", '{"text": "b"}'), text="Hold on."),
            text_reply("Second.", "Sec", "ond."),
        ]
    )
    agent = trurn.Agent(provider, tools=[echo, wait])
    async with trurn.Context(path) as context:
        recorder = Recorder(context, persist=persist)
        async with trio.open_nursery() as nursery:
            async with agent.subscribe() as live:
                nursery.start_soon(partial(agent.run_turn, context, "one", on_event=recorder))
                before = await read_until_finished(live)
            nursery.start_soon(partial(agent.run_turn, context, "two", on_event=recorder))
            await started.wait()
            await trio.testing.wait_all_tasks_blocked()  # the other tool is done too
            records = (await read_journal(path)).records
            in_file = max((r.seq for r in records if isinstance(r, EventRecord)), default=0)
            published = agent._seq
            async with subscribe_since(agent, context, before[-1].seq) as resumed:
                gate.set()
                after = await read_until_finished(resumed)
    return recorder.stream, before, after, in_file, published


async def test_reconnecting_replays_persisted_events_then_goes_live(tmp_path: Path) -> None:
    stream, before, after, in_file, published = await reconnect_mid_turn(tmp_path / "s.jsonl", True)
    # Some of the replayed events were not in the file yet, only in the context.
    assert in_file < published
    assert before + after == stream
    assert seqs(before + after) == list(range(1, stream[-1].seq + 1))


async def test_reconnecting_synthesises_the_missed_part_when_events_are_not_persisted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.jsonl"
    stream, before, after, _, published = await reconnect_mid_turn(path, False)
    since = before[-1].seq
    assert before == [e for e in stream if e.seq <= since]
    assert_increasing(before + after)
    # The replay: turn_started and the first reply of the second turn, as published.
    # (Not the exit of the tool that finished before the reconnect: tool results are
    # recorded when the whole batch is done.)
    replayed = [
        e
        for e in stream
        if since < e.seq <= published and tag(e) in {"turn_started", "assistant_final"}
    ]
    assert [tag(e) for e in replayed] == ["turn_started", "assistant_final"]
    assert after[: len(replayed)] == replayed
    # Then every event published after the reconnect: no gap, no duplicate.
    assert after[len(replayed) :] == [e for e in stream if e.seq > published]
    # The whole session replayed later stands for the whole stream.
    check_synthesised(missed_events((await read_journal(path)).records, 0), stream)


async def finished_session(path: Path, persist: bool) -> list[events.Event]:
    stream, _ = await play(path, [text_reply("Hi", "H", "i")], ["hello"], [persist])
    return stream


async def test_live_events_up_to_the_resume_point_are_dropped_notices_pass(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    stream = await finished_session(path, persist=True)
    last = stream[-1].seq
    hub: Broadcast[events.Event] = Broadcast()
    async with subscribe_since(hub, trurn.Context(path), 2) as resumed:
        # Published after the subscription began, some already in the replay.
        stale = events.MessageSent(step=1, seq=last)
        fresh = events.MessageSent(step=2, seq=last + 1)
        notice = events.EventsDropped(count=3)
        await hub.publish([stale, notice, fresh])
        hub.close()
        got = [event async for event in resumed]
    assert got == [*(e for e in stream if e.seq > 2), notice, fresh]


async def test_a_closed_session_replays_from_its_file(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    stream = await finished_session(path, persist=False)
    hub: Broadcast[events.Event] = Broadcast()
    context = trurn.Context(path)  # never opened: the file is read as it is
    assert await session_records(context) == (await read_journal(path)).records
    async with subscribe_since(hub, context, 0) as resumed:
        hub.close()
        got = [event async for event in resumed]
    assert got == [e for e in stream if tag(e) in SYNTHESISED]
    missing = trurn.Context(tmp_path / "none.jsonl")
    assert await session_records(missing) == []


def task_count() -> int:
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


async def test_leaving_the_block_stops_the_feeder_and_unsubscribes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "s.jsonl"
    await finished_session(path, persist=True)
    hub: Broadcast[events.Event] = Broadcast()
    tasks = task_count()
    # Cancelled while waiting for live events.
    with trio.move_on_after(0.01) as scope:
        async with subscribe_since(hub, trurn.Context(path), 0) as resumed:
            assert task_count() == tasks + 1
            async for _ in resumed:
                pass
    assert scope.cancelled_caught
    # The caller's own error comes out as it is, not in a group.
    with pytest.raises(KeyError, match="mine"):
        async with subscribe_since(hub, trurn.Context(path), 0):
            raise KeyError("mine")
    # The reader closes its channel while the feeder still has replay to send.
    async with subscribe_since(hub, trurn.Context(path), 0) as resumed:
        await resumed.receive()
        await resumed.aclose()
        await trio.testing.wait_all_tasks_blocked()
    assert task_count() == tasks
    assert hub.statistics().subscribers == 0


async def test_cancelled_while_reading_the_session_leaves_nothing_subscribed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.jsonl"
    await finished_session(path, persist=True)
    hub: Broadcast[events.Event] = Broadcast()
    scope = trio.CancelScope()

    class CancelOnSubscribe:
        """Subscribes, then cancels: the next checkpoint is the session read."""

        def subscribe(
            self, *, max_buffer: int = 256, policy: Policy = "wait"
        ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[events.Event]]:
            @asynccontextmanager
            async def subscription() -> AsyncIterator[trio.MemoryReceiveChannel[events.Event]]:
                async with hub.subscribe(max_buffer=max_buffer, policy=policy) as live:
                    scope.cancel()
                    yield live

            return subscription()

    entered = False
    with scope:
        async with subscribe_since(CancelOnSubscribe(), trurn.Context(path), 0):
            entered = True
    assert scope.cancelled_caught
    assert not entered
    assert hub.statistics().subscribers == 0


async def test_a_slow_reader_of_a_drop_subscription_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    stream = await finished_session(path, persist=True)
    last = stream[-1].seq
    hub: Broadcast[events.Event] = Broadcast(on_drop=lambda n: events.EventsDropped(count=n))
    async with subscribe_since(hub, trurn.Context(path), 0, max_buffer=2, policy="drop") as got:
        # The reader reads nothing while ten events are published.
        await hub.publish([events.MessageSent(step=i, seq=last + i) for i in range(1, 11)])
        stats = hub.statistics().per_subscriber[0]
        assert stats.buffered <= 2
        assert stats.dropped > 0
        received = [await got.receive() for _ in range(len(stream) + 2)]
        # The next event that fits comes after a notice of what was dropped.
        await hub.publish([events.MessageSent(step=11, seq=last + 11)])
        hub.close()
        received += [event async for event in got]
    assert received[: len(stream)] == stream
    live = received[len(stream) :]
    assert [tag(e) for e in live].count("events_dropped") == 1
    dropped = sum(e.count for e in live if isinstance(e, events.EventsDropped))
    kept = [e for e in live if isinstance(e, events.MessageSent)]
    assert dropped == stats.dropped
    assert dropped + len(kept) == 11
    assert_increasing(kept)


async def test_bad_arguments_are_refused_before_entering(tmp_path: Path) -> None:
    hub: Broadcast[events.Event] = Broadcast()
    context = trurn.Context(tmp_path / "s.jsonl")
    with pytest.raises(ValueError, match="since must be an event seq"):
        subscribe_since(hub, context, -1)
    with pytest.raises(ValueError, match="in memory only"):
        subscribe_since(hub, trurn.Context(), 0)
    with pytest.raises(ValueError, match="policy"):
        subscribe_since(hub, context, 0, policy="never")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in memory only"):
        await session_records(trurn.Context())


# -- seqs across a restart ------------------------------------------------------------------


async def _turn_on_file(path: Path, reply: object, **agent_options: object) -> list[events.Event]:
    """One turn on the session at ``path`` by a new agent (as a new process would); its
    live events, whether it ended normally or raised."""
    seen: list[events.Event] = []
    agent = trurn.Agent(FakeProvider([reply]), **agent_options)  # type: ignore[list-item, arg-type]
    async with trurn.Context(path) as context:
        try:
            await agent.run_turn(context, "go", on_event=seen.append)
        except RuntimeError:
            pass
    return seen


@pytest.mark.parametrize(
    "reply",
    [
        text_reply("Done."),
        RuntimeError("the provider broke"),  # error, run_aborted, turn_finished after the end
        [[ToolCallDelta(index=0, id="c1", name="echo")], RuntimeError("cut off")],
    ],
    ids=["completed", "error", "error-with-a-call-to-close"],
)
async def test_a_restored_session_goes_on_after_every_seq_its_turns_published(
    tmp_path: Path, reply: object
) -> None:
    path = tmp_path / "s.jsonl"
    first = await _turn_on_file(path, reply)
    assert isinstance(first[-1], events.TurnFinished)
    second = await _turn_on_file(path, text_reply("Again."))
    assert second[0].seq == first[-1].seq + 1
    records = (await read_journal(path)).records
    ends = [r for r in records if isinstance(r, TurnEnd)]
    assert [end.seq for end in ends] == [first[-1].seq, second[-1].seq]
    # A reconnecting subscriber gets each turn_finished with its live seq.
    replayed = [e for e in missed_events(records, 0) if isinstance(e, events.TurnFinished)]
    assert [(e.seq, e.stop_reason) for e in replayed] == [
        (first[-1].seq, first[-1].stop_reason),
        (second[-1].seq, "completed"),
    ]


async def test_an_exact_turn_whose_turn_finished_record_is_missing_replays_one(
    tmp_path: Path,
) -> None:
    # A process killed right after run_turn returned: the turn_finished event record,
    # written after the turn's sync, may not be in the file yet.
    path = tmp_path / "s.jsonl"
    stream = await _turn_on_file(path, text_reply("Hi", " there."), persist_events=True)
    records = (await read_journal(path)).records
    cut = [
        r for r in records if not (isinstance(r, EventRecord) and tag(r.event) == "turn_finished")
    ]
    assert len(cut) == len(records) - 1
    live_end = stream[-1]
    assert isinstance(live_end, events.TurnFinished)
    for session in (records, cut):
        replay = missed_events(session, 0)
        assert replay == [e for e in stream if tag(e) not in DELTA_EVENT_TYPES]
        assert replay[-1] == live_end  # text and seq included


async def test_a_failed_final_write_announces_the_end_the_file_will_keep(tmp_path: Path) -> None:
    writes = 0

    def full_disk_once(fd: int, data: bytes) -> int:
        nonlocal writes
        writes += 1
        if writes == 2:  # the header is the first write; the turn's records the second
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    path = tmp_path / "s.jsonl"
    seen: list[events.Event] = []
    agent = trurn.Agent(FakeProvider([text_reply("Done.")]))
    async with trurn.Context(path, _file_ops=FileOps(write=full_disk_once)) as context:
        with pytest.raises(trurn.SessionWriteError, match="No space left"):
            await agent.run_turn(context, "go", on_event=seen.append)
    # aclose wrote the queued records: the file says the turn completed, and so did
    # the live stream, with the seq the end marker holds.
    records = (await read_journal(path)).records
    (end,) = [r for r in records if isinstance(r, TurnEnd)]
    finished = [e for e in seen if isinstance(e, events.TurnFinished)]
    assert [(e.stop_reason, e.seq) for e in finished] == [("completed", end.seq)]
    assert end.stop_reason == "completed"
    assert not any(isinstance(e, events.RunAborted) for e in seen)
    replayed = [e for e in missed_events(records, 0) if isinstance(e, events.TurnFinished)]
    assert replayed == finished
