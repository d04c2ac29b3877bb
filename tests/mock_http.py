"""An ``httpx.MockTransport`` server for the provider tests: it records each request and
answers with a streamed body the test controls (pieces, then an error or a hang), so a
test can see what a provider sent, what it yielded per network read, and whether it
closed the response."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import trio

from trurn._chunks import Chunk
from trurn._messages import UserMessage
from trurn.providers._base import Provider, Request

REQUEST = Request(messages=[UserMessage("hi")])
SSE = {"content-type": "text/event-stream; charset=utf-8"}


class Body(httpx.AsyncByteStream):
    """A streamed response body: pieces, then optionally an exception or a hang."""

    def __init__(
        self,
        pieces: Sequence[bytes],
        *,
        then: BaseException | None = None,
        hang: bool = False,
    ) -> None:
        self.pieces = list(pieces)
        self.then = then
        self.hang = hang
        self.closed = False
        self.sent = 0

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.sent < len(self.pieces):
            self.sent += 1
            return self.pieces[self.sent - 1]
        if self.then is not None:
            raise self.then
        if self.hang:
            await trio.sleep_forever()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


class Server:
    """Records requests and answers each with the response ``respond`` builds."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)  # type: ignore[no-any-return]


def streaming(
    pieces: Sequence[bytes] | bytes,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    then: BaseException | None = None,
    hang: bool = False,
) -> tuple[Server, Body]:
    """A server answering every request with ``pieces``, one per network read (an event
    stream unless ``headers`` say otherwise), and that body, to check it was closed."""
    body = Body([pieces] if isinstance(pieces, bytes) else pieces, then=then, hang=hang)
    server = Server(lambda request: httpx.Response(status, headers=headers or SSE, stream=body))
    return server, body


def client_for(handler: Callable[[httpx.Request], Any]) -> httpx.AsyncClient:
    """A client whose requests ``handler`` (a :class:`Server`, or any MockTransport
    handler) answers."""
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def failing_client(failure: Callable[[httpx.Request], Exception]) -> httpx.AsyncClient:
    """A client whose every request fails with the transport error ``failure`` makes."""

    def fail(request: httpx.Request) -> httpx.Response:
        raise failure(request)

    return client_for(fail)


async def consume(
    provider: Provider, received: list[list[Chunk]], request: Request = REQUEST
) -> None:
    """Stream ``request``, appending each batch to ``received`` as it arrives."""
    async with provider.stream(request) as stream:
        async for batch in stream:
            received.append(list(batch))


async def collect(provider: Provider, request: Request = REQUEST) -> list[list[Chunk]]:
    batches: list[list[Chunk]] = []
    await consume(provider, batches, request)
    return batches


def flat(batches: list[list[Chunk]]) -> list[Chunk]:
    return [chunk for batch in batches for chunk in batch]


async def request_sent(
    provider_for: Callable[..., Provider],
    reply: bytes,
    request: Request = REQUEST,
    **options: Any,
) -> httpx.Request:
    """The one HTTP request that ``provider_for(client, **options)`` made to stream
    ``request``, with ``reply`` as the answer, read to its end."""
    server, _ = streaming(reply)
    async with client_for(server) as client:
        await collect(provider_for(client, **options), request)
    (sent,) = server.requests
    return sent


async def body_sent(
    provider_for: Callable[..., Provider],
    reply: bytes,
    request: Request = REQUEST,
    **options: Any,
) -> dict[str, Any]:
    """The JSON body of :func:`request_sent`."""
    sent = await request_sent(provider_for, reply, request, **options)
    return json.loads(sent.content)  # type: ignore[no-any-return]
