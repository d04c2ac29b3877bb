"""What every provider is: the :class:`Provider` protocol and the :class:`Request` it streams.

A provider turns a :class:`Request` (history, tool schemas, options) into a stream of
provider-neutral chunks. It owns the wire format; the turn owns everything else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

import msgspec

from .._chunks import Chunk
from .._messages import Message

__all__ = ["Provider", "Request", "ToolSpec", "check_tool_choice"]


class ToolSpec(msgspec.Struct, frozen=True):
    """A tool as the model sees it: name, description and JSON Schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


class Request(msgspec.Struct, frozen=True, kw_only=True):
    """One model call: the whole history plus the options for this reply.

    ``None`` options are left out of the wire request, so the provider's defaults apply.
    ``model`` overrides the provider's default model for this call. ``tool_choice`` is
    ``"auto"``, ``"none"``, ``"required"`` or the name of one tool (each provider
    spells it its own way on the wire); it is only sent when there are tools.
    ``reasoning_effort`` is ``"low"``, ``"medium"`` or ``"high"`` (OpenAI sends it as
    is; Anthropic turns it into a thinking budget). ``extra_body`` is merged into the
    wire request last, for provider options trurn does not know (it cannot replace
    ``model``, ``messages`` or ``stream``).
    """

    messages: Sequence[Message]
    tools: Sequence[ToolSpec] = ()
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    reasoning_effort: str | None = None
    tool_choice: str | None = None
    stop: Sequence[str] | None = None
    seed: int | None = None
    parallel_tool_calls: bool | None = None
    extra_body: Mapping[str, Any] | None = None


def check_tool_choice(request: Request) -> str | None:
    """``request.tool_choice``, once it is known to be ``None``, ``"auto"``, ``"none"``,
    ``"required"`` or the name of one of the request's tools; a ``ValueError`` naming the
    tools otherwise."""
    choice = request.tool_choice
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    names = [spec.name for spec in request.tools]
    if choice not in names:
        raise ValueError(
            f"tool_choice {choice!r} is not 'auto', 'none', 'required' or the name of one "
            f"of the request's tools ({', '.join(map(repr, names))})"
        )
    return choice


@runtime_checkable
class Provider(Protocol):
    """Streams model replies.

    ``stream(request)`` returns an async context manager; entering it sends the
    request and raises a :class:`~trurn.ProviderError` subclass if the provider
    refuses it; iterating it yields batches of chunks (one batch per network read)
    until the reply ends. Leaving the context (normally, on error or on cancel)
    closes the HTTP response.
    """

    @property
    def model(self) -> str:
        """The default model name."""
        ...

    def stream(
        self, request: Request
    ) -> AbstractAsyncContextManager[AsyncIterator[Sequence[Chunk]]]:
        """Send ``request`` and stream the reply as batches of chunks."""
        ...
