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


# --- provider strings ------------------------------------------------------------------


def test_run_with_an_openai_compatible_provider_string(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    replies = [Reply("Warm in Rome.", text_chunks=2)]
    monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", "sk-from-env")

    async def scenario() -> tuple[int, list[str], list[str]]:
        async with open_scripted_server(replies, api_key="sk-from-env") as server:
            argv = ["run", "--model", f"openai-compatible:my-model@{server.base_url}", "Rome?"]
            status = await trio.to_thread.run_sync(_cli.main, argv)
            return (
                status,
                [r.model for r in server.requests],
                [h["authorization"] for h in server.request_headers],
            )

    status, models, auth = trio.run(scenario)
    out = capsys.readouterr().out
    assert status == 0
    assert "offline" not in out
    assert "assistant> Warm in Rome." in out
    assert models == ["my-model"]
    assert auth == ["Bearer sk-from-env"]


def test_api_key_env_names_the_key_for_a_provider_string(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("TRURN_TEST_KEY", "sk-named")

    async def scenario() -> tuple[int, list[str]]:
        async with open_scripted_server([Reply("ok")], api_key="sk-named") as server:
            argv = ["run", "--model", f"openai-compatible:m@{server.base_url}", "hi"]
            argv += ["--api-key-env", "TRURN_TEST_KEY"]
            status = await trio.to_thread.run_sync(_cli.main, argv)
            return status, [h["authorization"] for h in server.request_headers]

    assert trio.run(scenario) == (0, ["Bearer sk-named"])
    assert "assistant> ok" in capsys.readouterr().out


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``argv``, which must fail with exit status 2; the single stderr line."""
    assert _cli.main(argv) == 2
    captured = capsys.readouterr()
    assert "you>" not in captured.out  # refused before the turn started
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("trurn: error: ")
    return lines[0]


def test_anthropic_without_a_key_is_a_one_line_error_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-anthropic")
    line = one_line_error(capsys, ["run", "--model", "anthropic:claude-sonnet-4-5", "hi"])
    assert line == (
        "trurn: error: anthropic:claude-sonnet-4-5 needs an API key: "
        "set ANTHROPIC_API_KEY or pass api_key="
    )


def test_unset_api_key_env_with_a_provider_string_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRURN_NO_SUCH", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-not-used")
    argv = ["run", "--model", "anthropic:claude-sonnet-4-5", "--api-key-env", "TRURN_NO_SUCH"]
    line = one_line_error(capsys, [*argv, "hi"])
    assert line == "trurn: error: set TRURN_NO_SUCH (named by --api-key-env) to the API key"


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--model", "gemini:pro"], "unknown provider prefix 'gemini:': write openai:MODEL"),
        (["--model", "gpt-4o"], "--model gpt-4o needs a provider prefix (e.g. openai:gpt-4o)"),
        (["--model", "openai-compatible:m"], "openai-compatible needs a model and a URL"),
        (
            ["--model", "openai:gpt-4o", "--base-url", "http://127.0.0.1:9/v1"],
            "--model openai:... is a provider string: drop --base-url",
        ),
        (["--base-url", "ftp://127.0.0.1/v1"], "--base-url: OpenAIChat base_url must be an http"),
    ],
)
def test_bad_model_configuration_is_a_one_line_error_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], complaint: str
) -> None:
    line = one_line_error(capsys, ["run", *argv, "hi"])
    assert line.startswith("trurn: error: " + complaint)


def test_a_bare_model_with_a_base_url_may_hold_a_colon(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    async def scenario() -> tuple[int, list[str]]:
        async with open_scripted_server([Reply("ok")]) as server:
            argv = ["run", "--base-url", server.base_url, "--model", "llama3.2:3b", "hi"]
            status = await trio.to_thread.run_sync(_cli.main, argv)
            return status, [r.model for r in server.requests]

    assert trio.run(scenario) == (0, ["llama3.2:3b"])
    capsys.readouterr()


def test_run_help_lists_the_provider_strings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        _cli.main(["run", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for text in ("anthropic:MODEL", "ANTHROPIC_API_KEY", "OLLAMA_HOST", "MODEL@URL", "exit status"):
        assert text in out
