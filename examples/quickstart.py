"""Call an agent like a function: one bounded turn with a tool, on the offline model.

Run it with ``python examples/quickstart.py``. It starts trurn's scripted
OpenAI-compatible server on 127.0.0.1, so it needs no network and no API key; point
``OpenAIChat`` at a real ``base_url`` (and pass ``api_key``) to use a real model.
"""

import trio

import trurn
from trurn.providers import OpenAIChat
from trurn.testing import demo_model, open_scripted_server


@trurn.tool
async def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"sunny and 22°C in {city}"


async def main() -> None:
    async with (
        open_scripted_server(demo_model) as server,
        OpenAIChat("trurn-offline", base_url=server.base_url) as provider,
    ):
        result = await trurn.run_turn(
            provider=provider,
            message="What's the weather in Lisbon?",
            system="You are a concise assistant.",
            tools=[get_weather],
        )
    print("text:       ", result.text)
    print("tool calls: ", [(call.name, call.arguments) for call in result.tool_calls])
    print("messages:   ", [type(message).__name__ for message in result.messages])
    print("usage:      ", result.usage.total_tokens, "tokens")
    print("stop reason:", result.stop_reason)
    assert result.stop_reason == "completed"


if __name__ == "__main__":
    trio.run(main)
