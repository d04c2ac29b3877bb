"""Approvals and choices: a tool call waits for a person, and any task may answer.

A request (``approval_request`` or ``choice_request``) is plain data with an id. The
waiting side is one tool call; the answer comes from the agent's callback (``approver``,
``chooser``) or from :meth:`Approvals.respond` / :meth:`Approvals.respond_choice`,
called by any task (a UI). The first answer wins; a second one gets
:class:`~trurn.RequestAnsweredError`, an id that is not open gets
:class:`~trurn.UnknownRequestError`, and a choice that was not offered gets
:class:`~trurn.InvalidChoiceError` while the request stays open.

A request lives exactly as long as the tool call waiting for it: when that call is
cancelled (its turn ended, was cancelled, or a deadline passed) the request is dropped
and answering it later is an "expired" :class:`~trurn.UnknownRequestError`. So a UI that
never answers, or dies, holds up one turn at most, and only until the caller's cancel
scope says so: there is no timeout parameter.

The registry (:class:`Approvals`) is synchronous state; the waits are the two thin async
methods :meth:`Approvals.request_approval` and :meth:`Approvals.request_choice`.
"""

from __future__ import annotations

import inspect
import math
import secrets
import sys
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Literal

import msgspec
import trio

from . import events
from ._errors import (
    InvalidChoiceError,
    RequestAnsweredError,
    ToolError,
    UnknownRequestError,
    unwrapped,
)
from ._messages import ToolCall

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "ApprovalDecision",
    "ApprovalFailed",
    "ApprovalPolicy",
    "Approvals",
    "Approver",
    "Chooser",
    "Precheck",
]

Emit = Callable[[Sequence[events.BaseEvent]], Awaitable[None]]

ApprovalPolicy = bool | Collection[str] | Callable[[ToolCall], bool]
"""Which calls need approval: all (``True``), none (``False``), those of the named
tools, or those for which a callable of the :class:`~trurn.ToolCall` returns ``True``."""

Approver = Callable[[events.ApprovalRequest], "Awaitable[bool | ApprovalDecision] | bool"]
"""Answers an approval request: ``True``/``False`` or an :class:`ApprovalDecision`."""

Chooser = Callable[[events.ChoiceRequest], "Awaitable[str] | str"]
"""Answers a choice request with one of its ``choices``."""

# How many answered or expired request ids an agent remembers, to tell a late answer
# "already answered" or "expired" rather than "unknown". Bounded, so a long-lived agent
# does not grow.
_REMEMBERED = 1024


class Precheck(msgspec.Struct, frozen=True, kw_only=True):
    """A tool's own verdict on one call, before it runs: see :meth:`trurn.BaseTool.precheck`.

    ``status`` is ``"allow"`` (run it, unless the agent's ``require_approval`` asks),
    ``"deny"`` (do not run it: the model reads ``message`` and ``reasons``) or
    ``"ask"`` (ask a person first, whatever the agent's policy). ``message``,
    ``reasons`` and ``metadata`` go into the ``approval_request`` for the person; they
    must encode to JSON. Bad values raise ``ValueError`` or ``TypeError`` at once.
    """

    status: Literal["allow", "deny", "ask"]
    message: str | None = None
    reasons: list[str] = []
    metadata: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if self.status not in ("allow", "deny", "ask"):
            raise ValueError(
                f"Precheck status must be 'allow', 'deny' or 'ask', not {self.status!r}"
            )
        if self.message is not None and not isinstance(self.message, str):
            raise TypeError(f"Precheck message must be a str, not {type(self.message).__name__}")
        if not isinstance(self.reasons, list) or not all(isinstance(r, str) for r in self.reasons):
            raise TypeError("Precheck reasons must be a list of str")
        if not isinstance(self.metadata, dict):
            raise TypeError(f"Precheck metadata must be a dict, not {type(self.metadata).__name__}")
        try:
            msgspec.json.encode(self.metadata)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"Precheck metadata must encode to JSON: {exc}") from None


class ApprovalDecision(msgspec.Struct, frozen=True):
    """An answer to an approval request, with the reason the model reads on a denial."""

    approved: bool
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_answer(self.approved, self.reason)


class ApprovalFailed(Exception):
    """The approver failed (raised, or returned something else than an answer).

    Raised by :meth:`Approvals.request_approval`; the call is then not run. The message
    names the approver's exception type only, since its text may carry anything.
    """


class _Pending:
    """One open request and, once answered, its answer."""

    __slots__ = ("answer", "by", "done", "failure", "request")

    def __init__(self, request: events.ApprovalRequest | events.ChoiceRequest) -> None:
        self.request = request
        self.done = trio.Event()
        self.answer: ApprovalDecision | str | None = None
        self.by = ""
        self.failure: str | None = None  # why the callback gave no answer


class Approvals:
    """The agent's open approval and choice requests, and who answers them.

    ``require_approval`` is an :data:`ApprovalPolicy`; a collection of names is checked
    against ``tool_names`` when given (an unknown name would leave a tool ungated, so it
    is a ``ValueError``). ``approver`` and ``chooser`` answer requests as they are made
    (sync or async callables); without them only :meth:`respond` and
    :meth:`respond_choice` can.
    """

    def __init__(
        self,
        require_approval: ApprovalPolicy = False,
        *,
        approver: Approver | None = None,
        chooser: Chooser | None = None,
        tool_names: Collection[str] | None = None,
    ) -> None:
        self.require_approval = check_policy(require_approval, tool_names)
        if approver is not None and not callable(approver):
            raise TypeError(f"approver must be callable, not {type(approver).__name__}")
        if chooser is not None and not callable(chooser):
            raise TypeError(f"chooser must be callable, not {type(chooser).__name__}")
        self.approver = approver
        self.chooser = chooser
        self._open: dict[str, _Pending] = {}
        self._closed: dict[str, str] = {}  # id -> what happened to it, oldest first

    # --- answering (sync: a UI task calls these) ----------------------------------------

    def respond(self, request_id: str, approved: bool, *, reason: str | None = None) -> None:
        """Answer approval request ``request_id``: approve it, or deny it with ``reason``.

        Never blocks. Raises :class:`~trurn.UnknownRequestError` if no approval request
        with this id is open (never made, or expired with its tool call),
        :class:`~trurn.RequestAnsweredError` if it was already answered, ``TypeError``
        for an ``approved`` that is not a bool or a ``reason`` that is not a str.
        """
        _check_answer(approved, reason)
        pending = self._find(request_id, events.ApprovalRequest)
        self._settle(pending, ApprovalDecision(approved, reason), "respond")

    def respond_choice(self, request_id: str, choice: str) -> None:
        """Answer choice request ``request_id`` with ``choice``, one of its ``choices``.

        Never blocks. Raises :class:`~trurn.InvalidChoiceError` (the request stays open)
        for a choice that was not offered, and the errors of :meth:`respond`.
        """
        if not isinstance(choice, str):
            raise TypeError(f"choice must be a str, not {type(choice).__name__}")
        pending = self._find(request_id, events.ChoiceRequest)
        request = pending.request
        assert isinstance(request, events.ChoiceRequest)
        if choice not in request.choices:
            raise InvalidChoiceError(
                f"{choice!r} is not one of the choices of request {request_id!r}: "
                f"{request.choices!r}; the request is still open",
                request_id=request_id,
            )
        self._settle(pending, choice, "respond")

    def pending(self) -> list[events.ApprovalRequest | events.ChoiceRequest]:
        """The requests waiting for an answer now, oldest first (for a UI that connects late)."""
        return [p.request for p in self._open.values() if not p.done.is_set()]

    def needs_approval(self, call: ToolCall) -> bool:
        """Whether the agent's policy asks a person before ``call`` runs.

        A policy callable that raises propagates; one that returns something other than
        a bool is a ``TypeError``: either way the caller must not run the call.
        """
        policy = self.require_approval
        if isinstance(policy, bool):
            return policy
        if isinstance(policy, frozenset):
            return call.name in policy
        verdict = policy(call)  # type: ignore[operator]
        if not isinstance(verdict, bool):
            raise TypeError(
                f"require_approval returned a {type(verdict).__name__}; it must return a bool"
            )
        return verdict

    # --- waiting (async: the tool call's task) -------------------------------------------

    async def request_approval(
        self, emit: Emit, call: ToolCall, *, preview: str | None, precheck: Precheck | None
    ) -> ApprovalDecision:
        """Publish an ``approval_request`` for ``call`` and wait for its answer.

        A checkpoint. Publishes ``approval_answered`` once answered. Raises
        :class:`ApprovalFailed` when the approver raised or answered with something that
        is not a bool or an :class:`ApprovalDecision` (``approval_answered`` then says
        denied). Cancellation drops the request (a later answer is "expired") and
        cancels the approver.
        """
        request = events.ApprovalRequest(
            request_id="appr_" + secrets.token_hex(8),
            call=call,
            preview=preview,
            reason=precheck.message if precheck is not None else None,
            reasons=list(precheck.reasons) if precheck is not None else [],
            metadata=dict(precheck.metadata) if precheck is not None else {},
        )
        pending = await self._wait(emit, request, self.approver)
        answer = pending.answer
        if pending.failure is not None:
            answer = ApprovalDecision(False, pending.failure)
        assert isinstance(answer, ApprovalDecision)
        await emit(
            [
                events.ApprovalAnswered(
                    request_id=request.request_id,
                    tool_call_id=call.id,
                    approved=answer.approved,
                    reason=answer.reason,
                    by=pending.by,
                )
            ]
        )
        if pending.failure is not None:
            raise ApprovalFailed(pending.failure)
        return answer

    async def request_choice(
        self, emit: Emit, call: ToolCall, prompt: str, choices: Sequence[str], hint: str | None
    ) -> str:
        """Publish a ``choice_request`` for ``call`` and wait for the choice.

        A checkpoint. Publishes ``choice_answered`` once answered. Raises
        :class:`~trurn.ToolError` (which the tool may catch) when the chooser raised or
        chose something that was not offered. Cancellation drops the request and
        cancels the chooser.
        """
        request = events.ChoiceRequest(
            request_id="choice_" + secrets.token_hex(8),
            tool_call_id=call.id,
            prompt=prompt,
            choices=list(choices),
            hint=hint,
        )
        pending = await self._wait(emit, request, self.chooser)
        choice = pending.answer
        assert choice is None or isinstance(choice, str)
        await emit(
            [
                events.ChoiceAnswered(
                    request_id=request.request_id,
                    tool_call_id=call.id,
                    choice=choice,
                    by=pending.by,
                )
            ]
        )
        if pending.failure is not None:
            raise ToolError(f"No choice was made: {pending.failure}.")
        assert choice is not None
        return choice

    async def _wait(
        self,
        emit: Emit,
        request: events.ApprovalRequest | events.ChoiceRequest,
        callback: Callable[[Any], Any] | None,
    ) -> _Pending:
        pending = _Pending(request)
        # Open before publishing, so an answer given as soon as the event arrives counts;
        # the callback starts after, so it gets the event stamped with its seq.
        self._open[request.request_id] = pending
        try:
            async with trio.open_nursery() as nursery:
                await emit([request])
                if callback is not None:
                    nursery.start_soon(self._ask_callback, pending, callback)
                await pending.done.wait()
                nursery.cancel_scope.cancel()  # the other answerer lost: stop the callback
        except BaseExceptionGroup as group:
            # What escapes is a KeyboardInterrupt (or the like) from the callback or from
            # publishing: it goes on alone, as if this wait had no nursery.
            lone = unwrapped(group)
            if lone is not group:
                raise lone from None
            raise
        finally:
            self._forget(pending)
        return pending

    async def _ask_callback(self, pending: _Pending, callback: Callable[[Any], Any]) -> None:
        if pending.done.is_set():
            return  # answered while this task was starting: do not ask for nothing
        role = "chooser" if isinstance(pending.request, events.ChoiceRequest) else "approver"
        answer: ApprovalDecision | str | None
        failure: str | None
        try:
            outcome = callback(pending.request)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except Exception as exc:
            answer, failure = None, f"the {role} raised {type(exc).__name__}"
        else:
            answer, failure = _read_outcome(pending.request, outcome, role)
        if pending.done.is_set():
            return  # a UI answered first, while the callback was returning
        if answer is not None:
            self._settle(pending, answer, role)
        else:
            pending.failure = failure
            pending.by = role
            pending.done.set()

    # --- bookkeeping ----------------------------------------------------------------------

    def _find(self, request_id: str, kind: type[events.BaseEvent]) -> _Pending:
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a str, not {type(request_id).__name__}")
        pending = self._open.get(request_id)
        if pending is None:
            fate = self._closed.get(request_id)
            if fate is None:
                raise UnknownRequestError(
                    f"no request {request_id!r} is open (it was never made, or it expired "
                    "long ago)",
                    request_id=request_id,
                )
            if fate.startswith("expired"):
                raise UnknownRequestError(f"request {request_id!r} {fate}", request_id=request_id)
            raise RequestAnsweredError(f"request {request_id!r} {fate}", request_id=request_id)
        if pending.done.is_set():
            raise RequestAnsweredError(
                f"request {request_id!r} {_fate(pending)}", request_id=request_id
            )
        if not isinstance(pending.request, kind):
            what, use = (
                ("a choice", "respond_choice()")
                if kind is events.ApprovalRequest
                else ("an approval", "respond()")
            )
            raise UnknownRequestError(
                f"request {request_id!r} is {what} request: answer it with {use}",
                request_id=request_id,
            )
        return pending

    def _settle(self, pending: _Pending, answer: ApprovalDecision | str, by: str) -> None:
        pending.answer = answer
        pending.by = by
        pending.done.set()

    def _forget(self, pending: _Pending) -> None:
        request_id = pending.request.request_id
        del self._open[request_id]
        self._closed[request_id] = _fate(pending)
        if len(self._closed) > _REMEMBERED:
            del self._closed[next(iter(self._closed))]


# --- pure helpers -------------------------------------------------------------------------


def check_policy(policy: object, tool_names: Collection[str] | None = None) -> ApprovalPolicy:
    """Check a ``require_approval`` value; collections of names become a frozenset.

    Raises ``TypeError`` for anything that is not a bool, a collection of str or a
    callable (a single str is refused: it would be read as a set of letters), and
    ``ValueError`` for names that are not among ``tool_names``.
    """
    if isinstance(policy, bool):
        return policy
    if isinstance(policy, (str, bytes)):
        raise TypeError(
            f"require_approval={policy!r}: give a set of tool names ({{{policy!r}}}), not a str"
        )
    if callable(policy):
        return policy
    if isinstance(policy, Collection):
        names = frozenset(policy)
        bad = sorted(repr(name) for name in names if not isinstance(name, str))
        if bad:
            raise TypeError(f"require_approval: tool names must be str, got {', '.join(bad)}")
        if tool_names is not None:
            unknown = sorted(names - set(tool_names))
            if unknown:
                raise ValueError(
                    f"require_approval names tools the agent does not have: "
                    f"{', '.join(map(repr, unknown))}; its tools are: "
                    f"{', '.join(map(repr, sorted(tool_names))) or 'none'}"
                )
        return names
    raise TypeError(
        "require_approval must be a bool, a set of tool names or a callable(call) -> bool, "
        f"not {type(policy).__name__}"
    )


def check_timeout(value: object, what: str) -> float | None:
    """``value`` as a timeout in seconds: ``None`` or a number > 0 (``math.inf``: none).

    Raises ``TypeError`` for a non-number (a bool included) and ``ValueError`` for zero,
    a negative number or NaN, naming ``what``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{what} must be more than 0 seconds, got {value!r}")
    return float(value)


def _fate(pending: _Pending) -> str:
    """What became of a request, for the error a late answer gets."""
    if pending.answer is not None:
        return f"was already answered (by {pending.by})"
    if pending.failure is not None:
        return f"was already closed: {pending.failure}"
    return (
        "expired: its tool call ended before an answer came (the turn was cancelled or "
        "finished, or the call timed out)"
    )


def _check_answer(approved: object, reason: object) -> None:
    if not isinstance(approved, bool):
        raise TypeError(f"approved must be a bool, not {type(approved).__name__}")
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"reason must be a str or None, not {type(reason).__name__}")


def _read_outcome(
    request: events.ApprovalRequest | events.ChoiceRequest, outcome: object, role: str
) -> tuple[ApprovalDecision | str | None, str | None]:
    """A callback's return value as an answer, or ``None`` and why it is not one."""
    if isinstance(request, events.ChoiceRequest):
        if isinstance(outcome, str) and outcome in request.choices:
            return outcome, None
        if isinstance(outcome, str):
            return None, f"the {role} chose a value that was not offered"
        return None, f"the {role} returned a {type(outcome).__name__}, not one of the choices"
    if isinstance(outcome, bool):
        return ApprovalDecision(outcome), None
    if isinstance(outcome, ApprovalDecision):
        return outcome, None
    return (
        None,
        f"the {role} returned a {type(outcome).__name__}, not a bool or an ApprovalDecision",
    )
