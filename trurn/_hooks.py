"""Hooks: user code the turn awaits at fixed points, which may change what happens next.

Subclass :class:`Hooks` and override the methods you need; pass instances as
``Agent(hooks=[...])``. Each hook runs inside the turn (``before_tool`` and
``after_tool`` in the task of their tool call), within the turn's cancel scope,
so cancelling the turn cancels a running hook. A hook that raises, or that runs past
the agent's ``hook_timeout``, is reported as an ``error`` event and counts as having
changed nothing: a broken hook never breaks the turn, and its error never reaches the
model. Several hooks run in the order given; for ``before_tool`` and
``before_request`` each sees what the previous one returned.

Hooks get copies of the message list and of a call's arguments (messages and calls
are frozen): changing them in place changes nothing, only what a hook returns counts,
so the history always shows what was sent and what ran.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import trio

from . import events
from ._approvals import Emit
from ._messages import AssistantMessage, Message, SystemMessage, ToolCall, ToolMessage, UserMessage
from ._records import check_finite
from ._tools import exception_text

if TYPE_CHECKING:
    from ._turn import TurnResult

__all__ = ["Block", "HookRunner", "Hooks", "check_hooks"]

_MESSAGE_TYPES = (SystemMessage, UserMessage, AssistantMessage, ToolMessage)

T = TypeVar("T")


class Block(msgspec.Struct, frozen=True):
    """Returned by :meth:`Hooks.before_tool`: do not run the call; the model reads
    ``"Blocked: <reason>"`` as the call's result (status ``"denied"``)."""

    reason: str


class Hooks:
    """Override any of these methods (each an ``async def``); the defaults do nothing."""

    async def before_request(self, messages: list[Message]) -> list[Message] | None:
        """Before each model call, with the messages about to be sent (after compaction,
        without the system prompt). Return a new list to send instead (the history
        itself is not changed), or ``None`` to send them as they are."""
        return None

    async def before_tool(self, call: ToolCall) -> ToolCall | Block | None:
        """Before a tool call runs (and before its approval is asked). Return a call
        with other arguments to run those instead (the ``tool_call`` event and the
        result's ``arguments`` record what ran; the id and tool name stay the model's),
        a :class:`Block` to skip it, or ``None`` to run it as the model asked.
        Arguments the history could not hold (not a dict with str keys, a value JSON
        cannot encode, a NaN or an infinity) count as a failure of the hook."""
        return None

    async def after_tool(self, call: ToolCall, result: ToolMessage) -> None:
        """After a tool call ended (also when it failed, was blocked or was denied)."""

    async def before_finish(self, text: str | None) -> str | None:
        """When the model answered without tools and the turn would end. Return a
        message to send it back for another step (counted against ``max_steps``), or
        ``None`` to let the turn end."""
        return None

    async def on_turn_end(self, result: TurnResult) -> None:
        """When a turn ends by itself (or by ``agent.cancel(mode="after_turn")``),
        before ``turn_finished`` is published. Not called when the turn is cancelled
        at once or fails."""


def _overrides(hooks: Hooks, name: str) -> bool:
    return getattr(type(hooks), name) is not getattr(Hooks, name)


class HookRunner:
    """Runs one turn's hooks: skips the methods nobody overrode, reports failures.

    ``emit`` publishes the ``error`` event of a hook that failed; ``timeout`` (seconds,
    ``None`` for none) bounds each hook call.
    """

    __slots__ = ("_emit", "_hooks", "_timeout")

    def __init__(self, hooks: Sequence[Hooks], emit: Emit, timeout: float | None) -> None:
        self._hooks = hooks
        self._emit = emit
        self._timeout = math.inf if timeout is None else timeout

    def has(self, name: str) -> bool:
        """Whether any hook overrides ``name`` (the turn skips the work otherwise)."""
        return any(_overrides(hooks, name) for hooks in self._hooks)

    async def _call(
        self,
        hooks: Hooks,
        name: str,
        args: tuple[Any, ...],
        check: Callable[[Any], T],
        *,
        tool_call_id: str | None = None,
    ) -> T | None:
        """What the hook returned, if ``check`` accepts it; ``None`` (as if it changed
        nothing) if it raised, timed out or returned the wrong type (an ``error``
        event says which). Cancellation of the turn propagates as it is."""
        where = f"hook {type(hooks).__name__}.{name}"
        # What goes wrong if the deadline passes; replaced if the hook fails otherwise.
        failure, error_type = f"{where} did not return within {self._timeout:g} s", "TimeoutError"
        with trio.move_on_after(self._timeout):
            try:
                value = await getattr(hooks, name)(*args)
            except Exception as exc:
                failure, error_type = f"{where} raised {exception_text(exc)}", type(exc).__name__
            else:
                try:
                    return check(value)
                except TypeError as exc:
                    failure = f"{where} returned {type(value).__name__}, expected {exc}"
                    error_type = "TypeError"
        error = events.Error(message=failure, error_type=error_type, tool_call_id=tool_call_id)
        await self._emit([error])
        return None

    def _each(self, name: str) -> list[Hooks]:
        return [hooks for hooks in self._hooks if _overrides(hooks, name)]

    async def before_request(self, messages: list[Message]) -> list[Message]:
        for hooks in self._each("before_request"):
            edited = await self._call(hooks, "before_request", (list(messages),), _messages_or_none)
            if edited is not None:
                messages = edited
        return messages

    async def before_tool(self, call: ToolCall) -> ToolCall | Block:
        """The call to run (``call`` itself when no hook changed its arguments), or
        the first :class:`Block` (the hooks after it are not called)."""
        for hooks in self._each("before_tool"):
            offered = msgspec.structs.replace(call, arguments=copy.deepcopy(call.arguments))
            outcome = await self._call(
                hooks, "before_tool", (offered,), _call_or_block, tool_call_id=call.id
            )
            if isinstance(outcome, Block):
                return outcome
            if outcome is not None and outcome.arguments != call.arguments:
                # A hook changes the arguments, never the call's id or tool.
                call = msgspec.structs.replace(
                    call, arguments=outcome.arguments, arguments_raw="", arguments_error=None
                )
        return call

    async def after_tool(self, call: ToolCall, result: ToolMessage) -> None:
        for hooks in self._each("after_tool"):
            await self._call(hooks, "after_tool", (call, result), _nothing, tool_call_id=call.id)

    async def before_finish(self, text: str | None) -> str | None:
        for hooks in self._each("before_finish"):
            message = await self._call(hooks, "before_finish", (text,), _text_or_none)
            if message:
                return message
        return None

    async def on_turn_end(self, result: TurnResult) -> None:
        for hooks in self._each("on_turn_end"):
            await self._call(hooks, "on_turn_end", (result,), _nothing)


# The checks of what hooks return: the value, or TypeError("<what was expected>").


def _messages_or_none(value: object) -> list[Message] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(m, _MESSAGE_TYPES) for m in value):
        return value
    raise TypeError("a list of trurn messages or None")


def _call_or_block(value: object) -> ToolCall | Block | None:
    if value is None or isinstance(value, Block):
        return value
    if not isinstance(value, ToolCall):
        raise TypeError("a ToolCall, a Block or None")
    # The arguments go into the call's result in the history: refused here, the model's
    # run instead, rather than the tool running and the history refusing its result.
    arguments = value.arguments
    if not isinstance(arguments, dict) or not all(isinstance(key, str) for key in arguments):
        raise TypeError("a ToolCall whose arguments are a dict with str keys")
    try:
        msgspec.json.encode(arguments)
        check_finite(arguments, "the arguments")
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise TypeError(f"a ToolCall whose arguments JSON can hold ({exc})") from None
    return value


def _text_or_none(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError("a str or None")


def _nothing(value: object) -> None:
    return None


_HOOK_POINTS = ("before_request", "before_tool", "after_tool", "before_finish", "on_turn_end")


def check_hooks(hooks: Sequence[Any]) -> tuple[Hooks, ...]:
    """The agent's hooks, each checked to be a :class:`Hooks` instance whose overridden
    hook points are ``async def`` (a ``TypeError`` naming the culprit otherwise)."""
    if isinstance(hooks, Hooks):
        raise TypeError("hooks must be a sequence of trurn.Hooks: use hooks=[...]")
    checked = tuple(hooks)
    for item in checked:
        if isinstance(item, type):
            raise TypeError(
                f"hooks must be trurn.Hooks instances, got the class {item.__name__}: "
                f"pass {item.__name__}()"
            )
        if not isinstance(item, Hooks):
            raise TypeError(
                f"hooks must be trurn.Hooks instances (subclass it), got {type(item).__name__}"
            )
        for name in _HOOK_POINTS:
            if _overrides(item, name) and not inspect.iscoroutinefunction(getattr(item, name)):
                raise TypeError(f"hook {type(item).__name__}.{name} must be an 'async def'")
    return checked
