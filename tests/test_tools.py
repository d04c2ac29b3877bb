"""Tools: schemas from type hints, argument validation, and how one tool call runs."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
import pytest
import trio
import trio.testing

from trurn import events
from trurn._approvals import Precheck
from trurn._errors import ToolArgumentsError, ToolError
from trurn._messages import ToolCall
from trurn._tools import (
    BaseTool,
    FunctionTool,
    ToolContext,
    run_tool_call,
    tool,
    tool_map,
)
from trurn.providers import ToolSpec


class Point(msgspec.Struct):
    """A point on the map."""

    x: int
    y: int


class Node(msgspec.Struct):
    value: int
    children: list[Node] = []


class Recorder:
    """A fake emit: keeps every batch it is given."""

    def __init__(self) -> None:
        self.batches: list[list[events.BaseEvent]] = []

    async def __call__(self, batch: Sequence[events.BaseEvent]) -> None:
        self.batches.append(list(batch))
        await trio.lowlevel.checkpoint()

    @property
    def events(self) -> list[events.BaseEvent]:
        return [event for batch in self.batches for event in batch]

    @property
    def types(self) -> list[str]:
        return [type(event).__struct_config__.tag for event in self.events]  # type: ignore[misc]


def make_call(name: str, arguments: dict[str, Any] | None = None, **extra: Any) -> ToolCall:
    arguments = {} if arguments is None else arguments
    return ToolCall(
        id="call_1", name=name, arguments=arguments, arguments_raw=json.dumps(arguments), **extra
    )


async def run(
    tools: Sequence[Any], name: str, arguments: dict[str, Any] | None = None
) -> tuple[Any, Recorder]:
    recorder = Recorder()
    result = await run_tool_call(make_call(name, arguments), tool_map(tools), recorder)
    return result, recorder


# --- schemas ------------------------------------------------------------------------------


def test_schema_required_and_defaults() -> None:
    @tool
    def get_weather(city: str, units: str = "metric", days: int | None = None) -> str:
        return city

    assert get_weather.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "units": {"type": "string", "default": "metric"},
            "days": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
        },
        "required": ["city"],
        "additionalProperties": False,
    }


def test_schema_annotated_meta_constraints_pass_through() -> None:
    @tool
    def repeat(count: Annotated[int, msgspec.Meta(ge=1, le=10, description="How often")]) -> str:
        return "x" * count

    assert repeat.parameters["properties"]["count"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 10,
        "description": "How often",
    }


def test_schema_nested_struct_list_and_literal_are_inlined() -> None:
    @tool
    def draw(where: Point, path: list[Point], color: Literal["red", "blue"] = "red") -> None:
        pass

    props = draw.parameters["properties"]
    point = {
        "title": "Point",
        "description": "A point on the map.",
        "type": "object",
        "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
        "required": ["x", "y"],
    }
    assert props["where"] == point
    assert props["path"] == {"type": "array", "items": point}
    assert props["color"] == {"enum": ["blue", "red"], "default": "red"}
    assert "$defs" not in draw.parameters
    assert "$ref" not in json.dumps(draw.parameters)


def test_schema_recursive_struct_keeps_top_level_defs() -> None:
    @tool
    def tree(root: Node) -> None:
        pass

    schema = tree.parameters
    assert schema["properties"]["root"]["properties"]["children"]["items"] == {
        "$ref": "#/$defs/Node"
    }
    assert set(schema["$defs"]) == {"Node"}
    assert schema["$defs"]["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}


def test_tool_context_parameter_is_not_in_the_schema() -> None:
    @tool
    async def shout(ctx: ToolContext, text: str) -> str:
        return text

    assert list(shout.parameters["properties"]) == ["text"]
    assert shout.parameters["required"] == ["text"]


def test_mutable_default_is_allowed_and_copied() -> None:
    @tool
    def tags(names: list[str] = ["a", "b"]) -> list[str]:  # noqa: B006
        names.append("c")
        return names

    assert "names" not in tags.parameters.get("required", [])
    first = msgspec.convert({}, tags.arguments_type)
    second = msgspec.convert({}, tags.arguments_type)
    assert first.names == ["a", "b"]  # type: ignore[attr-defined]
    assert first.names is not second.names  # type: ignore[attr-defined]


# --- descriptions -------------------------------------------------------------------------


def test_description_and_parameter_docs_from_google_docstring() -> None:
    @tool
    def get_weather(city: str, units: str = "metric") -> str:
        """Get the current weather.

        Uses the national service.

        Args:
            city: The city name,
                in English.
            units (str): "metric" or "imperial".

        Returns:
            A short report.
        """
        return city

    assert get_weather.description == "Get the current weather.\n\nUses the national service."
    props = get_weather.parameters["properties"]
    assert props["city"]["description"] == "The city name, in English."
    assert props["units"]["description"] == '"metric" or "imperial".'


def test_parameter_docs_from_sphinx_and_numpy_docstrings() -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers.

        :param int a: The first
            number.
        :param b: The second.
        :returns: The sum.
        """
        return a + b

    @tool
    def sub(a: int, b: int) -> int:
        """Subtract.

        Parameters
        ----------
        a : int
            Minuend.
        b : int
            Subtrahend.
        """
        return a - b

    assert add.description == "Add two numbers."
    assert add.parameters["properties"]["a"]["description"] == "The first number."
    assert add.parameters["properties"]["b"]["description"] == "The second."
    assert sub.description == "Subtract."
    assert sub.parameters["properties"]["a"]["description"] == "Minuend."
    assert sub.parameters["properties"]["b"]["description"] == "Subtrahend."


def test_meta_description_wins_over_docstring() -> None:
    @tool
    def f(n: Annotated[int, msgspec.Meta(description="from Meta")]) -> int:
        """F.

        Args:
            n: from docstring
        """
        return n

    assert f.parameters["properties"]["n"]["description"] == "from Meta"


def test_no_docstring_gives_empty_description_and_overrides_apply() -> None:
    def plain(x: int) -> int:
        return x

    assert tool(plain).description == ""
    custom = tool(name="other-name", description="Custom.")(plain)
    assert (custom.name, custom.description) == ("other-name", "Custom.")
    assert custom.spec() == ToolSpec("other-name", "Custom.", custom.parameters)


# --- bad tool definitions -----------------------------------------------------------------


def test_unannotated_parameter_is_named_in_the_error() -> None:
    def f(city, days: int) -> str:  # type: ignore[no-untyped-def]
        return ""

    with pytest.raises(TypeError, match="parameter 'city' has no type annotation"):
        tool(f)


@pytest.mark.parametrize("signature", ["*args: int", "**kwargs: int"])
def test_star_parameters_are_refused(signature: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def f(x: int, {signature}) -> None: pass", namespace)
    star = signature.split(":")[0]
    with pytest.raises(TypeError, match=rf"parameter \{star}"):
        tool(namespace["f"])


def test_type_without_json_schema_is_refused() -> None:
    def f(lock: threading.Lock) -> None:
        pass

    with pytest.raises(TypeError, match="tool 'f': cannot build a JSON Schema"):
        tool(f)


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="invalid name '<lambda>'"):
        tool(lambda x: x)
    with pytest.raises(ValueError, match="invalid name 'has space'"):
        tool(name="has space")(test_bad_names_are_refused)
    with pytest.raises(ValueError, match="invalid name"):
        tool(name="x" * 65)(test_bad_names_are_refused)
    assert tool(name="x" * 64)(test_bad_names_are_refused).name == "x" * 64


def test_generator_and_double_decoration_are_refused() -> None:
    def gen(x: int) -> Any:
        yield x

    with pytest.raises(TypeError, match="generator function"):
        tool(gen)

    @tool
    def once(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="already a tool"):
        tool(once)


# --- running tool calls -------------------------------------------------------------------


async def test_sync_tool_runs_in_a_worker_thread() -> None:
    @tool
    def where(label: str) -> str:
        return f"{label}:{threading.get_ident()}"

    result, recorder = await run([where], "where", {"label": "t"})
    assert result.status == "ok"
    label, ident = result.content.split(":")
    assert label == "t"
    assert int(ident) != threading.get_ident()
    assert recorder.types == ["tool_call", "tool_exit"]


async def test_async_tool_is_awaited_in_the_trio_thread() -> None:
    @tool
    async def where() -> int:
        await trio.lowlevel.checkpoint()
        return threading.get_ident()

    result, _ = await run([where], "where")
    assert result.content == str(threading.get_ident())


async def test_decorated_function_is_still_callable() -> None:
    @tool
    def double(x: int) -> int:
        return 2 * x

    @tool
    async def adouble(x: int) -> int:
        return 2 * x

    assert isinstance(double, FunctionTool)
    assert double(4) == 8
    assert await adouble(5) == 10


async def test_validation_error_names_the_path() -> None:
    @tool
    def move(to: Point, steps: Annotated[int, msgspec.Meta(ge=1)] = 1) -> str:
        return "moved"

    result, recorder = await run([move], "move", {"to": {"x": 1, "y": "2"}})
    assert result.status == "error"
    assert result.content == (
        "Invalid arguments for tool 'move': Expected `int`, got `str` - at `$.to.y`"
    )
    result, recorder = await run([move], "move", {"to": {"x": 1, "y": 2}, "steps": 0})
    assert "`$.steps`" in result.content
    assert ">= 1" in result.content
    result, recorder = await run([move], "move", {})
    assert "missing required field `to`" in result.content
    error = recorder.events[1]
    assert isinstance(error, events.Error)
    assert (error.error_type, error.tool_call_id, error.message) == (
        "ValidationError",
        "call_1",
        result.content,
    )


async def test_types_are_strict_except_int_to_float() -> None:
    @tool
    def scale(factor: float, times: int) -> float:
        return factor * times

    result, _ = await run([scale], "scale", {"factor": 2, "times": 3})
    assert (result.status, result.content) == ("ok", "6.0")
    result, _ = await run([scale], "scale", {"factor": 2, "times": "3"})
    assert result.status == "error"
    assert "`$.times`" in result.content


async def test_unknown_argument_is_rejected_by_name() -> None:
    @tool
    def greet(name: str) -> str:
        return f"hi {name}"

    result, _ = await run([greet], "greet", {"name": "Ada", "mood": "happy"})
    assert result.status == "error"
    assert "unknown field `mood`" in result.content


async def test_model_cannot_set_the_context_parameter() -> None:
    seen: list[object] = []

    @tool
    async def probe(ctx: ToolContext) -> str:
        seen.append(ctx)
        return "ok"

    result, _ = await run([probe], "probe", {"ctx": "forged"})
    assert result.status == "error"
    assert "unknown field `ctx`" in result.content
    assert seen == []


async def test_unknown_tool_lists_available_tools() -> None:
    def zeta(x: int) -> int:
        return x

    def alpha(x: int) -> int:
        return x

    result, recorder = await run([zeta, alpha], "gamma")
    assert result.status == "error"
    assert result.name == "gamma"
    assert result.content == "Unknown tool 'gamma'. Available tools: alpha, zeta."
    assert recorder.types == ["tool_call", "error", "tool_exit"]
    error = recorder.events[1]
    assert isinstance(error, events.Error)
    assert error.error_type == "UnknownTool"
    assert error.tool_call_id == "call_1"

    result, _ = await run([], "gamma")
    assert result.content == "Unknown tool 'gamma'. Available tools: none."


async def test_arguments_that_were_not_json() -> None:
    ran: list[bool] = []

    @tool
    def f(x: int) -> int:
        ran.append(True)
        return x

    call = ToolCall(
        id="c9",
        name="f",
        arguments={},
        arguments_raw='{"x": 1',
        arguments_error="unexpected end of data",
    )
    recorder = Recorder()
    result = await run_tool_call(call, tool_map([f]), recorder)
    assert result.status == "error"
    assert "not valid JSON" in result.content
    assert "unexpected end of data" in result.content
    assert "'{\"x\": 1'" in result.content
    assert ran == []
    error = recorder.events[1]
    assert isinstance(error, events.Error)
    assert (error.error_type, error.tool_call_id) == ("InvalidArguments", "c9")

    long_raw = "{" + "a" * 500
    call = ToolCall(id="c", name="f", arguments_raw=long_raw, arguments_error="bad")
    result = await run_tool_call(call, tool_map([f]), Recorder())
    assert "a" * 199 in result.content
    assert "a" * 250 not in result.content
    assert "(301 more characters)" in result.content


async def test_tool_error_message_is_the_content() -> None:
    @tool
    async def fail() -> str:
        raise ToolError("The city is not known; try a larger one.")

    result, recorder = await run([fail], "fail")
    assert (result.status, result.content) == ("error", "The city is not known; try a larger one.")
    assert recorder.types == ["tool_call", "error", "tool_exit"]
    assert recorder.events[1] == events.Error(
        message=result.content, error_type="ToolError", tool_call_id="call_1"
    )


async def test_other_exceptions_give_type_and_message_without_traceback() -> None:
    @tool
    def crash(n: int) -> float:
        return 1 / n

    result, recorder = await run([crash], "crash", {"n": 0})
    assert (result.status, result.content) == ("error", "ZeroDivisionError: division by zero")
    assert "Traceback" not in result.content
    error = recorder.events[1]
    assert isinstance(error, events.Error)
    assert error.error_type == "ZeroDivisionError"
    exit_event = recorder.events[2]
    assert isinstance(exit_event, events.ToolExit)
    assert (exit_event.status, exit_event.content) == ("error", result.content)


async def test_base_exceptions_that_are_not_exceptions_propagate() -> None:
    class Stop(BaseException):
        pass

    @tool
    async def halt() -> None:
        raise Stop

    recorder = Recorder()
    with pytest.raises(Stop):
        await run_tool_call(make_call("halt"), tool_map([halt]), recorder)
    assert recorder.types == ["tool_call"]


class Unencodable:
    def __str__(self) -> str:
        return "<custom object>"


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    ("value", "content"),
    [
        ("plain text", "plain text"),
        (None, ""),
        ({"temp": 21.5, "sky": ["sun"]}, '{"temp":21.5,"sky":["sun"]}'),
        (Point(1, 2), '{"x":1,"y":2}'),
        (42, "42"),
        (Unencodable(), "<custom object>"),
        (Unprintable(), "<unprintable Unprintable result>"),
    ],
)
async def test_result_becomes_text(value: object, content: str) -> None:
    @tool
    async def give() -> object:
        return value

    result, recorder = await run([give], "give")
    assert (result.status, result.content) == ("ok", content)
    assert recorder.events[-1] == events.ToolExit(
        tool_call_id="call_1", name="give", status="ok", content=content
    )


async def test_events_in_order_with_output_and_unstamped() -> None:
    @tool
    async def work(ctx: ToolContext, steps: int) -> str:
        assert ctx.call.arguments == {"steps": steps}
        for i in range(steps):
            await ctx.output(f"step {i}")
        await ctx.output("warning", stream="stderr")
        raise ValueError("gave up")

    result, recorder = await run([work], "work", {"steps": 2})
    assert recorder.types == [
        "tool_call",
        "tool_output",
        "tool_output",
        "tool_output",
        "error",
        "tool_exit",
    ]
    started = recorder.events[0]
    assert isinstance(started, events.ToolCallStarted)
    assert started.call == make_call("work", {"steps": 2})
    outputs = recorder.events[1:4]
    assert outputs == [
        events.ToolOutput(tool_call_id="call_1", text="step 0"),
        events.ToolOutput(tool_call_id="call_1", text="step 1"),
        events.ToolOutput(tool_call_id="call_1", text="warning", stream="stderr"),
    ]
    assert all(event.seq == 0 and event.turn_id == "" for event in recorder.events)
    assert result.content == "ValueError: gave up"


async def test_sync_tool_streams_output_through_from_thread() -> None:
    @tool
    def work(ctx: ToolContext) -> str:
        trio.from_thread.run(ctx.output, "from a thread")
        return "done"

    result, recorder = await run([work], "work")
    assert result.content == "done"
    assert recorder.events[1] == events.ToolOutput(tool_call_id="call_1", text="from a thread")


async def test_context_output_after_the_call_ended_is_refused() -> None:
    kept: list[ToolContext] = []

    @tool
    async def leak(ctx: ToolContext) -> None:
        kept.append(ctx)

    await run([leak], "leak")
    with pytest.raises(RuntimeError, match="has ended"):
        await kept[0].output("too late")


async def test_positional_only_parameters_and_context_are_passed() -> None:
    @tool
    async def pos(a: int, ctx: ToolContext, /, b: int = 5) -> str:
        return f"{a},{b},{ctx.call.id}"

    result, _ = await run([pos], "pos", {"a": 1})
    assert result.content == "1,5,call_1"


# --- explicit tools -----------------------------------------------------------------------


class Echo(BaseTool):
    name = "echo"
    description = "Echo the text back."
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    }

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        if not isinstance(arguments.get("text"), str):
            raise ToolArgumentsError("`text` must be a string")
        await ctx.output("echoing")
        return {"echo": arguments["text"], "call": ctx.call.id}


async def test_explicit_tool() -> None:
    echo = Echo()
    assert echo.spec() == ToolSpec("echo", "Echo the text back.", Echo.parameters)
    result, recorder = await run([echo], "echo", {"text": "hi"})
    assert (result.status, result.content) == ("ok", '{"echo":"hi","call":"call_1"}')
    assert recorder.types == ["tool_call", "tool_output", "tool_exit"]

    result, recorder = await run([echo], "echo", {"text": 3})
    assert result.content == "Invalid arguments for tool 'echo': `text` must be a string"
    error = recorder.events[1]
    assert isinstance(error, events.Error)
    assert error.error_type == "ValidationError"


async def test_explicit_tool_gets_a_copy_of_the_arguments() -> None:
    class Mutate(BaseTool):
        name = "mutate"

        async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
            arguments["added"] = True
            return arguments

    call = make_call("mutate", {"a": 1})
    result = await run_tool_call(call, tool_map([Mutate()]), Recorder())
    assert result.content == '{"a":1,"added":true}'
    assert call.arguments == {"a": 1}


def test_explicit_tool_default_parameters() -> None:
    class Now(BaseTool):
        name = "now"

        async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
            return 0

    assert Now().spec() == ToolSpec("now", "", {"type": "object", "properties": {}})


def test_explicit_tool_with_bad_name_fails_at_class_definition() -> None:
    with pytest.raises(ValueError, match=r"tool .*Bad: invalid name 'no spaces allowed'"):

        class Bad(BaseTool):
            name = "no spaces allowed"

            async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
                return None


def test_explicit_tool_checked_at_registration() -> None:
    class Nameless(BaseTool):
        async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
            return None

    with pytest.raises(ValueError, match="Nameless has no name"):
        tool_map([Nameless()])

    late = Nameless()
    late.name = ""
    with pytest.raises(ValueError, match="invalid name ''"):
        tool_map([late])

    odd = Nameless()
    odd.name = "odd"
    odd.parameters = {"type": "array"}
    with pytest.raises(ValueError, match="'odd': parameters must be a JSON Schema object"):
        tool_map([odd])


def test_base_tool_is_abstract() -> None:
    with pytest.raises(TypeError):
        BaseTool()  # type: ignore[abstract]


# --- tool_map -----------------------------------------------------------------------------


def test_tool_map_wraps_functions_and_keeps_order() -> None:
    def b_tool(x: int) -> int:
        return x

    tools = tool_map([Echo(), b_tool])
    assert list(tools) == ["echo", "b_tool"]
    assert isinstance(tools["b_tool"], FunctionTool)
    assert isinstance(tools["echo"], Echo)


def test_tool_map_refuses_duplicates_by_name() -> None:
    def echo(text: str) -> str:
        return text

    with pytest.raises(ValueError, match="two tools are named 'echo'"):
        tool_map([Echo(), echo])


def test_tool_map_refuses_non_tools() -> None:
    with pytest.raises(TypeError, match="Echo is a tool class; pass an instance"):
        tool_map([Echo])
    with pytest.raises(TypeError, match="not a tool or a function: 42"):
        tool_map([42])  # type: ignore[list-item]


# --- cancellation -------------------------------------------------------------------------


async def test_hanging_async_tool_is_cancelled_with_its_scope(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @tool
    async def hang() -> str:
        await trio.sleep_forever()
        return "never"

    recorder = Recorder()
    start = trio.current_time()
    with trio.move_on_after(30) as scope:
        await run_tool_call(make_call("hang"), tool_map([hang]), recorder)
    assert scope.cancelled_caught
    assert trio.current_time() - start == 30
    # Cancellation belongs to the turn: no tool_exit, no error event.
    assert recorder.types == ["tool_call"]


async def test_blocked_sync_tool_is_abandoned_on_cancel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    @tool
    def block() -> str:
        started.set()
        release.wait(10)
        finished.set()
        return "late"

    recorder = Recorder()
    start = trio.current_time()
    with trio.move_on_after(5) as scope:
        await run_tool_call(make_call("block"), tool_map([block]), recorder)
    assert scope.cancelled_caught
    assert trio.current_time() - start == 5
    assert not finished.is_set()
    assert recorder.types == ["tool_call"]
    # Let the abandoned thread end so it does not outlive the test.
    release.set()
    assert await trio.to_thread.run_sync(finished.wait, 10)
    assert started.is_set()


# --- previews, prechecks, choices and timeouts at the call level ----------------------------


async def test_preview_goes_into_the_tool_call_event() -> None:
    @tool(preview=lambda city, days=1: f"weather for {city}, {days} days")
    async def forecast(city: str, days: int = 3) -> str:
        return "sunny"

    result, recorder = await run([forecast], "forecast", {"city": "Oslo"})
    assert result.content == "sunny"
    started = recorder.events[0]
    assert isinstance(started, events.ToolCallStarted)
    # The preview gets the validated arguments, defaults filled in.
    assert started.preview == "weather for Oslo, 3 days"


@pytest.mark.parametrize(
    ("preview", "content", "error_type"),
    [
        (lambda: 1 / 0, "ZeroDivisionError: division by zero", "ZeroDivisionError"),
        (lambda: 42, "TypeError: preview returned a int, not a str", "TypeError"),
        (lambda: _raise(ToolError("cannot describe it")), "cannot describe it", "ToolError"),
    ],
)
async def test_a_failing_preview_fails_the_call_without_running_it(
    preview: Any, content: str, error_type: str
) -> None:
    ran: list[bool] = []

    @tool(preview=preview)
    async def act() -> str:
        ran.append(True)
        return "done"

    result, recorder = await run([act], "act")
    assert (result.status, result.content) == ("error", content)
    assert ran == []
    assert recorder.types == ["tool_call", "error", "tool_exit"]
    started, error = recorder.events[:2]
    assert isinstance(started, events.ToolCallStarted)
    assert started.preview is None
    assert isinstance(error, events.Error)
    assert error.error_type == error_type


def _raise(exc: Exception) -> Any:
    raise exc


async def test_preview_with_bad_arguments_is_a_validation_error() -> None:
    @tool(preview=lambda n: f"{n} times")
    async def repeat(n: int) -> str:
        return "x" * n

    result, recorder = await run([repeat], "repeat", {"n": "three"})
    assert result.content.startswith("Invalid arguments for tool 'repeat': Expected `int`")
    assert recorder.types == ["tool_call", "error", "tool_exit"]


async def test_precheck_results_at_the_call_level() -> None:
    class Guarded(BaseTool):
        name = "guarded"
        verdict: Any = None

        async def precheck(self, arguments: dict[str, Any]) -> Precheck | None:
            if isinstance(self.verdict, Exception):
                raise self.verdict
            return self.verdict  # type: ignore[no-any-return]

        async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
            return "ran"

    guarded = Guarded()
    guarded.verdict = Precheck(status="deny")
    result, recorder = await run([guarded], "guarded")
    assert (result.status, result.content) == ("denied", "Tool 'guarded' refused this call.")
    assert recorder.types == ["tool_call", "tool_exit"]

    guarded.verdict = "deny"
    result, _ = await run([guarded], "guarded")
    assert (result.status, result.content) == (
        "error",
        "TypeError: precheck returned a str, not a Precheck",
    )

    guarded.verdict = ToolError("the disk is full")
    result, _ = await run([guarded], "guarded")
    assert (result.status, result.content) == ("error", "the disk is full")

    guarded.verdict = Precheck(status="allow", message="fine")
    result, _ = await run([guarded], "guarded")
    assert (result.status, result.content) == ("ok", "ran")

    # Without an agent nobody can be asked: "ask" fails closed.
    guarded.verdict = Precheck(status="ask")
    result, recorder = await run([guarded], "guarded")
    assert (result.status, result.content) == (
        "denied",
        "Not run: tool 'guarded' asks for approval and nobody can give it.",
    )
    assert recorder.types == ["tool_call", "tool_exit"]


def test_preview_and_precheck_must_be_callables() -> None:
    with pytest.raises(TypeError, match="tool 'f': preview must be a function, not 'text'"):

        @tool(preview="text")  # type: ignore[arg-type]
        async def f() -> None: ...

    with pytest.raises(TypeError, match="tool 'g': precheck must be a function"):

        @tool(precheck=Precheck(status="allow"))  # type: ignore[arg-type]
        async def g() -> None: ...


def test_tool_map_checks_a_timeout_set_late() -> None:
    late = Echo()
    late.timeout = -3
    with pytest.raises(ValueError, match="tool 'echo': timeout must be more than 0 seconds"):
        tool_map([late])


async def test_choose_needs_an_agent_and_a_running_call() -> None:
    kept: list[ToolContext] = []

    @tool
    async def ask(ctx: ToolContext) -> str:
        kept.append(ctx)
        return await ctx.choose("?", ["a", "b"])

    result, _ = await run([ask], "ask")
    assert result.status == "error"
    assert "run without an agent, so nobody can answer a choice" in result.content
    with pytest.raises(RuntimeError, match=r"has ended; ToolContext.choose can only be used"):
        await kept[0].choose("?", ["a"])


async def test_run_tool_call_timeout(autojump_clock: trio.testing.MockClock) -> None:
    @tool
    async def nap(seconds: float) -> str:
        await trio.sleep(seconds)
        return "rested"

    recorder = Recorder()
    call = make_call("nap", {"seconds": 10})
    result = await run_tool_call(call, tool_map([nap]), recorder, tool_timeout=2.5)
    assert (result.status, result.content) == (
        "timeout",
        "Timed out: tool 'nap' did not finish within 2.5 seconds.",
    )
    assert trio.current_time() == 2.5
    assert recorder.types == ["tool_call", "error", "tool_exit"]

    call = make_call("nap", {"seconds": 1})
    result = await run_tool_call(call, tool_map([nap]), Recorder(), tool_timeout=2.5)
    assert result.status == "ok"
