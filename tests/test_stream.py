"""The stream reducer: pure folding of provider-neutral chunks."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from trurn import events
from trurn._chunks import Chunk, Finish, ReasoningDelta, TextDelta, ThinkingSignature, ToolCallDelta
from trurn._messages import AssistantMessage, Usage
from trurn._stream import StreamState, assemble, joined, parse_arguments, reduce_stream


def fold(chunks: Sequence[Chunk]) -> tuple[AssistantMessage, list[events.BaseEvent]]:
    state = StreamState()
    published: list[events.BaseEvent] = []
    for chunk in chunks:
        transition = reduce_stream(state, chunk)
        assert transition.terminal is False
        state = transition.state
        published.extend(transition.events)
    return assemble(state), published


def test_text_deltas_become_events_and_text() -> None:
    reply, published = fold([TextDelta("Hel"), TextDelta(""), TextDelta("lo"), Finish("stop")])
    assert reply.content == "Hello"
    assert reply.finish_reason == "stop"
    assert [type(e) for e in published] == [events.AssistantDelta, events.AssistantDelta]
    assert [e.text for e in published if isinstance(e, events.AssistantDelta)] == ["Hel", "lo"]


def test_reducer_does_not_mutate_its_input() -> None:
    state = reduce_stream(StreamState(), TextDelta("x")).state
    after = reduce_stream(state, TextDelta("y")).state
    assert joined(state.text) == "x"
    assert joined(after.text) == "xy"
    # Appending shares what came before instead of copying it (no quadratic growth).
    assert after.text is not None
    assert after.text[0] is state.text


def test_reasoning_and_usage() -> None:
    usage = Usage(input_tokens=3, output_tokens=4, total_tokens=7)
    reply, published = fold([ReasoningDelta("think"), ReasoningDelta("ing"), TextDelta("A"), usage])
    assert reply.reasoning == "thinking"
    assert reply.usage == usage
    assert isinstance(published[0], events.AssistantReasoningDelta)


def test_tool_call_fragments_by_index_with_text_in_the_same_reply() -> None:
    reply, published = fold(
        [
            TextDelta("Checking."),
            ToolCallDelta(index=0, id="call_a", name="get_weather", arguments=""),
            ToolCallDelta(index=0, arguments='{"city":'),
            ToolCallDelta(index=0, arguments=' "Oslo"}'),
            Finish("tool_calls"),
        ]
    )
    assert reply.content == "Checking."
    [call] = reply.tool_calls
    assert (call.id, call.name, call.arguments) == ("call_a", "get_weather", {"city": "Oslo"})
    assert call.arguments_raw == '{"city": "Oslo"}'
    deltas = [e for e in published if isinstance(e, events.ToolCallDelta)]
    assert [d.arguments for d in deltas] == ["", '{"city":', ' "Oslo"}']
    assert {d.index for d in deltas} == {0}


def test_parallel_calls_interleaved_by_index() -> None:
    reply, _ = fold(
        [
            ToolCallDelta(index=0, id="a", name="f", arguments='{"x"'),
            ToolCallDelta(index=1, id="b", name="g", arguments='{"y"'),
            ToolCallDelta(index=0, arguments=": 1}"),
            ToolCallDelta(index=1, arguments=": 2}"),
        ]
    )
    assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == [
        ("a", "f", {"x": 1}),
        ("b", "g", {"y": 2}),
    ]


def test_calls_without_index_are_told_apart_by_id() -> None:
    # OTURN merged these into one corrupt call.
    reply, published = fold(
        [
            ToolCallDelta(id="a", name="f", arguments='{"city": "Oslo"}'),
            ToolCallDelta(id="b", name="f", arguments="{}"),
        ]
    )
    assert [(c.id, c.arguments) for c in reply.tool_calls] == [("a", {"city": "Oslo"}), ("b", {})]
    assert [e.index for e in published if isinstance(e, events.ToolCallDelta)] == [0, 1]


def test_fragment_without_index_or_id_continues_the_latest_call() -> None:
    reply, _ = fold(
        [ToolCallDelta(id="a", name="f", arguments='{"n"'), ToolCallDelta(arguments=": 5}")]
    )
    assert reply.tool_calls[0].arguments == {"n": 5}


def test_new_id_on_a_used_index_starts_a_new_call() -> None:
    reply, _ = fold(
        [
            ToolCallDelta(index=0, id="a", name="f", arguments="{}"),
            ToolCallDelta(index=0, id="b", name="g", arguments='{"k": 1}'),
        ]
    )
    assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == [
        ("a", "f", {}),
        ("b", "g", {"k": 1}),
    ]


def test_empty_arguments_mean_an_empty_object() -> None:
    reply, _ = fold([ToolCallDelta(index=0, id="a", name="now", arguments="")])
    call = reply.tool_calls[0]
    assert call.arguments == {}
    assert call.arguments_error is None


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [('{"city": ', "not valid JSON"), ("[1, 2]", "must be a JSON object, not list")],
)
def test_bad_arguments_are_kept_raw_with_an_error(raw: str, fragment: str) -> None:
    reply, _ = fold([ToolCallDelta(index=0, id="a", name="f", arguments=raw)])
    call = reply.tool_calls[0]
    assert call.arguments == {}
    assert call.arguments_raw == raw
    assert call.arguments_error is not None
    assert fragment in call.arguments_error


def test_calls_without_ids_get_generated_unique_ids() -> None:
    state = StreamState()
    for chunk in [ToolCallDelta(index=0, name="f"), ToolCallDelta(index=1, name="g")]:
        state = reduce_stream(state, chunk).state
    reply = assemble(state, call_id_prefix="call_xy")
    assert [c.id for c in reply.tool_calls] == ["call_xy_0", "call_xy_1"]


@pytest.mark.parametrize("reason", ["length", "content_filter"])
def test_cut_off_finishes_are_surfaced(reason: str) -> None:
    reply, _ = fold([TextDelta('{"'), Finish(reason)])
    assert reply.finish_reason == reason
    assert reply.content == '{"'


def test_empty_reply() -> None:
    reply, published = fold([Finish("stop")])
    assert reply.content is None
    assert reply.tool_calls == []
    assert published == []


def test_thinking_blocks_keep_their_signatures() -> None:
    reply, _ = fold(
        [
            ReasoningDelta("first "),
            ReasoningDelta("thought"),
            ThinkingSignature(signature="sig1"),
            ThinkingSignature(redacted="opaque"),
            ReasoningDelta("second"),
            ThinkingSignature(signature="sig2"),
        ]
    )
    assert reply.reasoning == "first thoughtsecond"
    assert [(b.text, b.signature, b.redacted) for b in reply.thinking] == [
        ("first thought", "sig1", None),
        ("", None, "opaque"),
        ("second", "sig2", None),
    ]


def test_not_a_chunk_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not a stream chunk"):
        reduce_stream(StreamState(), "hello")  # type: ignore[arg-type]


def test_parse_arguments_directly() -> None:
    assert parse_arguments("  ") == ({}, None)
    assert parse_arguments('{"a": [1]}') == ({"a": [1]}, None)


def test_server_tool_blocks_are_kept_verbatim_and_surfaced() -> None:
    from trurn._chunks import ServerToolBlock

    block = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    reply, published = fold([ServerToolBlock(block), TextDelta("Found it.")])
    assert reply.server_blocks == [block]
    assert reply.tool_calls == []  # never run locally
    assert isinstance(published[0], events.ServerTool)
    assert published[0].block == block
