"""The scripted OpenAI-compatible server, driven over real loopback sockets with plain httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from trurn import Usage
from trurn.testing import (
    ChatMessage,
    ChatRequest,
    DropConnection,
    EndWithoutDone,
    ErrorChunk,
    FunctionDefinition,
    MalformedChunk,
    Reply,
    ScriptedServer,
    ScriptedToolCall,
    StatusError,
    ToolDefinition,
    demo_model,
    open_scripted_server,
    serve_scripted_server,
)
from trurn.testing.pytest_plugin import ScriptedServerFactory

# --- helpers ------------------------------------------------------------------------------


def chat_body(content: str = "hi", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "test-model",
        "messages": [{"role": "user", "content": content}],
        "stream": True,
    }
    body.update(fields)
    return body


def payloads(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]


def chunks(response: httpx.Response) -> list[dict[str, Any]]:
    """Every JSON chunk of a stream that ended with ``[DONE]``."""
    data = payloads(response)
    assert data[-1] == "[DONE]"
    assert "[DONE]" not in data[:-1]
    return [json.loads(item) for item in data[:-1]]


def deltas(response: httpx.Response) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks(response) if c["choices"]]


def leaf_exceptions(exc: BaseException) -> list[BaseException]:
    children = getattr(exc, "exceptions", None)
    if children is None:
        return [exc]
    return [leaf for child in children for leaf in leaf_exceptions(child)]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # No timeouts: they would be timers on the virtual clock of the tests that use one.
    async with httpx.AsyncClient(timeout=None) as client:
        yield client


async def post(client: httpx.AsyncClient, server: ScriptedServer, **body: Any) -> httpx.Response:
    return await client.post(f"{server.base_url}/chat/completions", json=chat_body(**body))


def raw_chat_request(content: str, *, close: bool = False) -> bytes:
    body = json.dumps(chat_body(content)).encode()
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n%bContent-Length: %d\r\n\r\n%b"
        % (connection, len(body), body)
    )


async def raw_exchange(server: ScriptedServer, data: bytes) -> bytes:
    """Send raw bytes and read everything until the server closes the connection."""
    async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
        await stream.send_all(data)
        received = bytearray()
        while chunk := await stream.receive_some():
            received += chunk
    return bytes(received)


# --- streaming replies --------------------------------------------------------------------


async def test_text_is_streamed_in_the_asked_number_of_chunks(client: httpx.AsyncClient) -> None:
    async with open_scripted_server([Reply("Hello, brave new world!", text_chunks=4)]) as server:
        response = await post(client, server)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["transfer-encoding"] == "chunked"
    all_chunks = chunks(response)
    for chunk in all_chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "test-model"
        assert chunk["id"] == all_chunks[0]["id"]
        assert isinstance(chunk["created"], int)
        assert "usage" not in chunk
    received = deltas(response)
    assert received[0] == {"role": "assistant", "content": ""}
    texts = [d["content"] for d in received[1:-1]]
    assert len(texts) == 4
    assert "".join(texts) == "Hello, brave new world!"
    assert received[-1] == {}
    assert all_chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert [c["choices"][0]["finish_reason"] for c in all_chunks[:-1]] == [None] * 5


async def test_reasoning_comes_before_text_as_reasoning_content(
    client: httpx.AsyncClient,
) -> None:
    reply = Reply("Four.", reasoning="Two plus two is four.", reasoning_chunks=3)
    async with open_scripted_server([reply]) as server:
        response = await post(client, server)
    received = deltas(response)
    reasoning = [d["reasoning_content"] for d in received[1:4]]
    assert "".join(reasoning) == "Two plus two is four."
    assert all("content" not in d for d in received[1:4])
    assert received[4] == {"content": "Four."}


async def test_tool_call_arguments_are_split_and_reassemble(client: httpx.AsyncClient) -> None:
    reply = Reply(
        "Checking.",
        tool_calls=[
            ScriptedToolCall("get_weather", {"city": "Paris", "unit": "celsius"}, chunks=4),
            ScriptedToolCall("get_time", {"zone": "CET"}, id="my-id", chunks=2),
        ],
    )
    async with open_scripted_server([reply]) as server:
        response = await post(client, server)
    all_chunks = chunks(response)
    assert all_chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    fragments = [d["tool_calls"][0] for d in deltas(response) if "tool_calls" in d]
    first = [f for f in fragments if f["index"] == 0]
    second = [f for f in fragments if f["index"] == 1]
    assert len(first) == 1 + 4
    assert len(second) == 1 + 2
    assert first[0] == {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert second[0]["id"] == "my-id"
    assert second[0]["function"]["name"] == "get_time"
    for later in first[1:] + second[1:]:
        assert set(later) == {"index", "function"}
        assert set(later["function"]) == {"arguments"}
    assert json.loads("".join(f["function"]["arguments"] for f in first)) == {
        "city": "Paris",
        "unit": "celsius",
    }
    assert json.loads("".join(f["function"]["arguments"] for f in second)) == {"zone": "CET"}


async def test_tool_call_ids_count_the_conversations_tool_calls(
    client: httpx.AsyncClient,
) -> None:
    history = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "x", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "x", "content": "sunny"},
    ]
    async with open_scripted_server([Reply(tool_calls=[ScriptedToolCall("f")])]) as server:
        response = await post(client, server, messages=history)
    (header,) = [
        d["tool_calls"][0] for d in deltas(response) if "id" in d.get("tool_calls", [{}])[0]
    ]
    assert header["id"] == "call_2"


async def test_string_arguments_are_sent_verbatim(client: httpx.AsyncClient) -> None:
    reply = Reply(tool_calls=[ScriptedToolCall("f", '{"city": "Par', chunks=2)])
    async with open_scripted_server([reply]) as server:
        response = await post(client, server)
    pieces = [d["tool_calls"][0]["function"]["arguments"] for d in deltas(response)[1:-1]]
    assert pieces[0] == ""
    assert len(pieces) == 3
    assert "".join(pieces) == '{"city": "Par'


async def test_usage_chunk_only_when_asked(client: httpx.AsyncClient) -> None:
    usage = Usage(input_tokens=10, output_tokens=5, reasoning_tokens=2, cached_input_tokens=3)
    async with open_scripted_server([Reply("Hi", usage=usage)] * 2) as server:
        with_usage = await post(client, server, stream_options={"include_usage": True})
        without = await post(client, server)
    last = chunks(with_usage)[-1]
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    # Like OpenAI: once usage is asked for, every other chunk carries "usage": null.
    assert all(c["usage"] is None for c in chunks(with_usage)[:-1])
    assert all(c["choices"] and "usage" not in c for c in chunks(without))


async def test_usage_is_estimated_when_not_scripted(client: httpx.AsyncClient) -> None:
    reply = Reply("A reply of some length.", reasoning="thinking")
    async with open_scripted_server([reply]) as server:
        response = await post(
            client, server, content="a longer question", stream_options={"include_usage": True}
        )
    usage = chunks(response)[-1]["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > usage["completion_tokens_details"]["reasoning_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_finish_reason_and_model_can_be_scripted(client: httpx.AsyncClient) -> None:
    async with open_scripted_server([Reply("cut", finish_reason="length", model="m2")]) as server:
        response = await post(client, server)
    all_chunks = chunks(response)
    assert all_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert {c["model"] for c in all_chunks} == {"m2"}


# --- faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "code"),
    [
        (401, "invalid_request_error", "invalid_api_key"),
        (403, "permission_error", None),
        (404, "invalid_request_error", "model_not_found"),
        (429, "requests", "rate_limit_exceeded"),
        (500, "server_error", None),
        (503, "server_error", None),
        (529, "overloaded_error", "overloaded"),
    ],
)
async def test_status_errors_have_openai_error_bodies(
    client: httpx.AsyncClient, status: int, error_type: str, code: str | None
) -> None:
    async with open_scripted_server([Reply(fault=StatusError(status))]) as server:
        response = await post(client, server)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["code"] == code
    assert error["message"]
    assert "retry-after" not in response.headers


async def test_status_error_message_code_and_retry_after(client: httpx.AsyncClient) -> None:
    script = [
        Reply(fault=StatusError(429, retry_after=2.5, headers={"retry-after-ms": "2500"})),
        Reply(fault=StatusError(503, retry_after=3)),
        Reply(fault=StatusError(400, message="Too long for the context.", code="context_length")),
    ]
    async with open_scripted_server(script) as server:
        first = await post(client, server)
        second = await post(client, server)
        third = await post(client, server)
    assert first.headers["retry-after"] == "2.5"
    assert first.headers["retry-after-ms"] == "2500"
    assert second.headers["retry-after"] == "3"
    assert third.status_code == 400
    assert third.json() == {
        "error": {
            "message": "Too long for the context.",
            "type": "invalid_request_error",
            "param": None,
            "code": "context_length",
        }
    }


async def test_status_error_body_override(client: httpx.AsyncClient) -> None:
    page = "<html><body>Bad gateway, try later</body></html>"
    fault = StatusError(200, body=page, content_type="text/html")
    async with open_scripted_server([Reply(fault=fault)]) as server:
        response = await post(client, server)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html"
    assert response.text == page


async def test_malformed_chunk_replaces_one_chunk(client: httpx.AsyncClient) -> None:
    reply = Reply("abc", text_chunks=3, fault=MalformedChunk(2))
    async with open_scripted_server([reply]) as server:
        response = await post(client, server)
    data = payloads(response)
    assert data[2] == "{not json"
    assert data[-1] == "[DONE]"
    assert len(data) == 1 + 3 + 1 + 1  # role, text, finish, [DONE]
    contents = [
        json.loads(item)["choices"][0]["delta"].get("content")
        for item in data[:-1]
        if item != "{not json"
    ]
    assert contents == ["", "a", "c", None]


async def test_error_object_mid_stream(client: httpx.AsyncClient) -> None:
    reply = Reply("abcd", text_chunks=4, fault=ErrorChunk(2, message="Overloaded", code="busy"))
    async with open_scripted_server([reply]) as server:
        response = await post(client, server)
    data = payloads(response)
    assert len(data) == 3
    assert json.loads(data[1])["choices"][0]["delta"] == {"content": "a"}
    assert json.loads(data[2]) == {
        "error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "busy"}
    }


async def test_dropped_connection_is_a_protocol_error_and_the_server_lives_on(
    client: httpx.AsyncClient,
) -> None:
    script = [Reply("abcdef", text_chunks=6, fault=DropConnection(3)), Reply("again")]
    async with open_scripted_server(script) as server:
        received: list[str] = []
        with pytest.raises(httpx.RemoteProtocolError):  # noqa: PT012
            async with client.stream(
                "POST", f"{server.base_url}/chat/completions", json=chat_body()
            ) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        received.append(line[6:])
        after = await post(client, server)
    assert [json.loads(item)["choices"][0]["delta"].get("content") for item in received] == [
        "",
        "a",
        "b",
    ]
    assert deltas(after)[1] == {"content": "again"}


async def test_end_without_done_or_finish_reason(client: httpx.AsyncClient) -> None:
    reply = Reply("abcd", text_chunks=4, fault=EndWithoutDone(3))
    async with open_scripted_server([reply]) as server:
        response = await post(client, server)
    data = payloads(response)
    assert len(data) == 3
    assert "[DONE]" not in data
    assert all(json.loads(item)["choices"][0]["finish_reason"] is None for item in data)


# --- scripts --------------------------------------------------------------------------


async def test_running_out_of_replies_is_a_500(client: httpx.AsyncClient) -> None:
    async with open_scripted_server([Reply("one")]) as server:
        first = await post(client, server)
        second = await post(client, server)
    assert first.status_code == 200
    assert second.status_code == 500
    assert "ran out of replies" in second.json()["error"]["message"]
    assert second.json()["error"]["type"] == "server_error"


async def test_callable_script_sees_each_request(client: httpx.AsyncClient) -> None:
    seen: list[ChatRequest] = []

    def echo(request: ChatRequest) -> Reply:
        seen.append(request)
        return Reply(f"you said {request.messages[-1].text}")

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    async with open_scripted_server(echo) as server:
        first = await post(client, server, content="ping", tools=tools)
        second = await post(
            client,
            server,
            messages=[{"role": "user", "content": [{"type": "text", "text": "pong"}]}],
            stream_options={"include_usage": True},
        )
    assert deltas(first)[1] == {"content": "you said ping"}
    assert deltas(second)[1] == {"content": "you said pong"}
    assert seen == server.requests
    assert seen[0].model == "test-model"
    assert seen[0].tool_names == ["get_weather"]
    assert not seen[0].include_usage
    assert seen[1].include_usage
    assert seen[1].tools is None


async def test_requests_and_headers_are_recorded(client: httpx.AsyncClient) -> None:
    async with open_scripted_server([Reply("a"), Reply("b")]) as server:
        await post(client, server, content="first")
        await client.post(
            f"{server.base_url}/chat/completions",
            json=chat_body("second"),
            headers={"X-Test": "yes"},
        )
    assert [r.messages[0].text for r in server.requests] == ["first", "second"]
    assert "x-test" not in server.request_headers[0]
    assert server.request_headers[1]["x-test"] == "yes"


async def test_api_key_is_enforced(client: httpx.AsyncClient) -> None:
    url_body = {"json": chat_body()}
    async with open_scripted_server([Reply("ok")], api_key="sk-right") as server:
        url = f"{server.base_url}/chat/completions"
        missing = await client.post(url, **url_body)
        wrong = await client.post(url, headers={"Authorization": "Bearer sk-wrong"}, **url_body)
        right = await client.post(url, headers={"Authorization": "Bearer sk-right"}, **url_body)
    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        assert "sk-" not in refused.text
    # Refused requests are recorded but do not use up a reply.
    assert len(server.requests) == 3
    assert server.replies_used == 1
    assert deltas(right)[1] == {"content": "ok"}


async def test_keep_alive_serves_several_requests_on_one_connection(
    client: httpx.AsyncClient,
) -> None:
    async with open_scripted_server([Reply("one"), Reply("two"), Reply("three")]) as server:
        replies = [deltas(await post(client, server))[1]["content"] for _ in range(3)]
        assert server.connections == 1
    assert replies == ["one", "two", "three"]


async def test_unknown_path_and_wrong_method(client: httpx.AsyncClient) -> None:
    async with open_scripted_server([Reply("unused")]) as server:
        unknown = await client.post(f"{server.base_url}/embeddings", json={})
        wrong_method = await client.get(f"{server.base_url}/chat/completions")
        assert server.requests == []
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Invalid URL (POST /v1/embeddings)"
    assert unknown.json()["error"]["type"] == "invalid_request_error"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "Invalid request body"),
        (b'{"messages": []}', "model"),
        (b'{"model": "m", "messages": [{"content": "no role"}]}', "role"),
    ],
)
async def test_invalid_json_body_is_a_400(
    client: httpx.AsyncClient, body: bytes, needle: str
) -> None:
    async with open_scripted_server([Reply("unused")]) as server:
        response = await client.post(f"{server.base_url}/chat/completions", content=body)
    assert response.status_code == 400
    assert needle in response.json()["error"]["message"]


async def test_non_streaming_request_is_refused(client: httpx.AsyncClient) -> None:
    async with open_scripted_server([Reply("unused"), Reply("used")]) as server:
        refused = await post(client, server, stream=False)
        streamed = await post(client, server)
    assert refused.status_code == 400
    assert "stream" in refused.json()["error"]["message"]
    assert deltas(streamed)[1] == {"content": "unused"}


# --- raw HTTP -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab", 400),
        (b"GET /v1/chat/completions HTTP/1.0\r\n\r\n", 505),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            501,
        ),
    ],
)
async def test_malformed_http_gets_an_error_and_a_closed_connection(
    request_bytes: bytes, status: int
) -> None:
    async with open_scripted_server([Reply("unused")]) as server:
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
            await stream.send_all(request_bytes)
            # Half-close, so a body shorter than its Content-Length ends here.
            await stream.send_eof()
            received = bytearray()
            while chunk := await stream.receive_some():
                received += chunk
        assert server.requests == []
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close" in head.split(b"\r\n")
    assert json.loads(body)["error"]["message"]


async def test_pipelined_requests_are_answered_in_order() -> None:
    # Both requests in one write, the stray CRLF between them allowed by RFC 9112.
    pipelined = raw_chat_request("a") + b"\r\n" + raw_chat_request("b", close=True)
    async with open_scripted_server([Reply("first"), Reply("second")]) as server:
        received = await raw_exchange(server, pipelined)
        assert server.connections == 1
    assert [r.messages[0].text for r in server.requests] == ["a", "b"]
    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert received.index(b'"content":"first"') < received.index(b'"content":"second"')
    assert received.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


# --- time, disconnects, lifecycle ---------------------------------------------------------


async def test_chunk_delay_runs_on_the_virtual_clock(
    client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_scripted_server([Reply("abc", text_chunks=3, chunk_delay=0.5)]) as server:
        start = trio.current_time()
        response = await post(client, server)
        elapsed = trio.current_time() - start
    # role, three text chunks, finish, [DONE]: six events, each 0.5 s after the previous.
    assert len(payloads(response)) == 6
    assert elapsed == pytest.approx(3.0)


async def test_client_hanging_up_mid_stream_does_not_stop_the_server(
    client: httpx.AsyncClient, autojump_clock: trio.testing.MockClock
) -> None:
    slow = Reply("x" * 50, text_chunks=50, chunk_delay=1.0)
    async with open_scripted_server([slow, Reply("still here")]) as server:
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
            await stream.send_all(raw_chat_request("hang up"))
            received = bytearray()
            while b"data: " not in received:
                received += await stream.receive_some()
        # Let the server write into the closed connection until it notices.
        await trio.sleep(60)
        after = await post(client, server)
    assert deltas(after)[1] == {"content": "still here"}


async def test_serve_scripted_server_with_nursery_start(nursery: trio.Nursery) -> None:
    server = await nursery.start(serve_scripted_server, [Reply("started")])
    assert isinstance(server, ScriptedServer)
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    async with httpx.AsyncClient() as client:
        response = await post(client, server)
    assert deltas(response)[1] == {"content": "started"}


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::"])
async def test_only_loopback_hosts_are_accepted(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        await serve_scripted_server([], host=host)


async def test_cancelling_the_server_closes_open_streams(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = Reply("x" * 10, text_chunks=10, chunk_delay=1.0)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_scripted_server, [slow])
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(raw_chat_request("cancel me"))
        received = bytearray()
        while b"data: " not in received:
            received += await stream.receive_some()
        nursery.cancel_scope.cancel()
    async with stream:
        while chunk := await stream.receive_some():
            received += chunk
    # The connection was closed mid-stream: no [DONE], no end of the chunked body.
    assert received.count(b"data: ") < 10
    assert b"[DONE]" not in received
    assert not received.endswith(b"0\r\n\r\n")


async def test_body_exceptions_come_out_unwrapped() -> None:
    with pytest.raises(KeyError, match="from the body"):
        async with open_scripted_server([Reply("unused")]):
            raise KeyError("from the body")


async def test_a_failing_script_function_fails_loudly(client: httpx.AsyncClient) -> None:
    def broken(request: ChatRequest) -> Reply:
        raise LookupError("no reply for this request")

    try:
        async with open_scripted_server(broken) as server:
            await post(client, server)
    except BaseException as exc:  # an exception group from the server's nursery
        caught = exc
    else:
        pytest.fail("the script's error did not come out")
    assert [type(e) for e in leaf_exceptions(caught)] == [LookupError]


def test_script_items_must_be_replies() -> None:
    async def main() -> None:
        await serve_scripted_server([Reply("ok"), "not a reply"])  # type: ignore[list-item]

    with pytest.raises(TypeError, match=r"script\[1\] is a str"):
        trio.run(main)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Reply(text_chunks=0), "Reply.text_chunks"),
        (lambda: Reply(reasoning_chunks=-1), "Reply.reasoning_chunks"),
        (lambda: Reply(chunk_delay=-0.1), "Reply.chunk_delay"),
        (lambda: ScriptedToolCall("f", chunks=0), "ScriptedToolCall.chunks"),
        (lambda: ScriptedToolCall(""), "ScriptedToolCall.name"),
        (lambda: StatusError(99), "StatusError.status"),
        (lambda: StatusError(429, retry_after=-1), "StatusError.retry_after"),
        (lambda: StatusError(500, headers={"x-a": "1\r\nx-b: 2"}), "line break"),
        (lambda: StatusError(500, headers={"bad name": "1"}), "header name"),
        (lambda: MalformedChunk(-1), "MalformedChunk.at"),
        (lambda: DropConnection(-2), "DropConnection.after"),
    ],
)
def test_bad_script_values_are_refused_with_their_name(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# --- the demo model ---------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


async def test_demo_model_weather_conversation(client: httpx.AsyncClient) -> None:
    async with open_scripted_server(demo_model) as server:
        question = {"role": "user", "content": "What's the weather in Oslo today?"}
        first = await post(client, server, messages=[question], tools=[WEATHER_TOOL])
        text = "".join(d.get("content") or "" for d in deltas(first))
        fragments = [d["tool_calls"][0] for d in deltas(first) if "tool_calls" in d]
        call_id = fragments[0]["id"]
        arguments = "".join(f["function"]["arguments"] for f in fragments)
        history = [
            question,
            {
                "role": "assistant",
                "content": text,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21°C"},
        ]
        second = await post(client, server, messages=history, tools=[WEATHER_TOOL])
    assert text == "Let me check the weather."
    assert fragments[0]["function"]["name"] == "get_weather"
    assert json.loads(arguments) == {"city": "Oslo"}
    assert chunks(first)[-1]["choices"][0]["finish_reason"] == "tool_calls"

    second_deltas = deltas(second)
    reasoning = [d["reasoning_content"] for d in second_deltas if "reasoning_content" in d]
    answer = [d["content"] for d in second_deltas[1:] if "content" in d]
    assert len(reasoning) >= 2
    assert len(answer) >= 3
    assert "".join(answer) == "In Oslo it is sunny, 21°C."
    assert chunks(second)[-1]["choices"][0]["finish_reason"] == "stop"


def make_request(content: str, *, tools: bool = True) -> ChatRequest:
    weather = ToolDefinition(function=FunctionDefinition(name="get_weather"))
    return ChatRequest(
        model="demo",
        messages=[ChatMessage(role="user", content=content)],
        tools=[weather] if tools else None,
    )


@pytest.mark.parametrize(
    ("content", "city"),
    [
        ("What's the weather in Tokyo?", "Tokyo"),
        ("how warm is it in New York right now", "New York"),
        ("Tell me in detail about the weather in Lisbon.", "Lisbon"),
        ("Weather please", "Tokyo"),
    ],
)
def test_demo_model_finds_the_city(content: str, city: str) -> None:
    reply = demo_model(make_request(content))
    assert reply.text == "Let me check the weather."
    (call,) = reply.tool_calls
    assert call.name == "get_weather"
    assert call.arguments == {"city": city}
    assert demo_model(make_request(content)) == reply


def test_demo_model_without_the_tool_just_talks() -> None:
    reply = demo_model(make_request("What's the weather in Tokyo?", tools=False))
    assert reply.tool_calls == []
    assert "weather" in reply.text


# --- the pytest plugin --------------------------------------------------------------------


async def test_scripted_server_fixture(
    scripted_server: ScriptedServerFactory, client: httpx.AsyncClient
) -> None:
    # Needs ``pytest_plugins = ["trurn.testing.pytest_plugin"]`` in tests/conftest.py.
    server = await scripted_server([Reply("from the fixture")], api_key="k")
    response = await client.post(
        f"{server.base_url}/chat/completions",
        json=chat_body(),
        headers={"Authorization": "Bearer k"},
    )
    assert deltas(response)[1] == {"content": "from the fixture"}
