"""One client measurement, in a fresh process: play turns, print what they cost as JSON.

``python benchmarks/_worker.py CLIENT --base-url URL [--wire W] --concurrency C --rounds R``

``--wire`` is ``openai`` (Chat Completions, the default) or ``anthropic`` (Messages):
the baseline is then ``_baseline.py`` or ``_baseline_anthropic.py``, and trurn's agent
uses ``OpenAIChat`` or ``AnthropicMessages``.

A round starts ``C`` turns at once in one nursery (``C=1``: a single turn, so rounds
run sequentially). Warm-up rounds fill the connection pool and the caches, then ``R``
rounds are timed with ``time.process_time()``: the CPU time of this process
only, as the server runs in another. Every turn's result is checked, so a client that
stops early or skips a tool call fails loudly instead of looking fast.

Client ``trurn-session`` measures what a session file adds to a turn: each round plays
the ``trurn`` turn on an in-memory ``trurn.Context()`` and on a session file
(``trurn.Context(path)``, fsync ``"turn"``; ``trurn-session-never``: fsync ``"never"``),
and the floor turn described below, in rotating order, each timed on its own. Playing
them in one process makes the ratios immune to the machine's drift between processes. Every file
turn gets a new file in a new directory under ``--session-dir``, opened with ``async
with`` (created, locked, header written and synced, background writer started) before
the timed rounds and closed after them, so the history and the requests are those of the
in-memory turn and the timed CPU adds only what the turn's writes and its sync cost.
``cpu_s`` is then the file turns' CPU, ``memory_cpu_s`` the in-memory turns', and
``main_thread_cpu_s`` the file turns' CPU in the event loop's thread (the rest is the
writer threads'). A third turn of each round, ``floor_cpu_s``, is the in-memory turn
followed by the least any session file must add to it if the turn waits until its records
are in the file and the event loop never blocks on the disk: one ``trio.to_thread.run_sync``
that appends the bytes a file turn writes to a plain file, with ``os.write`` (and
``os.fsync`` under fsync ``"turn"``). The report gives the opening and closing apart
(``session_open_cpu_s``, ``session_close_cpu_s``), and every file is read back to check
it holds the whole turn. Session clients play one turn at a time.

The baseline worker never imports trurn (the trurn side is imported only when asked
for), so its peak RSS is that of a bare trio + httpx + msgspec client.

The report also says how much of that CPU went to httpcore's connection-pool
bookkeeping (``AsyncConnectionPool._assign_requests_to_connections``, run on every
request and every response close, and quadratic in the number of idle connections), by
timing that one method: at high concurrency it dominates both clients, and the figure
lets run.py show what remains.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
    nullcontext,
)
from pathlib import Path
from typing import Literal

import _baseline
import _baseline_anthropic
import httpcore
import httpx
import trio
from _scenario import EVENTS_PER_TURN, FINAL_TEXT, TOOL_KEYS, USER_MESSAGE, WIRES, Wire

CLIENTS = ("baseline", "trurn", "trurn-subscriber")
# trurn's FsyncPolicy, spelt out: the baseline worker must not import trurn.
FsyncPolicy = Literal["turn", "record", "never"]
SESSION_CLIENTS: dict[str, FsyncPolicy] = {"trurn-session": "turn", "trurn-session-never": "never"}
"""The clients that run each turn on a session file, and their fsync policy."""
# What a turn writes to its session file: the header (before the turn), then
# turn_start, the six messages of two tool rounds and the answer, turn_end.
_SESSION_KINDS = ["header", "turn_start", *["message"] * 6, "turn_end"]
_POOL_BOOKKEEPING = "_assign_requests_to_connections"

Turn = Callable[[], Awaitable[None]]


def open_http_client(concurrency: int) -> httpx.AsyncClient:
    """The HTTP client both sides use: a pool as large as the concurrency, nothing else."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0))


def _expect_whole_turn(client: str, text: str | None, tool_calls: int) -> None:
    if text != FINAL_TEXT or tool_calls != len(TOOL_KEYS):
        raise RuntimeError(
            f"{client}: the turn ended with {tool_calls} tool calls and text {text!r}; "
            f"expected {len(TOOL_KEYS)} tool calls and the scripted final text"
        )


@asynccontextmanager
async def baseline_turns(
    http: httpx.AsyncClient, base_url: str, wire: Wire = "openai"
) -> AsyncIterator[Turn]:
    if wire == "anthropic":
        url, run_turn = base_url + "/messages", _baseline_anthropic.run_turn
    else:
        url, run_turn = base_url + "/chat/completions", _baseline.run_turn
    expected = EVENTS_PER_TURN[wire]

    async def turn() -> None:
        outcome = await run_turn(http, url, USER_MESSAGE)
        _expect_whole_turn("baseline", outcome.text, outcome.tool_calls)
        if outcome.chunks != expected:
            raise RuntimeError(f"baseline ({wire}): {outcome.chunks} events, expected {expected}")

    yield turn


@asynccontextmanager
async def trurn_turns(
    http: httpx.AsyncClient, base_url: str, wire: Wire = "openai", *, subscriber: bool
) -> AsyncIterator[Turn]:
    import _trurn_client

    import trurn

    agent = _trurn_client.make_agent(http, base_url, wire)

    async def turn() -> None:
        result = await agent.run_turn(trurn.Context(), USER_MESSAGE)
        _expect_whole_turn("trurn", result.text, len(result.tool_calls))

    reading: AbstractAsyncContextManager[object]
    reading = _trurn_client.reading_every_event(agent) if subscriber else nullcontext()
    async with reading:
        yield turn


@asynccontextmanager
async def session_turns(
    http: httpx.AsyncClient,
    base_url: str,
    wire: Wire,
    session_dir: str,
    sessions: int,
    fsync: FsyncPolicy,
    costs: dict[str, float],
) -> AsyncIterator[tuple[Turn, Turn, Turn]]:
    """The ``trurn`` turn in memory, the same turn on a new session file each time
    (``sessions`` of them, opened up front), and the floor turn (see the module's
    docstring); ``costs`` receives the CPU seconds of opening and closing the files."""
    import _trurn_client

    import trurn
    from trurn._journal import read_journal

    agent = _trurn_client.make_agent(http, base_url, wire)
    with tempfile.TemporaryDirectory(prefix="trurn-bench-", dir=session_dir) as directory:
        paths = [Path(directory) / f"session-{number:05d}.jsonl" for number in range(sessions)]
        async with AsyncExitStack() as stack:
            cpu = time.process_time()
            contexts = []
            for path in paths:
                context = await stack.enter_async_context(trurn.Context(path, fsync=fsync))
                # Creating a file makes its first fsync dearer: that belongs to opening.
                await context.sync()
                contexts.append(context)
            costs["session_open_cpu_s"] = time.process_time() - cpu
            unused = iter(contexts)

            async def in_memory() -> None:
                result = await agent.run_turn(trurn.Context(), USER_MESSAGE)
                _expect_whole_turn("trurn", result.text, len(result.tool_calls))

            async def on_file() -> None:
                result = await agent.run_turn(next(unused), USER_MESSAGE)
                _expect_whole_turn("trurn on a session file", result.text, len(result.tool_calls))

            # What a file turn writes after the header: known once the first one ran.
            turn_bytes = bytearray()
            floor_fd = os.open(Path(directory) / "floor.jsonl", _APPEND_FLAGS, 0o600)
            stack.callback(os.close, floor_fd)

            async def floor() -> None:
                await in_memory()
                if not turn_bytes:
                    turn_bytes.extend(paths[0].read_bytes().split(b"\n", 1)[1])
                await trio.to_thread.run_sync(_append, floor_fd, bytes(turn_bytes), fsync)

            try:
                yield in_memory, on_file, floor
            finally:
                cpu = time.process_time()
                await stack.aclose()
                costs["session_close_cpu_s"] = time.process_time() - cpu
        for path in paths:
            records = (await read_journal(path)).records
            kinds = [type(record).__struct_config__.tag for record in records]
            if kinds != _SESSION_KINDS:
                raise RuntimeError(f"trurn on a session file: {path.name} holds {kinds}")


_APPEND_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


def _append(fd: int, data: bytes, fsync: FsyncPolicy) -> None:
    """The floor turn's write: the bytes in one ``write``, forced to disk unless
    ``fsync`` is ``"never"``."""
    os.write(fd, data)
    if fsync != "never":
        os.fsync(fd)


async def play_rounds(turn: Turn, concurrency: int, rounds: int) -> None:
    for _ in range(rounds):
        if concurrency == 1:
            await turn()
            continue
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(turn)


@contextmanager
def timing_pool_bookkeeping() -> Iterator[list[float] | None]:
    """Sum the CPU time spent in httpcore's pool bookkeeping while the block runs.

    Yields a one-item list holding the seconds so far, or None if this httpcore has no
    such method (the wrapper only times the calls; it changes nothing they do).
    """
    pool_class = getattr(httpcore, "AsyncConnectionPool", None)
    original = getattr(pool_class, _POOL_BOOKKEEPING, None)
    if pool_class is None or original is None:
        yield None
        return
    spent = [0.0]

    def timed(pool: object) -> object:
        start = time.process_time()
        try:
            return original(pool)
        finally:
            spent[0] += time.process_time() - start

    setattr(pool_class, _POOL_BOOKKEEPING, timed)
    try:
        yield spent
    finally:
        setattr(pool_class, _POOL_BOOKKEEPING, original)


class _TaskSteps(trio.abc.Instrument):
    """Counts task steps: how many times the scheduler resumed a task."""

    def __init__(self) -> None:
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


@contextmanager
def profiling(path: str | None) -> Iterator[_TaskSteps | None]:
    """cProfile the block into ``path`` and count its task steps; nothing if ``path`` is None."""
    if path is None:
        yield None
        return
    steps = _TaskSteps()
    profiler = cProfile.Profile()
    trio.lowlevel.add_instrument(steps)
    profiler.enable()
    try:
        yield steps
    finally:
        profiler.disable()
        trio.lowlevel.remove_instrument(steps)
        profiler.dump_stats(path)


_ROTATIONS = (("memory", "file", "floor"), ("file", "floor", "memory"), ("floor", "memory", "file"))


async def measure_pairs(args: argparse.Namespace) -> dict[str, object]:
    """A session client: in-memory, file and floor turns in rounds, each timed on its own."""
    costs: dict[str, float] = {}
    spent = {"memory": 0.0, "file": 0.0, "file_main": 0.0, "floor": 0.0}
    async with open_http_client(1) as http:
        sessions = args.warmup_rounds + args.rounds
        fsync = SESSION_CLIENTS[args.client]
        pairs = session_turns(
            http, args.base_url, args.wire, args.session_dir, sessions, fsync, costs
        )
        async with pairs as (in_memory, on_file, floor):
            turns = {"memory": in_memory, "file": on_file, "floor": floor}
            for _ in range(args.warmup_rounds):
                for play in turns.values():
                    await play()
            gc.collect()
            wall = time.perf_counter()
            for round_number in range(args.rounds):
                # Each kind goes first, second and third in turn.
                order = _ROTATIONS[round_number % len(_ROTATIONS)]
                for kind in order:
                    cpu, main_cpu = time.process_time(), time.thread_time()
                    await turns[kind]()
                    spent[kind] += time.process_time() - cpu
                    if kind == "file":
                        spent["file_main"] += time.thread_time() - main_cpu
            wall = time.perf_counter() - wall
    return {
        "client": args.client,
        "wire": args.wire,
        "turns": args.rounds,
        "cpu_s": spent["file"],
        "memory_cpu_s": spent["memory"],
        "main_thread_cpu_s": spent["file_main"],
        "floor_cpu_s": spent["floor"],
        "wall_s": wall,
        "max_rss_kib": peak_rss_kib(),
        "pool_cpu_s": None,
        "task_steps": None,
        **costs,
    }


async def measure(args: argparse.Namespace) -> dict[str, object]:
    if args.client in SESSION_CLIENTS:
        return await measure_pairs(args)
    async with open_http_client(args.concurrency) as http:
        turns: AbstractAsyncContextManager[Turn]
        if args.client == "baseline":
            turns = baseline_turns(http, args.base_url, args.wire)
        else:
            subscriber = args.client == "trurn-subscriber"
            turns = trurn_turns(http, args.base_url, args.wire, subscriber=subscriber)
        async with turns as turn:
            await play_rounds(turn, args.concurrency, args.warmup_rounds)
            gc.collect()
            with profiling(args.profile) as steps, timing_pool_bookkeeping() as pool:
                wall = time.perf_counter()
                cpu = time.process_time()
                await play_rounds(turn, args.concurrency, args.rounds)
                cpu = time.process_time() - cpu
                wall = time.perf_counter() - wall
    return {
        "client": args.client,
        "wire": args.wire,
        "turns": args.concurrency * args.rounds,
        "cpu_s": cpu,
        "wall_s": wall,
        "max_rss_kib": peak_rss_kib(),
        "pool_cpu_s": None if pool is None else pool[0],
        "task_steps": None if steps is None else steps.count,
    }


def peak_rss_kib() -> int:
    """This process's peak resident memory, in KiB.

    ``VmHWM`` is reset when a process calls exec; ``ru_maxrss`` is not (Linux keeps the
    larger of the parent's RSS at fork time and the child's own), so it is only the
    fallback where /proc is missing.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss // 1024 if sys.platform == "darwin" else maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("client", choices=(*CLIENTS, *SESSION_CLIENTS))
    parser.add_argument("--base-url", required=True, help="http://127.0.0.1:PORT/v1")
    parser.add_argument("--wire", choices=WIRES, default="openai", help="API format")
    parser.add_argument("--concurrency", type=int, default=1, help="turns at once (default 1)")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--warmup-rounds", type=int, default=1, help="untimed rounds (default 1)")
    parser.add_argument(
        "--profile", metavar="PATH", help="cProfile the timed rounds into PATH, count task steps"
    )
    parser.add_argument(
        "--session-dir",
        default=tempfile.gettempdir(),
        help="where the trurn-session clients make their files (default: the temp dir)",
    )
    args = parser.parse_args()
    if args.concurrency < 1 or args.rounds < 1 or args.warmup_rounds < 0:
        parser.error("--concurrency and --rounds must be >= 1, --warmup-rounds >= 0")
    if args.client in SESSION_CLIENTS and (args.concurrency != 1 or args.profile):
        parser.error(f"{args.client} plays one turn at a time, unprofiled")
    print(json.dumps(trio.run(measure, args)))


if __name__ == "__main__":
    main()
