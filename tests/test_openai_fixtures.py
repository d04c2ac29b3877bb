"""Recorded Chat Completions streams through the real OpenAIChat code path.

Each openai-chat file of ``fixtures/streams/MANIFEST.json`` is served by an
``httpx.MockTransport`` as a streamed body, whole and in random-sized slices, and the
chunks OpenAIChat yields are folded and compared with the manifest's ``expected``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from recorded import REQUEST, SlicedBody, cut, entries, fixture_bytes, play

from trurn._chunks import Chunk, Finish, ReasoningDelta, TextDelta, ToolCallDelta
from trurn._errors import BadRequestError, ProviderError
from trurn._messages import Usage
from trurn.providers._openai import OpenAIChat

ENTRIES = entries("openai-chat")

# The in-stream error each error fixture must raise, and a piece of the provider's message.
EXPECTED_ERRORS: dict[str, tuple[type[ProviderError], str]] = {
    "openai-chat/groq_error_event_midstream.sse": (
        BadRequestError,
        "parameters for tool get_something_by_name did not match schema",
    ),
    "openai-chat/openrouter_error_chunk_midstream.sse": (BadRequestError, "Token limit reached"),
}


@dataclass
class Folded:
    """What the chunks add up to; a test-only stand-in for the stream reducer."""

    text: str = ""
    reasoning: str = ""
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish: list[str] = field(default_factory=list)
    usage: Usage | None = None
    batches: int = 0

    def add(self, batch: Sequence[Chunk]) -> None:
        assert batch, "the provider must not yield empty batches"
        self.batches += 1
        for chunk in batch:
            if isinstance(chunk, TextDelta):
                self.text += chunk.text
            elif isinstance(chunk, ReasoningDelta):
                self.reasoning += chunk.text
            elif isinstance(chunk, ToolCallDelta):
                assert chunk.index is not None
                call = self.calls.setdefault(chunk.index, {"id": None, "name": None, "args": ""})
                call["id"] = chunk.id or call["id"]
                call["name"] = chunk.name or call["name"]
                call["args"] += chunk.arguments
            elif isinstance(chunk, Finish):
                self.finish.append(chunk.reason)
            elif isinstance(chunk, Usage):
                self.usage = chunk
            else:
                raise AssertionError(f"unexpected chunk {chunk!r}")


async def run(pieces: Sequence[bytes]) -> tuple[Folded, ProviderError | None, SlicedBody]:
    folded = Folded()
    error, body = await play(
        lambda client: OpenAIChat("gpt-test", api_key="sk-fixture", client=client),
        pieces,
        folded.add,
    )
    return folded, error, body


def expected_usage(raw: dict[str, Any] | None) -> Usage | None:
    if raw is None:
        return None
    completion = raw.get("completion_tokens_details") or {}
    prompt = raw.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=raw["prompt_tokens"],
        output_tokens=raw["completion_tokens"],
        total_tokens=raw["total_tokens"],
        reasoning_tokens=completion.get("reasoning_tokens", 0),
        cached_input_tokens=prompt.get("cached_tokens", 0),
    )


def check(name: str, folded: Folded, error: ProviderError | None, body: SlicedBody) -> None:
    expected = ENTRIES[name]["expected"]
    # A refusal is delivered as text (so the user reads it), after any content.
    assert folded.text == expected["text"] + (expected["refusal"] or "")
    assert (folded.reasoning or None) == expected["reasoning"]
    calls = [folded.calls[index] for index in sorted(folded.calls)]
    assert sorted(folded.calls) == [call["index"] for call in expected["tool_calls"]]
    for got, want in zip(calls, expected["tool_calls"], strict=True):
        assert got["id"] == want["id"]
        assert got["name"] == want["name"]
        assert got["args"] == want["arguments_raw"]
        assert (json.loads(got["args"]) if got["args"] else {}) == want["arguments"]
    # Finish is reported once, even when a server repeats it.
    assert folded.finish == ([expected["finish_reason"]] if expected["finish_reason"] else [])
    assert folded.usage == expected_usage(expected["usage"])
    if name in EXPECTED_ERRORS:
        cls, words = EXPECTED_ERRORS[name]
        assert type(error) is cls
        assert words in str(error)
        assert error.status_code is None  # sent inside a 200 stream
        assert expected["error"] is not None
    else:
        assert expected["error"] is None
        assert error is None
    assert body.closed


@pytest.mark.parametrize("name", sorted(ENTRIES))
async def test_fixture_whole(name: str) -> None:
    folded, error, body = await run([fixture_bytes(name)])
    check(name, folded, error, body)


@pytest.mark.parametrize("name", sorted(ENTRIES))
async def test_fixture_line_by_line_yields_one_batch_per_read(name: str) -> None:
    # One piece per line: the partial output before an in-stream error arrives in
    # batches of its own, and the error is raised only after them.
    pieces = fixture_bytes(name).splitlines(keepends=True)
    folded, error, body = await run(pieces)
    check(name, folded, error, body)
    assert folded.batches > 1


@pytest.mark.parametrize("name", sorted(ENTRIES))
@settings(max_examples=20, deadline=None)
# Cut points as fractions of the file, drawn before the test runs: a draw inside the
# test (st.data()) would happen inside Trio's nursery, where older hypothesis releases
# cannot see their own control-flow exceptions through the exception group.
@given(fractions=st.lists(st.floats(0, 1), max_size=60))
async def test_fixture_random_slices(name: str, fractions: list[float]) -> None:
    folded, error, body = await run(cut(fixture_bytes(name), fractions))
    check(name, folded, error, body)


async def test_error_fixtures_yield_partial_output_before_raising() -> None:
    for name in EXPECTED_ERRORS:
        seen: list[Chunk] = []
        body = SlicedBody([fixture_bytes(name)])

        def handler(request: httpx.Request, body: SlicedBody = body) -> httpx.Response:
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)

        async def consume(provider: OpenAIChat, seen: list[Chunk] = seen) -> None:
            async with provider.stream(REQUEST) as batches:
                async for batch in batches:
                    seen.extend(batch)

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(ProviderError) as caught:
                await consume(OpenAIChat("gpt-test", client=client))
        # Whole file in one read: the batch before the error was still delivered.
        assert any(isinstance(chunk, ReasoningDelta) for chunk in seen), name
        assert EXPECTED_ERRORS[name][1] in str(caught.value)
