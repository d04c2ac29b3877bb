"""The trurn side: the benchmark turn as trurn's users write it.

One :class:`trurn.Agent` with an ``OpenAIChat`` provider on the shared
``httpx.AsyncClient``, and ``agent.run_turn(Context(), message)`` per turn. Concurrent
turns share the agent, as an application serving many conversations would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio
from _scenario import MODEL, TOOL_DESCRIPTION, TOOL_NAME, tool_result

import trurn
from trurn.providers import OpenAIChat

__all__ = ["make_agent", "reading_every_event"]


@trurn.tool(name=TOOL_NAME, description=TOOL_DESCRIPTION)
async def lookup(key: str) -> str:
    return tool_result(key)


def make_agent(client: httpx.AsyncClient, base_url: str) -> trurn.Agent:
    """An agent with the ``lookup`` tool, talking to ``base_url`` over ``client``."""
    provider = OpenAIChat(MODEL, base_url=base_url, client=client)
    return trurn.Agent(provider, tools=[lookup])


@asynccontextmanager
async def reading_every_event(agent: trurn.Agent) -> AsyncIterator[list[int]]:
    """One subscriber task reads every event of ``agent`` while the block runs.

    Yields a one-item list holding the number of events read so far. The subscriber
    uses the default policy (``"wait"``), so it sees every event.
    """
    count = [0]

    async def read(events: trio.MemoryReceiveChannel[trurn.events.Event]) -> None:
        async for _ in events:
            count[0] += 1

    async with agent.subscribe() as events, trio.open_nursery() as nursery:
        nursery.start_soon(read, events)
        try:
            yield count
        finally:
            # Let the reader catch up, so the count covers every event of the block.
            while events.statistics().current_buffer_used:
                await trio.sleep(0)
            nursery.cancel_scope.cancel()
