"""The records of a session file: one msgspec Struct per JSONL line.

A session file is a journal: a header, then messages, turn markers, compaction markers
and (when asked for) events, each one JSON object on its own line, tagged by ``kind``.
Records are plain data. Decoding never imports anything named in the data (the tag
picks one of the Structs below), so a crafted file cannot run code.

Every record carries ``seq``, the event ``seq`` it corresponds to (0 when none), so a
subscriber that reconnects can replay from a ``seq`` out of the file, and ``ts``, the
unix time it was made.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from typing import Annotated

import msgspec

from ._messages import AssistantMessage, Message, ToolMessage, Usage
from ._version import __version__
from .events import Event

__all__ = [
    "FORMAT_VERSION",
    "SESSION_ID_PATTERN",
    "Compaction",
    "EventRecord",
    "Header",
    "MessageRecord",
    "Record",
    "TurnEnd",
    "TurnStart",
    "compaction_error",
    "decode_record",
    "encode_line",
    "encode_lines",
    "is_valid_session_id",
    "reserved_device_name",
]

FORMAT_VERSION = 1
"""The newest session format this trurn reads and the one it writes."""

SESSION_ID_PATTERN = r"\A(?!\.\.?\Z)[A-Za-z0-9._-]{1,128}\Z"
"""What a session id may be: it becomes a file name, so no separators, ``.`` or ``..``.

``\\A``/``\\Z`` rather than ``^``/``$``: ``$`` would also match before a final newline.
"""

_SESSION_ID_RE = re.compile(SESSION_ID_PATTERN)

SessionId = Annotated[str, msgspec.Meta(pattern=SESSION_ID_PATTERN)]


class _RecordBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Fields every record has."""

    seq: int = 0
    ts: float = msgspec.field(default_factory=time.time)


class Header(_RecordBase, frozen=True, kw_only=True, tag="header"):
    """The first line of every session file: who wrote it and in which format."""

    session_id: SessionId
    format_version: Annotated[int, msgspec.Meta(ge=1)] = FORMAT_VERSION
    trurn_version: str = __version__
    created_at: float = msgspec.field(default_factory=time.time)
    model: str | None = None
    work_dir: str | None = None


class MessageRecord(_RecordBase, frozen=True, kw_only=True, tag="message"):
    """One message of the history, stored exactly as the turn built it.

    Tool calls keep ``arguments_raw``, assistant messages keep thinking blocks with
    their signatures and server blocks, tool results keep their ``status``.
    """

    message: Message


class TurnStart(_RecordBase, frozen=True, kw_only=True, tag="turn_start"):
    """A turn began. A ``TurnStart`` without its ``TurnEnd`` marks a turn cut short."""

    turn_id: str
    parent_turn_id: str | None = None
    root_turn_id: str | None = None
    depth: int = 0
    chain: list[str] = []


class TurnEnd(_RecordBase, frozen=True, kw_only=True, tag="turn_end"):
    """A turn ended, with the ``stop_reason`` of its ``turn_finished`` event."""

    turn_id: str
    stop_reason: str
    usage: Usage = Usage()


class Compaction(_RecordBase, frozen=True, kw_only=True, tag="compaction"):
    """A summary that stands for the messages before index ``first_kept``.

    A marker only: it changes what is sent to the model from here on, never what is in
    the file, so the full history can always be read back.
    """

    summary: str
    user_intent: str | None = None
    first_kept: Annotated[int, msgspec.Meta(ge=0)]


def compaction_error(first_kept: int, messages: int) -> str | None:
    """Why a compaction keeping messages from index ``first_kept`` on cannot follow a
    history of ``messages`` messages, or ``None`` if it can (pure)."""
    if 0 <= first_kept <= messages:
        return None
    return (
        f"a compaction keeping the messages from #{first_kept} on, after {messages} "
        f"messages (it must keep from #0 to #{messages})"
    )


class EventRecord(_RecordBase, frozen=True, kw_only=True, tag="event"):
    """A published event, written only when the user asks to persist events."""

    event: Event


Record = Header | MessageRecord | TurnStart | TurnEnd | Compaction | EventRecord
"""Any line of a session file; a tagged union on ``kind``."""

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Record] = msgspec.json.Decoder(Record)


def encode_line(record: Record) -> bytes:
    """One record as one line of JSON, ending in ``b"\\n"``.

    msgspec's JSON escapes every control character inside strings and adds no
    whitespace, so the line contains no other newline. Raises ``ValueError`` for a
    non-finite ``ts`` (JSON would store ``null`` and the line would not read back) or a
    non-finite number in a message's free-form data (tool arguments, server blocks:
    stored as ``null``, they would not read back as given), and
    ``msgspec.EncodeError``/``TypeError`` for a value JSON cannot hold.
    """
    return encode_lines((record,))


def encode_lines(records: Iterable[Record]) -> bytes:
    """Several records as consecutive lines, in one buffer (see :func:`encode_line`)."""
    buffer = bytearray()
    for record in records:
        if not math.isfinite(record.ts):
            raise ValueError(f"record ts must be a finite unix time, got {record.ts!r}")
        if isinstance(record, MessageRecord):
            check_message(record.message)
        _encoder.encode_into(record, buffer, -1)
        buffer += b"\n"
    return bytes(buffer)


def check_message(message: Message) -> None:
    """Refuse a non-finite float in the parts of ``message`` typed only as JSON."""
    if isinstance(message, AssistantMessage):
        for call in message.tool_calls:
            check_finite(call.arguments, f"the arguments of tool call {call.id!r}")
        for block in message.server_blocks:
            check_finite(block, "a server tool block")
    elif isinstance(message, ToolMessage) and message.arguments is not None:
        check_finite(message.arguments, f"the arguments of tool result {message.tool_call_id!r}")


def check_finite(value: object, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` if ``value`` holds a NaN or an infinity
    (nested in lists, tuples and dict values), which JSON cannot store."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} hold {value!r}, which JSON cannot store (not finite)")
    elif isinstance(value, dict):
        for item in value.values():
            check_finite(item, where)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_finite(item, where)


def decode_record(line: bytes) -> Record:
    """Decode one line (without its newline) into its record Struct.

    Strict: no type coercion. Raises ``msgspec.ValidationError`` naming the bad field
    (``$.message.role``) or ``msgspec.DecodeError`` for text that is not JSON.
    """
    return _decoder.decode(line)


# A file named after one of these opens the device on Windows, whatever its extension
# ("nul.txt.jsonl" too), and session files move between machines.
_WINDOWS_DEVICE_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"{port}{n}" for port in ("COM", "LPT") for n in range(1, 10)]
)


def reserved_device_name(session_id: str) -> str | None:
    """The Windows device ``session_id`` would name as a file (``"NUL"`` for
    ``"nul.txt"``), or ``None`` (pure). Such ids are refused on every platform."""
    device = session_id.partition(".")[0].upper()
    return device if device in _WINDOWS_DEVICE_NAMES else None


def is_valid_session_id(session_id: str) -> bool:
    """Whether ``session_id`` is a valid session id, as
    :func:`~trurn._journal.validate_session_id` decides (pure, no file touched): it fits
    :data:`SESSION_ID_PATTERN` and is no Windows device name."""
    return _SESSION_ID_RE.match(session_id) is not None and reserved_device_name(session_id) is None
