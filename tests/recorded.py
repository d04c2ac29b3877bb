"""Playing recorded streams (``fixtures/streams``) through a real provider code path.

The conformance tests of each provider serve a recording from an
``httpx.MockTransport`` as a response body that arrives in chosen pieces, fold what the
provider yields (:class:`Fold`) and compare it with the manifest's ``expected``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trurn._chunks import Chunk, Finish, ReasoningDelta, TextDelta, ToolCallDelta
from trurn._errors import ProviderError
from trurn._messages import Usage, UserMessage
from trurn.providers import Provider, Request

FIXTURES = Path(__file__).parent / "fixtures" / "streams"
MANIFEST: list[dict[str, Any]] = json.loads((FIXTURES / "MANIFEST.json").read_text("utf-8"))
REQUEST = Request(messages=[UserMessage("hi")])


def entries(provider: str) -> dict[str, dict[str, Any]]:
    """The manifest's entries for one provider, by file name."""
    return {e["file"]: e for e in MANIFEST if e["provider"] == provider}


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def cut(raw: bytes, fractions: Sequence[float]) -> list[bytes]:
    """``raw`` cut at the given fractions of its length (in any order), in pieces."""
    cuts = sorted(int(f * len(raw)) for f in fractions)
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


class SlicedBody(httpx.AsyncByteStream):
    """A response body that arrives in exactly the given pieces."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self.pieces = pieces
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            await trio.lowlevel.checkpoint()
            yield piece

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class Fold:
    """What the chunks add up to; a test-only stand-in for the stream reducer. A
    provider's own kinds of chunk go to :meth:`other`."""

    chunks: list[Chunk] = field(default_factory=list)
    text: str = ""
    reasoning: str = ""
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish: list[str] = field(default_factory=list)
    usage: list[Usage] = field(default_factory=list)
    batches: int = 0

    def add(self, batch: Sequence[Chunk]) -> None:
        assert batch, "the provider must not yield empty batches"
        self.batches += 1
        self.chunks.extend(batch)
        for chunk in batch:
            if isinstance(chunk, TextDelta):
                self.text += chunk.text
            elif isinstance(chunk, ReasoningDelta):
                self.reasoning += chunk.text
            elif isinstance(chunk, ToolCallDelta):
                assert chunk.index is not None
                call = self.calls.setdefault(chunk.index, {"id": None, "name": None, "args": ""})
                if chunk.id is not None:
                    assert call["id"] is None, "id sent twice"
                    call["id"] = chunk.id
                call["name"] = chunk.name or call["name"]
                call["args"] += chunk.arguments
            elif isinstance(chunk, Finish):
                self.finish.append(chunk.reason)
            elif isinstance(chunk, Usage):
                self.usage.append(chunk)
            else:
                self.other(chunk)

    def other(self, chunk: Chunk) -> None:
        raise AssertionError(f"unexpected chunk {chunk!r}")


F = TypeVar("F", bound=Fold)


async def play(
    make_provider: Callable[[httpx.AsyncClient], Provider], pieces: Sequence[bytes], fold: F
) -> tuple[F, ProviderError | None, SlicedBody]:
    """Stream ``REQUEST`` from a provider whose response body is ``pieces``, adding each
    batch to ``fold``; returns it, the error the provider raised (if any) and the body."""
    body = SlicedBody(pieces)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)

    error: ProviderError | None = None
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        try:
            async with make_provider(client).stream(REQUEST) as batches:
                async for batch in batches:
                    fold.add(batch)
        except ProviderError as exc:
            error = exc
    return fold, error, body


def check_tool_calls(calls: dict[int, dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """The folded tool calls, by index, against the manifest's: ids, names and arguments
    exact."""
    assert sorted(calls) == [call["index"] for call in expected]
    for got, want in zip((calls[index] for index in sorted(calls)), expected, strict=True):
        assert got["id"] == want["id"]
        assert got["name"] == want["name"]
        assert got["args"] == want["arguments_raw"]
        assert (json.loads(got["args"]) if got["args"] else {}) == want["arguments"]


def check_error(
    error: ProviderError | None,
    raises: tuple[type[ProviderError], str] | None,
    recorded: dict[str, Any] | None,
    provider: str,
) -> None:
    """The error a stream raised: the class and words it ``raises`` (None: no error) and
    the message of the error event the manifest ``recorded``."""
    if raises is None:
        assert recorded is None
        assert error is None
        return
    cls, words = raises
    assert type(error) is cls
    assert words in str(error)
    assert error.status_code is None  # sent inside a 200 stream
    assert error.provider == provider
    assert recorded is not None
    assert recorded["message"] in str(error)


def random_cuts(test: Callable[..., Any]) -> Callable[..., Any]:
    """Runs ``test`` (which takes ``fractions``) on 20 random lists of cut points for
    :func:`cut`."""
    # Cut points drawn before the test runs: a draw inside the test (st.data()) would
    # happen inside Trio's nursery, where older hypothesis releases cannot see their own
    # control-flow exceptions through the exception group.
    cuts = given(fractions=st.lists(st.floats(0, 1), max_size=60))
    return settings(max_examples=20, deadline=None)(cuts(test))
