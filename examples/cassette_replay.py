"""Turn one real session into a deterministic test: record it to a cassette, replay it.

Run it with ``python examples/cassette_replay.py``. The first turn runs against trurn's
scripted OpenAI-compatible server on 127.0.0.1 (standing in for a real API) and records
every HTTP exchange to a cassette file. The server is then stopped, and the same turn
replays from the file: the provider decodes the recorded stream exactly as it did the
live one, with no network. In a test, ``open_cassette(path)`` (mode ``"auto"``) records
on the first run and replays on every run after that.
"""

import tempfile
from pathlib import Path

import httpx
import msgspec
import trio

import trurn
from trurn.providers import OpenAIChat
from trurn.testing import demo_model, open_cassette, open_scripted_server


@trurn.tool
async def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"sunny and 22°C in {city}"


async def ask(client: httpx.AsyncClient, base_url: str) -> trurn.TurnResult:
    provider = OpenAIChat("trurn-offline", base_url=base_url, api_key="sk-example", client=client)
    return await trurn.run_turn(
        provider=provider, message="What's the weather in Lisbon?", tools=[get_weather]
    )


def show(label: str, result: trurn.TurnResult) -> None:
    calls = [(call.name, call.arguments) for call in result.tool_calls]
    print(f"{label}: {result.text!r}, tool calls {calls}, {result.usage.total_tokens} tokens")


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        cassette = Path(directory) / "lisbon.jsonl"

        async with (
            open_scripted_server(demo_model) as server,
            open_cassette(cassette, "record") as client,
        ):
            recorded = await ask(client, server.base_url)
        show("recorded", recorded)
        lines = (await trio.Path(cassette).read_bytes()).splitlines()
        print(f"cassette: {cassette.name}, a header and {len(lines) - 1} exchanges")

        # The server is gone: only the cassette can answer now.
        async with open_cassette(cassette, "replay") as client:
            replayed = await ask(client, server.base_url)
        show("replayed", replayed)

    # The same turn, apart from its random id.
    assert msgspec.structs.replace(replayed, turn_id="") == msgspec.structs.replace(
        recorded, turn_id=""
    )


if __name__ == "__main__":
    trio.run(main)
