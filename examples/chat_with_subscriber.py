"""A conversation of two turns on one Agent and Context, with a live event subscriber.

The subscriber runs in its own task and renders the events as they stream; it uses
the ``"drop"`` policy, so a slow renderer could never slow the agent down (it would
be told how many events it missed instead). Cancellation is shown too: the second
question is asked under a deadline that the slow tool overruns, and the history
stays valid for the next request.
"""

import trio

import trurn
from trurn import events
from trurn.providers import OpenAIChat
from trurn.testing import demo_model, open_scripted_server


@trurn.tool
async def get_weather(city: str) -> str:
    """Get the current weather for a city (slow for Oslo, to show cancellation)."""
    if city == "Oslo":
        await trio.sleep(10)
    return f"cloudy in {city}"


async def render(stream: trio.MemoryReceiveChannel[events.Event]) -> None:
    async for event in stream:
        if isinstance(event, events.AssistantDelta):
            print(event.text, end="", flush=True)
        elif isinstance(event, events.ToolCallStarted):
            print(f"\n  [calling {event.call.name}({event.call.arguments})]")
        elif isinstance(event, events.ToolExit):
            print(f"  [{event.name} -> {event.status}: {event.content}]")
        elif isinstance(event, events.RunAborted):
            print(f"\n  [turn aborted: {event.reason}]")
        elif isinstance(event, events.TurnFinished):
            print(f"\n  [turn {event.turn_id} finished: {event.stop_reason}, seq {event.seq}]")


async def main() -> None:
    async with (
        open_scripted_server(demo_model) as server,
        OpenAIChat("trurn-offline", base_url=server.base_url) as provider,
    ):
        agent = trurn.Agent(provider, tools=[get_weather], system="Be brief.")
        context = trurn.Context()
        async with trio.open_nursery() as nursery, agent.subscribe(policy="drop") as stream:
            nursery.start_soon(render, stream)

            result = await agent.run_turn(context, "What's the weather in Tokyo?")
            assert result.stop_reason == "completed"

            with trio.move_on_after(1):  # the Oslo lookup takes 10 s: give up after 1
                await agent.run_turn(context, "And in Oslo?")

            await trio.sleep(0.1)  # let the renderer catch up, then stop it
            nursery.cancel_scope.cancel()

    last = context.messages[-1]
    print(f"history: {len(context.messages)} messages, last one: {type(last).__name__}")
    assert isinstance(last, trurn.ToolMessage)
    assert last.status == "cancelled"  # every tool call has a result, even after a cancel


if __name__ == "__main__":
    trio.run(main)
