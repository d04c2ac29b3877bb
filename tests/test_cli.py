"""The ``trurn`` command line."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import httpx
import pytest
import trio

from trurn import _cli
from trurn.testing import Reply, ScriptedToolCall, open_scripted_server


def test_run_on_the_offline_model(capsys: pytest.CaptureFixture[str]) -> None:
    status = _cli.main(["run", "What's the weather in Tokyo?"])
    out = capsys.readouterr().out
    assert status == 0
    assert "built-in offline model" in out
    assert "you> What's the weather in Tokyo?" in out
    assert '-> get_weather({"city":"Tokyo"})' in out
    assert "<- get_weather:" in out
    assert "assistant> In Tokyo it is" in out
    assert "[completed;" in out


def test_run_against_a_base_url(capsys: pytest.CaptureFixture[str]) -> None:
    replies = [
        Reply("Checking.", tool_calls=[ScriptedToolCall("get_weather", {"city": "Oslo"})]),
        Reply("Cold in Oslo.", text_chunks=3),
    ]

    async def scenario() -> tuple[int, list[str | None]]:
        async with open_scripted_server(replies, api_key="sk-cli") as server:
            argv = ["run", "--base-url", server.base_url, "--model", "m", "Oslo?"]
            argv += ["--api-key-env", "TRURN_TEST_KEY", "--system", "Short answers."]
            status = await trio.to_thread.run_sync(_cli.main, argv)
            return status, [r.messages[0].content for r in server.requests]

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("TRURN_TEST_KEY", "sk-cli")
    try:
        status, systems = trio.run(scenario)
    finally:
        monkeypatch.undo()
    out = capsys.readouterr().out
    assert status == 0
    assert "offline" not in out
    assert "assistant> Cold in Oslo." in out
    assert systems == ["Short answers.", "Short answers."]


def test_a_provider_error_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> int:
        async with open_scripted_server([Reply("x")], api_key="right") as server:
            argv = ["run", "--base-url", server.base_url, "--api-key-env", "TRURN_NO_SUCH", "hi"]
            return await trio.to_thread.run_sync(_cli.main, argv)

    assert trio.run(scenario) == 1
    err = capsys.readouterr().err
    assert err.startswith("trurn: error: ")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        _cli.main(["run"])
    assert caught.value.code == 2
    assert "message" in capsys.readouterr().err


async def test_mock_server_serves_the_offline_model() -> None:
    async with trio.open_nursery() as nursery:
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.close()
        nursery.start_soon(partial(_cli._serve, port, sys.stdout))
        async with httpx.AsyncClient() as client:
            for _ in range(100):
                try:
                    response = await client.post(
                        f"http://127.0.0.1:{port}/v1/chat/completions",
                        json={
                            "model": "m",
                            "stream": True,
                            "messages": [{"role": "user", "content": "hi"}],
                        },
                    )
                    break
                except httpx.ConnectError:
                    await trio.sleep(0.01)
        assert response.status_code == 200
        assert b"data: [DONE]" in response.content
        nursery.cancel_scope.cancel()


def test_python_dash_m_trurn() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trurn", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("trurn ")


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["run", "--max-steps", "0", "hi"], "must be from 1 to 1000, got 0"),
        (["run", "--max-steps", "many", "hi"], "not a whole number: 'many'"),
        (["mock-server", "--port", "99999"], "must be from 1 to 65535, got 99999"),
    ],
)
def test_bad_option_values_are_named(
    capsys: pytest.CaptureFixture[str], argv: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        _cli.main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert complaint in err
    assert "Traceback" not in err


def test_mock_server_on_a_taken_port_is_a_one_line_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-m", "trurn", "mock-server", "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.strip() == "trurn: error: Address already in use"
