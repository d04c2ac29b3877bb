"""Proof that both clients hold the same HTTP conversation, checked before measuring.

For each wire format (OpenAI Chat Completions, Anthropic Messages), one turn of each
client against an in-process scripted server: the JSON bodies of their requests must
be equal (as decoded JSON, so key order does not matter), and so must the request
headers (which include the bodies' sizes). A difference means the benchmark compares
two different workloads, so run.py stops instead of printing numbers.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import trio
from _scenario import REQUESTS_PER_TURN, WIRES, Wire
from _server import make_script
from _worker import baseline_turns, trurn_turns

from trurn.testing import open_scripted_server

__all__ = ["check_conversation"]


async def _one_turn(client: str, base_url: str, wire: Wire) -> list[Any]:
    bodies: list[Any] = []

    async def record(request: httpx.Request) -> None:
        bodies.append(msgspec.json.decode(request.content))

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        turns = (
            baseline_turns(http, base_url, wire)
            if client == "baseline"
            else trurn_turns(http, base_url, wire, subscriber=False)
        )
        async with turns as turn:
            await turn()
    return bodies


def _differences(baseline: list[Any], trurn: list[Any]) -> list[str]:
    found = []
    # Unequal lengths are reported here; zip then compares the requests both sent.
    if len(baseline) != REQUESTS_PER_TURN or len(trurn) != REQUESTS_PER_TURN:
        found.append(f"requests per turn: baseline {len(baseline)}, trurn {len(trurn)}")
    for number, (ours, theirs) in enumerate(zip(baseline, trurn, strict=False), start=1):
        if ours != theirs:
            found.append(f"request {number} body:\n  baseline {ours}\n  trurn    {theirs}")
    return found


async def _check(wire: Wire) -> int:
    async with open_scripted_server(make_script(0.0)) as server:
        base_url = server.base_url
        baseline = await _one_turn("baseline", base_url, wire)
        baseline_headers = list(server.request_headers)
        trurn = await _one_turn("trurn", base_url, wire)
        trurn_headers = server.request_headers[len(baseline_headers) :]
    problems = _differences(baseline, trurn)
    if baseline_headers != trurn_headers:
        problems.append(f"headers:\n  baseline {baseline_headers}\n  trurn    {trurn_headers}")
    if problems:
        raise RuntimeError(
            f"the baseline and trurn do not send the same {wire} requests:\n" + "\n".join(problems)
        )
    return sum(int(headers["content-length"]) for headers in baseline_headers)


def check_conversation() -> dict[Wire, int]:
    """Raise ``RuntimeError`` unless both clients send identical requests, over every
    wire format; return the bytes of request bodies one turn sends, by wire."""
    return {wire: trio.run(_check, wire) for wire in WIRES}
