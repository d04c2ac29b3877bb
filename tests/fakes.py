"""A provider that replays scripted chunk batches in memory, for turn-loop tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from trurn._chunks import Chunk, Finish, TextDelta, ToolCallDelta
from trurn._messages import AssistantMessage, Message, ToolMessage
from trurn.providers import Request

HANG = object()
"""In a scripted reply: the stream stops sending and waits forever."""

Step = object
"""A batch of chunks (a sequence), an exception to raise, or ``HANG``."""
Reply = Sequence[Step] | BaseException


class FakeProvider:
    """Each ``stream()`` call plays the next scripted reply.

    A reply is a list of steps: a batch of chunks, an exception to raise mid-stream,
    or ``HANG``. A reply that is an exception is raised when the stream is opened.
    """

    def __init__(self, replies: Sequence[Reply], model: str = "fake-model") -> None:
        self._replies = list(replies)
        self._model = model
        self.requests: list[Request] = []
        self.open_streams = 0
        self.closed_streams = 0

    @property
    def model(self) -> str:
        return self._model

    @asynccontextmanager
    async def stream(self, request: Request) -> AsyncIterator[AsyncIterator[Sequence[Chunk]]]:
        self.requests.append(request)
        await trio.lowlevel.checkpoint()
        if not self._replies:
            raise AssertionError("the fake provider ran out of replies")
        reply = self._replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        self.open_streams += 1
        batches = self._play(reply)
        try:
            yield batches
        finally:
            await batches.aclose()
            self.open_streams -= 1
            self.closed_streams += 1

    async def _play(self, reply: Sequence[Step]) -> AsyncIterator[Sequence[Chunk]]:
        for step in reply:
            await trio.lowlevel.checkpoint()
            if step is HANG:
                await trio.sleep_forever()
            if isinstance(step, BaseException):
                raise step
            assert isinstance(step, Sequence)
            yield step


def text_reply(text: str, *pieces: str) -> list[Step]:
    """A reply streaming ``text`` (or the given pieces), then finishing with ``stop``."""
    return [[TextDelta(p) for p in (pieces or (text,))], [Finish("stop")]]


def tool_reply(*calls: tuple[str, str, str], text: str = "") -> list[Step]:
    """A reply calling tools: ``(id, name, arguments_json)`` each."""
    batch: list[Chunk] = [TextDelta(text)] if text else []
    for index, (call_id, name, arguments) in enumerate(calls):
        batch.append(ToolCallDelta(index=index, id=call_id, name=name))
        batch.append(ToolCallDelta(index=index, arguments=arguments))
    return [batch, [Finish("tool_calls")]]


def assert_valid_history(messages: Sequence[Message]) -> None:
    """What a provider accepts: every assistant tool call has exactly one result before
    anything else is said, and an aborted reply is never blank."""
    pending: set[str] = set()
    for message in messages:
        if isinstance(message, AssistantMessage):
            assert not pending, f"tool calls without results: {pending}"
            pending = {call.id for call in message.tool_calls}
            if message.aborted:
                assert message.content
                assert message.content.strip()
        elif isinstance(message, ToolMessage):
            assert message.tool_call_id in pending, f"result without its call: {message}"
            pending.discard(message.tool_call_id)
        else:
            assert not pending, f"tool calls without results: {pending}"
    assert not pending, f"tool calls without results: {pending}"
