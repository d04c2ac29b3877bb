"""The recorded OpenAI *Responses API* streams: rejected, with a reason that says why.

trurn's OpenAI adapter speaks Chat Completions (``/chat/completions``), which also
covers the compatible servers (Ollama, vLLM, OpenRouter, Groq...). The Responses API
(``/responses``) is a different wire format: typed ``response.*`` events instead of
``chat.completion.chunk`` objects. trurn has no provider for it yet, so when a
``base_url`` leads ``OpenAIChat`` to such a stream, it must say so plainly instead of
misreading it or reporting a vague truncated stream. Each of the seven recordings is fed
through the real provider code path and must be refused that way.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from trurn import MalformedStreamError, UserMessage
from trurn.providers import OpenAIChat, Request

FIXTURES = Path(__file__).parent / "fixtures" / "streams"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text(encoding="utf-8"))
FILES = sorted(e["file"] for e in MANIFEST if e["provider"] == "openai-responses")


def test_all_seven_responses_recordings_are_here() -> None:
    assert len(FILES) == 7
    for name in FILES:
        assert (FIXTURES / name).is_file(), name


@pytest.mark.parametrize("name", FILES)
async def test_a_responses_stream_is_refused_with_the_reason(name: str) -> None:
    body = (FIXTURES / name).read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    chunks: list[object] = []

    async def consume(provider: OpenAIChat) -> None:
        async with provider.stream(Request(messages=[UserMessage("hi")])) as batches:
            async for batch in batches:
                chunks.extend(batch)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(MalformedStreamError, match="Responses API") as caught:
            await consume(OpenAIChat("gpt-4o", client=client))
    assert chunks == []  # nothing was misread as Chat Completions output
    assert "chat/completions" in str(caught.value)
