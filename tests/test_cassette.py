"""Cassettes: a turn recorded against the scripted server replays the same with no server.

Recording runs OpenAIChat against trurn's scripted server on 127.0.0.1 (standing in for a
real API); replay runs the same provider code with nothing listening. The lower-level
cases (masking, compressed bodies, transport failures) use an httpx.MockTransport as
the "real" transport.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
import trio.testing

import trurn
from trurn import events
from trurn.providers import OpenAIChat
from trurn.testing import DropConnection, Reply, ScriptedToolCall, StatusError, open_scripted_server
from trurn.testing._cassette import (
    Cassette,
    CassetteFormatError,
    CassetteMismatch,
    RecordedError,
    RecordedExchange,
    RecordingTransport,
    ReplayTransport,
    load_cassette,
    open_cassette,
)

SECRET = "sk-secret-123"
MESSAGE = f"Weather in Tokyo? (my key is {SECRET}, do not tell)"
REPLIES = [
    Reply(
        "Let me check.",
        reasoning="The user wants the weather.",
        tool_calls=[ScriptedToolCall("get_weather", {"city": "Tokyo"}, chunks=4)],
        chunk_delay=0.001,  # one network read per event, so bodies come in many pieces
    ),
    Reply("It is sunny in Tokyo.", text_chunks=5, chunk_delay=0.001),
]


@trurn.tool
async def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"sunny in {city}"


class Turn(msgspec.Struct):
    result: trurn.TurnResult
    events: list[events.Event]


def comparable(turn: Turn) -> tuple[trurn.TurnResult, list[events.Event]]:
    """The turn without its random turn ids."""
    return (
        msgspec.structs.replace(turn.result, turn_id=""),
        [without_turn_ids(event) for event in turn.events],
    )


def without_turn_ids(event: events.Event) -> events.Event:
    if isinstance(event, events.TurnStarted):
        return msgspec.structs.replace(event, turn_id="", root_turn_id="", chain=[])
    return msgspec.structs.replace(event, turn_id="")


async def run(
    client: httpx.AsyncClient,
    base_url: str,
    message: str = MESSAGE,
    on_event: Callable[[events.Event], None] | None = None,
) -> Turn:
    provider = OpenAIChat("scripted", base_url=base_url, api_key=SECRET, client=client)
    seen: list[events.Event] = []

    def record(event: events.Event) -> None:
        seen.append(event)
        if on_event is not None:
            on_event(event)

    result = await trurn.run_turn(
        provider=provider, message=message, tools=[get_weather], on_event=record, retry=None
    )
    return Turn(result, seen)


class Recorded(msgspec.Struct):
    path: Path
    base_url: str
    turn: Turn


@pytest.fixture
async def recorded(tmp_path: Path) -> Recorded:
    """A cassette of a two-request turn; the server that answered it is stopped."""
    path = tmp_path / "cassettes" / "turn.jsonl"
    async with (
        open_scripted_server(REPLIES, api_key=SECRET) as server,
        open_cassette(path, "record") as client,
    ):
        turn = await run(client, server.base_url)
    return Recorded(path, server.base_url, turn)


def exchange_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_bytes().splitlines()
    assert msgspec.json.decode(lines[0]) == {"trurn_cassette": 1}
    return [msgspec.json.decode(line) for line in lines[1:]]


# --- record, then replay ------------------------------------------------------------------


async def test_a_recorded_turn_replays_the_same_with_nothing_listening(
    recorded: Recorded,
) -> None:
    assert recorded.turn.result.text == "It is sunny in Tokyo."

    cassette = await load_cassette(recorded.path)
    transport = ReplayTransport(cassette)
    async with httpx.AsyncClient(transport=transport) as client:
        replayed = await run(client, recorded.base_url)  # the server there is gone

    assert comparable(replayed) == comparable(recorded.turn)
    result = replayed.result
    assert result.text == "It is sunny in Tokyo."
    assert [(call.id, call.name, call.arguments) for call in result.tool_calls] == [
        ("call_1", "get_weather", {"city": "Tokyo"})
    ]
    assert result.usage.total_tokens > 0
    assert result.stop_reason == "completed"
    # The provider's stream decoding ran: deltas came out as they did when recording.
    deltas = [e.text for e in replayed.events if isinstance(e, events.AssistantDelta)]
    assert "".join(deltas) == "Let me check.It is sunny in Tokyo."
    assert len(deltas) == 6  # "Let me check." and the 5 pieces of the answer
    assert any(isinstance(e, events.AssistantReasoningDelta) for e in replayed.events)
    assert any(isinstance(e, events.ToolCallDelta) for e in replayed.events)
    assert (transport.played, transport.remaining) == (2, 0)


async def test_the_file_has_one_line_per_exchange_and_no_credentials(
    recorded: Recorded,
) -> None:
    data = recorded.path.read_bytes()
    assert SECRET.encode() not in data
    assert b"Bearer" not in data
    assert b"authorization" not in data.lower()

    exchanges = exchange_lines(recorded.path)
    assert len(exchanges) == 2
    first, second = exchanges
    assert (first["method"], first["path"], first["status"]) == (
        "POST",
        "/v1/chat/completions",
        200,
    )
    assert first["headers"]["content-type"].startswith("text/event-stream")
    assert first["request_body"]["messages"][0]["content"] == (
        "Weather in Tokyo? (my key is [redacted], do not tell)"
    )
    assert second["request_body"]["messages"][-1]["role"] == "tool"
    for exchange in exchanges:
        assert "data: [DONE]" in exchange["body"]
        assert len(exchange["pieces"]) > 1
        assert sum(exchange["pieces"]) == len(exchange["body"].encode())
        assert exchange.get("end", "complete") == "complete"


async def test_record_mode_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "turn.jsonl"
    path.write_bytes(b"not a cassette\n")
    async with (
        open_scripted_server([Reply("Hi.")]) as server,
        open_cassette(path, "record") as client,
    ):
        provider = OpenAIChat("scripted", base_url=server.base_url, client=client)
        await trurn.run_turn(provider=provider, message="hello")
    assert len((await load_cassette(path)).exchanges) == 1


async def test_auto_mode_records_once_then_replays(tmp_path: Path) -> None:
    path = tmp_path / "auto.jsonl"
    async with (
        open_scripted_server(REPLIES, api_key=SECRET) as server,
        open_cassette(path) as client,
    ):
        first = await run(client, server.base_url)
    assert path.exists()
    # The host is not part of a match: replay at an address that does not resolve.
    async with open_cassette(path) as client:
        second = await run(client, "http://cassette.invalid/v1")
    assert comparable(second) == comparable(first)


async def test_an_empty_cassette_replays_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    async with open_cassette(path, "record"):
        pass  # entering record mode writes the file even if no request follows
    async with open_cassette(path) as client:
        with pytest.raises(CassetteMismatch, match=r"holds 0 exchange\(s\)"):
            await run(client, "http://cassette.invalid/v1")


async def test_replay_mode_needs_the_file_and_modes_are_checked(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(FileNotFoundError, match=r"no cassette at .*missing\.jsonl"):
        async with open_cassette(missing, "replay"):
            pass
    with pytest.raises(ValueError, match="mode must be 'auto', 'record' or 'replay'"):
        async with open_cassette(missing, "once"):  # type: ignore[arg-type]
            pass
    assert not missing.exists()
    with pytest.raises(TypeError, match="takes a Cassette"):
        ReplayTransport(str(missing))  # type: ignore[arg-type]


async def test_open_cassette_closes_the_inner_transport_in_every_mode(
    recorded: Recorded, tmp_path: Path
) -> None:
    class Inner(httpx.AsyncBaseTransport):
        closed = False

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            raise AssertionError("not used")

        async def aclose(self) -> None:
            self.closed = True

    for path in (recorded.path, tmp_path / "new.jsonl"):  # replay, then record
        inner = Inner()
        async with open_cassette(path, inner=inner):
            pass
        assert inner.closed


# --- mismatches -----------------------------------------------------------------------------


async def test_a_different_body_is_a_mismatch_naming_where(recorded: Recorded) -> None:
    async with open_cassette(recorded.path, "replay") as client:
        with pytest.raises(CassetteMismatch) as caught:
            await run(client, recorded.base_url, message="Weather in Oslo?")
    message = str(caught.value)
    assert message == (
        f"request 1 (POST /v1/chat/completions) does not match {recorded.path}: "
        "the body differs at $.messages[0].content: "
        'recorded "Weather in Tokyo? (my key is [redacted], do not tell)", '
        'sent "Weather in Oslo?"'
    )
    assert SECRET not in message


async def test_without_body_matching_a_different_prompt_gets_the_recorded_replies(
    recorded: Recorded,
) -> None:
    async with open_cassette(recorded.path, "replay", match_body=False) as client:
        turn = await run(client, recorded.base_url, message="Weather in Oslo?")
    assert turn.result.text == "It is sunny in Tokyo."


async def test_a_different_path_or_method_is_a_mismatch_and_the_exchange_stays_next(
    recorded: Recorded,
) -> None:
    transport = ReplayTransport(await load_cassette(recorded.path))
    async with httpx.AsyncClient(transport=transport, base_url=recorded.base_url) as client:
        with pytest.raises(CassetteMismatch) as caught:
            await client.get("/models")
        assert str(caught.value) == (
            f"request 1 (GET /v1/models) does not match {recorded.path}: "
            "the cassette has POST /v1/chat/completions there"
        )
        with pytest.raises(CassetteMismatch, match=r"request 1 \(GET /v1/chat/completions\)"):
            await client.get("/chat/completions")
        with pytest.raises(CassetteMismatch, match=r"\(POST /v1/embeddings\) does .* has POST"):
            await client.post("/embeddings", json={})
        assert transport.played == 0
    # The matching request still gets the first exchange.
    async with httpx.AsyncClient(transport=transport) as client:
        turn = await run(client, recorded.base_url)
    assert turn.result.text == "It is sunny in Tokyo."


async def test_running_past_the_last_exchange_is_a_mismatch(recorded: Recorded) -> None:
    async with open_cassette(recorded.path, "replay") as client:
        await run(client, recorded.base_url)
        with pytest.raises(CassetteMismatch) as caught:
            await client.post(f"{recorded.base_url}/chat/completions", json={"model": "m"})
    assert str(caught.value) == (
        f"request 3 (POST /v1/chat/completions) was not recorded: {recorded.path} holds "
        "2 exchange(s). Record the cassette again to include it."
    )


@pytest.mark.parametrize(
    ("recorded_body", "sent_body", "where"),
    [
        ({"a": [1, 2]}, {"a": [1, 2, 3]}, "$.a: recorded 2 items, sent 3"),
        ({"a": 1, "b": 2}, {"a": 1}, "$.b: recorded 2, sent nothing"),
        ({"a": 1}, {"a": 1, "c": True}, "$.c: recorded nothing, sent true"),
        ({"a": [{"b": 1}]}, {"a": [{"b": 1.0}]}, "$.a[0].b: recorded 1, sent 1.0"),
        ({"a": 1}, [1], '$: recorded {"a":1}, sent [1]'),
    ],
)
async def test_the_first_body_difference_is_named(
    recorded_body: Any, sent_body: Any, where: str
) -> None:
    cassette = Cassette(
        [RecordedExchange(method="POST", path="/x", request_body=recorded_body, status=204)]
    )
    async with httpx.AsyncClient(transport=ReplayTransport(cassette)) as client:
        with pytest.raises(CassetteMismatch) as caught:
            await client.post("http://h/x", json=sent_body)
    assert str(caught.value).endswith(f"the body differs at {where}")


# --- a recording cut short, and recorded failures ------------------------------------------


async def test_a_cancelled_turn_leaves_a_valid_cassette_with_the_partial_body(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cancelled.jsonl"
    reply = Reply("one two three four five six", text_chunks=6, chunk_delay=0.01)

    def cancel_on_first_delta(scope: trio.CancelScope) -> Callable[[events.Event], None]:
        def on_event(event: events.Event) -> None:
            if isinstance(event, events.AssistantDelta):
                scope.cancel()

        return on_event

    async with (
        open_scripted_server([reply], api_key=SECRET) as server,
        open_cassette(path, "record") as client,
    ):
        with trio.CancelScope() as scope:
            await run(client, server.base_url, on_event=cancel_on_first_delta(scope))
        assert scope.cancelled_caught

    (exchange,) = (await load_cassette(path)).exchanges
    assert exchange.end == "closed"
    assert exchange.status == 200
    assert exchange.body.startswith("data: ")
    assert "[DONE]" not in exchange.body
    assert "one " in exchange.body

    # Cancelled at the same point, the replay does the same.
    async with open_cassette(path) as client:
        with trio.CancelScope() as scope:
            await run(client, server.base_url, on_event=cancel_on_first_delta(scope))
        assert scope.cancelled_caught
    # Read further, it says the recording stops there (through the provider's path).
    async with open_cassette(path) as client:
        with pytest.raises(trurn.ProviderConnectionError, match="the recording ends here"):
            await run(client, server.base_url)


async def test_a_connection_dropped_mid_stream_replays_as_the_same_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dropped.jsonl"
    reply = Reply("partial answer here", text_chunks=3, fault=DropConnection(after=2))
    async with (
        open_scripted_server([reply]) as server,
        open_cassette(path, "record") as client,
    ):
        provider = OpenAIChat("scripted", base_url=server.base_url, client=client)
        with pytest.raises(trurn.ProviderConnectionError) as live:
            await trurn.run_turn(provider=provider, message="hi", retry=None)

    (exchange,) = (await load_cassette(path)).exchanges
    assert exchange.end == "error"
    assert exchange.error is not None
    assert exchange.error.type == "RemoteProtocolError"

    async with open_cassette(path) as client:
        provider = OpenAIChat("scripted", base_url=server.base_url, client=client)
        with pytest.raises(trurn.ProviderConnectionError) as replayed:
            await trurn.run_turn(provider=provider, message="hi", retry=None)
    assert str(replayed.value) == str(live.value)


async def test_an_error_status_replays_as_the_same_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "rate-limited.jsonl"
    fault = StatusError(status=429, message="Slow down", retry_after=7)
    async with (
        open_scripted_server([Reply(fault=fault)]) as server,
        open_cassette(path, "record") as client,
    ):
        provider = OpenAIChat("scripted", base_url=server.base_url, client=client)
        with pytest.raises(trurn.RateLimitError) as live:
            await trurn.run_turn(provider=provider, message="hi", retry=None)

    (exchange,) = exchange_lines(path)
    assert exchange["status"] == 429
    assert exchange["headers"]["retry-after"] == "7"

    async with open_cassette(path) as client:
        provider = OpenAIChat("scripted", base_url=server.base_url, client=client)
        with pytest.raises(trurn.RateLimitError) as replayed:
            await trurn.run_turn(provider=provider, message="hi", retry=None)
    assert replayed.value.retry_after == live.value.retry_after == 7
    assert str(replayed.value) == str(live.value)


# --- the transports on their own -----------------------------------------------------------


async def record_with(
    handler: Callable[[httpx.Request], httpx.Response], path: Path, **request: Any
) -> httpx.Response:
    transport = RecordingTransport(httpx.MockTransport(handler), path)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.request(**request)
    assert transport.recorded == 1
    return response


async def test_secret_query_values_body_fields_and_echoed_credentials_are_masked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "masked.jsonl"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=f"echo: {SECRET}", headers={"set-cookie": "s=1"})

    response = await record_with(
        handler,
        path,
        method="POST",
        url="https://api.example/v1/x",
        params={"api-version": "2024-06-01", "key": "AIzaSomeGoogleKey"},
        json={"api_key": "inline-key-1234", "max_tokens": 5, "prompt_cache_key": "c1"},
        headers={"api-key": SECRET},
    )
    assert response.text == f"echo: {SECRET}"  # the caller gets the real bytes
    data = path.read_bytes()
    for secret in (SECRET, "AIzaSomeGoogleKey", "inline-key-1234", "set-cookie"):
        assert secret.encode() not in data
    (exchange,) = exchange_lines(path)
    assert exchange["path"] == "/v1/x?api-version=2024-06-01&key=[redacted]"
    assert exchange["request_body"] == {
        "api_key": "[redacted]",
        "max_tokens": 5,
        "prompt_cache_key": "c1",
    }
    assert exchange["body"] == "echo: [redacted]"
    assert exchange["pieces"] == [len("echo: [redacted]")]  # masked: one piece

    # Replay masks the request the same way, so it matches whatever key it carries.
    cassette = await load_cassette(path)
    async with httpx.AsyncClient(transport=ReplayTransport(cassette)) as client:
        replayed = await client.post(
            "http://other.host/v1/x",
            params={"api-version": "2024-06-01", "key": "another-key"},
            json={"api_key": "another", "max_tokens": 5, "prompt_cache_key": "c1"},
        )
    assert replayed.text == "echo: [redacted]"


async def test_a_compressed_body_is_recorded_raw_and_decoded_on_replay(tmp_path: Path) -> None:
    path = tmp_path / "gzip.jsonl"
    compressed = gzip.compress(b"hello, compressed world")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=compressed, headers={"content-encoding": "gzip"})

    response = await record_with(handler, path, method="GET", url="http://h/z")
    assert response.text == "hello, compressed world"
    (exchange,) = (await load_cassette(path)).exchanges
    assert exchange.body_encoding == "base64"
    assert exchange.body_bytes == compressed

    async with httpx.AsyncClient(transport=ReplayTransport(Cassette([exchange]))) as client:
        replayed = await client.get("http://h/z")
    assert replayed.text == "hello, compressed world"


async def test_a_request_that_got_no_response_replays_its_error(tmp_path: Path) -> None:
    path = tmp_path / "refused.jsonl"

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("All connection attempts failed")

    with pytest.raises(httpx.ConnectError):
        await record_with(handler, path, method="GET", url="http://h/v1/models")
    (exchange,) = exchange_lines(path)
    assert exchange == {
        "method": "GET",
        "path": "/v1/models",
        "end": "error",
        "error": {"type": "ConnectError", "message": "All connection attempts failed"},
    }
    async with httpx.AsyncClient(transport=ReplayTransport(await load_cassette(path))) as client:
        with pytest.raises(httpx.ConnectError, match=r"^All connection attempts failed$"):
            await client.get("http://h/v1/models")


async def test_replay_serves_the_recorded_pieces_one_checkpoint_each() -> None:
    exchange = RecordedExchange(
        method="GET", path="/s", status=200, body="abcdef", pieces=[1, 2, 0, 3]
    )
    async with (
        httpx.AsyncClient(transport=ReplayTransport(Cassette([exchange]))) as client,
        client.stream("GET", "http://h/s") as response,
    ):
        pieces: list[bytes] = []
        raw: AsyncIterator[bytes] = response.aiter_raw()
        while True:
            with trio.testing.assert_checkpoints():
                try:
                    pieces.append(await raw.__anext__())
                except StopAsyncIteration:
                    break
    assert pieces == [b"a", b"bc", b"def"]  # httpx skips the empty piece


async def test_the_recording_waits_for_the_body_and_writes_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "lines.jsonl"
    text = "line one\nline two\n" * 3

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=text)

    transport = RecordingTransport(httpx.MockTransport(handler), path)
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("GET", "http://h/a") as response:
            assert transport.recorded == 0  # headers only so far: nothing written
            assert await response.aread() == text.encode()
        assert transport.recorded == 1
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(client.get, "http://h/b")
    exchanges = exchange_lines(path)
    assert len(exchanges) == 6
    assert exchanges[0]["body"] == text
    assert [e["path"] for e in exchanges] == ["/a"] + ["/b"] * 5


# --- bad files -------------------------------------------------------------------------------

HEADER = b'{"trurn_cassette": 1}\n'
GOOD = b'{"method": "GET", "path": "/a", "status": 200, "body": "ok"}\n'


@pytest.mark.parametrize(
    ("content", "line", "says"),
    [
        (GOOD, 1, 'not a trurn cassette: the first line must be {"trurn_cassette": 1}'),
        (b'{"trurn_cassette": 2}\n', 1, "cassette version 2 is not supported"),
        (HEADER + GOOD + b'{"method": "PO', 3, "not a recorded exchange: "),
        (HEADER + b"\n" + b'{"method": "GET"}\n', 3, "missing required field `path`"),
        (
            HEADER + b'{"method": "GET", "path": "/a", "status": 200, "peices": [1]}\n',
            2,
            "unknown field `peices`",
        ),
        (
            HEADER + b'{"method": "GET", "path": "/a", "status": 200, "body": "abc", '
            b'"pieces": [1, 1]}\n',
            2,
            'pieces [1,1] do not add up to the body\'s 3 bytes (remove "pieces"',
        ),
        (
            HEADER + b'{"method": "GET", "path": "/a", "status": 200, "body": "%%%", '
            b'"body_encoding": "base64"}\n',
            2,
            "body is not valid base64",
        ),
        (HEADER + b'{"method": "GET", "path": "/a", "status": 999}\n', 2, "status must be in"),
        (
            HEADER + b'{"method": "GET", "path": "/a", "end": "error", '
            b'"error": {"type": "ValueError", "message": "x"}}\n',
            2,
            "error type 'ValueError' is not an httpx transport error",
        ),
        (
            HEADER + b'{"method": "GET", "path": "/a", "status": 200, "end": "error"}\n',
            2,
            '"error" must be given exactly when "end" is "error"',
        ),
        (HEADER + b'{"method": "GET", "path": "a", "status": 200}\n', 2, "path must start"),
    ],
)
async def test_a_bad_line_is_named_by_file_and_number(
    tmp_path: Path, content: bytes, line: int, says: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(CassetteFormatError, match=f"^{re.escape(f'{path}, line {line}: ')}") as e:
        await load_cassette(path)
    assert says in str(e.value)


async def test_an_empty_file_is_not_a_cassette(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n")
    with pytest.raises(CassetteFormatError, match="is empty: it is not a trurn cassette"):
        await load_cassette(path)


def test_recorded_errors_name_httpx_transport_errors() -> None:
    assert RecordedError("ReadTimeout").type == "ReadTimeout"
    with pytest.raises(ValueError, match="'HTTPStatusError' is not an httpx transport error"):
        RecordedError("HTTPStatusError")
