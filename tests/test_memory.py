"""Memory stays flat: an agent that has run thousands of turns holds what it held after
its first few, and a finished turn's objects are collected.

Each test runs its turns on a provider that answers every request with the same short
reply and keeps nothing (``FakeProvider`` records every request, which would be the
growth measured). The history is emptied between turns (a fresh ``Context`` per turn,
or the served one cleared), so only what the runtime keeps is measured. ``tracemalloc``
is on for the measured turns only: it makes a turn about five times slower, which is
why the subscriber and ``serve`` tests run fewer turns with the same per-turn bound.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

import trio
import trio.testing

import trurn
from trurn import events
from trurn._chunks import Chunk, Finish, TextDelta
from trurn.providers import Request

WARM_UP_TURNS = 100
BYTES_PER_TURN = 20
"""The growth allowed per measured turn, after a full collection: far below anything
a turn could leave behind (its turn id alone is a string of about 70 bytes, its
result several hundred bytes), and far above the noise: 10,000 turns leave less than
1 KB."""


class Repeating:
    """A provider whose every reply is the text ``"ok"``; it records nothing."""

    model = "repeating"

    @asynccontextmanager
    async def stream(self, request: Request) -> AsyncIterator[AsyncIterator[Sequence[Chunk]]]:
        await trio.lowlevel.checkpoint()
        batches = self._reply()
        try:
            yield batches
        finally:
            await batches.aclose()

    async def _reply(self) -> AsyncGenerator[Sequence[Chunk], None]:
        yield [TextDelta("ok")]
        yield [Finish("stop")]


def trurn_objects() -> Counter[str]:
    """How many objects of each trurn type the garbage collector can see."""
    return Counter(
        type(obj).__qualname__
        for obj in gc.get_objects()
        if type(obj).__module__.startswith("trurn")
    )


class Growth:
    """What a block left behind, after a full collection: ``bytes`` (traced by
    ``tracemalloc``) and ``objects`` (trurn objects of each type, more than before)."""

    bytes: int
    objects: Counter[str]


@contextmanager
def measuring_growth() -> Iterator[Growth]:
    growth = Growth()
    gc.collect()
    objects = trurn_objects()
    # Tracing starts after the census, so the census itself is not counted as growth.
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        yield growth
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        if started:
            tracemalloc.stop()
    growth.bytes = after - before
    growth.objects = trurn_objects() - objects  # only the types that grew


def assert_flat(growth: Growth, turns: int) -> None:
    assert not growth.objects, f"{turns} turns left trurn objects behind: {growth.objects}"
    bound = BYTES_PER_TURN * turns
    assert growth.bytes < bound, f"{turns} turns left {growth.bytes} bytes behind (bound {bound})"


async def test_memory_stays_flat_over_10_000_turns() -> None:
    turns = 10_000
    agent = trurn.Agent(Repeating())
    for _ in range(WARM_UP_TURNS):
        await agent.run_turn(trurn.Context(), "hi")
    with measuring_growth() as growth:
        for _ in range(turns):
            result = await agent.run_turn(trurn.Context(), "hi")
        assert result.text == "ok"
        del result
    assert_flat(growth, turns)


async def test_memory_stays_flat_with_a_subscriber() -> None:
    turns = 2_000
    agent = trurn.Agent(Repeating())
    finished = 0

    async def read(stream: trio.MemoryReceiveChannel[events.Event]) -> None:
        nonlocal finished
        async for event in stream:
            if isinstance(event, events.TurnFinished):
                finished += 1

    async with trio.open_nursery() as nursery, agent.subscribe() as stream:
        nursery.start_soon(read, stream)
        for _ in range(WARM_UP_TURNS):
            await agent.run_turn(trurn.Context(), "hi")
        with measuring_growth() as growth:
            for _ in range(turns):
                await agent.run_turn(trurn.Context(), "hi")
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert finished == WARM_UP_TURNS + turns  # the subscriber saw every turn end
    assert_flat(growth, turns)


async def test_memory_stays_flat_while_serving() -> None:
    turns = 2_000
    agent = trurn.Agent(Repeating())
    context = trurn.Context()

    async def one_turn(stream: trio.MemoryReceiveChannel[events.Event]) -> None:
        await agent.send("hi")
        async for event in stream:
            if isinstance(event, events.TurnFinished):
                break
        # The serving task publishes turn_finished as the turn's last act and does not
        # yield before it waits for the next message, so the turn is over here. Empty
        # the history so that what grows is the runtime, not the conversation.
        assert [m.content for m in context.messages] == ["hi", "ok"]
        context._messages.clear()

    async with trio.open_nursery() as nursery, agent.subscribe() as stream:
        await nursery.start(agent.serve, context)
        for _ in range(WARM_UP_TURNS):
            await one_turn(stream)
        with measuring_growth() as growth:
            for _ in range(turns):
                await one_turn(stream)
        nursery.cancel_scope.cancel()
    assert_flat(growth, turns)


async def test_a_finished_turn_leaves_nothing_behind() -> None:
    agent = trurn.Agent(Repeating())
    gc.collect()
    before = trurn_objects()

    class Recorder:
        """The turn's on_event callback; it also notes the turn's cancel scope."""

        def __init__(self) -> None:
            self.events: list[events.Event] = []
            self.scope: weakref.ref[trio.CancelScope] | None = None

        def __call__(self, event: events.Event) -> None:
            if self.scope is None:
                [control] = agent._turns.values()
                self.scope = weakref.ref(control.scope)
            self.events.append(event)

    context = trurn.Context()
    recorder = Recorder()
    result = await agent.run_turn(context, "hi", on_event=recorder)
    assert result.text == "ok"
    assert isinstance(recorder.events[-1], events.TurnFinished)
    assert recorder.scope is not None
    refs: list[Callable[[], object]] = [weakref.ref(context), weakref.ref(recorder), recorder.scope]
    del context, recorder, result
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None]
    # Results, events, messages and the turn's helpers are gone too (they cannot be
    # weakly referenced, so they are counted).
    assert not (trurn_objects() - before)
