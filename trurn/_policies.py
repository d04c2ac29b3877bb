"""Policies that end a turn early: the iteration policy, loop detection, a token budget.

The turn loop asks a :class:`TurnGuard` (one per turn) two questions, both pure and
cheap: :meth:`~TurnGuard.before_request` (may the next model call happen, given the
tokens the turn has used?) and :meth:`~TurnGuard.after_reply` (is the model going round
in circles with its tool calls?). Each answer is a :class:`Verdict`: go on, warn the
model once with a note, or stop with a ``stop_reason``. The user's
:class:`IterationPolicy` is the async part; the turn awaits it itself.

Stop reasons decided here: ``"loop_detected"`` and ``"budget_exceeded"``; with the
turn's own ``"max_iterations"`` and ``"policy"`` they form :data:`LIMIT_STOP_REASONS`,
the stops after which a policy's ``on_limit_reached`` may supply the turn's text.

Compared with exoclaw's ``IterationPolicy``: a policy never replaces the hard
``max_steps`` limit, it sees whole tool calls (arguments included) rather than names,
it is asked once before each model call (not once more at the end), and a limit stop
has its own ``stop_reason`` instead of a text that reads like the model's answer.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, Protocol, cast

import msgspec

from ._messages import AssistantMessage, ToolCall, ToolMessage, Usage

__all__ = [
    "CONTINUE",
    "DEFAULT_LOOP_DETECTION",
    "LIMIT_STOP_REASONS",
    "IterationPolicy",
    "LimitPolicy",
    "Loop",
    "LoopDetection",
    "LoopDetector",
    "OnLimitReached",
    "TurnGuard",
    "Verdict",
    "call_key",
    "check_iteration_policy",
    "check_max_turn_tokens",
    "continue_answer",
    "limit_hook",
    "limit_text",
    "loop_note",
    "loop_stop_text",
    "turn_tokens",
    "with_note",
]

LIMIT_STOP_REASONS = frozenset({"max_iterations", "policy", "loop_detected", "budget_exceeded"})
"""Stop reasons of a turn ended by a limit rather than by the model, an abort or an error."""


# ---------------------------------------------------------------------------
# The user's iteration policy


class IterationPolicy(Protocol):
    """Decides, before each model call, whether the turn goes on.

    ``iteration`` is the number of model replies so far; ``tool_calls`` every tool
    call of the turn so far, with its arguments. Returning ``False`` ends the turn
    with ``stop_reason="policy"``. The agent's ``max_steps`` stays a hard limit.

    A policy may also define ``on_limit_reached`` (see :class:`LimitPolicy`); it is
    optional, and a policy without it keeps the turn's own text.
    """

    async def should_continue(self, iteration: int, tool_calls: Sequence[ToolCall]) -> bool: ...


class LimitPolicy(IterationPolicy, Protocol):
    """An :class:`IterationPolicy` that also writes the turn's text after a limit stop.

    ``on_limit_reached(iteration, tool_calls, stop_reason)`` is awaited once, when the
    turn ends with one of :data:`LIMIT_STOP_REASONS` (``max_iterations`` too, even if
    ``should_continue`` never said no). A string becomes the turn's text
    (``TurnResult.text`` and ``turn_finished.text``) in place of the model's last text;
    ``None`` keeps the model's. The string is not added to the history: the model did
    not say it, and the next turn should not read it as if it had.
    """

    async def on_limit_reached(
        self, iteration: int, tool_calls: Sequence[ToolCall], stop_reason: str
    ) -> str | None: ...


OnLimitReached = Callable[[int, Sequence[ToolCall], str], Awaitable[object]]


def limit_hook(policy: IterationPolicy | None) -> OnLimitReached | None:
    """The policy's ``on_limit_reached``, or ``None`` if it has none (it is optional)."""
    hook = getattr(policy, "on_limit_reached", None)
    return cast("OnLimitReached", hook) if callable(hook) else None


def limit_text(value: object) -> str | None:
    """Check what ``on_limit_reached`` returned: a string or ``None``."""
    if value is None or isinstance(value, str):
        return value
    raise TypeError(
        f"IterationPolicy.on_limit_reached must return a str or None, got {type(value).__name__}"
    )


def continue_answer(policy: IterationPolicy, value: object) -> bool:
    """Check what ``policy.should_continue`` returned: a bool (a policy that forgot to
    return would otherwise end every turn before its first model call)."""
    if isinstance(value, bool):
        return value
    raise TypeError(
        f"iteration policy {type(policy).__name__}: should_continue must return a bool, "
        f"got {type(value).__name__}"
    )


def check_iteration_policy(policy: object) -> IterationPolicy | None:
    """Check an ``iteration_policy`` before any turn: ``None``, or an object whose
    ``should_continue`` (and ``on_limit_reached``, if it has a callable one) is an
    ``async def``. Raises ``TypeError`` naming the policy and the method otherwise."""
    if policy is None:
        return None
    if isinstance(policy, type):
        raise TypeError(f"iteration_policy is the class {policy.__name__}: pass an instance of it")
    name = type(policy).__name__
    if not inspect.iscoroutinefunction(getattr(policy, "should_continue", None)):
        raise TypeError(
            f"iteration policy {name}: should_continue(iteration, tool_calls) must be an "
            "'async def' method"
        )
    hook = limit_hook(cast("IterationPolicy", policy))
    if hook is not None and not inspect.iscoroutinefunction(hook):
        raise TypeError(f"iteration policy {name}: on_limit_reached must be an 'async def' method")
    return cast("IterationPolicy", policy)


# ---------------------------------------------------------------------------
# Verdicts


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """What the turn does next.

    ``action="continue"``: go on. ``"warn"``: go on, and append ``note`` to the
    results of this reply's tool calls (see :func:`with_note`). ``"stop"``: end the
    turn with ``stop_reason``; if the reply's tool calls have not run, they are not
    run, and ``note`` is the content of their (not run) results.
    """

    action: Literal["continue", "warn", "stop"] = "continue"
    stop_reason: str | None = None
    note: str | None = None


CONTINUE = Verdict()


# ---------------------------------------------------------------------------
# Loop detection


class LoopDetection(msgspec.Struct, frozen=True, kw_only=True):
    """When repeated tool calls count as a loop, and what happens then.

    A loop is the same call (same tool, same arguments) ``repeats`` times in a row,
    or a cycle of 2 to ``max_cycle`` calls repeated ``repeats`` times in a row
    (A, B, A, B, A, B). The calls of a turn are taken in order, across replies.
    ``mode="stop"`` ends the turn with ``stop_reason="loop_detected"``;
    ``"warn_then_stop"`` tells the model once (a note after the tool results) and
    stops at the next loop of the turn.
    """

    repeats: int = 3
    max_cycle: int = 4
    mode: Literal["stop", "warn_then_stop"] = "stop"

    def __post_init__(self) -> None:
        if type(self.repeats) is not int or self.repeats < 2:
            raise ValueError(
                f"LoopDetection.repeats must be an int of at least 2, got {self.repeats!r}"
            )
        if type(self.max_cycle) is not int or self.max_cycle < 1:
            raise ValueError(
                f"LoopDetection.max_cycle must be an int of at least 1, got {self.max_cycle!r}"
            )
        if self.mode not in ("stop", "warn_then_stop"):
            raise ValueError(
                f"LoopDetection.mode must be 'stop' or 'warn_then_stop', got {self.mode!r}"
            )


DEFAULT_LOOP_DETECTION = LoopDetection()
"""The agent's default: stop at the third identical call, or a cycle of up to 4 calls
repeated three times."""


class Loop(msgspec.Struct, frozen=True, kw_only=True):
    """A loop found in a turn's tool calls: ``cycle`` (one round of it, oldest call
    first; one call when the same call repeats) came ``repeats`` times in a row."""

    cycle: tuple[ToolCall, ...]
    repeats: int


def call_key(call: ToolCall) -> str:
    """What makes two calls the same: the tool name and the arguments as canonical
    JSON (keys sorted at every depth, so their order does not matter).

    A call whose arguments did not parse is keyed by the exact text the model sent.
    """
    if call.arguments_error is not None:
        arguments = "raw:" + call.arguments_raw
    else:
        try:
            arguments = msgspec.json.encode(_sorted_keys(call.arguments)).decode()
        except (TypeError, msgspec.EncodeError):
            # Only arguments built in Python (not parsed from the model) can get here.
            arguments = "repr:" + repr(call.arguments)
    # The name cannot contain NUL in any provider's wire format, so the key is unambiguous.
    return call.name + "\0" + arguments


def _sorted_keys(value: Any) -> Any:
    """``value`` with every dict's keys in sorted order (dicts encode in key order;
    msgspec's own ``order="sorted"`` needs a newer msgspec than trurn requires)."""
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


class LoopDetector:
    """Finds loops in a stream of tool calls, one call at a time.

    For each cycle length ``p`` it keeps how many calls in a row have equalled the
    call ``p`` before them; a cycle repeated ``r`` times is ``p * (r - 1)`` such calls.
    Each call costs ``O(max_cycle)`` comparisons plus encoding its arguments once, and
    memory stays ``O(max_cycle)`` however long the turn is.
    """

    __slots__ = ("_recent", "_repeats", "_runs")

    def __init__(self, config: LoopDetection = DEFAULT_LOOP_DETECTION) -> None:
        self._repeats = config.repeats
        self._recent: deque[tuple[str, ToolCall]] = deque(maxlen=config.max_cycle)
        self._runs = [0] * (config.max_cycle + 1)  # _runs[p] for p in 1..max_cycle

    def observe(self, call: ToolCall) -> Loop | None:
        """Add the next call; return the loop it completes (the shortest cycle), if any."""
        key = call_key(call)
        recent = self._recent
        runs = self._runs
        found = 0
        for period in range(1, len(runs)):
            if period <= len(recent) and recent[-period][0] == key:
                runs[period] += 1
                if not found and runs[period] >= period * (self._repeats - 1):
                    found = period
            else:
                runs[period] = 0
        recent.append((key, call))
        if not found:
            return None
        return Loop(cycle=tuple(c for _, c in list(recent)[-found:]), repeats=self._repeats)


def _describe_loop(loop: Loop) -> str:
    if len(loop.cycle) == 1:
        name = loop.cycle[0].name
        return f"{name} was called with the same arguments {loop.repeats} times in a row"
    names = ", ".join(call.name for call in loop.cycle)
    return f"the same {len(loop.cycle)} tool calls ({names}) came {loop.repeats} times in a row"


def loop_note(loop: Loop) -> str:
    """The warning the model reads after the tool results of the step that looped."""
    return (
        f"[trurn] Loop warning: {_describe_loop(loop)}. Repeating them will not give "
        "different results. Use what you already have, try a different approach, or answer "
        "now. If the calls repeat again, the turn will be stopped."
    )


def loop_stop_text(loop: Loop) -> str:
    """The result of each tool call that was not run because the turn stopped on a loop."""
    return f"Not run: the turn was stopped because it was looping ({_describe_loop(loop)})."


def with_note(results: Sequence[ToolMessage], note: str) -> list[ToolMessage]:
    """``results`` with ``note`` appended to the last one, which the model reads last.

    A note in a tool result rather than a user message: a user message would pass for
    the user's latest request (compaction keeps that as the user's intent).
    """
    if not results:
        return []
    last = results[-1]
    return [*results[:-1], msgspec.structs.replace(last, content=f"{last.content}\n\n{note}")]


# ---------------------------------------------------------------------------
# Token budget


def turn_tokens(usage: Usage) -> int:
    """Tokens a turn has used: ``total_tokens``, or input plus output when the provider
    reported no total."""
    return usage.total_tokens or usage.input_tokens + usage.output_tokens


def check_max_turn_tokens(value: int | None) -> int | None:
    """Validate ``max_turn_tokens``: ``None`` (no budget) or a positive int."""
    if value is not None and (type(value) is not int or value < 1):
        raise ValueError(f"max_turn_tokens must be a positive int or None, got {value!r}")
    return value


# ---------------------------------------------------------------------------
# The per-turn guard


class TurnGuard:
    """Loop detection and the token budget of one turn; create one per turn.

    Pure: no I/O, no checkpoints. ``loop_detection=None`` and ``max_turn_tokens=None``
    turn each check off.
    """

    __slots__ = ("_detector", "_max_turn_tokens", "_mode", "_warned")

    def __init__(
        self, *, loop_detection: LoopDetection | None = None, max_turn_tokens: int | None = None
    ) -> None:
        self._max_turn_tokens = check_max_turn_tokens(max_turn_tokens)
        self._detector: LoopDetector | None = None
        self._mode: Literal["stop", "warn_then_stop"] = "stop"
        if loop_detection is not None:
            self._detector = LoopDetector(loop_detection)
            self._mode = loop_detection.mode
        self._warned = False

    def before_request(self, usage: Usage) -> Verdict:
        """Whether the next model call may happen, given the turn's summed ``usage``.

        Stops with ``"budget_exceeded"`` once the turn has used ``max_turn_tokens`` or
        more; the reply that crossed the budget is kept, so a turn can overshoot by one
        model call.
        """
        budget = self._max_turn_tokens
        if budget is not None and turn_tokens(usage) >= budget:
            return Verdict(action="stop", stop_reason="budget_exceeded")
        return CONTINUE

    def after_reply(self, reply: AssistantMessage) -> Verdict:
        """Feed a reply's tool calls (before they run) to the loop detector.

        One verdict per reply: a loop anywhere in its calls warns (the first time in
        ``warn_then_stop`` mode) or stops; a later loop in the same turn always stops.
        """
        detector = self._detector
        if detector is None:
            return CONTINUE
        loop = None
        for call in reply.tool_calls:
            loop = detector.observe(call) or loop
        if loop is None:
            return CONTINUE
        if self._mode == "warn_then_stop" and not self._warned:
            self._warned = True
            return Verdict(action="warn", note=loop_note(loop))
        return Verdict(action="stop", stop_reason="loop_detected", note=loop_stop_text(loop))
