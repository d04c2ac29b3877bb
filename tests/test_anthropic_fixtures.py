"""Recorded Anthropic Messages streams through the real AnthropicMessages code path.

Each anthropic-messages file of ``fixtures/streams/MANIFEST.json`` is served by an
``httpx.MockTransport`` as a streamed body, whole, line by line and in random-sized
slices, and the chunks AnthropicMessages yields are folded and compared with the
manifest's ``expected``.

One file is not a whole recording: ``error_overloaded_fragment.sse`` (``partial: true``)
is only the ``overloaded_error`` event the live API sent, as quoted in an SDK issue,
with no ``message_start`` before it and no ``message_stop`` after it. trurn does not
treat it as a reply: the error event ends the stream, so the caller gets a retryable
:class:`~trurn.OverloadedError` (``status_code`` None, the server's "Overloaded" in its
message) and no chunks. The same event after real output is tested below too: the
output comes first, then the error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from recorded import (
    FIXTURES,
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

from trurn._chunks import (
    Chunk,
    ServerToolBlock,
    ThinkingSignature,
)
from trurn._errors import OverloadedError, ProviderError
from trurn._messages import Usage
from trurn._stream import StreamState, assemble, reduce_stream
from trurn.providers._anthropic import AnthropicMessages

ENTRIES = entries("anthropic-messages")
FRAGMENT = "anthropic-messages/error_overloaded_fragment.sse"

# The in-stream error each error fixture must raise, and a piece of the provider's message.
EXPECTED_ERRORS: dict[str, tuple[type[ProviderError], str]] = {
    FRAGMENT: (OverloadedError, "Overloaded"),
}
# Anthropic's stop reasons as trurn reports them (written out here, not imported, so a
# change to the adapter's table shows up as a failure).
FINISH = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length"}
CLIENT_BLOCKS = {"text", "thinking", "redacted_thinking", "tool_use"}


def test_manifest_lists_every_anthropic_file() -> None:
    on_disk = {f"anthropic-messages/{p.name}" for p in (FIXTURES / "anthropic-messages").iterdir()}
    assert set(ENTRIES) == on_disk
    assert len(ENTRIES) == 12
    # Every partial file has a written, tested reason (the error it must raise).
    assert {name for name, e in ENTRIES.items() if e.get("partial")} <= set(EXPECTED_ERRORS)


@dataclass
class Folded(Fold):
    """Anthropic's own chunks too: thinking signatures and the blocks the server ran."""

    signatures: list[ThinkingSignature] = field(default_factory=list)
    server_blocks: list[dict[str, Any]] = field(default_factory=list)

    def other(self, chunk: Chunk) -> None:
        if isinstance(chunk, ThinkingSignature):
            self.signatures.append(chunk)
        elif isinstance(chunk, ServerToolBlock):
            self.server_blocks.append(chunk.block)
        else:
            super().other(chunk)


def provider(client: httpx.AsyncClient) -> AnthropicMessages:
    return AnthropicMessages("claude-test", api_key="sk-ant-fixture", client=client)


async def run(pieces: Sequence[bytes]) -> tuple[Folded, ProviderError | None, SlicedBody]:
    return await play(provider, pieces, Folded())


def expected_usage(raw: dict[str, Any] | None) -> Usage | None:
    """trurn's usage for the manifest's raw ``{message_start, message_delta}`` usage:
    message_delta's cumulative counts win, and the prompt includes cached tokens."""
    if raw is None:
        return None
    start, end = raw["message_start"], raw["message_delta"]

    def pick(name: str) -> int:
        value = end.get(name)
        return int(value if value is not None else start.get(name) or 0)

    cached = pick("cache_read_input_tokens")
    prompt = pick("input_tokens") + pick("cache_creation_input_tokens") + cached
    output = pick("output_tokens")
    details = end.get("output_tokens_details") or {}
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        total_tokens=prompt + output,
        reasoning_tokens=details.get("thinking_tokens", 0),
        cached_input_tokens=cached,
    )


def check(name: str, folded: Folded, error: ProviderError | None, body: SlicedBody) -> None:
    expected = ENTRIES[name]["expected"]
    assert folded.text == expected["text"]
    assert (folded.reasoning or None) == expected["reasoning"]

    # Tool calls by content-block index, each id and name sent once, arguments exact.
    check_tool_calls(folded.calls, expected["tool_calls"])

    # One ThinkingSignature per thinking or redacted block: signed ones carry the
    # recorded signatures, in order; redacted ones their opaque data.
    block_types = expected["content_block_types"]
    thinking_blocks = sum(t in ("thinking", "redacted_thinking") for t in block_types)
    assert len(folded.signatures) == thinking_blocks
    signed = [s.signature for s in folded.signatures if s.signature is not None]
    assert signed == expected["thinking_signatures"]
    redacted = [s.redacted for s in folded.signatures if s.redacted is not None]
    assert len(redacted) == expected.get("redacted_thinking_blocks", 0)
    assert all(r for r in redacted)

    # Blocks the server ran are surfaced whole; the server tool call with its parsed input.
    server_types = [t for t in block_types if t not in CLIENT_BLOCKS]
    assert [b["type"] for b in folded.server_blocks] == server_types
    uses = [b for b in folded.server_blocks if b["type"] == "server_tool_use"]
    want_uses = expected.get("server_tool_calls", [])
    assert [(b["id"], b["name"], b["input"]) for b in uses] == [
        (c["id"], c["name"], c["arguments"]) for c in want_uses
    ]
    for result in (b for b in folded.server_blocks if b["type"] == "web_search_tool_result"):
        assert result["tool_use_id"] in {c["id"] for c in want_uses}
        assert result["content"], "the search results are kept verbatim"

    stop = expected["stop_reason"]
    assert folded.finish == ([FINISH[stop]] if stop else [])
    want_usage = expected_usage(expected["usage"])
    assert folded.usage == ([want_usage] if want_usage else [])

    check_error(error, EXPECTED_ERRORS.get(name), expected["error"], "anthropic-messages")
    assert body.closed


@pytest.mark.parametrize("name", sorted(ENTRIES))
async def test_fixture_whole(name: str) -> None:
    folded, error, body = await run([fixture_bytes(name)])
    check(name, folded, error, body)


@pytest.mark.parametrize("name", sorted(ENTRIES))
async def test_fixture_line_by_line(name: str) -> None:
    pieces = fixture_bytes(name).splitlines(keepends=True)
    folded, error, body = await run(pieces)
    check(name, folded, error, body)
    if error is None:
        assert folded.batches > 1


@pytest.mark.parametrize("name", sorted(ENTRIES))
@random_cuts
async def test_fixture_random_slices(name: str, fractions: list[float]) -> None:
    folded, error, body = await run(cut(fixture_bytes(name), fractions))
    check(name, folded, error, body)


@pytest.mark.parametrize("name", sorted(set(ENTRIES) - set(EXPECTED_ERRORS)))
async def test_fixture_through_the_stream_reducer(name: str) -> None:
    # The real reducer assembles a reply that can be sent back: signed thinking blocks
    # with their text, redacted ones with their data, server blocks verbatim.
    folded, error, _ = await run([fixture_bytes(name)])
    assert error is None
    state = StreamState()
    for chunk in folded.chunks:
        state = reduce_stream(state, chunk).state
    reply = assemble(state)
    expected = ENTRIES[name]["expected"]
    assert (reply.content or "") == expected["text"]
    assert [call.id for call in reply.tool_calls] == [c["id"] for c in expected["tool_calls"]]
    assert [call.arguments for call in reply.tool_calls] == [
        c["arguments"] for c in expected["tool_calls"]
    ]
    assert all(call.arguments_error is None for call in reply.tool_calls)
    signed = [block for block in reply.thinking if block.signature is not None]
    assert [block.signature for block in signed] == expected["thinking_signatures"]
    if signed:
        assert "".join(block.text for block in signed) == expected["reasoning"]
    redacted = [block for block in reply.thinking if block.redacted is not None]
    assert len(redacted) == expected.get("redacted_thinking_blocks", 0)
    assert all(block.text == "" for block in redacted)
    assert len(reply.server_blocks) == len(
        [t for t in expected["content_block_types"] if t not in CLIENT_BLOCKS]
    )
    assert reply.finish_reason == FINISH[expected["stop_reason"]]


async def test_overloaded_fragment_after_real_output() -> None:
    # The fragment where it happens in real life: after some output, before message_stop.
    recording = fixture_bytes("anthropic-messages/text_ping_midstream.sse")
    events = recording.split(b"\n\n")
    prefix = b"\n\n".join(events[:6]) + b"\n\n"  # message_start .. a few text deltas
    folded, error, body = await run([prefix, fixture_bytes(FRAGMENT)])
    assert folded.text
    assert ENTRIES["anthropic-messages/text_ping_midstream.sse"]["expected"]["text"].startswith(
        folded.text
    )
    assert folded.finish == []
    assert folded.usage == []
    assert type(error) is OverloadedError
    assert error.retryable
    assert "Overloaded" in str(error)
    assert body.closed


async def test_overloaded_fragment_in_one_read_with_output_before_it() -> None:
    # Output and error in the same read: the output batch is delivered, then the error.
    recording = fixture_bytes("anthropic-messages/text_plain_utf8.sse")
    events = recording.split(b"\n\n")
    prefix = b"\n\n".join(events[:5]) + b"\n\n"
    folded, error, _ = await run([prefix + fixture_bytes(FRAGMENT)])
    assert folded.batches == 1
    assert folded.text
    assert type(error) is OverloadedError
