"""The trurn side: the benchmark turn as trurn's users write it.

One :class:`trurn.Agent` with an ``OpenAIChat`` or ``AnthropicMessages`` provider
(defaults only, as a user's first try would have them) on the shared
``httpx.AsyncClient``, and ``agent.run_turn(Context(), message)`` per turn. Concurrent
turns share the agent, as an application serving many conversations would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio
from _scenario import MODEL, TOOL_DESCRIPTION, TOOL_NAME, Wire, tool_result

import trurn
from trurn.providers import AnthropicMessages, OpenAIChat, Provider

__all__ = ["make_agent", "reading_every_event"]


@trurn.tool(name=TOOL_NAME, description=TOOL_DESCRIPTION)
async def lookup(key: str) -> str:
    return tool_result(key)


def make_agent(client: httpx.AsyncClient, base_url: str, wire: Wire = "openai") -> trurn.Agent:
    """An agent with the ``lookup`` tool, talking to ``base_url`` (``.../v1``) over
    ``client`` in the ``wire`` format."""
    provider: Provider
    if wire == "anthropic":
        provider = AnthropicMessages(MODEL, base_url=base_url, client=client)
    else:
        provider = OpenAIChat(MODEL, base_url=base_url, client=client)
    return trurn.Agent(provider, tools=[lookup])


@asynccontextmanager
async def reading_every_event(agent: trurn.Agent) -> AsyncIterator[None]:
    """While the block runs, one subscriber task reads every event of ``agent``.

    The subscriber has the default policy, ``"wait"``, so it sees every event and
    slows the turns down if it falls behind.
    """

    async def read(events: trio.MemoryReceiveChannel[trurn.events.Event]) -> None:
        async for _ in events:
            pass

    async with agent.subscribe() as events, trio.open_nursery() as nursery:
        nursery.start_soon(read, events)
        try:
            yield
        finally:
            nursery.cancel_scope.cancel()
