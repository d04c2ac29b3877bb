"""Anthropic Messages as the provider tests write it: SSE events built from their JSON
payloads, a whole short reply, an error body, and an ``AnthropicMessages`` pointed at
the mock server of :mod:`mock_http`."""

from __future__ import annotations

import json
from typing import Any

import httpx

from trurn.providers._anthropic import AnthropicMessages

BASE_URL = "https://anthropic.example.test"
URL = BASE_URL + "/v1/messages"


def provider_for(
    client: httpx.AsyncClient | None,
    model: str = "claude-default",
    base_url: str = BASE_URL,
    **options: Any,
) -> AnthropicMessages:
    return AnthropicMessages(model, base_url=base_url, client=client, **options)


def event(payload: dict[str, Any], name: str | None = None) -> bytes:
    """One SSE event named after the payload's type, as Anthropic sends them."""
    name = name or payload["type"]
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


def events(*payloads: dict[str, Any]) -> bytes:
    return b"".join(event(payload) for payload in payloads)


def message_start(input_tokens: int = 10, **usage: int) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1, **usage},
        },
    }


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": fields}


def text_delta(index: int, text: str) -> dict[str, Any]:
    return delta(index, type="text_delta", text=text)


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(stop_reason: str | None = "end_turn", **usage: Any) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": usage or {"output_tokens": 5},
    }


def text(piece: str) -> bytes:
    """The event carrying ``piece`` of the text block :data:`TEXT_START` opens."""
    return event(text_delta(0, piece))


PING = {"type": "ping"}
STOP = {"type": "message_stop"}
# What comes before the first text delta of a reply.
TEXT_START = events(message_start(), block_start(0, {"type": "text", "text": ""}))
HELLO = TEXT_START + text("Hel") + text("lo") + events(block_stop(0), message_delta(), STOP)


def anthropic_error(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
