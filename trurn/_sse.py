"""An incremental server-sent events decoder: bytes in, :class:`ServerSentEvent` out.

It follows the WHATWG rules for parsing and interpreting an event stream: lines end in
CRLF, LF or CR; lines starting with ``:`` are comments; ``data:`` lines accumulate and are
joined by ``"\\n"``; a blank line dispatches the event, unless it had no ``data`` field;
a UTF-8 byte order mark at the start of the stream is skipped.

The decoder is sans-I/O and works on bytes: it only ever splits on the ASCII bytes CR,
LF and ``:``, which never occur inside a multi-byte UTF-8 character, so input may be cut
anywhere. ``data`` stays bytes, so a JSON payload goes to ``msgspec`` without a
decode/encode round trip.
"""

from __future__ import annotations

import msgspec

__all__ = ["SSEDecoder", "ServerSentEvent"]

_BOM = b"\xef\xbb\xbf"


class ServerSentEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched event.

    ``data`` is the raw UTF-8 of the event's ``data`` lines joined by ``b"\\n"``;
    :attr:`text` decodes it. ``id`` is the stream's last event ID at dispatch time
    (it persists across events, as the spec says), ``None`` until an ``id`` field was
    seen. ``retry`` is the reconnection time in milliseconds from a ``retry`` field of
    this event's block, or ``None``.
    """

    data: bytes
    event: str = "message"
    id: str | None = None
    retry: int | None = None

    @property
    def text(self) -> str:
        """``data`` decoded as UTF-8 (invalid bytes replaced, as a browser would)."""
        return self.data.decode("utf-8", "replace")


class SSEDecoder:
    """Turns the bytes of an event stream, fed in pieces of any size, into events.

    :meth:`feed` returns the events that the new bytes completed. At the end of the
    stream nothing more is dispatched (the spec drops an unterminated event);
    :attr:`incomplete` says whether the stream stopped inside an event, so a caller can
    report a truncated reply. :attr:`comment_count` counts comment lines, which servers
    use as keep-alives.
    """

    def __init__(self) -> None:
        self.comment_count = 0
        self.last_event_id: str | None = None
        self.retry: int | None = None
        # Bytes of a line whose end has not arrived yet.
        self._partial: list[bytes] = []
        # The stream's first bytes, held back until we know whether they are a BOM.
        self._head: bytes | None = b""
        # The previous feed ended in CR: an LF at the start of the next one ends no line.
        self._skip_lf = False
        # The block being read: its data lines, event type and retry field.
        self._data: list[bytes] = []
        self._event = ""
        self._block_retry: int | None = None
        self._in_block = False

    @property
    def incomplete(self) -> bool:
        """Whether bytes of an event are buffered that no blank line has ended yet."""
        return self._in_block or bool(self._partial) or bool(self._head)

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        """Decode the next piece of the stream; return the events it completed, in order."""
        if self._head is not None:
            head = self._head + data
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._head = head
                return []
            self._head = None
            data = head[len(_BOM) :] if head.startswith(_BOM) else head
        if self._skip_lf and data:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        if b"\n" not in data and b"\r" not in data:
            if data:
                self._partial.append(data)
            return []
        if self._partial:
            self._partial.append(data)
            data = b"".join(self._partial)
            self._partial.clear()
        if b"\r" in data:
            # A CR at the very end may be the first half of a CRLF split across feeds.
            self._skip_lf = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        rest = lines.pop()
        if rest:
            self._partial.append(rest)
        events: list[ServerSentEvent] = []
        for line in lines:
            if not line:
                self._dispatch(events)
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value[:1] == b" " else value)
                self._in_block = True
            elif line[0] == 0x3A:  # b":"
                self.comment_count += 1
            else:
                self._field(line)
        return events

    def _field(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        self._in_block = True
        if name == b"data":  # "data" with no colon: an empty data line
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self.last_event_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._block_retry = self.retry = int(value)
        # Any other field name is ignored, as the spec says.

    def _dispatch(self, events: list[ServerSentEvent]) -> None:
        if self._data:
            data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
            events.append(
                ServerSentEvent(
                    data,
                    self._event or "message",
                    self.last_event_id,
                    self._block_retry,
                )
            )
            self._data = []
        self._event = ""
        self._block_retry = None
        self._in_block = False
