"""The SSE decoder against the WHATWG parsing rules, whole and split at every byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trurn._sse import ServerSentEvent, SSEDecoder

FIXTURES = Path(__file__).parent / "fixtures" / "streams"


def decode_all(*pieces: bytes) -> tuple[list[ServerSentEvent], SSEDecoder]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    return events, decoder


def datas(events: list[ServerSentEvent]) -> list[bytes]:
    return [event.data for event in events]


# --- the rules, one by one -------------------------------------------------------------


def test_data_line_dispatched_on_blank_line() -> None:
    events, decoder = decode_all(b"data: hello\n\n")
    assert events == [ServerSentEvent(b"hello")]
    assert events[0].event == "message"
    assert events[0].text == "hello"
    assert not decoder.incomplete


def test_no_dispatch_without_blank_line() -> None:
    events, decoder = decode_all(b"data: hello\n")
    assert events == []
    assert decoder.incomplete


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_line_endings(ending: bytes) -> None:
    stream = b"data: a" + ending + b"data: b" + ending + ending + b"data: c" + ending + ending
    events, decoder = decode_all(stream)
    assert datas(events) == [b"a\nb", b"c"]
    assert not decoder.incomplete


def test_mixed_line_endings() -> None:
    events, _ = decode_all(b"data: a\r\ndata: b\rdata: c\n\r\n")
    assert datas(events) == [b"a\nb\nc"]


def test_crlf_split_across_feeds_is_one_line_end() -> None:
    # If the LF after a trailing CR counted as a second line end, the blank line would
    # dispatch "a" alone; it must not.
    events, decoder = decode_all(b"data: a\r", b"\ndata: b\r\n\r\n")
    assert datas(events) == [b"a\nb"]
    assert not decoder.incomplete


def test_empty_feed_between_cr_and_lf_keeps_them_one_line_end() -> None:
    events, _ = decode_all(b"data: a\r", b"", b"\ndata: b\n\n")
    assert datas(events) == [b"a\nb"]


def test_cr_then_blank_line_split_across_feeds() -> None:
    events, _ = decode_all(b"data: a\r", b"\r")
    assert datas(events) == [b"a"]


def test_lf_not_swallowed_when_previous_feed_did_not_end_in_cr() -> None:
    events, _ = decode_all(b"data: a\n", b"\n")
    assert datas(events) == [b"a"]


def test_multiline_data_joined_with_lf() -> None:
    events, _ = decode_all(b"data: first\ndata:second\ndata:  third\n\n")
    assert datas(events) == [b"first\nsecond\n third"]


def test_only_one_leading_space_is_stripped() -> None:
    events, _ = decode_all(b"data:  two spaces\n\n")
    assert datas(events) == [b" two spaces"]


def test_data_with_no_space_after_colon() -> None:
    events, _ = decode_all(b'data:{"a":1}\n\n')
    assert datas(events) == [b'{"a":1}']


def test_colon_inside_value_is_kept() -> None:
    events, _ = decode_all(b"data: a: b:c\n\n")
    assert datas(events) == [b"a: b:c"]


def test_comments_are_ignored_and_counted() -> None:
    events, decoder = decode_all(b": OPENROUTER PROCESSING\n:\ndata: x\n: between\n\n")
    assert datas(events) == [b"x"]
    assert decoder.comment_count == 3


def test_comment_only_block_does_not_leave_the_stream_incomplete() -> None:
    events, decoder = decode_all(b"data: x\n\n: keep-alive\n")
    assert datas(events) == [b"x"]
    assert not decoder.incomplete


def test_event_field_sets_type_for_one_event() -> None:
    events, _ = decode_all(b"event: error\ndata: a\n\ndata: b\n\n")
    assert [(e.event, e.data) for e in events] == [("error", b"a"), ("message", b"b")]


def test_empty_event_field_means_message() -> None:
    events, _ = decode_all(b"event:\ndata: a\n\n")
    assert events[0].event == "message"


def test_id_persists_across_events() -> None:
    events, decoder = decode_all(b"id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\n")
    assert [e.id for e in events] == ["7", "7", ""]
    assert decoder.last_event_id == ""


def test_id_with_nul_is_ignored() -> None:
    events, _ = decode_all(b"id: 1\ndata: a\n\nid: x\x00y\ndata: b\n\n")
    assert [e.id for e in events] == ["1", "1"]


def test_retry_field() -> None:
    events, decoder = decode_all(b"retry: 1500\ndata: a\n\nretry: soon\ndata: b\n\n")
    assert [e.retry for e in events] == [1500, None]
    assert decoder.retry == 1500


def test_field_with_no_colon() -> None:
    # "data" alone is a data line with an empty value; an unknown bare name is ignored.
    events, _ = decode_all(b"data\ndata\n\nfoo\ndata: x\n\n")
    assert datas(events) == [b"\n", b"x"]


def test_unknown_fields_are_ignored() -> None:
    events, _ = decode_all(b"foo: bar\nDATA: no\ndata: yes\n\n")
    assert datas(events) == [b"yes"]


def test_block_without_data_is_not_dispatched() -> None:
    events, decoder = decode_all(b"event: ping\n\nid: 3\n\n\n\ndata: a\n\n")
    assert [(e.event, e.id, e.data) for e in events] == [("message", "3", b"a")]
    assert not decoder.incomplete


def test_empty_data_line_is_dispatched_as_empty_string() -> None:
    events, _ = decode_all(b"data:\n\n")
    assert datas(events) == [b""]


def test_bom_at_start_is_skipped() -> None:
    events, _ = decode_all(b"\xef\xbb\xbfdata: a\n\n")
    assert datas(events) == [b"a"]


def test_bom_split_across_feeds_is_skipped() -> None:
    events, _ = decode_all(b"\xef", b"\xbb", b"\xbfdata: a\n\n")
    assert datas(events) == [b"a"]


def test_bom_later_in_stream_is_data() -> None:
    events, _ = decode_all(b"data: a\n\n\xef\xbb\xbfdata: b\n\n")
    # The second line's field name is "\ufeffdata", which is not "data": ignored.
    assert datas(events) == [b"a"]


def test_short_stream_that_looks_like_bom_start_is_incomplete() -> None:
    events, decoder = decode_all(b"\xef\xbb")
    assert events == []
    assert decoder.incomplete


def test_utf8_character_split_across_feeds() -> None:
    payload = "data: caf\u00e9 \U0001f60a\n\n".encode()
    cut = payload.index(b"\xf0") + 2  # inside the 4-byte emoji
    events, _ = decode_all(payload[:cut], payload[cut:])
    assert [e.text for e in events] == ["caf\u00e9 \U0001f60a"]


def test_invalid_utf8_is_replaced_in_text_but_kept_in_data() -> None:
    events, _ = decode_all(b"data: \xff\n\n")
    assert events[0].data == b"\xff"
    assert events[0].text == "\ufffd"


def test_partial_line_is_incomplete_until_terminated() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: par") == []
    assert decoder.incomplete
    assert decoder.feed(b"tial\n") == []
    assert decoder.feed(b"\n") == [ServerSentEvent(b"partial")]
    assert not decoder.incomplete


def test_empty_feed() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert not decoder.incomplete


# --- recorded streams ------------------------------------------------------------------

MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text(encoding="utf-8"))
OPENAI_ENTRIES = [entry for entry in MANIFEST if entry["provider"] == "openai-chat"]


@pytest.mark.parametrize("entry", OPENAI_ENTRIES, ids=[e["file"] for e in OPENAI_ENTRIES])
def test_recorded_streams_event_and_comment_counts(entry: dict[str, object]) -> None:
    raw = (FIXTURES / str(entry["file"])).read_bytes()
    events, decoder = decode_all(raw)
    expected = entry["expected"]
    assert isinstance(expected, dict)
    assert len(events) == expected["event_count"]
    assert decoder.comment_count == expected["sse_comment_lines"]
    assert (events[-1].data == b"[DONE]") is expected["done_sentinel"]
    assert not decoder.incomplete


# --- property: any split gives the same events as a reference reading of the whole ------

_LINE_END = re.compile("\r\n|\r|\n")


def reference_events(stream: bytes) -> tuple[list[tuple[str, str, str | None, int | None]], int]:
    """A deliberately naive reading of the spec: decode everything, split, interpret."""
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = _LINE_END.split(text)[:-1]  # the last piece has no line end: never dispatched
    events: list[tuple[str, str, str | None, int | None]] = []
    data: list[str] = []
    event_type = ""
    last_id: str | None = None
    retry: int | None = None
    comments = 0
    for line in lines:
        if line == "":
            if data:
                events.append(("\n".join(data), event_type or "message", last_id, retry))
            data, event_type, retry = [], "", None
            continue
        if line.startswith(":"):
            comments += 1
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id" and "\x00" not in value:
            last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            retry = int(value)
    return events, comments


_values = st.text(alphabet=st.sampled_from(list("ab :1\x00\u00e9\u20ac\U0001f60a")), max_size=6)
_names = st.sampled_from(["data", "event", "id", "retry", "dat", ""])
_lines = st.one_of(
    st.builds(lambda n, v: f"{n}:{v}", _names, _values),
    st.builds(lambda n, v: f"{n}: {v}", _names, _values),
    _names,
    st.builds(lambda v: ":" + v, _values),
    st.just(""),
    st.just("data: [DONE]"),
)
_streams = st.builds(
    lambda bom, lines, tail: (
        ("\ufeff" if bom else "") + "".join(line + end for line, end in lines) + tail
    ).encode(),
    st.booleans(),
    st.lists(st.tuples(_lines, st.sampled_from(["\n", "\r\n", "\r"])), max_size=25),
    st.sampled_from(["", "data: unterminated", "\r"]),
)


@settings(max_examples=300, deadline=None)
@given(stream=_streams, data=st.data())
def test_any_split_gives_the_same_events(stream: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole, whole_decoder = decode_all(stream)
    split, split_decoder = decode_all(*pieces)
    assert split == whole
    assert split_decoder.comment_count == whole_decoder.comment_count
    assert split_decoder.incomplete == whole_decoder.incomplete

    expected, comments = reference_events(stream)
    assert [(e.text, e.event, e.id, e.retry) for e in whole] == expected
    assert whole_decoder.comment_count == comments


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_recorded_stream_split_anywhere(data: st.DataObject) -> None:
    raw = (FIXTURES / "openai-chat" / "openrouter_reasoning_comments.sse").read_bytes()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=40)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert decode_all(*pieces)[0] == decode_all(raw)[0]
