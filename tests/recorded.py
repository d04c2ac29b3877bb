"""Playing recorded streams (``fixtures/streams``) through a real provider code path.

The conformance tests of each provider serve a recording from an
``httpx.MockTransport`` as a response body that arrives in chosen pieces, and fold
what the provider yields.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import trio

from trurn._chunks import Chunk
from trurn._errors import ProviderError
from trurn._messages import UserMessage
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


async def play(
    make_provider: Callable[[httpx.AsyncClient], Provider],
    pieces: Sequence[bytes],
    add: Callable[[Sequence[Chunk]], None],
) -> tuple[ProviderError | None, SlicedBody]:
    """Stream ``REQUEST`` from a provider whose response body is ``pieces``, giving each
    batch to ``add``; returns the error the provider raised (if any) and the body."""
    body = SlicedBody(pieces)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)

    error: ProviderError | None = None
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        try:
            async with make_provider(client).stream(REQUEST) as batches:
                async for batch in batches:
                    add(batch)
        except ProviderError as exc:
            error = exc
    return error, body
