"""Events: one tagged union that round-trips every type through JSON."""

from __future__ import annotations

import typing

import msgspec
import pytest

from trurn import events
from trurn._messages import AssistantMessage, ToolCall, Usage

CALL = ToolCall(id="call_1", name="get_weather", arguments={"city": "Oslo"}, arguments_raw="{}")

SAMPLES: list[events.BaseEvent] = [
    events.TurnStarted(
        input="hi", parent_turn_id="turn_parent", root_turn_id="turn_root", depth=2, chain=["a"]
    ),
    events.MessageSent(step=1, model="m"),
    events.AssistantDelta(text="He"),
    events.AssistantReasoningDelta(text="hmm"),
    events.ToolCallDelta(index=0, tool_call_id="call_1", name="f", arguments="{"),
    events.AssistantFinal(message=AssistantMessage(content="Hi", tool_calls=[CALL])),
    events.ToolCallStarted(call=CALL),
    events.ToolOutput(tool_call_id="call_1", text="working", stream="stderr"),
    events.ToolExit(tool_call_id="call_1", name="f", status="ok", content="12C"),
    events.ApprovalRequest(request_id="r1", call=CALL, reason="writes files"),
    events.ChoiceRequest(request_id="r2", tool_call_id="call_1", prompt="?", choices=["a", "b"]),
    events.ServerTool(block={"type": "server_tool_use", "name": "web_search"}),
    events.Retrying(attempt=1, delay=2.5, error_type="RateLimitError", message="slow down"),
    events.RunAborted(reason="cancelled"),
    events.Error(message="boom", error_type="ValueError", tool_call_id="call_1"),
    events.EventsDropped(count=3),
    events.ApprovalAnswered(
        request_id="r1", tool_call_id="call_1", approved=False, by="respond", reason="no"
    ),
    events.ChoiceAnswered(request_id="r2", tool_call_id="call_1", choice="a", by="chooser"),
    events.CompactionStarted(reason="overflow", estimated_tokens=120_000),
    events.Compacted(summary="earlier", first_kept=4, summarised=4),
    events.UserInjected(text="also check Bergen"),
    events.TurnFinished(stop_reason="completed", usage=Usage(input_tokens=1), text="Hi"),
]

OTURN_NAMES = {
    "assistant_delta",
    "assistant_reasoning_delta",
    "assistant_final",
    "tool_call_delta",
    "tool_call",
    "tool_output",
    "tool_exit",
    "approval_request",
    "choice_request",
    "message_sent",
    "run_aborted",
    "error",
}


def test_every_event_type_has_a_sample() -> None:
    assert {type(s) for s in SAMPLES} == set(typing.get_args(events.Event))


def test_the_oturn_vocabulary_and_turn_markers_are_all_there() -> None:
    tags = {cls.__struct_config__.tag for cls in typing.get_args(events.Event)}
    assert OTURN_NAMES | {"turn_started", "turn_finished"} <= tags


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_round_trip(event: events.BaseEvent) -> None:
    event.seq = 42
    event.turn_id = "turn_x"
    data = events.encode(event)
    decoded = msgspec.json.decode(data)
    assert decoded["type"] == event.type == type(event).__struct_config__.tag
    assert decoded["seq"] == 42
    assert decoded["turn_id"] == "turn_x"
    assert events.decode(data) == event


def test_type_is_the_oturn_name() -> None:
    assert events.AssistantDelta(text="x").type == "assistant_delta"
    assert events.TurnFinished(stop_reason="completed", usage=Usage()).type == "turn_finished"
    assert {sample.type for sample in SAMPLES} >= OTURN_NAMES
    assert "type" not in msgspec.structs.asdict(events.AssistantDelta(text="x"))


def test_decode_rejects_unknown_types_with_a_clear_error() -> None:
    with pytest.raises(msgspec.ValidationError, match="Invalid value 'nope'"):
        events.decode(b'{"type": "nope", "seq": 1, "turn_id": ""}')


def test_assistant_final_text_property() -> None:
    assert events.AssistantFinal(message=AssistantMessage(content="x")).text == "x"
    assert events.AssistantFinal(message=AssistantMessage()).text == ""
