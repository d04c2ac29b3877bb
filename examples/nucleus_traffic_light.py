"""A traffic light on trurn's Nucleus: a pure reducer, no LLM involved.

The reducer says what each signal does to the light and which events that makes; the
Nucleus keeps the state and publishes the events; a display task subscribes to them.

Run: python examples/nucleus_traffic_light.py
"""

from __future__ import annotations

from typing import Literal

import msgspec
import trio

from trurn import Nucleus, Transition

Color = Literal["red", "green", "yellow"]
NEXT: dict[Color, Color] = {"red": "green", "green": "yellow", "yellow": "red"}


class Light(msgspec.Struct, frozen=True):
    color: Color = "red"
    cycles: int = 0  # times it came back to red


# Signals: what happens to the light.
class Tick(msgspec.Struct, frozen=True):
    """The timer fired."""


class ButtonPressed(msgspec.Struct, frozen=True):
    """A pedestrian wants to cross: green ends early."""


class PowerOff(msgspec.Struct, frozen=True):
    """Maintenance: the light goes dark for good."""


Signal = Tick | ButtonPressed | PowerOff


# Events: what subscribers see.
class Changed(msgspec.Struct, frozen=True, tag=True):
    old: Color
    new: Color
    reason: str


class Ignored(msgspec.Struct, frozen=True, tag=True):
    signal: str
    color: Color


class SwitchedOff(msgspec.Struct, frozen=True, tag=True):
    cycles: int


Event = Changed | Ignored | SwitchedOff


def traffic_light(light: Light, signal: Signal, /) -> Transition[Light, Event]:
    """The whole behaviour of the light, as a pure function."""
    if isinstance(signal, PowerOff):
        return Transition(light, (SwitchedOff(light.cycles),), terminal=True)
    if isinstance(signal, ButtonPressed) and light.color != "green":
        return Transition(light, (Ignored("button", light.color),))
    new = NEXT[light.color]
    reason = "timer" if isinstance(signal, Tick) else "button"
    cycles = light.cycles + (new == "red")
    return Transition(Light(new, cycles), (Changed(light.color, new, reason),))


async def display(
    nucleus: Nucleus[Light, Signal, Event], *, task_status: trio.TaskStatus[None]
) -> None:
    async with nucleus.subscribe(max_buffer=16) as events:
        task_status.started()
        async for event in events:
            if isinstance(event, Changed):
                print(f"  {event.old:>6} -> {event.new:<6} ({event.reason})")
            elif isinstance(event, Ignored):
                print(f"  {event.signal} ignored while {event.color}")
            else:
                print(f"  switched off after {event.cycles} cycles")


async def main() -> None:
    nucleus: Nucleus[Light, Signal, Event] = Nucleus(Light(), traffic_light)
    script: list[Signal] = [
        Tick(), Tick(), Tick(),               # red -> green -> yellow -> red
        Tick(), ButtonPressed(),              # green, then cut short by the button
        ButtonPressed(),                      # nothing to cut short while yellow
        Tick(), Tick(), Tick(), Tick(),
        PowerOff(),
        Tick(), Tick(),                       # after power-off: never taken
    ]  # fmt: skip
    send, signals = trio.open_memory_channel[Signal](len(script))
    with send:
        for signal in script:
            send.send_nowait(signal)

    print("traffic light events:")
    async with trio.open_nursery() as nursery:
        await nursery.start(display, nucleus)
        final = await nucleus.run(signals)
        # The nucleus never closes its hub; closing it ends the display's `async for`.
        nucleus.broadcast.close()

    stats = nucleus.broadcast.statistics()
    left = signals.statistics().current_buffer_used
    print(f"final state: {final.color}, {final.cycles} cycles, terminal={nucleus.terminal}")
    print(f"{stats.published} events published, {stats.delivered} delivered, {left} signals left")


if __name__ == "__main__":
    trio.run(main)
