"""Chat Completions as the provider tests write it: ``data:`` events of chunk deltas, a
whole short reply, an error body, and an ``OpenAIChat`` pointed at the mock server of
:mod:`mock_http`."""

from __future__ import annotations

import json
from typing import Any

import httpx

from trurn.providers._openai import OpenAIChat

BASE_URL = "https://llm.example.test/v1"
URL = BASE_URL + "/chat/completions"


def provider_for(
    client: httpx.AsyncClient | None, model: str = "m", base_url: str = BASE_URL, **options: Any
) -> OpenAIChat:
    return OpenAIChat(model, base_url=base_url, client=client, **options)


def sse(*payloads: Any) -> bytes:
    """An event stream of ``data:`` events (dicts are JSON-encoded)."""
    out = b""
    for payload in payloads:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        out += b"data: " + data.encode() + b"\n\n"
    return out


def delta(index: int = 0, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": fields, "finish_reason": finish}]}


def text(piece: str) -> bytes:
    """The event carrying ``piece`` of the reply's text."""
    return sse(delta(content=piece))


# Without [DONE]: compatible servers often leave it out, and the finish reason suffices.
HELLO = sse(delta(role="assistant", content="Hel"), delta(content="lo"), delta(finish="stop"))


def openai_error(
    message: str, code: str | None = None, kind: str = "invalid_request_error"
) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    ).encode()
