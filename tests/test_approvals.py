"""Approvals, choices and per-tool timeouts, through a whole turn on the fake provider."""

from __future__ import annotations

import math
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from fakes import FakeProvider, text_reply, tool_reply

import trurn
from trurn import _approvals, events
from trurn._approvals import ApprovalDecision, Approvals, Precheck, check_policy, check_timeout
from trurn._errors import (
    InvalidChoiceError,
    RequestAnsweredError,
    RequestError,
    TrurnError,
    UnknownRequestError,
)
from trurn._messages import ToolCall, ToolMessage
from trurn._tools import BaseTool, ToolContext, tool

ran: list[str] = []


@tool(preview=lambda path, text: f"write {len(text)} characters to {path}")
async def write_file(path: str, text: str) -> str:
    """Write text to a file."""
    ran.append(f"write {path}")
    return f"wrote {path}"


@tool
async def read_file(path: str) -> str:
    """Read a file."""
    ran.append(f"read {path}")
    return f"contents of {path}"


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    ran.clear()


def write_call(call_id: str = "c1", path: str = "notes.txt") -> tuple[str, str, str]:
    return (call_id, "write_file", msgspec.json.encode({"path": path, "text": "hello"}).decode())


def tags(seen: Sequence[events.BaseEvent]) -> list[str]:
    return [type(e).__struct_config__.tag for e in seen]  # type: ignore[misc]


def tool_results(provider: FakeProvider, request: int = 1) -> list[ToolMessage]:
    return [m for m in provider.requests[request].messages if isinstance(m, ToolMessage)]


def of_type(seen: Sequence[events.BaseEvent], kind: type[Any]) -> list[Any]:
    return [e for e in seen if isinstance(e, kind)]


async def run_with_ui(
    agent: trurn.Agent,
    ui: Callable[[events.Event], Awaitable[None] | None],
    message: str = "go",
    context: trurn.Context | None = None,
) -> tuple[trurn.TurnResult, list[events.Event]]:
    """Run a turn while a UI task reads the events and may answer requests."""
    seen: list[events.Event] = []

    async def read(stream: trio.MemoryReceiveChannel[events.Event]) -> None:
        async for event in stream:
            seen.append(event)
            outcome = ui(event)
            if outcome is not None:
                await outcome

    # A guard, not a deadline under test: a UI that fails to answer fails the test.
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, agent.subscribe() as stream:
            nursery.start_soon(read, stream)
            result = await agent.run_turn(context or trurn.Context(), message)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    return result, seen


# --- approvals through a turn --------------------------------------------------------------


async def test_approver_approves_and_the_tool_runs() -> None:
    asked: list[events.ApprovalRequest] = []

    async def approver(request: events.ApprovalRequest) -> bool:
        asked.append(request)
        await trio.lowlevel.checkpoint()
        return True

    provider = FakeProvider([tool_reply(write_call()), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[write_file], require_approval=True, approver=approver)
    seen: list[events.Event] = []
    result = await agent.run_turn(trurn.Context(), "write it", on_event=seen.append)

    assert result.text == "Done."
    assert ran == ["write notes.txt"]
    assert tool_results(provider)[0].status == "ok"
    calls = tags(seen)
    i = calls.index("tool_call")
    assert calls[i : i + 4] == ["tool_call", "approval_request", "approval_answered", "tool_exit"]
    (request,) = asked
    assert request.call.name == "write_file"
    assert request.call.arguments == {"path": "notes.txt", "text": "hello"}
    assert request.preview == "write 5 characters to notes.txt"
    assert request.seq > 0
    assert request.turn_id == result.turn_id
    (started,) = of_type(seen, events.ToolCallStarted)
    assert started.preview == request.preview
    (answered,) = of_type(seen, events.ApprovalAnswered)
    assert (answered.request_id, answered.approved, answered.by) == (
        request.request_id,
        True,
        "approver",
    )
    assert answered.tool_call_id == "c1"
    # Plain data: the request and its answer survive JSON.
    assert events.decode(events.encode(request)) == request
    assert events.decode(events.encode(answered)) == answered


async def test_denial_is_a_result_the_model_reads_and_the_turn_goes_on() -> None:
    def approver(request: events.ApprovalRequest) -> ApprovalDecision:  # sync works too
        return ApprovalDecision(False, "not on a Friday")

    provider = FakeProvider([tool_reply(write_call()), text_reply("OK, I won't.")])
    agent = trurn.Agent(provider, tools=[write_file], require_approval=True, approver=approver)
    seen: list[events.Event] = []
    result = await agent.run_turn(trurn.Context(), "write it", on_event=seen.append)

    assert ran == []
    (denied,) = tool_results(provider)
    assert denied.status == "denied"
    assert denied.content == "The user denied this call to 'write_file': not on a Friday."
    assert result.stop_reason == "completed"
    assert tags(seen)[-2:] == ["assistant_final", "turn_finished"]
    (answered,) = of_type(seen, events.ApprovalAnswered)
    assert (answered.approved, answered.reason) == (False, "not on a Friday")
    assert of_type(seen, events.Error) == []  # a denial is not an error


async def test_ui_answers_with_respond_and_late_answers_get_clear_errors() -> None:
    provider = FakeProvider([tool_reply(write_call()), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[write_file], require_approval=True)
    errors: list[Exception] = []

    def ui(event: events.Event) -> None:
        if isinstance(event, events.ApprovalRequest):
            assert agent.pending_requests() == [event]
            agent.respond(event.request_id, False, reason="use the other file")
            for again in (True, False):
                try:
                    agent.respond(event.request_id, again)
                except TrurnError as exc:
                    errors.append(exc)

    result, seen = await run_with_ui(agent, ui)
    assert tool_results(provider)[0].content.endswith(": use the other file.")
    assert [type(e) for e in errors] == [RequestAnsweredError, RequestAnsweredError]
    assert "already answered (by respond)" in str(errors[0])
    assert isinstance(errors[0], RequestError)
    (request,) = of_type(seen, events.ApprovalRequest)
    assert errors[0].request_id == request.request_id  # type: ignore[attr-defined]
    # After the turn, the answered request is still known as answered.
    with pytest.raises(RequestAnsweredError):
        agent.respond(request.request_id, True)
    with pytest.raises(UnknownRequestError, match="no request 'appr_nope' is open"):
        agent.respond("appr_nope", True)
    assert agent.pending_requests() == []
    assert result.stop_reason == "completed"


async def test_first_answer_wins_ui_before_a_slow_approver() -> None:
    approver_cancelled = trio.Event()

    async def slow_approver(request: events.ApprovalRequest) -> bool:
        try:
            await trio.sleep_forever()
        finally:
            approver_cancelled.set()
        raise AssertionError("unreachable")

    provider = FakeProvider([tool_reply(write_call()), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[write_file], require_approval=True, approver=slow_approver)

    def ui(event: events.Event) -> None:
        if isinstance(event, events.ApprovalRequest):
            agent.respond(event.request_id, True)

    _, seen = await run_with_ui(agent, ui)
    assert approver_cancelled.is_set()  # the loser is cancelled, not left running
    assert ran == ["write notes.txt"]
    (answered,) = of_type(seen, events.ApprovalAnswered)
    assert answered.by == "respond"


async def test_first_answer_wins_approver_before_the_ui() -> None:
    provider = FakeProvider([tool_reply(write_call()), text_reply("Done.")])
    agent = trurn.Agent(
        provider, tools=[write_file], require_approval=True, approver=lambda request: False
    )
    late: list[Exception] = []

    async def ui(event: events.Event) -> None:
        if isinstance(event, events.ApprovalRequest):
            await trio.testing.wait_all_tasks_blocked()  # let the approver answer first
            with pytest.raises(RequestAnsweredError, match=r"already answered \(by approver\)"):
                agent.respond(event.request_id, True)
            late.append(RequestAnsweredError("seen", request_id=event.request_id))

    await run_with_ui(agent, ui)
    assert len(late) == 1
    assert tool_results(provider)[0].status == "denied"
    assert ran == []


async def test_an_answer_given_while_the_request_is_published_skips_the_approver() -> None:
    called: list[str] = []

    def approver(request: events.ApprovalRequest) -> bool:
        called.append(request.request_id)
        return False

    provider = FakeProvider([tool_reply(write_call()), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[write_file], require_approval=True, approver=approver)
    seen: list[events.Event] = []

    def on_event(event: events.Event) -> None:
        seen.append(event)
        if isinstance(event, events.ApprovalRequest):
            agent.respond(event.request_id, True)  # answered during its own publication

    await agent.run_turn(trurn.Context(), "go", on_event=on_event)
    assert called == []
    assert ran == ["write notes.txt"]
    (answered,) = of_type(seen, events.ApprovalAnswered)
    assert answered.by == "respond"


async def test_unknown_tools_and_bad_json_fail_before_anyone_is_asked() -> None:
    provider = FakeProvider(
        [
            tool_reply(("c1", "no_such_tool", "{}"), ("c2", "write_file", '{"path": ')),
            text_reply("Done."),
        ]
    )
    agent = trurn.Agent(
        provider, tools=[write_file], require_approval=True, approver=lambda r: True
    )
    seen: list[events.Event] = []
    await agent.run_turn(trurn.Context(), "go", on_event=seen.append)
    assert of_type(seen, events.ApprovalRequest) == []
    assert [m.status for m in tool_results(provider)] == ["error", "error"]
    assert ran == []


@pytest.mark.parametrize(
    ("approver", "failure"),
    [
        (lambda request: 1 / 0, "the approver raised ZeroDivisionError"),
        (lambda request: "yes", "the approver returned a str, not a bool or an ApprovalDecision"),
        (lambda request: None, "the approver returned a NoneType"),
    ],
    ids=["raises", "returns-str", "returns-none"],
)
async def test_a_failing_approver_denies_with_an_error_and_the_turn_goes_on(
    approver: Any, failure: str
) -> None:
    provider = FakeProvider([tool_reply(write_call()), text_reply("Could not write.")])
    agent = trurn.Agent(provider, tools=[write_file], require_approval=True, approver=approver)
    seen: list[events.Event] = []
    result = await agent.run_turn(trurn.Context(), "write it", on_event=seen.append)

    assert ran == []
    (message,) = tool_results(provider)
    assert message.status == "error"
    assert failure in message.content
    (error,) = of_type(seen, events.Error)
    assert (error.error_type, error.tool_call_id) == ("ApproverError", "c1")
    (answered,) = of_type(seen, events.ApprovalAnswered)
    assert answered.approved is False
    assert failure in (answered.reason or "")
    assert result.stop_reason == "completed"
    with pytest.raises(RequestAnsweredError, match="already closed: the approver"):
        agent.respond(answered.request_id, True)


async def test_only_the_named_tools_need_approval() -> None:
    provider = FakeProvider(
        [
            tool_reply(write_call(), ("c2", "read_file", '{"path": "a"}')),
            text_reply("Done."),
        ]
    )
    agent = trurn.Agent(
        provider,
        tools=[write_file, read_file],
        require_approval={"write_file"},
        approver=lambda request: request.call.arguments["path"] != "notes.txt",
    )
    seen: list[events.Event] = []
    await agent.run_turn(trurn.Context(), "go", on_event=seen.append)
    assert [r.call.name for r in of_type(seen, events.ApprovalRequest)] == ["write_file"]
    assert ran == ["read a"]
    assert [m.status for m in tool_results(provider)] == ["denied", "ok"]


async def test_a_policy_callable_sees_the_call() -> None:
    def outside_home(call: ToolCall) -> bool:
        return str(call.arguments.get("path", "")).startswith("/")

    provider = FakeProvider(
        [
            tool_reply(write_call("c1", "/etc/passwd"), write_call("c2", "notes.txt")),
            text_reply("Done."),
        ]
    )
    agent = trurn.Agent(
        provider, tools=[write_file], require_approval=outside_home, approver=lambda r: False
    )
    await agent.run_turn(trurn.Context(), "go")
    assert ran == ["write notes.txt"]
    assert [m.status for m in tool_results(provider)] == ["denied", "ok"]


@pytest.mark.parametrize("policy_result", [ValueError("boom"), "yes"])
async def test_a_broken_policy_callable_fails_closed(policy_result: object) -> None:
    def policy(call: ToolCall) -> bool:
        if isinstance(policy_result, Exception):
            raise policy_result
        return policy_result  # type: ignore[return-value]

    provider = FakeProvider([tool_reply(write_call()), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[write_file], require_approval=policy)
    seen: list[events.Event] = []
    result = await agent.run_turn(trurn.Context(), "go", on_event=seen.append)
    assert ran == []
    (message,) = tool_results(provider)
    assert message.status == "error"
    assert message.content.startswith("Not run: the agent's require_approval failed")
    assert [e.error_type for e in of_type(seen, events.Error)] == ["ApprovalPolicyError"]
    assert of_type(seen, events.ApprovalRequest) == []
    assert result.stop_reason == "completed"


# --- prechecks and previews --------------------------------------------------------------


class Shell(BaseTool):
    """A tool whose precheck decides per command."""

    name = "shell"
    parameters = {  # noqa: RUF012
        "type": "object",
        "properties": {"command": {"type": "string"}},
        "required": ["command"],
    }

    def preview(self, arguments: dict[str, Any]) -> str | None:
        return f"$ {arguments.get('command')}"

    async def precheck(self, arguments: dict[str, Any]) -> Precheck | None:
        await trio.lowlevel.checkpoint()
        command = str(arguments.get("command"))
        if command.startswith("rm"):
            return Precheck(
                status="deny", message="deleting is not allowed", reasons=["rm", "no undo"]
            )
        if command.startswith("sudo"):
            return Precheck(
                status="ask",
                message="runs as root",
                reasons=["privileged"],
                metadata={"risk": 9},
            )
        return Precheck(status="allow")

    async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        ran.append(arguments["command"])
        return "ok"


def shell_call(call_id: str, command: str) -> tuple[str, str, str]:
    return (call_id, "shell", msgspec.json.encode({"command": command}).decode())


async def test_precheck_allow_deny_and_ask() -> None:
    provider = FakeProvider(
        [
            tool_reply(
                shell_call("c1", "ls"), shell_call("c2", "rm -rf /"), shell_call("c3", "sudo x")
            ),
            text_reply("Done."),
        ]
    )
    requests: list[events.ApprovalRequest] = []

    def approver(request: events.ApprovalRequest) -> bool:
        requests.append(request)
        return True

    # The agent asks for nothing; the precheck alone asks for "sudo" and refuses "rm".
    agent = trurn.Agent(provider, tools=[Shell()], approver=approver)
    seen: list[events.Event] = []
    await agent.run_turn(trurn.Context(), "go", on_event=seen.append)

    assert sorted(ran) == ["ls", "sudo x"]
    results = {m.tool_call_id: m for m in tool_results(provider)}
    assert results["c2"].status == "denied"
    assert results["c2"].content == (
        "Tool 'shell' refused this call: deleting is not allowed. Reasons: rm; no undo."
    )
    (request,) = requests
    assert (request.call.id, request.preview, request.reason) == ("c3", "$ sudo x", "runs as root")
    assert (request.reasons, request.metadata) == (["privileged"], {"risk": 9})
    previews = {e.call.id: e.preview for e in of_type(seen, events.ToolCallStarted)}
    assert previews == {"c1": "$ ls", "c2": "$ rm -rf /", "c3": "$ sudo x"}


async def test_precheck_allow_does_not_override_the_agents_policy() -> None:
    provider = FakeProvider([tool_reply(shell_call("c1", "ls")), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[Shell()], require_approval=True, approver=lambda r: False)
    await agent.run_turn(trurn.Context(), "go")
    assert ran == []
    assert tool_results(provider)[0].status == "denied"


async def test_function_tool_precheck_gets_validated_arguments_and_bad_ones_never_ask() -> None:
    checked: list[dict[str, Any]] = []

    async def check(path: str, text: str) -> Precheck:
        checked.append({"path": path, "text": text})
        return Precheck(status="ask" if path.startswith("/") else "allow")

    @tool(precheck=check)
    async def save(path: str, text: str) -> str:
        ran.append(path)
        return "saved"

    provider = FakeProvider(
        [
            tool_reply(
                ("c1", "save", '{"path": "/x", "text": "t"}'),
                ("c2", "save", '{"path": "y", "text": "t"}'),
                ("c3", "save", '{"path": 3}'),
            ),
            text_reply("Done."),
        ]
    )
    agent = trurn.Agent(provider, tools=[save], approver=lambda r: True)
    seen: list[events.Event] = []
    await agent.run_turn(trurn.Context(), "go", on_event=seen.append)

    assert sorted(ran) == ["/x", "y"]
    assert sorted(c["path"] for c in checked) == ["/x", "y"]
    assert [r.call.id for r in of_type(seen, events.ApprovalRequest)] == ["c1"]
    bad = {m.tool_call_id: m for m in tool_results(provider)}["c3"]
    assert bad.status == "error"
    assert bad.content.startswith("Invalid arguments for tool 'save'")


# --- cancellation and liveness --------------------------------------------------------------


async def test_a_ui_that_never_answers_holds_one_turn_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider(
        [tool_reply(write_call()), tool_reply(write_call("c9")), text_reply("Done.")]
    )
    agent = trurn.Agent(provider, tools=[write_file], require_approval=True)
    context = trurn.Context()
    seen: list[events.Event] = []
    with trio.move_on_after(60) as scope:  # the caller's deadline is the only one
        await agent.run_turn(context, "write it", on_event=seen.append)
    assert scope.cancelled_caught
    assert trio.current_time() == 60
    (stale,) = of_type(seen, events.ApprovalRequest)
    assert agent.pending_requests() == []
    with pytest.raises(UnknownRequestError, match="expired: its tool call ended"):
        agent.respond(stale.request_id, True)
    cancelled = [m for m in context.messages if isinstance(m, ToolMessage)]
    assert [m.status for m in cancelled] == ["cancelled"]
    assert ran == []

    # The next turn on the same agent is not wedged: a UI answers this time.
    def ui(event: events.Event) -> None:
        if isinstance(event, events.ApprovalRequest):
            agent.respond(event.request_id, True)

    result, _ = await run_with_ui(agent, ui, "again", context)
    assert result.stop_reason == "completed"
    assert ran == ["write notes.txt"]


async def test_cancelling_the_turn_cancels_a_waiting_approver(
    autojump_clock: trio.testing.MockClock,
) -> None:
    state: list[str] = []

    async def approver(request: events.ApprovalRequest) -> bool:
        state.append("asked")
        try:
            await trio.sleep_forever()
        finally:
            state.append("cancelled")
        raise AssertionError("unreachable")

    provider = FakeProvider([tool_reply(write_call())])
    agent = trurn.Agent(provider, tools=[write_file], require_approval=True, approver=approver)
    with trio.move_on_after(5):
        await agent.run_turn(trurn.Context(), "go")
    assert state == ["asked", "cancelled"]
    assert agent.pending_requests() == []


async def test_concurrent_approvals_answered_in_any_order() -> None:
    provider = FakeProvider(
        [tool_reply(write_call("c1", "a"), write_call("c2", "b")), text_reply("Done.")]
    )
    agent = trurn.Agent(provider, tools=[write_file], require_approval=True)

    asked: list[events.ApprovalRequest] = []

    def ui(event: events.Event) -> None:
        if isinstance(event, events.ApprovalRequest):
            asked.append(event)
        open_ids = {r.request_id for r in agent.pending_requests()}
        if len(asked) == 2 and open_ids == {r.request_id for r in asked}:  # both wait at once
            by_call = {r.call.id: r.request_id for r in asked}
            agent.respond(by_call["c2"], True)  # the second call first
            agent.respond(by_call["c1"], False)

    await run_with_ui(agent, ui)
    assert ran == ["write b"]
    assert [m.status for m in tool_results(provider)] == ["denied", "ok"]  # call order kept


def test_respond_refuses_bad_values() -> None:
    agent = trurn.Agent(FakeProvider([]), tools=[write_file])
    with pytest.raises(TypeError, match="approved must be a bool, not str"):
        agent.respond("appr_x", "yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reason must be a str or None, not int"):
        agent.respond("appr_x", False, reason=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="request_id must be a str, not int"):
        agent.respond(7, True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="choice must be a str"):
        agent.respond_choice("choice_x", 1)  # type: ignore[arg-type]
    with pytest.raises(UnknownRequestError):
        agent.respond_choice("choice_x", "a")


# --- choices -------------------------------------------------------------------------------


@tool
async def pick_color(ctx: ToolContext) -> str:
    """Ask the user for a color."""
    color = await ctx.choose("Which color?", ["red", "green"], hint="green is calm")
    return f"chose {color}"


async def test_a_ui_answers_a_choice_and_a_wrong_choice_leaves_it_open() -> None:
    provider = FakeProvider([tool_reply(("c1", "pick_color", "{}")), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[pick_color])
    problems: list[Exception] = []

    def ui(event: events.Event) -> None:
        if isinstance(event, events.ChoiceRequest):
            assert (event.prompt, event.choices, event.hint) == (
                "Which color?",
                ["red", "green"],
                "green is calm",
            )
            for wrong in (
                lambda: agent.respond_choice(event.request_id, "blue"),
                lambda: agent.respond(event.request_id, True),
            ):
                try:
                    wrong()
                except RequestError as exc:
                    problems.append(exc)
            assert agent.pending_requests() == [event]  # still open
            agent.respond_choice(event.request_id, "green")

    _, seen = await run_with_ui(agent, ui)
    assert tool_results(provider)[0].content == "chose green"
    assert [type(p) for p in problems] == [InvalidChoiceError, UnknownRequestError]
    assert "'blue' is not one of the choices" in str(problems[0])
    assert isinstance(problems[0], ValueError)
    assert "is a choice request: answer it with respond_choice()" in str(problems[1])
    calls = tags(seen)
    assert calls[calls.index("tool_call") :][:4] == [
        "tool_call",
        "choice_request",
        "choice_answered",
        "tool_exit",
    ]
    (answered,) = of_type(seen, events.ChoiceAnswered)
    assert (answered.choice, answered.by, answered.tool_call_id) == ("green", "respond", "c1")


async def test_approval_ids_refused_by_respond_choice() -> None:
    provider = FakeProvider([tool_reply(write_call()), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[write_file], require_approval=True)
    wrong: list[Exception] = []

    def ui(event: events.Event) -> None:
        if isinstance(event, events.ApprovalRequest):
            with pytest.raises(UnknownRequestError, match=r"answer it with respond\(\)") as info:
                agent.respond_choice(event.request_id, "x")
            wrong.append(info.value)
            agent.respond(event.request_id, True)

    await run_with_ui(agent, ui)
    assert len(wrong) == 1
    assert ran == ["write notes.txt"]


@pytest.mark.parametrize(
    ("chooser", "content"),
    [
        (lambda request: "red", "chose red"),
        (
            lambda request: "blue",
            "No choice was made: the chooser chose a value that was not offered.",
        ),
        (lambda request: 1 / 0, "No choice was made: the chooser raised ZeroDivisionError."),
    ],
    ids=["valid", "not-offered", "raises"],
)
async def test_chooser_callback(chooser: Any, content: str) -> None:
    provider = FakeProvider([tool_reply(("c1", "pick_color", "{}")), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[pick_color], chooser=chooser)
    seen: list[events.Event] = []
    result = await agent.run_turn(trurn.Context(), "go", on_event=seen.append)
    assert tool_results(provider)[0].content == content
    (answered,) = of_type(seen, events.ChoiceAnswered)
    assert answered.by == "chooser"
    assert answered.choice == ("red" if content == "chose red" else None)
    assert result.stop_reason == "completed"


async def test_a_sync_tool_chooses_through_from_thread() -> None:
    @tool
    def pick(ctx: ToolContext) -> str:
        return "picked " + trio.from_thread.run(ctx.choose, "Size?", ["S", "M"])

    provider = FakeProvider([tool_reply(("c1", "pick", "{}")), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[pick], chooser=lambda request: "M")
    await agent.run_turn(trurn.Context(), "go")
    assert tool_results(provider)[0].content == "picked M"


@pytest.mark.parametrize(
    ("prompt", "choices", "hint", "message"),
    [
        ("?", [], None, "ValueError: choices must not be empty"),
        ("?", "ab", None, "TypeError: choices must be a sequence of str, not str"),
        ("?", ["a", 1], None, "TypeError: choices must all be str"),
        ("?", ["a", "a"], None, "ValueError: choices must be distinct"),
        (None, ["a"], None, "TypeError: prompt must be a str, not NoneType"),
        ("?", ["a"], 5, "TypeError: hint must be a str or None, not int"),
    ],
)
async def test_bad_choice_requests_fail_the_tool(
    prompt: Any, choices: Any, hint: Any, message: str
) -> None:
    @tool
    async def ask(ctx: ToolContext) -> str:
        return await ctx.choose(prompt, choices, hint)

    provider = FakeProvider([tool_reply(("c1", "ask", "{}")), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[ask], chooser=lambda request: "a")
    await agent.run_turn(trurn.Context(), "go")
    (result,) = tool_results(provider)
    assert result.status == "error"
    assert result.content.startswith(message)


# --- timeouts ------------------------------------------------------------------------------


async def test_a_tool_timeout_is_a_result_the_model_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @tool(timeout=5)
    async def slow() -> str:
        await trio.sleep(100)
        return "never"

    @tool
    async def quick() -> str:
        await trio.sleep(1)
        return "quick"

    provider = FakeProvider(
        [tool_reply(("c1", "slow", "{}"), ("c2", "quick", "{}")), text_reply("Done.")]
    )
    agent = trurn.Agent(provider, tools=[slow, quick])
    seen: list[events.Event] = []
    start = trio.current_time()
    result = await agent.run_turn(trurn.Context(), "go", on_event=seen.append)
    assert trio.current_time() - start == 5
    timed_out, ok = tool_results(provider)
    assert (timed_out.status, ok.status) == ("timeout", "ok")
    assert timed_out.content == "Timed out: tool 'slow' did not finish within 5 seconds."
    (error,) = of_type(seen, events.Error)
    assert (error.error_type, error.tool_call_id) == ("ToolTimeout", "c1")
    exits = {e.tool_call_id: e.status for e in of_type(seen, events.ToolExit)}
    assert exits == {"c1": "timeout", "c2": "ok"}
    assert result.stop_reason == "completed"


async def test_the_agents_tool_timeout_and_a_tools_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @tool
    async def default_limit() -> str:
        await trio.sleep(100)
        return "late"

    @tool(timeout=math.inf)  # opts out of the agent's limit
    async def no_limit() -> str:
        await trio.sleep(100)
        return "patient"

    class Longer(BaseTool):
        name = "longer"
        timeout = 50

        async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
            await trio.sleep(40)
            return "in time"

    provider = FakeProvider(
        [
            tool_reply(
                ("c1", "default_limit", "{}"), ("c2", "no_limit", "{}"), ("c3", "longer", "{}")
            ),
            text_reply("Done."),
        ]
    )
    agent = trurn.Agent(provider, tools=[default_limit, no_limit, Longer()], tool_timeout=10)
    await agent.run_turn(trurn.Context(), "go")
    statuses = [(m.status, m.content) for m in tool_results(provider)]
    assert statuses == [
        ("timeout", "Timed out: tool 'default_limit' did not finish within 10 seconds."),
        ("ok", "patient"),
        ("ok", "in time"),
    ]


async def test_a_sync_tool_is_abandoned_on_timeout(autojump_clock: trio.testing.MockClock) -> None:
    release = threading.Event()
    finished = threading.Event()

    @tool(timeout=2)
    def block() -> str:
        release.wait(10)
        finished.set()
        return "late"

    provider = FakeProvider([tool_reply(("c1", "block", "{}")), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[block])
    result = await agent.run_turn(trurn.Context(), "go")
    assert result.stop_reason == "completed"
    assert tool_results(provider)[0].status == "timeout"
    assert not finished.is_set()  # the thread still runs: abandoned, as documented
    release.set()
    assert await trio.to_thread.run_sync(finished.wait, 10)


async def test_a_choice_wait_counts_toward_the_timeout_and_then_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @tool(timeout=30)
    async def ask(ctx: ToolContext) -> str:
        return await ctx.choose("Really?", ["yes", "no"])

    provider = FakeProvider([tool_reply(("c1", "ask", "{}")), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[ask])
    seen: list[events.Event] = []
    await agent.run_turn(trurn.Context(), "go", on_event=seen.append)
    assert trio.current_time() == 30
    assert tool_results(provider)[0].status == "timeout"
    (request,) = of_type(seen, events.ChoiceRequest)
    with pytest.raises(UnknownRequestError, match="expired"):
        agent.respond_choice(request.request_id, "yes")
    assert of_type(seen, events.ChoiceAnswered) == []


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, "must be more than 0 seconds, got 0"),
        (-1.5, ValueError, "must be more than 0 seconds, got -1.5"),
        (math.nan, ValueError, "must be more than 0 seconds, got nan"),
        ("5", TypeError, "must be a number of seconds, not str"),
        (True, TypeError, "must be a number of seconds, not bool"),
    ],
)
def test_bad_timeouts_are_refused_where_they_are_given(
    value: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        trurn.Agent(FakeProvider([]), tool_timeout=value)
    with pytest.raises(error, match="tool 'f': timeout " + match):

        @tool(timeout=value)
        async def f() -> None: ...

    with pytest.raises(error, match="tool .*Bad: timeout " + match):

        class Bad(BaseTool):
            name = "bad"
            timeout = value

            async def call(self, arguments: dict[str, Any], ctx: ToolContext) -> None: ...


# --- streamed output through a turn -------------------------------------------------------


async def test_tool_output_streams_to_subscribers_before_the_result() -> None:
    gate = trio.Event()

    @tool
    async def build(ctx: ToolContext) -> str:
        await ctx.output("compiling")
        await gate.wait()  # the subscriber sees the output while the tool still runs
        await ctx.output("1 warning", stream="stderr")
        return "built"

    provider = FakeProvider([tool_reply(("c1", "build", "{}")), text_reply("Done.")])
    agent = trurn.Agent(provider, tools=[build])
    live: list[str] = []

    def ui(event: events.Event) -> None:
        if isinstance(event, events.ToolOutput):
            live.append(event.text)
            gate.set()

    _, seen = await run_with_ui(agent, ui)
    outputs = of_type(seen, events.ToolOutput)
    assert [(o.text, o.stream, o.tool_call_id) for o in outputs] == [
        ("compiling", "stdout", "c1"),
        ("1 warning", "stderr", "c1"),
    ]
    calls = tags(seen)
    start, end = calls.index("tool_call"), calls.index("tool_exit")
    assert calls[start : end + 1] == ["tool_call", "tool_output", "tool_output", "tool_exit"]
    seqs = [e.seq for e in seen]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert live == ["compiling", "1 warning"]


# --- the pure parts -------------------------------------------------------------------------


def test_policy_checks() -> None:
    assert check_policy(True) is True
    assert check_policy(["a", "b"], {"a", "b", "c"}) == frozenset({"a", "b"})
    with pytest.raises(TypeError, match=r"give a set of tool names \({'write_file'}\), not a str"):
        check_policy("write_file")
    with pytest.raises(ValueError, match="tools the agent does not have: 'wirte_file'"):
        trurn.Agent(FakeProvider([]), tools=[write_file], require_approval={"wirte_file"})
    with pytest.raises(TypeError, match="tool names must be str, got 3"):
        check_policy({3})
    with pytest.raises(TypeError, match="not int"):
        check_policy(3)
    with pytest.raises(TypeError, match="approver must be callable, not str"):
        Approvals(approver="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="chooser must be callable"):
        trurn.Agent(FakeProvider([]), chooser=["a"])  # type: ignore[arg-type]


def test_precheck_and_decision_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="status must be 'allow', 'deny' or 'ask', not 'maybe'"):
        Precheck(status="maybe")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reasons must be a list of str"):
        Precheck(status="ask", reasons="because")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="metadata must encode to JSON"):
        Precheck(status="ask", metadata={"f": object()})
    with pytest.raises(TypeError, match="message must be a str"):
        Precheck(status="deny", message=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="approved must be a bool, not int"):
        ApprovalDecision(1)  # type: ignore[arg-type]
    assert check_timeout(None, "t") is None
    assert check_timeout(2, "t") == 2.0


async def test_forgotten_ids_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_approvals, "_REMEMBERED", 3)
    approvals = Approvals(approver=lambda request: True)
    call = ToolCall(id="c", name="f")
    ids: list[str] = []

    async def emit(batch: Sequence[events.BaseEvent]) -> None:
        ids.extend(e.request_id for e in batch if isinstance(e, events.ApprovalRequest))
        await trio.lowlevel.checkpoint()

    for _ in range(5):
        await approvals.request_approval(emit, call, preview=None, precheck=None)
    assert len(approvals._closed) == 3
    with pytest.raises(UnknownRequestError, match="never made, or it expired long ago"):
        approvals.respond(ids[0], True)
    with pytest.raises(RequestAnsweredError):
        approvals.respond(ids[-1], True)
