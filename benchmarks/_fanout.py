"""Broadcast fan-out: trurn's hub against the naive one-``await send()``-per-subscriber loop.

One publisher task hands ``events`` integers, ``batch`` at a time, to ``subscribers``
subscribers, each drained by its own task. The clock (``time.process_time()``, all in
this one thread) runs from the first publish until every subscriber has read every
event, so the readers' cost is in both figures.

- trurn: ``await hub.publish(batch)`` on a :class:`trurn.Broadcast` whose subscribers
  have a ``max_buffer`` that holds every event (so ``"wait"`` never waits and ``"drop"``
  never drops: the figures compare the delivery paths, not the policies).
- naive: ``for event in batch: for channel in channels: await channel.send(event)``
  on plain Trio memory channels of the same size.

Two kinds of reader: ``"receive"`` awaits ``receive()`` once per event, which is a
schedule point per event whatever the publisher does; ``"drain"`` awaits one
``receive()`` and then takes what is already buffered with ``receive_nowait()``, as a
subscriber that renders or forwards events in batches would.

:func:`readers_only_seconds` times the readers alone, on channels filled beforehand: no
publisher at all. It bounds what any publisher can achieve with those readers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Literal

import trio
import trio.testing

import trurn

__all__ = [
    "Policy",
    "Reader",
    "hub_seconds",
    "naive_seconds",
    "readers_only_seconds",
]

Reader = Literal["receive", "drain"]
Policy = Literal["wait", "drop"]


async def _read_each(channel: trio.MemoryReceiveChannel[int], counts: list[int], slot: int) -> None:
    read = 0
    try:
        while True:
            await channel.receive()
            read += 1
    except trio.EndOfChannel:
        counts[slot] = read


async def _read_draining(
    channel: trio.MemoryReceiveChannel[int], counts: list[int], slot: int
) -> None:
    read = 0
    try:
        while True:
            await channel.receive()
            read += 1
            try:
                while True:
                    channel.receive_nowait()
                    read += 1
            except trio.WouldBlock:
                pass
    except trio.EndOfChannel:
        counts[slot] = read


_READERS = {"receive": _read_each, "drain": _read_draining}


def _batches(events: int, batch: int) -> list[list[int]]:
    return [list(range(start, min(start + batch, events))) for start in range(0, events, batch)]


def _check(counts: Sequence[int], events: int, what: str) -> None:
    if any(count != events for count in counts):
        raise RuntimeError(f"{what}: subscribers read {list(counts)} events, expected {events}")


async def _hub_run(
    events: int, batch: int, subscribers: int, policy: Policy, reader: Reader
) -> float:
    hub: trurn.Broadcast[int] = trurn.Broadcast()
    counts = [-1] * subscribers
    batches = _batches(events, batch)
    async with AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(hub.subscribe(max_buffer=events, policy=policy))
            for _ in range(subscribers)
        ]
        async with trio.open_nursery() as nursery:
            for slot, channel in enumerate(channels):
                nursery.start_soon(_READERS[reader], channel, counts, slot)
            await trio.testing.wait_all_tasks_blocked()
            start = time.process_time()
            for items in batches:
                await hub.publish(items)
            hub.close()
        elapsed = time.process_time() - start
    _check(counts, events, f"Broadcast ({policy})")
    return elapsed


async def _naive_run(events: int, batch: int, subscribers: int, reader: Reader) -> float:
    counts = [-1] * subscribers
    batches = _batches(events, batch)
    pairs = [trio.open_memory_channel[int](events) for _ in range(subscribers)]
    sends = [send for send, _ in pairs]
    async with trio.open_nursery() as nursery:
        for slot, (_, receive) in enumerate(pairs):
            nursery.start_soon(_READERS[reader], receive, counts, slot)
        await trio.testing.wait_all_tasks_blocked()
        start = time.process_time()
        for items in batches:
            for event in items:
                for send in sends:
                    await send.send(event)
        for send in sends:
            send.close()
    elapsed = time.process_time() - start
    _check(counts, events, "naive channels")
    return elapsed


async def _readers_only_run(events: int, subscribers: int, reader: Reader) -> float:
    counts = [-1] * subscribers
    pairs = [trio.open_memory_channel[int](events) for _ in range(subscribers)]
    for send, _ in pairs:
        for event in range(events):
            send.send_nowait(event)
        send.close()
    start = time.process_time()
    async with trio.open_nursery() as nursery:
        for slot, (_, receive) in enumerate(pairs):
            nursery.start_soon(_READERS[reader], receive, counts, slot)
    elapsed = time.process_time() - start
    _check(counts, events, "readers only")
    return elapsed


def hub_seconds(events: int, batch: int, subscribers: int, policy: Policy, reader: Reader) -> float:
    """CPU seconds for trurn's Broadcast to deliver ``events`` to every subscriber."""
    return trio.run(_hub_run, events, batch, subscribers, policy, reader)


def naive_seconds(events: int, batch: int, subscribers: int, reader: Reader) -> float:
    """CPU seconds for the naive per-subscriber ``await send()`` loop to do the same."""
    return trio.run(_naive_run, events, batch, subscribers, reader)


def readers_only_seconds(events: int, subscribers: int, reader: Reader) -> float:
    """CPU seconds for the readers alone to take ``events`` each from full channels."""
    return trio.run(_readers_only_run, events, subscribers, reader)
