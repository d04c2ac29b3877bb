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

__all__ = ["Provider", "Request", "ToolSpec", "check_tool_choice", "encode_body"]

_encoder = msgspec.json.Encoder()


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


def encode_body(
    body: msgspec.Struct, extra: Mapping[str, Any] | None, *, reserved: Sequence[str]
) -> bytes:
    """``body`` as JSON, with ``extra`` (a request's ``extra_body``) merged in last.

    The merge is done on the encoded JSON, so the history (the bulk of the body) is encoded
    once, straight from the wire Structs, and never copied into a dict. A field of
    ``body`` that ``extra`` names is left out, so ``extra``'s value (``null`` included) is
    the only one on the wire: every field of ``body`` but the ``reserved`` ones must
    default to ``None``, and ``body`` must omit defaults. Raises ``ValueError`` for a key
    that is not a string or is ``reserved`` (what the call is: model, messages, stream...),
    and for a value msgspec cannot encode as JSON.
    """
    if not extra:
        return _encoder.encode(body)
    replaced: dict[str, None] = {}
    fields = body.__struct_fields__
    for key in extra:
        if not isinstance(key, str):
            raise ValueError(f"extra_body keys must be strings, got {key!r}")
        if key in reserved:
            raise ValueError(
                f"extra_body may not set {key!r}: trurn sets it itself ({', '.join(reserved)}) "
                "(use Request.model to change the model)"
            )
        if key in fields:
            replaced[key] = None
    try:
        tail = _encoder.encode(extra if isinstance(extra, dict) else dict(extra))
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValueError(f"extra_body does not encode as JSON: {exc}") from exc
    if replaced:
        body = msgspec.structs.replace(body, **replaced)
    head = _encoder.encode(body)
    # head is a non-empty object (the reserved fields are always there): b'{...}'.
    if tail == b"{}":
        return head
    return head[:-1] + b"," + tail[1:]


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
