"""One client measurement, in a fresh process: play turns, print what they cost as JSON.

``python benchmarks/_worker.py CLIENT --base-url URL --concurrency C --rounds R``

A round starts ``C`` turns at once in one nursery (``C=1``: a single turn, so rounds
run sequentially). One warm-up round fills the connection pool and the caches, then
``R`` rounds are timed with ``time.process_time()``: the CPU time of this process
only, as the server runs in another. Every turn's result is checked, so a client that
stops early or skips a tool call fails loudly instead of looking fast.

The baseline worker never imports trurn, so its peak RSS is that of a bare
trio + httpx + msgspec client.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

import httpx
import trio
from _scenario import CHUNKS_PER_TURN, FINAL_TEXT, TOOL_KEYS, USER_MESSAGE

CLIENTS = ("baseline", "trurn", "trurn-subscriber")

Turn = Callable[[], Awaitable[None]]


def open_http_client(concurrency: int) -> httpx.AsyncClient:
    """The HTTP client both sides use: a pool as large as the concurrency, nothing else."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0))


def _check(client: str, text: str | None, tool_calls: int) -> None:
    if text != FINAL_TEXT or tool_calls != len(TOOL_KEYS):
        raise RuntimeError(
            f"{client}: the turn ended with {tool_calls} tool calls and text {text!r}; "
            f"expected {len(TOOL_KEYS)} tool calls and the scripted final text"
        )


@asynccontextmanager
async def baseline_turns(http: httpx.AsyncClient, base_url: str) -> AsyncIterator[Turn]:
    import _baseline

    url = base_url + "/chat/completions"

    async def turn() -> None:
        outcome = await _baseline.run_turn(http, url, USER_MESSAGE)
        _check("baseline", outcome.text, outcome.tool_calls)
        if outcome.chunks != CHUNKS_PER_TURN:
            raise RuntimeError(f"baseline: {outcome.chunks} chunks, expected {CHUNKS_PER_TURN}")

    yield turn


@asynccontextmanager
async def trurn_turns(
    http: httpx.AsyncClient, base_url: str, *, subscriber: bool
) -> AsyncIterator[Turn]:
    import _trurn_client

    import trurn

    agent = _trurn_client.make_agent(http, base_url)

    async def turn() -> None:
        result = await agent.run_turn(trurn.Context(), USER_MESSAGE)
        _check("trurn", result.text, len(result.tool_calls))

    reading: AbstractAsyncContextManager[object]
    reading = _trurn_client.reading_every_event(agent) if subscriber else nullcontext()
    async with reading:
        yield turn


async def play_rounds(turn: Turn, concurrency: int, rounds: int) -> None:
    for _ in range(rounds):
        if concurrency == 1:
            await turn()
            continue
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(turn)


async def measure(args: argparse.Namespace) -> dict[str, object]:
    async with open_http_client(args.concurrency) as http:
        turns: AbstractAsyncContextManager[Turn]
        if args.client == "baseline":
            turns = baseline_turns(http, args.base_url)
        else:
            subscriber = args.client == "trurn-subscriber"
            turns = trurn_turns(http, args.base_url, subscriber=subscriber)
        async with turns as turn:
            await play_rounds(turn, args.concurrency, args.warmup_rounds)
            profiler = cProfile.Profile() if args.profile else None
            gc.collect()
            wall = time.perf_counter()
            cpu = time.process_time()
            if profiler is not None:
                profiler.enable()
            await play_rounds(turn, args.concurrency, args.rounds)
            if profiler is not None:
                profiler.disable()
            cpu = time.process_time() - cpu
            wall = time.perf_counter() - wall
    if profiler is not None:
        profiler.dump_stats(args.profile)
    return {
        "client": args.client,
        "turns": args.concurrency * args.rounds,
        "cpu_s": cpu,
        "wall_s": wall,
        # Linux reports ru_maxrss in KiB.
        "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("client", choices=CLIENTS)
    parser.add_argument("--base-url", required=True, help="http://127.0.0.1:PORT/v1")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup-rounds", type=int, default=1)
    parser.add_argument("--profile", metavar="PATH", help="cProfile the timed rounds into PATH")
    args = parser.parse_args()
    if args.concurrency < 1 or args.rounds < 1 or args.warmup_rounds < 0:
        parser.error("--concurrency and --rounds must be >= 1, --warmup-rounds >= 0")
    print(json.dumps(trio.run(measure, args)))


if __name__ == "__main__":
    main()
