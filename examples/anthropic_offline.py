"""The same agent over the Anthropic Messages API, offline: thinking, a tool, the wire.

Run it with ``python examples/anthropic_offline.py``. trurn's scripted server on
127.0.0.1 speaks Anthropic Messages too (``POST /v1/messages``), so this needs no
network and no API key. For the real API, drop the server and write
``AnthropicMessages("claude-sonnet-4-5", api_key=...)`` (its ``base_url`` defaults to
``https://api.anthropic.com``), or ``trurn.providers.provider_from_string(
"anthropic:claude-sonnet-4-5")`` with ``ANTHROPIC_API_KEY`` set.
"""

import json

import trio

import trurn
from trurn.providers import AnthropicMessages
from trurn.testing import demo_model, open_scripted_server


@trurn.tool
async def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"sunny and 22°C in {city}"


async def main() -> None:
    async with (
        open_scripted_server(demo_model) as server,
        # The scripted server's base URL ends in /v1; AnthropicMessages accepts that as
        # well as the bare root, and posts to .../v1/messages.
        AnthropicMessages("claude-offline", base_url=server.base_url) as provider,
    ):
        agent = trurn.Agent(provider, tools=[get_weather], system="Be concise.")
        result = await agent.run_turn(trurn.Context(), "What's the weather in Kyoto?")
        second_request = json.loads(server.request_bodies[1])

    final = result.messages[-1]
    assert isinstance(final, trurn.AssistantMessage)
    print("thinking:   ", final.reasoning)
    print("text:       ", result.text)
    print("tool calls: ", [(call.name, call.arguments) for call in result.tool_calls])
    print("usage:      ", result.usage.total_tokens, "tokens")
    print("stop reason:", result.stop_reason)
    # What went back to the API after the tool ran: the reply's tool_use block, then
    # the result as a tool_result block in a user message.
    for message in second_request["messages"]:
        print(f"  {message['role']:9}", [block["type"] for block in message["content"]])
    assert result.stop_reason == "completed"
    assert second_request["system"] == "Be concise."
    assert second_request["messages"][-1]["content"][0]["type"] == "tool_result"


if __name__ == "__main__":
    trio.run(main)
