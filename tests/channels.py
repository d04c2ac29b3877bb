"""Reading what a Trio memory channel holds right now, without waiting."""

from __future__ import annotations

from typing import Any

import trio


def drain(channel: trio.MemoryReceiveChannel[Any]) -> list[Any]:
    """Everything buffered now; ``"END"`` marks EndOfChannel."""
    out: list[Any] = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except trio.WouldBlock:
            return out
        except trio.EndOfChannel:
            out.append("END")
            return out
