"""Recorded Chat Completions streams through the real OpenAIChat code path.

Each openai-chat file of ``fixtures/streams/MANIFEST.json`` is served by an
``httpx.MockTransport`` as a streamed body, whole and in random-sized slices, and the
chunks OpenAIChat yields are folded and compared with the manifest's ``expected``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from recorded import (
    Fold,
    SlicedBody,
    check_error,
    check_tool_calls,
    cut,
    entries,
    fixture_bytes,
    play,
    random_cuts,
)

from trurn._chunks import ReasoningDelta
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


def provider(client: httpx.AsyncClient) -> OpenAIChat:
    return OpenAIChat("gpt-test", api_key="sk-fixture", client=client)


async def run(pieces: Sequence[bytes]) -> tuple[Fold, ProviderError | None, SlicedBody]:
    return await play(provider, pieces, Fold())


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


def check(name: str, folded: Fold, error: ProviderError | None, body: SlicedBody) -> None:
    expected = ENTRIES[name]["expected"]
    # A refusal is delivered as text (so the user reads it), after any content.
    assert folded.text == expected["text"] + (expected["refusal"] or "")
    assert (folded.reasoning or None) == expected["reasoning"]
    check_tool_calls(folded.calls, expected["tool_calls"])
    # Finish is reported once, even when a server repeats it.
    assert folded.finish == ([expected["finish_reason"]] if expected["finish_reason"] else [])
    usage = expected_usage(expected["usage"])
    assert folded.usage == ([usage] if usage else [])
    check_error(error, EXPECTED_ERRORS.get(name), expected["error"], "openai-chat")
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
@random_cuts
async def test_fixture_random_slices(name: str, fractions: list[float]) -> None:
    folded, error, body = await run(cut(fixture_bytes(name), fractions))
    check(name, folded, error, body)


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
async def test_error_fixtures_yield_partial_output_before_raising(name: str) -> None:
    # Whole file in one read: the batch before the error was still delivered.
    folded, error, _ = await run([fixture_bytes(name)])
    assert any(isinstance(chunk, ReasoningDelta) for chunk in folded.chunks)
    assert isinstance(error, ProviderError)
    assert EXPECTED_ERRORS[name][1] in str(error)
