"""trurn's benchmarks: what trurn costs over hand-written trio + httpx + msgspec code.

``python benchmarks/run.py [--quick] [--profile]`` (or ``nox -s bench -- --quick``)
prints one markdown table; progress goes to stderr. Every ratio is ``trurn ÷ baseline``
with both measured in the same run, interleaved, because this machine is noisy.

Method
------
**Client CPU per turn.** One turn is two tool rounds and a final answer: the model
calls ``lookup`` (its arguments streamed in pieces), the client runs it and sends the
result, the model calls it again, then answers in many small chunks (51 streamed chunks
per turn over OpenAI Chat Completions, 58 events over Anthropic Messages, see
``_scenario.py``). The model is trurn's scripted server (``trurn.testing``), which
speaks both APIs from one script, in a process of its own (``_server.py``); each client
measurement runs in a fresh process (``_worker.py``) that times its turns with
``time.process_time()``, so only the client's CPU counts. The baselines
(``_baseline.py`` for OpenAI, ``_baseline_anthropic.py`` for Anthropic) are the same
conversation written directly with httpx streaming, a hand-rolled SSE line splitter and
a msgspec decoder; before measuring, ``_check.py`` proves that, over each API, the
baseline and trurn (``OpenAIChat`` / ``AnthropicMessages``) send equal JSON bodies with
equal headers. Scenarios over OpenAI: one turn at a time, 100 turns at once, and 200
turns at once with 5 ms between chunks; over Anthropic: one turn at a time and 100 turns
at once. trurn is measured bare and with one subscriber reading every event. Each figure
is the median of the repetitions, run in alternating order; the peak RSS comes from the
200-turn workers.

With many turns at once, httpcore's connection-pool bookkeeping takes a large and
erratic share of both clients' CPU (it is quadratic in the idle connections), so the
workers also time that one method and the table adds the CPU per turn outside it.

**Import time.** ``python -c "import trurn"`` against ``python -c "import trio, httpx,
msgspec"``, median wall time, plus the modules trurn adds according to ``-X importtime``;
bytecode caches are on for both (see ``_imports.py``).

**Broadcast fan-out.** ``trurn.Broadcast.publish`` of batches against one ``await
send()`` per subscriber per event, see ``_fanout.py``.

**Agents** (``_agents.py``): 1,000 agents serving at once in one process (100 with
``--quick``), memory per idle agent and per running turn (tracemalloc and RSS, in
separate processes), and the time for one turn each, all at once; the baseline is the
hand-written turn, held at the same point.

**Session files** (``_session.py``), written in a temporary directory on the disk where
session files live (``$TRURN_HOME``, else the home directory; ``--session-dir`` says
otherwise; the notes name the file system). Appending: records per second through
trurn's journal and its background writer thread, as a session opened with ``async
with`` writes (each append handed over, the turn waiting for the file once per six
records), one record or a turn's six per append, fsync ``"never"`` and ``"turn"`` (one
fsync per six records), against ``json.dumps`` + ``write`` + ``flush`` (+ ``os.fsync``)
of the same records as dicts, which must give byte-identical files; for
information, as the issue sets no target on it. Restoring: ``async with
trurn.Context(path)`` on a 10,000-message session against ``json.loads`` of each line,
median wall time; the target is absolute (under 0.1 s). Per turn: the "1 turn at a
time" client scenario again, each worker process (``_worker.py``, clients
``trurn-session`` with fsync ``"turn"`` and ``trurn-session-never``) playing the trurn
turn on an in-memory ``Context()``, on a new session file opened with ``async with``,
and as the floor (the in-memory turn, then one ``trio.to_thread.run_sync`` appending the
bytes a file turn writes to a plain file, fsynced under ``"turn"``: the least a turn that
waits for its records without blocking the event loop can add), each timed on its own,
in rotating order; more repetitions. The target is that the file adds at most 5 % to the
CPU of the same turn in memory, both measured in the same process, side by side; the
floor row shows how much of that the write, the fsync and one thread round trip take
before any of trurn's own work.

The exit status is 0 when targets are missed (this is a measurement, not a test) and 1
when the benchmark itself is broken (the clients disagree, a worker fails).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import _agents
import _fanout
import _imports
import _session
from _check import check_conversation
from _report import Profile, Row, Target, markdown, own_functions, profiles_table, times, verdict
from _scenario import EVENTS_PER_TURN, REQUESTS_PER_TURN, Wire
from _worker import CLIENTS, SESSION_CLIENTS

import trurn

Report = dict[str, Any]
"""A worker's JSON report: cpu_s, wall_s, turns, max_rss_kib, pool_cpu_s, task_steps."""

HERE = Path(__file__).resolve().parent
CPU_TARGET = Target(1.3)
IMPORT_TARGET = Target(1.2)
FANOUT_TARGET = Target(10.0, at_least=True)
SESSION_CPU_TARGET = Target(1.05)
RESTORE_TARGET = Target(0.1, unit="s")
_SERVER_START_TIMEOUT = 30.0
_WORKER_TIMEOUT = 600.0


@dataclass(frozen=True)
class Scenario:
    """One client workload: ``concurrency`` turns at once, ``rounds`` times, measured in
    ``repetitions`` fresh processes per client."""

    label: str
    concurrency: int
    rounds: int
    warmup_rounds: int
    repetitions: int
    chunk_delay: float = 0.0
    clients: tuple[str, ...] = CLIENTS
    wire: Wire = "openai"


@dataclass(frozen=True)
class Plan:
    """Everything one run measures, and how many times."""

    scenarios: tuple[Scenario, ...]
    import_runs: int
    fanout_events: int
    fanout_repetitions: int
    session_scenario: Scenario
    append_records: int
    append_synced_records: int
    append_repetitions: int
    restore_messages: int
    restore_repetitions: int


# trurn on a session file synced at each turn's end (the target) and never synced, each
# against the same turn in memory in the same process; the bare baseline for information.
SESSION_CLIENT_ORDER = ("baseline", *SESSION_CLIENTS)


# Sized to finish in about five minutes on two cores; one turn at a time is the
# noisiest figure and the cheapest, hence more repetitions.
FULL = Plan(
    scenarios=(
        Scenario("1 turn at a time", concurrency=1, rounds=200, warmup_rounds=10, repetitions=5),
        Scenario("100 turns at once", concurrency=100, rounds=2, warmup_rounds=1, repetitions=3),
        Scenario(
            "200 turns at once, 5 ms between chunks",
            concurrency=200,
            rounds=1,
            warmup_rounds=1,
            repetitions=3,
            chunk_delay=0.005,
            clients=("baseline", "trurn"),
        ),
        Scenario(
            "Anthropic, 1 turn at a time",
            concurrency=1,
            rounds=200,
            warmup_rounds=10,
            repetitions=5,
            wire="anthropic",
        ),
        Scenario(
            "Anthropic, 100 turns at once",
            concurrency=100,
            rounds=2,
            warmup_rounds=1,
            repetitions=3,
            wire="anthropic",
        ),
    ),
    import_runs=7,
    fanout_events=100_000,
    fanout_repetitions=3,
    # A 5 % target needs more repetitions than the others.
    session_scenario=Scenario(
        "1 turn at a time",
        concurrency=1,
        rounds=200,
        warmup_rounds=10,
        repetitions=9,
        clients=SESSION_CLIENT_ORDER,
    ),
    append_records=12_000,
    append_synced_records=3_000,
    append_repetitions=5,
    restore_messages=10_000,
    restore_repetitions=7,
)

QUICK = Plan(
    scenarios=(
        Scenario("1 turn at a time", concurrency=1, rounds=30, warmup_rounds=3, repetitions=1),
        Scenario("20 turns at once", concurrency=20, rounds=1, warmup_rounds=1, repetitions=1),
        Scenario(
            "40 turns at once, 5 ms between chunks",
            concurrency=40,
            rounds=1,
            warmup_rounds=1,
            repetitions=1,
            chunk_delay=0.005,
            clients=("baseline", "trurn"),
        ),
        Scenario(
            "Anthropic, 1 turn at a time",
            concurrency=1,
            rounds=30,
            warmup_rounds=3,
            repetitions=1,
            wire="anthropic",
        ),
        Scenario(
            "Anthropic, 20 turns at once",
            concurrency=20,
            rounds=1,
            warmup_rounds=1,
            repetitions=1,
            wire="anthropic",
        ),
    ),
    import_runs=3,
    fanout_events=20_000,
    fanout_repetitions=1,
    session_scenario=Scenario(
        "1 turn at a time",
        concurrency=1,
        rounds=30,
        warmup_rounds=3,
        repetitions=1,
        clients=SESSION_CLIENT_ORDER,
    ),
    append_records=3_000,
    append_synced_records=600,
    append_repetitions=1,
    restore_messages=10_000,
    restore_repetitions=3,
)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def serving(chunk_delay: float) -> Iterator[str]:
    """Run the scripted server in its own process; yield its base URL; always stop it."""
    command = [sys.executable, str(HERE / "_server.py"), "--chunk-delay", str(chunk_delay)]
    server = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE,
    )
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], _SERVER_START_TIMEOUT)
        line = server.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            server.kill()
            _, errors = server.communicate()
            raise RuntimeError(f"the benchmark server did not start: {line!r} {errors}")
        yield f"http://127.0.0.1:{int(line)}/v1"
    finally:
        _stop(server)


def _stop(server: subprocess.Popen[str]) -> None:
    """End of input asks the server to stop; a signal makes sure it does."""
    assert server.stdin is not None
    server.stdin.close()
    try:
        server.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run_worker(
    client: str,
    base_url: str,
    scenario: Scenario,
    *,
    profile: str | None = None,
    session_dir: Path | None = None,
) -> Report:
    """One measurement in a fresh client process; its JSON report. The session
    clients make their files in ``session_dir``."""
    command = [
        sys.executable,
        str(HERE / "_worker.py"),
        client,
        f"--base-url={base_url}",
        f"--wire={scenario.wire}",
        f"--concurrency={scenario.concurrency}",
        f"--rounds={scenario.rounds}",
        f"--warmup-rounds={scenario.warmup_rounds}",
    ]
    if profile is not None:
        command.append(f"--profile={profile}")
    if session_dir is not None:
        command.append(f"--session-dir={session_dir}")
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=HERE, timeout=_WORKER_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {client} worker failed:\n{done.stderr}")
    report: Report = json.loads(done.stdout.splitlines()[-1])
    return report


# --------------------------------------------------------------------------- client CPU


def measure_scenario(
    scenario: Scenario, session_dir: Path | None = None
) -> dict[str, list[Report]]:
    """Every client of ``scenario``, ``scenario.repetitions`` times, in alternating order."""
    results: dict[str, list[Report]] = {client: [] for client in scenario.clients}
    with serving(scenario.chunk_delay) as base_url:
        for repetition in range(scenario.repetitions):
            order = scenario.clients if repetition % 2 == 0 else scenario.clients[::-1]
            for client in order:
                report = run_worker(client, base_url, scenario, session_dir=session_dir)
                results[client].append(report)
                progress(f"  {scenario.label}, {client} #{repetition + 1}: {_describe(report)}")
    return results


def _describe(report: Report) -> str:
    turns = report["turns"]
    pool = report["pool_cpu_s"]
    in_pool = "" if pool is None else f" ({pool / turns * 1000:.2f} ms in httpcore's pool)"
    if "memory_cpu_s" in report:  # a session client: its in-memory turns too
        in_pool = f" (in memory {report['memory_cpu_s'] / turns * 1000:.2f} ms)"
    return (
        f"{report['cpu_s'] / turns * 1000:.2f} ms CPU/turn{in_pool}, "
        f"{report['wall_s']:.1f} s wall, peak RSS {report['max_rss_kib'] / 1024:.1f} MiB"
    )


def _cpu_ms(reports: list[Report], *, outside_pool: bool = False) -> float:
    """Median CPU ms per turn; ``outside_pool`` leaves out httpcore's pool bookkeeping."""
    per_turn = [
        (report["cpu_s"] - (report["pool_cpu_s"] if outside_pool else 0.0)) / report["turns"] * 1000
        for report in reports
    ]
    return float(statistics.median(per_turn))


def _rss_mib(reports: list[Report]) -> float:
    return float(statistics.median(report["max_rss_kib"] / 1024 for report in reports))


def _scenario_rows(scenario: Scenario, results: dict[str, list[Report]]) -> list[Row]:
    rows = []
    baseline = _cpu_ms(results["baseline"])
    for client in scenario.clients[1:]:
        what = f"Client CPU per turn, {scenario.label}"
        # The target compares the same work. With a subscriber trurn does more than the
        # baseline (a reader task taking every event), so that row is for information.
        target: Target | None = CPU_TARGET
        if client == "trurn-subscriber":
            what += ", 1 subscriber"
            target = None
        ours = _cpu_ms(results[client])
        rows.append(Row(what, f"{baseline:.2f} ms", f"{ours:.2f} ms", ours / baseline, target))
    timed = all(report["pool_cpu_s"] is not None for report in results["baseline"])
    if scenario.concurrency > 1 and timed:
        baseline_rest = _cpu_ms(results["baseline"], outside_pool=True)
        trurn_rest = _cpu_ms(results["trurn"], outside_pool=True)
        rows.append(
            Row(
                f"Client CPU per turn, {scenario.label}, outside httpcore's pool bookkeeping",
                f"{baseline_rest:.2f} ms",
                f"{trurn_rest:.2f} ms",
                trurn_rest / baseline_rest,
            )
        )
    return rows


def _pool_share(reports: list[Report]) -> str:
    shares = [report["pool_cpu_s"] / report["cpu_s"] for report in reports]
    low, high = f"{min(shares):.0%}", f"{max(shares):.0%}"
    return low if low == high else f"{low} to {high}"


def client_rows(plan: Plan) -> tuple[list[Row], list[str]]:
    rows = []
    shares = []
    # The peak RSS comes from the most concurrent scenario (the first, if several are).
    busiest = max(plan.scenarios, key=lambda scenario: scenario.concurrency)
    busiest_results: dict[str, list[Report]] = {}
    for scenario in plan.scenarios:
        progress(f"client CPU: {scenario.label}")
        results = measure_scenario(scenario)
        if scenario is busiest:
            busiest_results = results
        rows += _scenario_rows(scenario, results)
        if scenario.concurrency > 1 and results["baseline"][0]["pool_cpu_s"] is not None:
            shares.append(
                f"{scenario.label}: baseline {_pool_share(results['baseline'])}, "
                f"trurn {_pool_share(results['trurn'])}"
            )
    baseline_rss = _rss_mib(busiest_results["baseline"])
    trurn_rss = _rss_mib(busiest_results["trurn"])
    rows.append(
        Row(
            f"Client peak RSS, {busiest.label}",
            f"{baseline_rss:.1f} MiB",
            f"{trurn_rss:.1f} MiB",
            trurn_rss / baseline_rss,
        )
    )
    notes = []
    if shares:
        notes.append(
            "httpcore's pool bookkeeping (`AsyncConnectionPool._assign_requests_to_connections`, "
            "run on every request and every response close; for each idle connection it scans "
            "all connections) took this share of the client's CPU: "
            + "; ".join(shares)
            + ". It grows with the number of connections sitting idle at each call, which "
            "depends on scheduling more than on the client's own work, so the rows "
            '"outside httpcore\'s pool bookkeeping" subtract the time measured in it.'
        )
    return rows, notes


# --------------------------------------------------------------------------- import time


def import_rows(plan: Plan) -> tuple[list[Row], list[str]]:
    progress("import time")
    statements = [_imports.STARTUP, _imports.BASELINE, _imports.TRURN]
    with _imports.bytecode_cached() as env:
        medians = _imports.median_wall_ms(statements, plan.import_runs, env)
        extras = _imports.extra_modules(plan.import_runs, env)
    startup = medians[_imports.STARTUP]
    baseline, ours = medians[_imports.BASELINE], medians[_imports.TRURN]
    row = Row(
        "Import time, `python -c` wall (trio, httpx, msgspec vs trurn)",
        f"{baseline:.0f} ms",
        f"{ours:.0f} ms",
        ours / baseline,
        IMPORT_TARGET,
    )
    notes = [
        f"Import time: the interpreter alone (`python -c pass`) takes {startup:.0f} ms; net of "
        f"it, trio + httpx + msgspec take {baseline - startup:.0f} ms and trurn "
        f"{ours - startup:.0f} ms ({times((ours - startup) / (baseline - startup))}). "
        f"Modules `import trurn` adds (`-X importtime` self time, median of "
        f"{plan.import_runs}): {sum(ms for _, ms in extras):.1f} ms in total; the largest: "
        + ", ".join(f"`{name}` {ms:.1f} ms" for name, ms in extras[:8])
        + "."
    ]
    return [row], notes


# --------------------------------------------------------------------------- fan-out


def fanout_rows(plan: Plan) -> tuple[list[Row], list[str]]:
    events, batch, subscribers = plan.fanout_events, 10, 4
    deliveries = events * subscribers

    def median_seconds(measure: Callable[[], float]) -> float:
        return statistics.median(measure() for _ in range(plan.fanout_repetitions))

    rows, floors = [], []
    # The target is judged with draining readers: with one `receive()` per event the
    # readers' own schedule points cap any publisher's advantage (see the notes), so
    # those rows measure the readers, not the broadcast.
    readers: tuple[tuple[_fanout.Reader, str, Target | None], ...] = (
        ("drain", "draining readers", FANOUT_TARGET),
        ("receive", "one `receive()` per event", None),
    )
    policies: tuple[_fanout.Policy, ...] = ("wait", "drop")
    for reader, how, target in readers:
        progress(f"broadcast fan-out, {how}")
        naive = median_seconds(partial(_fanout.naive_seconds, events, batch, subscribers, reader))
        for policy in policies:
            hub = median_seconds(
                partial(_fanout.hub_seconds, events, batch, subscribers, policy, reader)
            )
            rows.append(
                Row(
                    f'Broadcast fan-out, "{policy}", {subscribers} subscribers, {how} '
                    "(deliveries/s)",
                    f"{deliveries / naive / 1e6:.2f} M",
                    f"{deliveries / hub / 1e6:.2f} M",
                    naive / hub,
                    target,
                )
            )
        floor = median_seconds(partial(_fanout.readers_only_seconds, events, subscribers, reader))
        floors.append(
            f"with {how}, the readers alone (channels filled beforehand, no publisher) reach "
            f"{deliveries / floor / 1e6:.2f} M deliveries/s, so no publisher can beat the naive "
            f"one by more than {times(naive / floor)}"
        )
    notes = [
        f"Broadcast fan-out: {events} events in batches of {batch}, median of "
        f"{plan.fanout_repetitions}; every subscriber's buffer holds all of them, so "
        '"wait" never waits and "drop" never drops. A Trio `receive()` is a schedule point '
        "even when an item is ready, so readers that call it once per event cost as much "
        "as the naive publisher's sends: " + "; ".join(floors) + "."
    ]
    return rows, notes


# --------------------------------------------------------------------------- session files


def default_session_dir() -> Path:
    """Where session files live unless told otherwise: ``$TRURN_HOME`` if it is a
    directory, else the home directory (where ``~/.trurn/global_sessions`` is)."""
    home = os.environ.get("TRURN_HOME")
    if home and Path(home).is_dir():
        return Path(home)
    return Path.home()


def filesystem(path: Path) -> str:
    """The type and device of the file system holding ``path`` (from /proc/mounts)."""
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            entries = [line.split()[:3] for line in mounts if len(line.split()) >= 3]
    except OSError:
        return "file system unknown"
    resolved = str(path.resolve())
    found: tuple[str, str, str] | None = None
    for device, escaped_mount_point, kind in entries:
        mount_point = escaped_mount_point.replace("\\040", " ")
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and (found is None or len(mount_point) > len(found[1])):
            found = (device, mount_point, kind)
    if found is None:
        return "file system unknown"
    device, mount_point, kind = found
    return f"{kind}, {device} on {mount_point}"


_SIDES: tuple[_session.Side, ...] = ("baseline", "trurn")
_APPENDS: tuple[tuple[_session.Fsync, int], ...] = (
    ("never", 1),
    ("never", _session.TURN_RECORDS),
    ("turn", 1),
    ("turn", _session.TURN_RECORDS),
)


def _sides(repetition: int) -> tuple[_session.Side, ...]:
    return _SIDES if repetition % 2 == 0 else _SIDES[::-1]


def _append_rows(plan: Plan, directory: Path) -> tuple[list[Row], str]:
    progress("session files: appending")
    records = _session.message_records(max(plan.append_records, plan.append_synced_records))
    # Untimed: the first trio.run, the first file created and synced, on both sides.
    for fsync in ("never", "turn"):
        _session.append_seconds(directory, records[:60], batch=1, fsync=fsync, order=_SIDES)
    hop = statistics.median(_session.thread_hop_seconds(2_000).cpu for _ in range(3)) / 2e3 * 1e6
    rows, cpu = [], []
    for fsync, batch in _APPENDS:
        count = plan.append_records if fsync == "never" else plan.append_synced_records
        runs = [
            _session.append_seconds(
                directory, records[:count], batch=batch, fsync=fsync, order=_sides(repetition)
            )
            for repetition in range(plan.append_repetitions)
        ]
        wall = {side: statistics.median(run[side].wall for run in runs) for side in _SIDES}
        cpu_us = {
            side: statistics.median(run[side].cpu for run in runs) / count * 1e6 for side in _SIDES
        }
        synced = ", 1 fsync per 6 records" if fsync == "turn" else ""
        what = f"a turn's {batch} records" if batch > 1 else "1 record"
        rows.append(
            Row(
                f'Session append, fsync "{fsync}"{synced}, {what} per append (records/s)',
                f"{count / wall['baseline'] / 1000:.1f} k",
                f"{count / wall['trurn'] / 1000:.1f} k",
                wall["baseline"] / wall["trurn"],
            )
        )
        cpu.append(
            f'fsync "{fsync}", {batch} per append: json {cpu_us["baseline"]:.1f} µs, '
            f"trurn {cpu_us['trurn']:.1f} µs"
        )
    note = (
        f'Session append: {plan.append_records} message records (fsync "never"), '
        f'{plan.append_synced_records} (fsync "turn"), median of '
        f"{plan.append_repetitions}; trurn hands each append to the journal's background "
        "writer thread (`Journal.enqueue` + `flush_nowait`, what `Context.flush` does inside "
        "`async with`) and waits for the file once per 6 records (`Journal.sync`: written, "
        'and fsynced under "turn", what a turn does at its end), against `json.dumps` + '
        "`write` + `flush` (+ `os.fsync` per 6 records) in the calling thread; both write "
        "byte-identical files. CPU per record (all threads): "
        + "; ".join(cpu)
        + f". One `trio.to_thread.run_sync` of a function that does nothing costs {hop:.0f} µs "
        "of CPU here (median of 3 runs of 2,000); a wait for the writer thread costs about as "
        "much, once per 6 records."
    )
    return rows, note


def _restore_rows(plan: Plan, directory: Path) -> tuple[list[Row], str]:
    progress("session files: restoring")
    messages = plan.restore_messages
    records = _session.conversation(messages)
    path = directory / "restore.jsonl"
    size = _session.write_session(path, records)
    try:
        _session.restore_seconds(path, messages, _SIDES)  # untimed: imports, first decode
        runs = [
            _session.restore_seconds(path, messages, _sides(repetition))
            for repetition in range(plan.restore_repetitions)
        ]
    finally:
        path.unlink(missing_ok=True)
    wall = {side: statistics.median(run[side].wall for run in runs) for side in _SIDES}
    cpu = {side: statistics.median(run[side].cpu for run in runs) for side in _SIDES}
    row = Row(
        f"Session restore, {messages:,} messages ({size / 1e6:.1f} MB): "
        "`async with Context(path)` vs `json.loads` per line",
        f"{wall['baseline'] * 1000:.1f} ms",
        f"{wall['trurn'] * 1000:.1f} ms",
        wall["trurn"] / wall["baseline"],
        RESTORE_TARGET,
        value=wall["trurn"],
    )
    note = (
        f"Session restore: a file of {len(records) + 1:,} lines, {size:,} bytes "
        f"({size / messages:.0f} per message on average, turn markers included): "
        f"{messages:,} messages (users, assistants with tool calls and usage, tool results) "
        "and each turn's start and end markers, in the page cache; wall time, median of "
        f"{plan.restore_repetitions}. trurn opens, locks, reads, decodes every line into typed "
        "records, validates them and checks for unanswered tool calls; the baseline only "
        "turns each line into dicts. CPU: json "
        f"{cpu['baseline'] * 1000:.1f} ms, trurn {cpu['trurn'] * 1000:.1f} ms."
    )
    return [row], note


def _session_turn_rows(plan: Plan, directory: Path) -> tuple[list[Row], str]:
    scenario = plan.session_scenario
    progress(f"session files: client CPU, {scenario.label}")
    results = measure_scenario(scenario, directory)

    def per_turn_ms(client: str, key: str = "cpu_s") -> float:
        return float(statistics.median(r[key] / r["turns"] * 1000 for r in results[client]))

    def paired_ratio(client: str, key: str = "cpu_s") -> float:
        # Each process timed every side: the median of its own ratios.
        return float(statistics.median(r[key] / r["memory_cpu_s"] for r in results[client]))

    baseline = _cpu_ms(results["baseline"])
    label = f"Client CPU per turn, {scenario.label}, on a session file"
    rows = []
    for client, policy in SESSION_CLIENTS.items():
        rows.append(
            Row(
                f'{label} (fsync "{policy}") vs trurn in memory, same process',
                f"{per_turn_ms(client, 'memory_cpu_s'):.2f} ms",
                f"{per_turn_ms(client):.2f} ms",
                paired_ratio(client),
                SESSION_CPU_TARGET if policy == "turn" else None,
            )
        )
        written = "written and fsynced" if policy == "turn" else "written"
        rows.append(
            Row(
                f'Floor (fsync "{policy}"): the turn in memory, then its records {written} '
                "by one `trio.to_thread.run_sync`, vs trurn in memory, same process",
                f"{per_turn_ms(client, 'memory_cpu_s'):.2f} ms",
                f"{per_turn_ms(client, 'floor_cpu_s'):.2f} ms",
                paired_ratio(client, "floor_cpu_s"),
            )
        )
    synced = per_turn_ms("trurn-session")
    rows.append(
        Row(
            f'{label} (fsync "turn") vs the baseline',
            f"{baseline:.2f} ms",
            f"{synced:.2f} ms",
            synced / baseline,
        )
    )
    sessions = scenario.warmup_rounds + scenario.rounds

    def per_session_ms(key: str) -> float:
        reports = results["trurn-session"]
        return float(statistics.median(report[key] / sessions * 1000 for report in reports))

    def writer_us(client: str) -> float:
        return (per_turn_ms(client) - per_turn_ms(client, "main_thread_cpu_s")) * 1000

    note = (
        "Session files in the client benchmark: each process plays the turn three ways, "
        "on an in-memory `Context()`, on a new session file (`Context(path)`, opened with "
        "`async with`, so its background writer runs) and as the floor, each timed on its "
        "own, in rotating order; each ratio is the median over processes of each "
        "process's own ratio. The history and the requests are the same every way, so the "
        "difference is what the turn's writes cost: 8 records handed over in 7 flushes, "
        "written by the writer thread (a turn this short reaches its final sync before the "
        "writer's timer, so all at once), and one sync the turn waits for, with one fsync "
        'under fsync "turn". The floor turn adds to the in-memory turn only what no '
        "session file can do without, if the turn is to wait until its records are in the "
        'file (on disk, under fsync "turn") and the event loop is never to block on the '
        "disk: one thread round trip that writes the same bytes to a plain file in one "
        "`os.write` (and one `os.fsync`). "
        f"CPU of the writer threads per turn: {writer_us('trurn-session'):.0f} "
        f'µs (fsync "turn"), {writer_us("trurn-session-never"):.0f} µs (fsync "never"). '
        "The files are opened (created, locked, header written and synced, writer started) "
        "before the timed turns and closed after them; that costs "
        f"{per_session_ms('session_open_cpu_s'):.2f} ms CPU per session to open and "
        f"{per_session_ms('session_close_cpu_s'):.2f} ms to close, outside the figures. "
        f"Median of {scenario.repetitions} processes per client, in alternating order."
    )
    return rows, note


def session_rows(plan: Plan, directory: Path) -> tuple[list[Row], list[str]]:
    """Appending, restoring, and what a session file adds to a turn, in ``directory``."""
    rows, notes = [], [f"Session files are written in {directory} ({filesystem(directory)})."]
    for section in (_append_rows, _restore_rows, _session_turn_rows):
        more_rows, note = section(plan, directory)
        rows += more_rows
        notes.append(note)
    return rows, notes


# --------------------------------------------------------------------------- profile


def profile_section(plan: Plan) -> str:
    """cProfile both clients in every scenario (separate, untimed runs): where the CPU
    goes, how much of it is httpcore's pool, and trurn's own hottest functions."""
    package = Path(trurn.__file__).resolve().parent
    rows: list[tuple[str, Profile]] = []
    # trurn's own hottest functions, in the first scenario of each wire format.
    own: list[str] = []
    wires_seen: set[str] = set()
    with tempfile.TemporaryDirectory() as directory:
        for number, scenario in enumerate(plan.scenarios):
            first_of_wire = scenario.wire not in wires_seen
            wires_seen.add(scenario.wire)
            with serving(scenario.chunk_delay) as base_url:
                for client in ("baseline", "trurn"):
                    progress(f"profiling {client}: {scenario.label}")
                    path = str(Path(directory) / f"{client}-{number}.prof")
                    report = run_worker(client, base_url, scenario, profile=path)
                    turns = int(report["turns"])
                    steps = report["task_steps"]
                    profile = Profile.load(
                        path, client, turns, None if steps is None else int(steps)
                    )
                    rows.append((scenario.label, profile))
                    if first_of_wire and client == "trurn":
                        own.append(f"{scenario.label}: {own_functions(path, package, turns)}")
    return "\n\n".join(
        [
            "Profiles (cProfile, in separate runs from the timed ones; its overhead inflates "
            "every figure, so compare within a row's scenario only):",
            profiles_table(rows),
            *own,
        ]
    )


# --------------------------------------------------------------------------- main


def _environment(plan: Plan, request_bytes: dict[Wire, int]) -> str:
    versions = ", ".join(
        f"{name} {version(name)}" for name in ("trurn", "trio", "httpx", "msgspec")
    )
    scenarios = "; ".join(
        f"{s.label}: {s.repetitions} processes of {s.concurrency * s.rounds} turns, each "
        f"after {s.concurrency * s.warmup_rounds} warm-up turns"
        for s in plan.scenarios
    )
    return (
        f"Python {sys.version.split()[0]}, {versions}. Each client figure is the median over "
        f"fresh processes ({scenarios}). A turn is {REQUESTS_PER_TURN} requests: over "
        f"OpenAI Chat Completions {request_bytes['openai']} bytes of JSON in all and "
        f"{EVENTS_PER_TURN['openai']} streamed chunks, over Anthropic Messages "
        f"{request_bytes['anthropic']} bytes and {EVENTS_PER_TURN['anthropic']} streamed "
        "events. Both clients share one `httpx.AsyncClient` per process with a pool as large "
        "as the concurrency."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, < 40 s (smoke test)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile both clients in every scenario (adds a few minutes)",
    )
    parser.add_argument(
        "--session-dir",
        type=Path,
        default=None,
        help="where to write session files (a temporary directory is made in it; default: "
        "$TRURN_HOME, else the home directory)",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    session_base = args.session_dir if args.session_dir is not None else default_session_dir()

    progress("checking that both clients send the same requests, over both APIs")
    try:
        request_bytes = check_conversation()
        rows, notes = client_rows(plan)
        for section in (import_rows, fanout_rows):
            more_rows, more_notes = section(plan)
            rows += more_rows
            notes += more_notes
        more_rows, more_notes = _agents.agent_rows(
            serving,
            progress,
            agents=100 if args.quick else 1_000,
            repetitions=1 if args.quick else 3,
        )
        rows += more_rows
        notes += more_notes
        with tempfile.TemporaryDirectory(prefix=".trurn-bench-", dir=session_base) as directory:
            more_rows, more_notes = session_rows(plan, Path(directory))
            rows += more_rows
            notes += more_notes
        profile = profile_section(plan) if args.profile else None
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmark interrupted", file=sys.stderr)
        return 130

    print(markdown(rows))
    print()
    print("Notes:")
    print()
    for note in [_environment(plan, request_bytes), *notes]:
        print(f"- {note}")
    if profile is not None:
        print()
        print(profile)
    missed = sum(verdict(row) == "MISS" for row in rows)
    print()
    print(f"{missed} target(s) missed." if missed else "All targets met.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
