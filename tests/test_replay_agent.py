"""``agent.subscribe(since=..., context=...)``: a subscriber resumes from a seq, through
the agent, with and without ``persist_events``."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from fakes import FakeProvider, text_reply, tool_reply

import trurn
from trurn import events
from trurn._journal import read_journal
from trurn._records import EventRecord
from trurn._replay import DELTA_EVENT_TYPES


@trurn.tool
async def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


def kind(event: events.Event) -> str:
    tag = event.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def script() -> FakeProvider:
    return FakeProvider(
        [
            tool_reply(("c1", "lookup", '{"key": "a"}')),
            text_reply("first answer"),
            text_reply("second answer"),
            text_reply("third answer"),
        ]
    )


async def run_two_turns(agent: trurn.Agent, context: trurn.Context) -> list[events.Event]:
    seen: list[events.Event] = []
    await agent.run_turn(context, "one", on_event=seen.append)
    await agent.run_turn(context, "two", on_event=seen.append)
    return seen


async def test_resuming_replays_the_persisted_events_then_goes_live(tmp_path: Path) -> None:
    agent = trurn.Agent(script(), tools=[lookup], persist_events=True)
    async with trurn.Context(tmp_path / "s.jsonl") as context:
        everything = await run_two_turns(agent, context)
        persisted = [e for e in everything if kind(e) not in DELTA_EVENT_TYPES]
        since = persisted[len(persisted) // 3].seq  # dropped in the middle of turn one
        received: list[events.Event] = []
        async with agent.subscribe(since=since, context=context) as stream:
            expected_replay = [e for e in persisted if e.seq > since]
            for _ in expected_replay:
                received.append(await stream.receive())
            assert received == expected_replay
            # ... then live, with nothing repeated.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(agent.run_turn, context, "three")
                while True:
                    event = await stream.receive()
                    received.append(event)
                    if isinstance(event, events.TurnFinished):
                        break
    seqs = [e.seq for e in received]
    assert seqs == sorted(set(seqs))
    assert received[len(expected_replay)].seq > expected_replay[-1].seq
    assert isinstance(received[len(expected_replay)], events.TurnStarted)


async def test_persisted_events_are_records_of_the_session(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    agent = trurn.Agent(script(), tools=[lookup], persist_events={"tool_exit", "turn_finished"})
    async with trurn.Context(path) as context:
        everything = await run_two_turns(agent, context)
    records = [r for r in (await read_journal(path)).records if isinstance(r, EventRecord)]
    assert [kind(r.event) for r in records] == ["tool_exit", "turn_finished", "turn_finished"]
    wanted = [e for e in everything if kind(e) in ("tool_exit", "turn_finished")]
    assert [r.event for r in records] == wanted
    assert [r.seq for r in records] == [e.seq for e in wanted]


async def test_without_persisted_events_the_replay_is_rebuilt_from_messages(
    tmp_path: Path,
) -> None:
    agent = trurn.Agent(script(), tools=[lookup])
    async with trurn.Context(tmp_path / "s.jsonl") as context:
        everything = await run_two_turns(agent, context)
        first_finished = next(e for e in everything if isinstance(e, events.TurnFinished))
        async with agent.subscribe(since=first_finished.seq, context=context) as stream:
            replay = [await stream.receive() for _ in range(3)]
    assert [type(e) for e in replay] == [
        events.TurnStarted,
        events.AssistantFinal,
        events.TurnFinished,
    ]
    real = [e for e in everything if e.seq > first_finished.seq]
    assert replay[0].seq == real[0].seq
    final = replay[1]
    assert isinstance(final, events.AssistantFinal)
    assert final.text == "second answer"


async def test_resuming_needs_both_since_and_context() -> None:
    agent = trurn.Agent(FakeProvider([]))
    with pytest.raises(ValueError, match="both since"):
        agent.subscribe(since=3)
    with pytest.raises(ValueError, match="both since"):
        agent.subscribe(context=trurn.Context())


def test_persist_events_rejects_unknown_types() -> None:
    with pytest.raises(ValueError, match="unknown event types"):
        trurn.Agent(FakeProvider([]), persist_events={"assistant_finale"})
