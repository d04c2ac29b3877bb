"""Tools: what the model may call, and how one call runs.

A tool is a name, a description, a JSON Schema of its arguments and a callable. Write one
as a plain function with :func:`tool` (schema from the type hints, description from the
docstring) or subclass :class:`BaseTool`. :func:`run_tool_call` runs one call the model
asked for and always answers with a :class:`~trurn.ToolMessage` the model can read:
unknown tools, bad arguments and exceptions become ``"error"`` results plus ``error``
events, never exceptions that end the turn. Only cancellation (and other
``BaseException``\\ s that are not ``Exception``) goes through, because the turn owns it.

One call goes: arguments checked, ``preview``, ``tool_call`` published, ``precheck``
(allow, deny, ask), approval if the precheck or the agent's ``require_approval`` asks
(see :mod:`trurn._approvals`), then the tool under its timeout. A refusal is a
``"denied"`` result and an expired timeout a ``"timeout"`` result, both for the model to
read; the turn goes on.

Schemas: :func:`tool` turns the signature into a ``msgspec`` Struct type with
:func:`msgspec.defstruct` and takes :func:`msgspec.json.schema` of it. References to
nested Structs are inlined, because several OpenAI-compatible servers do not resolve
``$ref``; only a recursive Struct, which cannot be inlined, keeps a top-level ``$defs``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Generic, Literal, ParamSpec, TypeVar, cast, overload

import msgspec
import trio

from . import events
from ._approvals import ApprovalFailed, Approvals, Emit, Precheck, check_timeout
from ._errors import ToolArgumentsError, ToolError
from ._messages import ToolCall, ToolMessage, ToolStatus
from .providers._base import ToolSpec

__all__ = [
    "BaseTool",
    "Emit",
    "FunctionTool",
    "ToolArgumentsError",
    "ToolContext",
    "run_tool_call",
    "tool",
    "tool_map",
]

P = ParamSpec("P")
R = TypeVar("R")

PreviewFunction = Callable[..., "str | None"]
PrecheckFunction = Callable[..., "Precheck | Awaitable[Precheck | None] | None"]

# OpenAI's rule for function names; Anthropic's is the same.
_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

# How much of unparseable argument text the model is shown back.
_EXCERPT_CHARS = 200


class ToolContext:
    """What a running tool may use besides its arguments.

    A :func:`tool` function receives it by annotating a parameter with ``ToolContext``
    (the parameter is injected and is not part of the schema, so the model cannot set
    it); :meth:`BaseTool.call` receives it as ``ctx``. With it a tool streams output
    (:meth:`output`) and asks the person to choose (:meth:`choose`) while it runs.
    """

    __slots__ = ("_approvals", "_closed", "_emit", "call")

    def __init__(self, call: ToolCall, emit: Emit, approvals: Approvals | None = None) -> None:
        self.call = call
        """The tool call being run: its ``id``, ``name`` and ``arguments``."""
        self._emit = emit
        self._approvals = approvals
        self._closed = False

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(
                f"tool call {self.call.id!r} ({self.call.name}) has ended; "
                f"ToolContext.{what} can only be used while the tool runs"
            )

    async def output(self, text: str, stream: Literal["stdout", "stderr"] = "stdout") -> None:
        """Publish ``text`` as a ``tool_output`` event while the tool runs.

        A checkpoint (through the turn's emit). The model never sees this output, only
        the tool's result. From a sync tool, which runs in a worker thread, call it as
        ``trio.from_thread.run(ctx.output, text)``. Raises ``RuntimeError`` once the
        call has ended, so no output can follow its ``tool_exit``.
        """
        self._check_open("output")
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        await self._emit([events.ToolOutput(tool_call_id=self.call.id, text=text, stream=stream)])

    async def choose(self, prompt: str, choices: Sequence[str], hint: str | None = None) -> str:
        """Ask the person to pick one of ``choices`` and return the one picked.

        Publishes ``choice_request`` and waits for the agent's ``chooser`` callback or
        ``agent.respond_choice(request_id, choice)``, whichever answers first; then
        publishes ``choice_answered``. The wait has no timeout of its own: it ends with
        the tool call (a turn cancel, or the tool's timeout, which counts this wait).
        From a sync tool: ``trio.from_thread.run(ctx.choose, prompt, choices)``.

        Raises ``TypeError``/``ValueError`` for a prompt that is not a str, choices that
        are not a non-empty sequence of distinct str, or a hint that is not a str;
        :class:`~trurn.ToolError` if the chooser fails (raises, or picks something not
        offered); ``RuntimeError`` once the call has ended, or when it was run without
        an agent (nobody could answer).
        """
        self._check_open("choose")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
            raise TypeError(f"choices must be a sequence of str, not {type(choices).__name__}")
        options = list(choices)
        if not options:
            raise ValueError("choices must not be empty")
        if not all(isinstance(option, str) for option in options):
            raise TypeError("choices must all be str")
        if len(set(options)) != len(options):
            raise ValueError(f"choices must be distinct, got {options!r}")
        if hint is not None and not isinstance(hint, str):
            raise TypeError(f"hint must be a str or None, not {type(hint).__name__}")
        if self._approvals is None:
            raise RuntimeError(
                "this tool call was run without an agent, so nobody can answer a choice"
            )
        return await self._approvals.request_choice(self._emit, self.call, prompt, options, hint)


class BaseTool(ABC):
    """A tool the model can call. Subclass it for a tool written by hand.

    Set ``name`` (1 to 64 of ``a-z A-Z 0-9 _ -``), ``description`` and ``parameters``
    (a JSON Schema object; the default takes no arguments), as class attributes or in
    ``__init__``, and implement :meth:`call`. ``call`` receives the model's arguments as
    they were parsed, *unvalidated*: check them yourself, for instance with
    ``msgspec.convert(arguments, MyArgs)``, and raise :class:`ToolArgumentsError` (or
    :class:`~trurn.ToolError`) with a message for the model when they are wrong.

    ``timeout`` (seconds, or ``None`` for the agent's ``tool_timeout``; ``math.inf``
    for none at all) bounds each call: past it the call is cancelled and the model
    reads a ``"timeout"`` result. Override :meth:`preview` and :meth:`precheck` to
    describe a call and to allow, deny or ask about it before it runs.

    A name or timeout set as a class attribute is checked when the class is defined;
    every tool is checked again by :func:`tool_map`.
    """

    name: str
    description: str = ""
    # Shared default, never mutated here; subclasses replace it rather than edit it.
    parameters: dict[str, Any] = {"type": "object", "properties": {}}  # noqa: RUF012
    timeout: float | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _check_name(cls.__dict__["name"], cls.__qualname__)
        if "timeout" in cls.__dict__:
            check_timeout(cls.__dict__["timeout"], f"tool {cls.__qualname__}: timeout")

    @abstractmethod
    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        """Run the tool with the model's ``arguments``; return its result.

        ``arguments`` is a shallow copy of the call's parsed JSON object, unvalidated.
        The result becomes the text the model reads: a ``str`` as it is, ``None`` as
        ``""``, anything else as JSON (or ``str()`` if it is not JSON-encodable).
        Raise :class:`~trurn.ToolError` to fail with exactly your message.
        """

    def preview(self, arguments: dict[str, Any]) -> str | None:
        """A short text saying what this call would do, for approval prompts and UIs.

        Sync and called on the event loop, so keep it pure. ``arguments`` is
        unvalidated, as in :meth:`call`; raise :class:`ToolArgumentsError` to refuse
        them (the call then fails without running). Shown in ``tool_call`` and
        ``approval_request``, never to the model. The default gives none.
        """
        return None

    async def precheck(self, arguments: dict[str, Any]) -> Precheck | None:
        """Decide about this call before it runs: a :class:`~trurn.Precheck`.

        ``"allow"`` (or ``None``, the default) runs it unless the agent's
        ``require_approval`` asks; ``"deny"`` refuses it (the model reads the message
        and reasons as a ``"denied"`` result); ``"ask"`` asks a person whatever the
        agent's policy. Exceptions are reported like those of :meth:`call`.
        """
        return None

    def check_arguments(self, arguments: dict[str, Any]) -> None:  # noqa: B027 (optional)
        """Raise :class:`ToolArgumentsError` if ``arguments`` cannot be run, before a
        person is asked to approve the call. The default accepts anything (:meth:`call`
        still validates); :func:`tool` functions check them against their schema."""

    def spec(self) -> ToolSpec:
        """The tool as the model sees it."""
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'name', '<no name>')!r}>"


class FunctionTool(BaseTool, Generic[P, R]):
    """A tool made from a function by :func:`tool`.

    Calling it calls the function unchanged (so tests of the function still work);
    :meth:`call` validates the model's arguments against :attr:`arguments_type` and runs
    the function, awaited if it is async, in a worker thread if it is sync.
    :meth:`preview` and :meth:`precheck` validate the arguments too (so a call with bad
    arguments fails before anyone is asked to approve it) and then call the functions
    given to :func:`tool`, with the validated arguments as keyword arguments.
    """

    fn: Callable[P, R]
    """The decorated function."""
    arguments_type: type[msgspec.Struct]
    """The Struct type built from the signature; arguments are converted to it."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        preview: PreviewFunction | None = None,
        precheck: PrecheckFunction | None = None,
    ) -> None:
        if isinstance(fn, BaseTool):
            raise TypeError(f"{fn!r} is already a tool; apply @tool only once")
        if not callable(fn):
            raise TypeError(f"@tool needs a function, got {type(fn).__name__}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"{_describe(fn)} is a generator function; a tool must return its result"
            )
        target = fn.func if isinstance(fn, functools.partial) else fn
        if name is None:
            name = getattr(target, "__name__", None)
            if name is None:
                raise TypeError(f"{fn!r} has no __name__; pass @tool(name=...)")
        _check_name(name, _describe(fn))
        for what, given in (("preview", preview), ("precheck", precheck)):
            if given is not None and not callable(given):
                raise TypeError(f"tool {name!r}: {what} must be a function, not {given!r}")
        summary, param_docs = _parse_docstring(getattr(target, "__doc__", None))

        self.fn = fn
        self.name = name
        self.description = summary if description is None else description
        self.arguments_type, self._context_params, self._positional = _arguments_struct(
            fn, name, param_docs
        )
        self.parameters = _schema_of(self.arguments_type, name)
        self.timeout = check_timeout(timeout, f"tool {name!r}: timeout")
        self._preview = preview
        self._precheck = precheck
        self._is_async = _is_async(fn)
        self.__wrapped__ = fn
        self.__doc__ = getattr(target, "__doc__", None)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        """Validate ``arguments`` and run the function.

        Raises :class:`ToolArgumentsError` naming the offending argument (``$.city``)
        when they do not fit the schema, including arguments the schema does not have.
        A sync function runs in a worker thread; cancelling abandons that thread, which
        keeps running in the background until the function returns, its result lost.
        """
        kwargs = self._validate(arguments)
        for param in self._context_params:
            kwargs[param] = ctx
        args = [kwargs.pop(param) for param in self._positional]
        if self._is_async:
            return await cast(Callable[..., Awaitable[Any]], self.fn)(*args, **kwargs)
        return await trio.to_thread.run_sync(
            functools.partial(self.fn, *args, **kwargs), abandon_on_cancel=True
        )

    def preview(self, arguments: dict[str, Any]) -> str | None:
        """Validate ``arguments``, then call the ``preview`` function given to :func:`tool`
        (with none, there is nothing to validate for: :meth:`call` does it)."""
        if self._preview is None:
            return None
        return self._preview(**self._validate(arguments))

    async def precheck(self, arguments: dict[str, Any]) -> Precheck | None:
        """Validate ``arguments``, then call (and await, if async) the ``precheck`` function."""
        if self._precheck is None:
            await trio.lowlevel.checkpoint()
            return None
        verdict = self._precheck(**self._validate(arguments))
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return verdict

    def check_arguments(self, arguments: dict[str, Any]) -> None:
        """Raise :class:`ToolArgumentsError` if ``arguments`` do not fit the function."""
        self._validate(arguments)

    def _validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The model's arguments as keyword arguments of the function (without its
        :class:`ToolContext`); :class:`ToolArgumentsError` if they do not fit."""
        try:
            parsed = msgspec.convert(arguments, self.arguments_type, strict=True)
        except msgspec.ValidationError as exc:
            raise ToolArgumentsError(str(exc)) from exc
        return msgspec.structs.asdict(parsed)


@overload
def tool(
    fn: Callable[P, R],
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    preview: PreviewFunction | None = None,
    precheck: PrecheckFunction | None = None,
) -> FunctionTool[P, R]: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    preview: PreviewFunction | None = None,
    precheck: PrecheckFunction | None = None,
) -> Callable[[Callable[P, R]], FunctionTool[P, R]]: ...
def tool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    preview: PreviewFunction | None = None,
    precheck: PrecheckFunction | None = None,
) -> FunctionTool[P, R] | Callable[[Callable[P, R]], FunctionTool[P, R]]:
    """Make a tool of a sync or async function: ``@tool`` or ``@tool(name=..., ...)``.

    The arguments' JSON Schema comes from the type hints (anything ``msgspec`` can
    validate: Structs, lists, ``Literal``, ``Annotated[int, msgspec.Meta(ge=1)]``...);
    parameters with defaults are optional. A parameter annotated with
    :class:`ToolContext` is injected instead. The description is the docstring up to its
    first section (``Args:``, ``Returns:``, ``:param x:``...); the parameters'
    descriptions come from its ``Args:``/``Parameters`` section or ``:param x:`` fields.
    No docstring gives an empty description.

    ``timeout`` bounds each call in seconds (see :class:`BaseTool`). ``preview`` is a
    sync function returning a short text about a call, and ``precheck`` a sync or async
    function returning a :class:`~trurn.Precheck` (or ``None``); both get the validated
    arguments as keyword arguments, without the :class:`ToolContext`::

        @tool(preview=lambda path, text: f"write {len(text)} characters to {path}")
        async def write_file(path: str, text: str) -> str: ...

    Raises ``TypeError`` for a parameter without annotation, ``*args``/``**kwargs``, a
    type with no JSON Schema, or a ``preview``/``precheck`` that is not callable, and
    ``ValueError`` for a name the providers refuse (a lambda, for instance: pass
    ``name=``) or a timeout that is not more than 0.
    """
    make = functools.partial(
        FunctionTool,
        name=name,
        description=description,
        timeout=timeout,
        preview=preview,
        precheck=precheck,
    )
    if fn is None:
        return make
    return make(fn)


def tool_map(tools: Iterable[BaseTool | Callable[..., Any]]) -> dict[str, BaseTool]:
    """Index tools by name, making plain functions into tools with :func:`tool`.

    Raises ``ValueError`` for two tools with the same name, or a tool whose name,
    description or parameters the providers would refuse, and ``TypeError`` for anything
    that is neither a tool nor a function (a ``BaseTool`` subclass instead of an
    instance, for instance).
    """
    found: dict[str, BaseTool] = {}
    for item in tools:
        if isinstance(item, BaseTool):
            _check_tool(item)
            found_tool = item
        elif isinstance(item, type) and issubclass(item, BaseTool):
            raise TypeError(f"{item.__qualname__} is a tool class; pass an instance of it")
        elif callable(item):
            found_tool = tool(item)
        else:
            raise TypeError(f"not a tool or a function: {item!r}")
        if found_tool.name in found:
            raise ValueError(f"two tools are named {found_tool.name!r}; tool names must be unique")
        found[found_tool.name] = found_tool
    return found


async def run_tool_call(
    call: ToolCall,
    tools: Mapping[str, BaseTool],
    emit: Emit,
    record: Callable[[ToolMessage], None] = lambda result: None,
    *,
    approvals: Approvals | None = None,
    tool_timeout: float | None = None,
) -> ToolMessage:
    """Run one tool call and return its result as the model will read it.

    Emits ``tool_call`` first (with the tool's preview), then ``approval_request`` and
    ``approval_answered`` if approval is asked, then the tool's ``tool_output``\\ s and
    ``choice_request``\\ s, then ``error`` if it failed and ``tool_exit`` last, each with
    ``seq=0, turn_id=""`` for ``emit`` to stamp. ``record`` gets the result before
    ``tool_exit`` is published, so a cancel that lands while it is being announced
    cannot lose a result the tool already produced. A checkpoint on every path.

    - An unknown tool, arguments that are not JSON or do not fit the schema, and any
      ``Exception`` from the tool, its preview or its precheck give an ``"error"``
      result naming what went wrong (never a traceback).
    - ``approvals`` (the agent's) says whether a person must approve the call, and
      answers the tool's choices; without it a precheck's ``"ask"`` is a denial, since
      nobody could answer. A denial gives a
      ``"denied"`` result with the reason; an approver that fails, or a
      ``require_approval`` callable that raises, an ``"error"`` result: the call never
      runs unapproved. The approval wait has no deadline but the caller's.
    - The tool's ``timeout``, else ``tool_timeout``, bounds the tool's run (not the approval
      wait): past it the tool is cancelled and the result is ``"timeout"``. A sync tool
      is abandoned then: its thread runs on in the background until the function
      returns, and what it returns is lost.

    Cancellation propagates as it is, with no ``tool_exit``: the turn decides what a
    cancelled call leaves in the history (a sync tool's thread is abandoned likewise).
    """
    found = tools.get(call.name)
    preview, outcome = _preview(call, tools, found)
    await emit([events.ToolCallStarted(call=call, preview=preview)])
    if outcome is None:
        assert found is not None
        outcome = await _gate(call, found, emit, approvals, preview)
    if outcome is None:
        assert found is not None
        limit = found.timeout if found.timeout is not None else tool_timeout
        outcome = await _run(call, found, emit, approvals, limit)
    status, content, error_type = outcome
    result = ToolMessage(tool_call_id=call.id, name=call.name, content=content, status=status)
    record(result)
    closing: list[events.BaseEvent] = []
    if error_type is not None:
        closing.append(events.Error(message=content, error_type=error_type, tool_call_id=call.id))
    closing.append(events.ToolExit.of(result))
    await emit(closing)
    return result


_Outcome = tuple[ToolStatus, str, "str | None"]
"""How a call ended: its status, the content the model reads, and the ``error_type`` of
the ``error`` event to publish (``None``: no error event)."""


def _preview(
    call: ToolCall, tools: Mapping[str, BaseTool], found: BaseTool | None
) -> tuple[str | None, _Outcome | None]:
    """The call's preview, or why the call cannot run: an unknown tool, arguments that
    are not JSON, or a preview that raised (bad arguments, for a :func:`tool`)."""
    if found is None:
        available = ", ".join(sorted(tools)) or "none"
        return None, (
            "error",
            f"Unknown tool {call.name!r}. Available tools: {available}.",
            "UnknownTool",
        )
    if call.arguments_error is not None:
        content = (
            f"The arguments for tool {call.name!r} were not valid JSON "
            f"({call.arguments_error}). Received: {_excerpt(call.arguments_raw)}"
        )
        return None, ("error", content, "InvalidArguments")
    try:
        preview = found.preview(dict(call.arguments))
        if preview is not None and not isinstance(preview, str):
            raise TypeError(f"preview returned a {type(preview).__name__}, not a str")
    except Exception as exc:
        return None, _failure(call, exc)
    return preview, None


async def _gate(
    call: ToolCall,
    found: BaseTool,
    emit: Emit,
    approvals: Approvals | None,
    preview: str | None,
) -> _Outcome | None:
    """Run the precheck and, if it or the agent's policy asks, wait for approval.
    ``None`` lets the call run; anything else is why it does not."""
    try:
        precheck = await found.precheck(dict(call.arguments))
        if precheck is not None and not isinstance(precheck, Precheck):
            raise TypeError(f"precheck returned a {type(precheck).__name__}, not a Precheck")
    except Exception as exc:
        return _failure(call, exc)
    if precheck is not None and precheck.status == "deny":
        content = _refusal(f"Tool {call.name!r} refused this call", precheck.message)
        if precheck.reasons:
            content += " Reasons: " + "; ".join(precheck.reasons) + "."
        return "denied", content, None
    try:
        ask = (precheck is not None and precheck.status == "ask") or (
            approvals is not None and approvals.needs_approval(call)
        )
    except Exception as exc:
        content = f"Not run: the agent's require_approval failed ({type(exc).__name__})."
        return "error", content, "ApprovalPolicyError"
    if not ask:
        return None
    try:  # nobody is asked about a call that could not run anyway
        found.check_arguments(dict(call.arguments))
    except Exception as exc:
        return _failure(call, exc)
    if approvals is None:
        content = f"Not run: tool {call.name!r} asks for approval and nobody can give it."
        return "denied", content, None
    try:
        decision = await approvals.request_approval(emit, call, preview=preview, precheck=precheck)
    except ApprovalFailed as exc:
        return "error", f"Not run: {exc}.", "ApproverError"
    if decision.approved:
        return None
    return "denied", _refusal(f"The user denied this call to {call.name!r}", decision.reason), None


async def _run(
    call: ToolCall,
    found: BaseTool,
    emit: Emit,
    approvals: Approvals | None,
    limit: float | None,
) -> _Outcome:
    """Run the tool itself, within ``limit`` seconds."""
    ctx = ToolContext(call, emit, approvals)
    try:
        try:
            with trio.move_on_after(math.inf if limit is None else limit) as deadline:
                result = await found.call(dict(call.arguments), ctx)
        finally:
            ctx._closed = True
    except Exception as exc:
        return _failure(call, exc)
    if deadline.cancelled_caught:
        content = f"Timed out: tool {call.name!r} did not finish within {limit:g} seconds."
        return "timeout", content, "ToolTimeout"
    return "ok", _result_text(result), None


# --- pure helpers -------------------------------------------------------------------------


def _result_text(value: Any) -> str:
    """The text the model reads for a tool's return value; never raises."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return msgspec.json.encode(value).decode()
    except Exception:
        pass
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__} result>"


def _failure(call: ToolCall, exc: Exception) -> _Outcome:
    """How a call ends whose tool (or its preview, its precheck) raised ``exc``."""
    if isinstance(exc, ToolArgumentsError):
        return "error", f"Invalid arguments for tool {call.name!r}: {exc}", "ValidationError"
    if isinstance(exc, ToolError):
        return "error", str(exc) or type(exc).__name__, type(exc).__name__
    return "error", exception_text(exc), type(exc).__name__


def _refusal(what: str, reason: str | None) -> str:
    """``what``, then the reason if any, as one sentence."""
    if not reason:
        return f"{what}."
    return f"{what}: {reason}" if reason.endswith((".", "!", "?")) else f"{what}: {reason}."


def exception_text(exc: BaseException) -> str:
    """``Type: message`` (or the type alone), as tool and hook failures are reported."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _excerpt(raw: str) -> str:
    if len(raw) <= _EXCERPT_CHARS:
        return repr(raw)
    return f"{raw[:_EXCERPT_CHARS]!r} ... ({len(raw) - _EXCERPT_CHARS} more characters)"


def _describe(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _check_name(name: object, owner: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"tool {owner}: name must be a str, not {type(name).__name__}")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"tool {owner}: invalid name {name!r}; a tool name is 1 to 64 characters "
            "from a-z, A-Z, 0-9, '_' and '-'"
        )


def _check_tool(item: BaseTool) -> None:
    owner = type(item).__qualname__
    if not hasattr(item, "name"):
        raise ValueError(f"tool {owner} has no name; set the class attribute 'name'")
    _check_name(item.name, owner)
    if not isinstance(item.description, str):
        raise TypeError(f"tool {item.name!r}: description must be a str")
    check_timeout(item.timeout, f"tool {item.name!r}: timeout")
    parameters = item.parameters
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ValueError(
            f"tool {item.name!r}: parameters must be a JSON Schema object "
            f'({{"type": "object", ...}}), got {parameters!r}'
        )


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    # A callable object with an ``async def __call__``.
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(type(fn).__call__)


def _arguments_struct(
    fn: Callable[..., Any], tool_name: str, param_docs: Mapping[str, str]
) -> tuple[type[msgspec.Struct], list[str], list[str]]:
    """Build the arguments' Struct type from ``fn``'s signature.

    Returns the type, the names of the parameters that receive the :class:`ToolContext`,
    and the names of the positional-only parameters, in order.
    """
    try:
        signature = inspect.signature(fn, eval_str=True)
    except (NameError, SyntaxError) as exc:
        raise TypeError(
            f"tool {tool_name!r}: cannot resolve the type hints of {_describe(fn)}: {exc}"
        ) from exc
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    context_params: list[str] = []
    positional: list[str] = []
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            star = "*" if param.kind is param.VAR_POSITIONAL else "**"
            raise TypeError(
                f"tool {tool_name!r}: parameter {star}{param.name} is not supported; "
                "a tool's arguments must be named parameters"
            )
        if param.kind is param.POSITIONAL_ONLY:
            positional.append(param.name)
        annotation = param.annotation
        if annotation is param.empty:
            raise TypeError(
                f"tool {tool_name!r}: parameter {param.name!r} has no type annotation; "
                "annotate it so trurn can build the JSON Schema of the arguments"
            )
        if isinstance(annotation, type) and issubclass(annotation, ToolContext):
            context_params.append(param.name)
            continue
        if param.name in param_docs:
            annotation = _with_description(annotation, param_docs[param.name])
        if param.default is param.empty:
            fields.append((param.name, annotation))
        else:
            fields.append((param.name, annotation, _field_default(param.default)))
    try:
        struct = msgspec.defstruct(
            f"{tool_name}_arguments", fields, kw_only=True, forbid_unknown_fields=True
        )
    except TypeError as exc:
        raise TypeError(f"tool {tool_name!r}: {exc}") from exc
    return struct, context_params, positional


def _with_description(annotation: Any, description: str) -> Any:
    """``Annotated[annotation, Meta(description=...)]`` unless it already has one."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, msgspec.Meta) and meta.description is not None:
            return annotation
    return Annotated[annotation, msgspec.Meta(description=description)]


def _field_default(default: Any) -> Any:
    # msgspec refuses non-empty mutable defaults, which Python itself allows.
    if isinstance(default, (list, dict, set, bytearray)) and default:
        return msgspec.field(default_factory=functools.partial(copy.deepcopy, default))
    return default


def _schema_of(struct: type[msgspec.Struct], tool_name: str) -> dict[str, Any]:
    """The JSON Schema of ``struct``, with the references to nested Structs inlined."""
    prefix = "#/$defs/"
    try:
        (ref,), defs = msgspec.json.schema_components([struct], ref_template=prefix + "{name}")
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"tool {tool_name!r}: cannot build a JSON Schema of its arguments: {exc}"
        ) from exc
    defs = dict(defs)
    top = defs.pop(ref["$ref"].removeprefix(prefix))
    top.pop("title", None)
    needed: set[str] = set()
    schema = _inline(top, defs, prefix, frozenset(), needed)
    kept: dict[str, Any] = {}
    while needed - kept.keys():
        name = min(needed - kept.keys())
        kept[name] = _inline(defs[name], defs, prefix, frozenset({name}), needed)
    if kept:
        schema["$defs"] = dict(sorted(kept.items()))
    assert isinstance(schema, dict)
    return schema


# Keys whose values are data, not schemas: a "$ref" inside them is not a reference.
_DATA_KEYS = frozenset({"default", "const", "enum", "examples"})


def _inline(
    node: Any, defs: Mapping[str, Any], prefix: str, expanding: frozenset[str], needed: set[str]
) -> Any:
    """Copy ``node`` with each ``$ref`` replaced by its definition.

    A reference to a definition already being expanded (a recursive Struct) stays a
    reference, and its name is added to ``needed`` so the caller keeps it in ``$defs``.
    """
    if isinstance(node, list):
        return [_inline(item, defs, prefix, expanding, needed) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(prefix):
        name = ref.removeprefix(prefix)
        if name in expanding:
            needed.add(name)
            return dict(node)
        target = _inline(defs[name], defs, prefix, expanding | {name}, needed)
        rest = {key: value for key, value in node.items() if key != "$ref"}
        return {**target, **rest}
    return {
        key: value if key in _DATA_KEYS else _inline(value, defs, prefix, expanding, needed)
        for key, value in node.items()
    }


_SECTION_NAMES = frozenset(
    {
        "args",
        "arguments",
        "parameters",
        "params",
        "keyword args",
        "keyword arguments",
        "other parameters",
        "returns",
        "return",
        "yields",
        "yield",
        "raises",
        "examples",
        "example",
        "notes",
        "note",
        "see also",
        "warnings",
        "warning",
        "references",
        "attributes",
        "todo",
    }
)
_PARAM_SECTIONS = frozenset(
    {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"}
)
_SPHINX_FIELD = re.compile(r"^:(\w+)(?:\s+([^:]+?))?\s*:\s*(.*)$")
_SPHINX_PARAM_KINDS = frozenset({"param", "parameter", "arg", "argument", "key", "keyword"})
# "name: text", "name (type): text", "*name: text"; "name : type" in NumPy style.
_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*(?::\s*(.*))?$")


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a docstring into the tool's description and its parameters' descriptions.

    The description is the cleaned text before the first section (Google ``Args:``,
    NumPy ``Parameters`` underlined with dashes, or a Sphinx ``:field:``). Parameter
    descriptions come from Google/NumPy parameter sections and ``:param x:`` fields.
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, list[str]] = {}
    section: str | None = None  # None: still the description
    numpy_style = False
    entry_indent: int | None = None
    current: list[str] | None = None  # the parameter whose text continues
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        i += 1
        field = _SPHINX_FIELD.match(stripped)
        if field:
            section, current = "fields", None
            kind, arg, text = field.groups()
            if kind in _SPHINX_PARAM_KINDS and arg:
                current = params[arg.split()[-1]] = [text] if text else []
            continue
        header = stripped.lower()
        if header.endswith(":") and header[:-1].strip() in _SECTION_NAMES:
            section, numpy_style = header[:-1].strip(), False
            entry_indent = current = None
            continue
        if header in _SECTION_NAMES and i < len(lines) and re.fullmatch(r"-{3,}", lines[i].strip()):
            section, numpy_style = header, True
            entry_indent = current = None
            i += 1
            continue
        if section is None:
            description.append(line)
            continue
        if not stripped:
            continue
        if section == "fields":
            if current is not None:
                current.append(stripped)
            continue
        if section not in _PARAM_SECTIONS:
            continue
        if entry_indent is None:
            entry_indent = indent
        if indent < entry_indent:
            section = "other"
            continue
        entry = _ENTRY.match(stripped) if indent == entry_indent else None
        if entry:
            name, text = entry.groups()
            # In NumPy style the text after the colon is the type, not a description.
            current = params[name] = [] if numpy_style or not text else [text]
        elif current is not None:
            current.append(stripped)
    summary = "\n".join(description).strip()
    return summary, {name: " ".join(text) for name, text in params.items() if text}
