"""An explicit tool (``trurn.BaseTool``) that streams output and validates its own input.

Shows ``ToolContext.output`` (published as ``tool_output`` events while the tool runs),
``ToolError`` for a message chosen for the model, and how a failing tool becomes a
result the model can read instead of ending the turn.
"""

from typing import Any

import trio

import trurn
from trurn import events
from trurn.providers import OpenAIChat
from trurn.testing import Reply, ScriptedToolCall, open_scripted_server


class CountDown(trurn.BaseTool):
    name = "count_down"
    description = "Count down from n to 1, reporting each step."

    def __init__(self) -> None:
        self.parameters = {
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 10}},
            "required": ["n"],
        }

    async def call(self, arguments: dict[str, Any], ctx: trurn.ToolContext) -> str:
        n = arguments.get("n")
        if not isinstance(n, int) or not 1 <= n <= 10:
            raise trurn.ToolError(f"n must be an integer from 1 to 10, got {n!r}")
        for i in range(n, 0, -1):
            await ctx.output(f"{i}...")
        return "liftoff"


SCRIPT = [
    Reply(tool_calls=[ScriptedToolCall("count_down", {"n": 50})]),  # invalid: the model retries
    Reply(tool_calls=[ScriptedToolCall("count_down", {"n": 3})]),
    Reply("Counted down from 3: liftoff!"),
]


async def main() -> None:
    def show(event: events.Event) -> None:
        if isinstance(event, events.ToolOutput):
            print("  tool output:", event.text)
        elif isinstance(event, events.ToolExit):
            print(f"  {event.name} -> {event.status}: {event.content}")

    async with (
        open_scripted_server(SCRIPT) as server,
        OpenAIChat("scripted", base_url=server.base_url) as provider,
    ):
        agent = trurn.Agent(provider, tools=[CountDown()])
        result = await agent.run_turn(trurn.Context(), "Count down!", on_event=show)
    print("final:", result.text)
    statuses = [m.status for m in result.messages if isinstance(m, trurn.ToolMessage)]
    assert statuses == ["error", "ok"], statuses


if __name__ == "__main__":
    trio.run(main)
