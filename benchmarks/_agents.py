"""Many agents serving at once in one process: memory per idle agent, per running turn, time.

``python benchmarks/_agents.py CLIENT --base-url URL --agents N [--tracemalloc]``
measures one client in a fresh process and prints its report as one JSON line;
:func:`agent_rows` runs the workers against the benchmark server and makes the rows.

Client ``trurn``: ``N`` agents as ``_trurn_client.make_agent`` builds them (each with
its own ``OpenAIChat`` and the ``lookup`` tool), each serving its own in-memory
``Context`` (``await nursery.start(agent.serve, context)``). Then each agent is sent
the benchmark message (``agent.send_nowait``): one turn each, all at once. Memory is
read before the agents exist, once they all serve (idle), while all ``N`` turns are in
the middle of their first model call, and after every turn ended.

Client ``baseline``: ``N`` of the hand-written turns of ``_baseline.py`` at once; it
has nothing that waits between turns, so it has no idle figure.

Both share ``httpx.AsyncClient`` objects of ``POOL_SIZE`` connections each, agent (or
turn) ``i`` using client ``i % clients``.

"In the middle of a turn" is made exact by the HTTP transport: it holds every reply
before its first body byte (the request sent, the response headers in, the model's
output not yet read) until ``N`` replies are held, so at that moment every turn is
waiting for its model; then it lets them all go. The turns' wall and CPU time run
from the first message sent to the last turn ended, hold included (it is over as soon
as the last turn reaches it). The report gives memory as traced by ``tracemalloc``
(with ``--tracemalloc``: Python's own allocations, exactly) or as the resident set
size (without it: everything, including the allocator's slack); they are measured in
separate processes because ``tracemalloc`` makes every allocation bigger and slower,
and the traced turns are cancelled once measured (their time is not reported).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing
from _report import Row
from _scenario import FINAL_TEXT, REQUESTS_PER_TURN, USER_MESSAGE
from _worker import baseline_turns, timing_pool_bookkeeping

__all__ = ["agent_rows"]

HERE = Path(__file__).resolve().parent
CLIENTS = ("baseline", "trurn")
_WORKER_TIMEOUT = 600.0
_ROUND_TIMEOUT = 300.0  # a served turn that fails is only an event: do not wait forever
POOL_SIZE = 25
"""Connections per ``httpx.AsyncClient``: httpcore's pool bookkeeping grows with the
square of its connections (encode/httpcore#1035). With 1,000 turns at once it took about
80 % of either client's CPU in one pool of 1,000, 70 % in pools of 100, 20 % in pools
of 25."""

Report = dict[str, Any]
"""A worker's JSON report: client, agents, traced, memory (bytes, or RSS bytes, at the
points ``start``, ``idle``, ``running``, ``after``), wall_s, cpu_s, pool_cpu_s."""


def raise_open_files(needed: int) -> None:
    """Make sure this process (and the processes it starts) may open ``needed`` files:
    one socket per connection, on each side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RuntimeError(f"{needed} open files are needed, but the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# --------------------------------------------------------------------------- the hold


class Hold:
    """Once armed, holds the first ``count`` replies before their body until all
    ``count`` are held, and tells when ``closes`` replies have been closed."""

    def __init__(self) -> None:
        self.arm(0)
        self.released.set()

    def arm(self, count: int, closes: int = 0) -> None:
        self.count = count
        self.held = 0
        self.all_held = trio.Event()
        self.released = trio.Event()
        self.closes = closes
        self.closed = 0
        self.all_closed = trio.Event()

    async def wait(self) -> None:
        """Called by each reply before its body: wait while the hold is on."""
        if self.released.is_set():
            return
        self.held += 1
        if self.held == self.count:
            self.all_held.set()
        await self.released.wait()

    def close(self) -> None:
        """Called by each reply when it is closed."""
        self.closed += 1
        if self.closed == self.closes:
            self.all_closed.set()


class _HeldBody(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, hold: Hold) -> None:
        self._inner = inner
        self._hold = hold
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await self._hold.wait()
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._hold.close()
        await self._inner.aclose()


class HoldingTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, with each response body passed through ``hold``."""

    def __init__(self, connections: int, hold: Hold) -> None:
        # No keep-alive expiry: with 1,000 turns a task can wait seconds to run, and
        # httpcore may close an expired connection it has already handed to a request
        # that has not run yet ("this socket was already closed"), for either client.
        limits = httpx.Limits(
            max_connections=connections,
            max_keepalive_connections=connections,
            keepalive_expiry=None,
        )
        self._inner = httpx.AsyncHTTPTransport(limits=limits)
        self.hold = hold

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_HeldBody(response.stream, self.hold),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


# --------------------------------------------------------------------------- measuring


def current_rss_bytes() -> int:
    """This process's resident memory now (``VmRSS``), in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Probe:
    """Reads memory at named points: traced bytes, or the resident set size."""

    def __init__(self, traced: bool) -> None:
        self.traced = traced
        self.memory: dict[str, int] = {}

    def __call__(self, point: str) -> None:
        self.memory[point] = (
            tracemalloc.get_traced_memory()[0] if self.traced else current_rss_bytes()
        )


class Clock:
    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def elapsed(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


Clients = list[httpx.AsyncClient]
"""The HTTP clients of a process; the ``i``-th agent (or turn) uses ``i % len(clients)``."""


@asynccontextmanager
async def open_clients(count: int, pool_size: int, hold: Hold) -> AsyncIterator[Clients]:
    """Enough clients for ``count`` connections at once, ``pool_size`` per client."""
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(-(-count // pool_size)):
            transport = HoldingTransport(pool_size, hold)
            client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(60.0))
            clients.append(await stack.enter_async_context(client))
        yield clients


Elapsed = tuple[float, float] | None
"""The (wall, cpu) seconds of a round's turns; ``None`` for a round cancelled mid-turn."""


async def trurn_round(
    clients: Clients, base_url: str, hold: Hold, agents: int, probe: Probe, *, finish: bool
) -> Elapsed:
    """``agents`` serving agents, one turn each at once (or, unless ``finish``, cancelled
    once all are mid-turn)."""
    import _trurn_client

    import trurn

    async with trio.open_nursery() as nursery:
        served: list[tuple[trurn.Agent, trurn.Context]] = []
        for number in range(agents):
            agent = _trurn_client.make_agent(clients[number % len(clients)], base_url)
            context = trurn.Context()
            await nursery.start(agent.serve, context)
            served.append((agent, context))
        probe("idle")
        hold.arm(agents, closes=agents * REQUESTS_PER_TURN)
        clock = Clock()
        for agent, _ in served:
            agent.send_nowait(USER_MESSAGE)
        await hold.all_held.wait()
        probe("running")
        if not finish:
            nursery.cancel_scope.cancel()
            return None
        hold.released.set()
        # After its last reply is closed a turn never waits on anything, so once every
        # reply is closed and every task waits (the agents for their next message),
        # every turn has ended.
        await hold.all_closed.wait()
        await trio.testing.wait_all_tasks_blocked()
        elapsed = clock.elapsed()
        for _, context in served:
            last = context.messages[-1]
            if len(context.messages) != 2 * REQUESTS_PER_TURN or last.content != FINAL_TEXT:
                raise RuntimeError(f"trurn: a served turn ended with {context.messages!r}")
        probe("after")
        nursery.cancel_scope.cancel()
    return elapsed


async def baseline_round(
    clients: Clients, base_url: str, hold: Hold, turns: int, probe: Probe, *, finish: bool
) -> Elapsed:
    """``turns`` hand-written turns at once (or, unless ``finish``, cancelled once all
    are mid-turn)."""
    async with AsyncExitStack() as stack:
        plays = [
            await stack.enter_async_context(baseline_turns(client, base_url)) for client in clients
        ]
        probe("idle")
        hold.arm(turns)
        clock = Clock()
        async with trio.open_nursery() as nursery:
            for number in range(turns):
                nursery.start_soon(plays[number % len(plays)])
            await hold.all_held.wait()
            probe("running")
            if not finish:
                nursery.cancel_scope.cancel()
                return None
            hold.released.set()
        elapsed = clock.elapsed()
        probe("after")
    return elapsed


async def measure(args: argparse.Namespace) -> Report:
    play = trurn_round if args.client == "trurn" else baseline_round
    hold = Hold()
    async with open_clients(args.agents, args.pool_size, hold) as clients:
        await play(clients, args.base_url, hold, 1, Probe(traced=False), finish=True)  # warm-up
        gc.collect()
        if args.tracemalloc:
            tracemalloc.start()
        probe = Probe(args.tracemalloc)
        probe("start")
        # Traced turns are five times slower and their time is not reported: once every
        # turn is mid-turn, they are cancelled.
        with timing_pool_bookkeeping() as pool, trio.fail_after(_ROUND_TIMEOUT):
            elapsed = await play(
                clients, args.base_url, hold, args.agents, probe, finish=not args.tracemalloc
            )
    wall, cpu = (None, None) if elapsed is None else elapsed
    return {
        "client": args.client,
        "agents": args.agents,
        "traced": args.tracemalloc,
        "memory": probe.memory,
        "wall_s": wall,
        "cpu_s": cpu,
        "pool_cpu_s": None if pool is None or elapsed is None else pool[0],
    }


# --------------------------------------------------------------------------- the rows


def run_worker(client: str, base_url: str, agents: int, *, traced: bool) -> Report:
    command = [
        sys.executable,
        str(HERE / "_agents.py"),
        client,
        f"--base-url={base_url}",
        f"--agents={agents}",
    ]
    if traced:
        command.append("--tracemalloc")
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=HERE, timeout=_WORKER_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {client} agents worker failed:\n{done.stderr}")
    report: Report = json.loads(done.stdout.splitlines()[-1])
    return report


def _per_item_kib(reports: list[Report], since: str, until: str) -> float:
    """Median memory added between two points, per agent (or turn), in KiB."""
    return float(
        statistics.median(
            (report["memory"][until] - report["memory"][since]) / report["agents"] / 1024
            for report in reports
        )
    )


def agent_rows(
    serving: Callable[[float], AbstractContextManager[str]],
    progress: Callable[[str], None],
    *,
    agents: int,
    repetitions: int,
) -> tuple[list[Row], list[str]]:
    """Run both clients, traced and not, ``repetitions`` times in alternating order,
    against the benchmark server (``serving(chunk_delay)`` yields its base URL)."""
    raise_open_files(2 * agents + 256)  # before the server starts: it inherits the limit
    results: dict[tuple[str, bool], list[Report]] = {
        (client, traced): [] for client in CLIENTS for traced in (True, False)
    }
    with serving(0.0) as base_url:
        for repetition in range(repetitions):
            order = list(results) if repetition % 2 == 0 else list(results)[::-1]
            for client, traced in order:
                report = run_worker(client, base_url, agents, traced=traced)
                results[client, traced].append(report)
                how = "tracemalloc" if traced else "RSS"
                progress(f"  {agents} agents, {client} ({how}) #{repetition + 1}: done")

    def rss(client: str, since: str, until: str) -> float:
        return _per_item_kib(results[client, False], since, until)

    def memory(client: str, since: str, until: str) -> tuple[float, float]:
        """(tracemalloc, RSS) KiB per agent or turn."""
        return _per_item_kib(results[client, True], since, until), rss(client, since, until)

    def median(client: str, key: str) -> float:
        return float(statistics.median(report[key] for report in results[client, False]))

    count = f"{agents:,}"
    idle, idle_rss = memory("trurn", "start", "idle")
    running, running_rss = memory("trurn", "idle", "running")
    base_running, base_running_rss = memory("baseline", "idle", "running")
    after_rss = rss("trurn", "start", "after")
    wall, base_wall = median("trurn", "wall_s"), median("baseline", "wall_s")
    cpu, base_cpu = median("trurn", "cpu_s"), median("baseline", "cpu_s")
    rows = [
        Row(
            f"Memory per idle agent, {count} agents serving (tracemalloc; RSS)",
            "—",
            f"{idle:.1f} KiB; {idle_rss:.1f} KiB",
            None,
        ),
        Row(
            f"Memory per running turn, {count} turns at once, each waiting for its model "
            "(tracemalloc; RSS)",
            f"{base_running:.1f} KiB; {base_running_rss:.1f} KiB",
            f"{running:.1f} KiB; {running_rss:.1f} KiB",
            running / base_running,
        ),
        Row(
            f"{count} agents serving, one turn each, all at once: client CPU (wall time)",
            f"{base_cpu:.2f} s ({base_wall:.2f} s)",
            f"{cpu:.2f} s ({wall:.2f} s)",
            cpu / base_cpu,
        ),
    ]
    pools = [
        f"{client} {median(client, 'pool_cpu_s') / median(client, 'cpu_s'):.0%}"
        for client in CLIENTS
        if all(report["pool_cpu_s"] is not None for report in results[client, False])
    ]
    note = (
        f"Agents (`_agents.py`): {count} `trurn.Agent`s in one process, each with its own "
        "`OpenAIChat` and its own in-memory `Context`, serving "
        "(`nursery.start(agent.serve, context)`); then each is sent the benchmark message: "
        "one turn each (two tool rounds), all at once, on the scripted server without "
        f"delays. Connections come from `httpx.AsyncClient`s of {POOL_SIZE} each, for both "
        "clients: httpcore's pool bookkeeping grows with the square of a pool's size "
        "(one pool of 1,000 took about 80 % of either client's CPU), and a pool keeps its "
        "connections open (no keep-alive expiry: httpcore could close an expired "
        "connection it had just handed to a request that the scheduler had not run yet). "
        "The idle figure is what the agents and their serving tasks add; the "
        "running figure what the turns add on top, read while every turn waits for its "
        "model: the HTTP transport holds each reply before its body until all are held "
        "(request sent, response headers in), for the baseline's hand-written turns too. "
        "tracemalloc counts Python's allocations; RSS (read in other processes, since "
        "tracemalloc inflates it) adds the allocator's slack; the turns traced are "
        "cancelled once measured. After its turn an agent takes "
        f"{after_rss:.1f} KiB of RSS more than before it existed, with its six-message "
        "history and an idle pooled connection. Time: from the first message "
        "sent to the last turn ended, in the RSS processes; the ratio is on CPU, as wall "
        "time on a shared machine also measures its other load"
        + (f"; httpcore's pool bookkeeping took {', '.join(pools)} of the CPU" if pools else "")
        + (
            f". Median of {repetitions} processes per client and measure, in alternating order."
            if repetitions > 1
            else ". One process per client and measure."
        )
    )
    return rows, [note]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("client", choices=CLIENTS)
    parser.add_argument("--base-url", required=True, help="http://127.0.0.1:PORT/v1")
    parser.add_argument("--agents", type=int, default=1000, help="agents (turns) at once")
    parser.add_argument(
        "--pool-size", type=int, default=POOL_SIZE, help="connections per HTTP client"
    )
    parser.add_argument(
        "--tracemalloc", action="store_true", help="trace allocations instead of reading RSS"
    )
    args = parser.parse_args()
    if args.agents < 1 or args.pool_size < 1:
        parser.error("--agents and --pool-size must be >= 1")
    raise_open_files(args.agents + 256)
    print(json.dumps(trio.run(measure, args)))


if __name__ == "__main__":
    main()
