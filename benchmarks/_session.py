"""Session files: appending records and restoring a session, against the standard library.

The records are a realistic conversation (:func:`conversation`): turns of a user
message, then zero, one or two tool rounds (an assistant message with a tool call and
usage, the tool's result), then the assistant's answer with its usage, between a turn
start and a turn end marker; 130 to 550 bytes per message line, 380 in the median. Their
timestamps are fixed, so the same records always make the same bytes.

The baseline is what a user of the standard library would write: each record as a
plain dict (``msgspec.to_builtins`` of trurn's record, made before the clock starts),
``json.dumps`` (compact, UTF-8), ``write`` and ``flush`` on a file opened in append
mode, ``os.fsync`` where trurn syncs; and ``json.loads`` of every line to restore.
It runs in the calling thread, blocking; trurn's :class:`~trurn._journal.Journal`
writes from its background writer thread, as a session opened with ``async with
Context(path)`` does, so that part of its cost is what keeping the event loop free and
the file whole costs.

- :func:`append_seconds` appends the records one at a time or in batches (a turn's
  records), with fsync ``"never"`` or ``"turn"``. trurn hands each append to the
  background writer (``enqueue`` + ``flush_nowait``, what ``Context.flush`` does) and
  waits once per :data:`TURN_RECORDS` records (``sync``, what a turn does at its end:
  the records are then in the file, and fsynced under ``"turn"``); the baseline writes
  and flushes each append, with one ``os.fsync`` per turn under ``"turn"``. Wall and
  CPU time from the first record to the last one in the file; the header is written
  before. Both sides must write the same bytes.
- :func:`thread_hop_seconds` times ``trio.to_thread.run_sync`` of a function that
  does nothing: the floor under every append and fsync trurn makes.
- :func:`restore_seconds` times ``async with trurn.Context(path)`` (open, lock, read,
  parse, repair, the header check) on a session file, and the baseline's
  ``json.loads`` of each of its lines; the file is in the page cache (it was just
  written), as when a user resumes a session they just left.
"""

from __future__ import annotations

import gc
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import trio

import trurn
from trurn._journal import open_journal
from trurn._messages import AssistantMessage, Message, ToolCall, ToolMessage, Usage, UserMessage
from trurn._records import Header, MessageRecord, Record, TurnEnd, TurnStart, encode_lines

__all__ = [
    "TURN_RECORDS",
    "Fsync",
    "Timing",
    "append_seconds",
    "conversation",
    "message_records",
    "restore_seconds",
    "thread_hop_seconds",
    "write_session",
]

Fsync = Literal["never", "turn"]
Side = Literal["baseline", "trurn"]

TURN_RECORDS = 6
"""Records per turn in the append benchmark: a turn of two tool rounds writes six
messages (user, assistant, tool, assistant, tool, assistant), synced at its end."""

_SESSION_ID = "bench-session"
_START_TS = 1_750_000_000.0
_HEADER = Header(
    session_id=_SESSION_ID, model="bench-model", ts=_START_TS, created_at=_START_TS, seq=0
)

_PROSE = (
    "the session file keeps every message of the conversation so a user can resume it "
    "later read it again fork it or export it while the agent streams replies from the "
    "model and runs tools whose results go back into the history before the next request "
    "config parser module function returns value error line column path test passes"
)
_WORDS = _PROSE.split()
_TOOLS = ("read_file", "search_code", "run_tests", "list_directory")
_PATHS = ("src/app/models.py", "src/app/views.py", "tests/test_views.py", "README.md")


def _text(rng: random.Random, low: int, high: int) -> str:
    """Words up to a length drawn from ``[low, high]`` characters."""
    limit = rng.randint(low, high)
    words: list[str] = []
    size = 0
    while size < limit:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words).capitalize() + "."


def _usage(rng: random.Random) -> Usage:
    prompt, completion = rng.randint(800, 30_000), rng.randint(20, 600)
    return Usage(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion)


def _tool_round(rng: random.Random, number: int) -> tuple[AssistantMessage, ToolMessage]:
    name = rng.choice(_TOOLS)
    arguments = {"path": rng.choice(_PATHS), "limit": rng.randint(10, 200)}
    call = ToolCall(
        id=f"call_{number:08d}{rng.getrandbits(32):08x}",
        name=name,
        arguments=arguments,
        arguments_raw=json.dumps(arguments),
    )
    asking = AssistantMessage(
        tool_calls=[call], usage=_usage(rng), model="bench-model", finish_reason="tool_calls"
    )
    # Tool output is often several lines.
    result = "\n".join(_text(rng, 30, 80) for _ in range(rng.randint(1, 3)))
    return asking, ToolMessage(tool_call_id=call.id, name=name, content=result)


def conversation(messages: int, *, seed: int = 0) -> list[Record]:
    """Whole turns holding ``messages`` messages (an even number), with their markers.

    Each turn: a turn start, a user message, zero to two tool rounds, the final answer,
    a turn end. No tool call is left without its result, so restoring the session adds
    nothing to it.
    """
    if messages < 2 or messages % 2:
        raise ValueError(
            f"a conversation of whole turns has an even number >= 2 of messages, got {messages}"
        )
    rng = random.Random(seed)
    records: list[Record] = []
    count = 0
    turn = 0

    def add(record: Record) -> None:
        # Fixed, distinct timestamps: the same records always encode to the same bytes.
        records.append(msgspec.structs.replace(record, ts=_START_TS + len(records) / 4))

    while count < messages:
        rounds = min(rng.choice((0, 1, 2, 2)), (messages - count - 2) // 2)
        turn_id = f"turn_{turn:016x}"
        add(TurnStart(turn_id=turn_id, seq=len(records)))
        turn_messages: list[Message] = [UserMessage(_text(rng, 40, 240))]
        for _ in range(rounds):
            turn_messages.extend(_tool_round(rng, len(records)))
        turn_messages.append(
            AssistantMessage(
                content=_text(rng, 40, 200),
                usage=_usage(rng),
                model="bench-model",
                finish_reason="stop",
            )
        )
        for message in turn_messages:
            add(MessageRecord(message=message, seq=len(records)))
        add(TurnEnd(turn_id=turn_id, stop_reason="completed", seq=len(records)))
        count += len(turn_messages)
        turn += 1
    return records


def message_records(count: int, *, seed: int = 0) -> list[Record]:
    """``count`` message records (no markers) from a realistic conversation."""
    records: list[Record] = [
        r for r in conversation(count + 6, seed=seed) if isinstance(r, MessageRecord)
    ]
    return records[:count]


def write_session(path: Path, records: Sequence[Record]) -> int:
    """Write a session file of a header and ``records`` (as trurn writes them); its size."""
    data = encode_lines([_HEADER, *records])
    path.write_bytes(data)
    return len(data)


@dataclass(frozen=True)
class Timing:
    """One timed run: wall seconds and CPU seconds (every thread of the process)."""

    wall: float
    cpu: float


class _Clock:
    def __init__(self) -> None:
        gc.collect()
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def stop(self) -> Timing:
        return Timing(time.perf_counter() - self._wall, time.process_time() - self._cpu)


# --------------------------------------------------------------------------- appending


def _syncs_after(index: int, batch: int) -> bool:
    """Whether a turn ends with the batch that starts at record ``index``."""
    return (index + batch) % TURN_RECORDS == 0


def _baseline_append(path: Path, dicts: list[dict[str, Any]], batch: int, fsync: Fsync) -> Timing:
    def dumps(record: dict[str, Any]) -> str:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"

    with open(path, "a", encoding="utf-8") as file:
        file.write(dumps(msgspec.to_builtins(_HEADER)))
        file.flush()
        clock = _Clock()
        for index in range(0, len(dicts), batch):
            file.write("".join(dumps(record) for record in dicts[index : index + batch]))
            file.flush()
            if fsync == "turn" and _syncs_after(index, batch):
                os.fsync(file.fileno())
        return clock.stop()


async def _trurn_append(path: Path, records: list[Record], batch: int, fsync: Fsync) -> Timing:
    journal = await open_journal(path, fsync=fsync, create=True)
    await journal.append([_HEADER])
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.serve_writer)
        try:
            clock = _Clock()
            for index in range(0, len(records), batch):
                journal.enqueue(records[index : index + batch])
                journal.flush_nowait()
                if _syncs_after(index, batch):
                    await journal.sync()  # in the file (and fsynced under "turn")
            return clock.stop()
        finally:
            await journal.aclose()  # stops the writer


def append_seconds(
    directory: Path, records: list[Record], *, batch: int, fsync: Fsync, order: Sequence[Side]
) -> dict[Side, Timing]:
    """Append ``records``, ``batch`` at a time, to a new file in ``directory`` with each
    side in ``order``; check that both wrote the same bytes; their timings."""
    if len(records) % TURN_RECORDS or TURN_RECORDS % batch:
        raise ValueError(f"{len(records)} records in batches of {batch} are not whole turns")
    dicts = [msgspec.to_builtins(record) for record in records]
    paths = {side: directory / f"append-{side}.jsonl" for side in order}
    timings: dict[Side, Timing] = {}
    try:
        for side in order:
            paths[side].unlink(missing_ok=True)
            if side == "baseline":
                timings[side] = _baseline_append(paths[side], dicts, batch, fsync)
            else:
                timings[side] = trio.run(_trurn_append, paths[side], records, batch, fsync)
        contents = {paths[side].read_bytes() for side in order}
        if len(contents) != 1:
            raise RuntimeError("appending: the json baseline and trurn wrote different files")
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)
    return timings


def _nothing() -> None:
    pass


async def _thread_hops(count: int) -> Timing:
    await trio.to_thread.run_sync(_nothing)  # starts the worker thread, untimed
    clock = _Clock()
    for _ in range(count):
        await trio.to_thread.run_sync(_nothing)
    return clock.stop()


def thread_hop_seconds(count: int) -> Timing:
    """``count`` calls of ``trio.to_thread.run_sync`` on a function that does nothing."""
    return trio.run(_thread_hops, count)


# --------------------------------------------------------------------------- restoring


def _baseline_restore(path: Path) -> tuple[Timing, int]:
    clock = _Clock()
    with open(path, "rb") as file:
        records = [json.loads(line) for line in file]
    timing = clock.stop()
    return timing, sum(record["kind"] == "message" for record in records)


async def _trurn_restore(path: Path) -> tuple[Timing, int]:
    # The file is named after the benchmark, its header after the session.
    context = trurn.Context(path, session_id=_SESSION_ID)
    clock = _Clock()
    async with context:
        timing = clock.stop()
    return timing, len(context.messages)


def restore_seconds(path: Path, messages: int, order: Sequence[Side]) -> dict[Side, Timing]:
    """Restore the session file at ``path`` once per side, in ``order``; check that each
    side found ``messages`` messages and that restoring left the file as it was."""
    size = path.stat().st_size
    timings: dict[Side, Timing] = {}
    for side in order:
        if side == "baseline":
            timing, found = _baseline_restore(path)
        else:
            timing, found = trio.run(_trurn_restore, path)
        if found != messages:
            raise RuntimeError(f"restoring ({side}): {found} messages, expected {messages}")
        timings[side] = timing
    if path.stat().st_size != size:
        raise RuntimeError(f"restoring changed {path} ({size} -> {path.stat().st_size} bytes)")
    return timings
