"""The ``trurn`` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from trurn import _cli
from trurn._messages import AssistantMessage, Message, Usage, UserMessage
from trurn._store import SessionStore
from trurn.testing import Reply, ScriptedToolCall, open_scripted_server


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test keeps its sessions under tmp_path (``TRURN_HOME``) and runs in a fresh
    work dir, so ``trurn run`` never writes to the real home or the repository."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("TRURN_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(work)
    return tmp_path / "home"


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
    assert "Traceback" not in err
    # The session was made before the provider failed: its id comes first, then the error.
    notice, error = err.strip().splitlines()
    assert notice.startswith("trurn: new session ")
    assert error.startswith("trurn: error: ")


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


def test_ctrl_c_inside_trio_nurseries_is_one_line_and_exit_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def interrupted(port: int, out: object) -> int:
        # What Ctrl-C in the mock server looks like once trio's nurseries wrapped it.
        raise BaseExceptionGroup("from a nursery", [KeyboardInterrupt()])

    monkeypatch.setattr(_cli, "_serve", interrupted)
    assert _cli.main(["mock-server", "--port", "8000"]) == 130
    assert capsys.readouterr().err == "trurn: interrupted\n"


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
    assert not Path(os.environ["TRURN_HOME"]).exists()  # no session was made either
    assert not Path(".trurn").exists()
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
        (
            ["--model", "anthropic/claude-x"],
            "--model anthropic/claude-x needs a provider prefix (e.g. anthropic:claude-x)",
        ),
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


# --- sessions ---------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command in this process: (exit status, stdout, stderr)."""
    status = _cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


async def run_cli_in_thread(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The same from a Trio test (the command runs its own ``trio.run`` in a thread)."""
    status = await trio.to_thread.run_sync(_cli.main, list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def the_error(status: int, err: str, expected_status: int) -> str:
    """The one ``trurn: error:`` line of a command that failed with ``expected_status``."""
    assert status == expected_status, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("trurn: error: ")
    return lines[0].removeprefix("trurn: error: ")


def new_session_id(err: str) -> str:
    """The id in the ``trurn: new session ID (...)`` notice of ``trurn run``."""
    notice = next(line for line in err.splitlines() if line.startswith("trurn: new session "))
    return notice.split()[3]


def make_session(
    messages: list[Message],
    *,
    work_dir: Path | None = None,
    session_id: str | None = None,
    mtime: float | None = None,
) -> str:
    """A session in the test's store holding ``messages``; its id. ``mtime`` sets the
    file's modification time, which orders the listing."""

    async def make() -> tuple[str, Path]:
        store = SessionStore()
        async with await store.create(work_dir or Path.cwd(), session_id) as context:
            context.extend(messages)
            sid, path = context.session_id, context.path
        assert sid is not None
        assert path is not None
        return sid, path

    sid, path = trio.run(make)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return sid


def messages_of(session_id: str) -> list[Message]:
    async def read() -> list[Message]:
        async with await SessionStore().open(session_id) as context:
            return list(context.messages)

    return trio.run(read)


def chat(*pairs: tuple[str, str], tokens: int = 10) -> list[Message]:
    """User/assistant exchanges; each reply reports ``tokens`` total tokens."""
    history: list[Message] = []
    for question, answer in pairs:
        history.append(UserMessage(content=question))
        usage = Usage(input_tokens=tokens - 1, output_tokens=1, total_tokens=tokens)
        history.append(AssistantMessage(content=answer, usage=usage))
    return history


async def test_continue_and_session_send_the_earlier_history(
    capsys: pytest.CaptureFixture[str],
) -> None:
    replies = [Reply("Cold in Oslo."), Reply("Wet in Bergen."), Reply("Mild in Rome.")]
    async with open_scripted_server(replies) as server:
        base = ["run", "--base-url", server.base_url, "--model", "m"]
        status, out, err = await run_cli_in_thread(capsys, *base, "Oslo?")
        assert status == 0
        sid = new_session_id(err)
        assert f"--session {sid}" in err

        status, out, err = await run_cli_in_thread(capsys, *base, "--continue", "And Bergen?")
        assert status == 0
        assert err == f"trurn: continuing session {sid} (2 messages)\n"
        assert "assistant> Wet in Bergen." in out

        status, out, err = await run_cli_in_thread(capsys, *base, "--session", sid, "Rome?")
        assert status == 0
        assert err == f"trurn: continuing session {sid} (4 messages)\n"

        sent = [[(m.role, m.text) for m in request.messages] for request in server.requests]
    assert sent[0] == [("user", "Oslo?")]
    assert sent[1] == [("user", "Oslo?"), ("assistant", "Cold in Oslo."), ("user", "And Bergen?")]
    assert sent[2] == [*sent[1], ("assistant", "Wet in Bergen."), ("user", "Rome?")]
    saved = await trio.to_thread.run_sync(messages_of, sid)
    assert [m.content for m in saved][-2:] == ["Rome?", "Mild in Rome."]


def test_run_links_the_session_from_the_work_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, home: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    status, _, err = run_cli(capsys, "run", "--work-dir", str(other), "weather in Lima?")
    assert status == 0
    sid = new_session_id(err)
    link = other / ".trurn" / "sessions" / f"{sid}.jsonl"
    assert link.is_symlink()
    assert Path(os.path.realpath(link)).parent.parent == home / "global_sessions"
    assert not Path(".trurn").exists()  # the current dir was not used
    # --continue looks in the work dir it is given.
    status, _, err = run_cli(capsys, "run", "--continue", "--work-dir", str(other), "Lima?")
    assert (status, err) == (0, f"trurn: continuing session {sid} (4 messages)\n")


def test_no_session_keeps_nothing(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    status, out, err = run_cli(capsys, "run", "--no-session", "weather in Lima?")
    assert status == 0
    assert "assistant> In Lima it is" in out
    assert err == ""
    assert not home.exists()
    assert not Path(".trurn").exists()


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (["--session", "x", "--continue"], "--session and --continue cannot be used together"),
        (["--new", "-c"], "--new and --continue cannot be used together"),
        (["--new", "--no-session"], "--new and --no-session cannot be used together"),
        (["--session", "x", "--no-session"], "--session and --no-session cannot be used"),
        (["--no-session", "--work-dir", "."], "--work-dir says where sessions go; it cannot"),
        (["--work-dir", "no/such/dir"], "--work-dir no/such/dir: not a directory"),
        (["--session", "../escape"], "a session id cannot contain a path separator: '../escape'"),
        (["--session", "a b"], "a session id may only contain letters"),
    ],
)
def test_contradicting_or_bad_session_options_exit_2_and_touch_nothing(
    capsys: pytest.CaptureFixture[str], options: list[str], complaint: str
) -> None:
    line = one_line_error(capsys, ["run", *options, "hi"])
    assert line.startswith("trurn: error: " + complaint)


def test_unknown_sessions_exit_1(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    error = the_error(*run_cli(capsys, "run", "--continue", "hi")[::2], 1)
    assert error == f"no session to continue in {Path.cwd()} (run without --continue to start one)"
    error = the_error(*run_cli(capsys, "run", "--session", "nope", "hi")[::2], 1)
    assert error.startswith("no session 'nope' in ")
    for action in (["show"], ["export"], ["fork"], ["delete", "--yes"]):
        error = the_error(*run_cli(capsys, "sessions", *action, "nope")[::2], 1)
        assert error.startswith("no session 'nope' "), action
    assert not home.exists()


@pytest.mark.parametrize("action", [["show"], ["export"], ["fork"], ["delete", "--yes"]])
def test_a_malformed_id_exits_2(capsys: pytest.CaptureFixture[str], action: list[str]) -> None:
    error = the_error(*run_cli(capsys, "sessions", *action, "..")[::2], 2)
    assert error == "a session id cannot be '..'"


def test_list_json_is_newest_first_with_counts_titles_and_usage(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    older = make_session(chat(("first question", "a")), mtime=1_000_000)
    newer = make_session(chat(("second\n  question", "b"), ("more", "c"), tokens=42), mtime=2e6)
    empty = make_session([], mtime=1_500_000)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = make_session(chat(("far away", "d")), work_dir=elsewhere, mtime=3e6)

    status, out, err = run_cli(capsys, "sessions", "list", "--json")
    assert (status, err) == (0, "")
    listed = json.loads(out)
    assert [entry["session_id"] for entry in listed] == [newer, empty, older]
    first = listed[0]
    assert first["title"] == "second question"
    assert first["message_count"] == 4
    assert first["updated_at"] == 2e6
    assert first["last_usage"]["total_tokens"] == 42
    assert first["work_dir"] == str(Path.cwd())
    assert Path(first["path"]).name == f"{newer}.jsonl"
    assert listed[1]["title"] is None
    assert listed[1]["last_usage"] is None
    assert all(entry["error"] is None for entry in listed)

    everything = json.loads(run_cli(capsys, "sessions", "list", "--all", "--json")[1])
    assert [entry["session_id"] for entry in everything] == [other, newer, empty, older]
    there = run_cli(capsys, "sessions", "list", "--work-dir", str(elsewhere), "--json")[1]
    assert [entry["session_id"] for entry in json.loads(there)] == [other]


def test_list_as_a_table(capsys: pytest.CaptureFixture[str], home: Path) -> None:
    status, out, _ = run_cli(capsys, "sessions", "list")
    assert (status, out) == (0, f"no sessions in {Path.cwd()} ({home / 'global_sessions'})\n")
    sid = make_session(chat(("what is up", "not much"), tokens=17))
    status, out, _ = run_cli(capsys, "sessions", "list")
    header, row = out.splitlines()
    assert header.split() == ["ID", "UPDATED", "MESSAGES", "TOKENS", "TITLE"]
    assert row.startswith(sid)
    assert row.split()[3:] == ["2", "17", "what", "is", "up"]


def test_list_shows_an_unreadable_session_instead_of_failing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sid = make_session(chat(("q", "a")))
    path = Path(os.path.realpath(Path(".trurn/sessions") / f"{sid}.jsonl"))
    path.write_bytes(path.read_bytes().replace(b'"role":"user"', b'"role":"robot"'))
    status, out, _ = run_cli(capsys, "sessions", "list")
    assert status == 0
    assert "(cannot be read: " in out
    assert "line 2" in out
    (listed,) = json.loads(run_cli(capsys, "sessions", "list", "--json")[1])
    assert "line 2" in listed["error"]


def test_list_all_with_a_work_dir_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    error = the_error(*run_cli(capsys, "sessions", "list", "--all", "--work-dir", ".")[::2], 2)
    assert error == "--all and --work-dir cannot be used together: pick one"


def test_fork_then_show(capsys: pytest.CaptureFixture[str]) -> None:
    sid = make_session(chat(("one", "uno"), ("two", "dos")))
    status, out, err = run_cli(capsys, "sessions", "fork", sid, "--upto", "2")
    assert (status, err) == (0, "")
    forked = out.strip()
    assert forked != sid
    assert [m.content for m in messages_of(forked)] == ["one", "uno"]
    assert Path(f".trurn/sessions/{forked}.jsonl").is_symlink()

    status, shown, err = run_cli(capsys, "sessions", "show", forked)
    assert (status, err) == (0, "")
    assert shown.startswith(f"# Session {forked}\n")
    assert "## User\n\n<!-- trurn:message" in shown
    assert [line for line in shown.splitlines() if line in ("one", "uno", "two", "dos")] == [
        "one",
        "uno",
    ]
    # The whole source is still there.
    assert [m.content for m in messages_of(sid)] == ["one", "uno", "two", "dos"]


def test_fork_with_an_upto_past_the_end_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    sid = make_session(chat(("one", "uno")))
    error = the_error(*run_cli(capsys, "sessions", "fork", sid, "--upto", "3")[::2], 2)
    assert error.startswith("--upto: upto must be between 0 and 2")
    with pytest.raises(SystemExit) as caught:
        _cli.main(["sessions", "fork", sid, "--upto", "-1"])
    assert caught.value.code == 2
    assert "must be from 0 to" in capsys.readouterr().err


def test_export_then_import_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    history = chat(("a <!-- trurn:message --> question", "```\nfenced\n```"), ("2nd", "b"))
    sid = make_session(history)
    target = tmp_path / "exported.md"
    status, out, err = run_cli(capsys, "sessions", "export", sid, "-o", str(target))
    assert (status, out, err) == (0, f"{target}\n", "")
    # The export is the same Markdown that show prints.
    assert target.read_text(encoding="utf-8") == run_cli(capsys, "sessions", "show", sid)[1]

    status, out, err = run_cli(capsys, "sessions", "import", str(target), "--session-id", "copy")
    assert (status, out, err) == (0, "copy\n", "")
    assert messages_of("copy") == history
    # A second import without an id gets a fresh one; the same id again is refused.
    status, out, _ = run_cli(capsys, "sessions", "import", str(target))
    assert status == 0
    assert out.strip() not in (sid, "copy")
    assert messages_of(out.strip()) == history
    error = the_error(
        *run_cli(capsys, "sessions", "import", str(target), "--session-id", "copy")[::2], 1
    )
    assert error.startswith("a session 'copy' already exists")


def test_export_defaults_to_id_dot_md_in_the_current_dir(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sid = make_session(chat(("q", "a")))
    status, out, _ = run_cli(capsys, "sessions", "export", sid)
    assert (status, out) == (0, f"{Path.cwd() / (sid + '.md')}\n")
    assert (Path.cwd() / f"{sid}.md").read_text(encoding="utf-8").startswith(f"# Session {sid}")


def test_import_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path, home: Path) -> None:
    missing = tmp_path / "missing.md"
    error = the_error(*run_cli(capsys, "sessions", "import", str(missing))[::2], 1)
    assert error == f"{missing}: No such file or directory"
    plain = tmp_path / "plain.md"
    plain.write_text("# Just notes\n\nnot an export\n", encoding="utf-8")
    error = the_error(*run_cli(capsys, "sessions", "import", str(plain))[::2], 1)
    assert error.startswith(f"{plain}: line 1: not a trurn Markdown export")
    error = the_error(
        *run_cli(capsys, "sessions", "import", str(plain), "--session-id", "a/b")[::2], 2
    )
    assert error.startswith("a session id cannot contain a path separator")
    assert not home.exists()


def test_export_to_a_missing_directory_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sid = make_session(chat(("q", "a")))
    dest = tmp_path / "no" / "such" / "x.md"
    error = the_error(*run_cli(capsys, "sessions", "export", sid, "-o", str(dest))[::2], 1)
    assert error.startswith(f"cannot write {dest}: ")


def test_delete(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    sid = make_session(chat(("q", "a")))
    link = Path(f".trurn/sessions/{sid}.jsonl")
    file = Path(os.path.realpath(link))

    for answer in ("", "n\n", "nope\n"):  # end of input, or anything but yes, keeps it
        monkeypatch.setattr(sys, "stdin", io.StringIO(answer))
        status, out, err = run_cli(capsys, "sessions", "delete", sid)
        assert (status, out) == (1, "")
        # A typed answer ends the prompt's line on the terminal; end of input does not.
        prompt = f"delete session {sid} ({file})? [y/N] " + ("\n" if answer == "" else "")
        assert err == prompt + f"trurn: session {sid} was not deleted (answer y, or pass --yes)\n"
        assert file.exists()
        assert link.is_symlink()

    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    status, out, _ = run_cli(capsys, "sessions", "delete", sid)
    assert (status, out) == (0, f"deleted session {sid}\n")
    assert not file.exists()
    assert not os.path.lexists(link)

    other = make_session(chat(("q", "a")))
    status, out, err = run_cli(capsys, "sessions", "delete", "--yes", other)
    assert (status, out, err) == (0, f"deleted session {other}\n", "")
    assert json.loads(run_cli(capsys, "sessions", "list", "--all", "--json")[1]) == []


def test_a_corrupt_session_is_one_line_naming_the_file_and_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sid = make_session(chat(("q", "a"), ("q2", "a2")))
    file = Path(os.path.realpath(Path(f".trurn/sessions/{sid}.jsonl")))
    lines = file.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"kind": "no such record"}\n'
    file.write_bytes(b"".join(lines))
    for argv in (["run", "--session", sid, "hi"], ["run", "-c", "hi"], ["sessions", "show", sid]):
        status, out, err = run_cli(capsys, *argv)
        error = the_error(status, err, 1)
        assert error.startswith(f"{file}: line 3: "), argv
        assert "you>" not in out
    assert b"no such record" in file.read_bytes()  # nothing was rewritten


async def test_a_torn_last_line_is_a_one_line_warning_and_the_turn_goes_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sid = await trio.to_thread.run_sync(lambda: make_session(chat(("Oslo?", "Cold."))))
    file = await trio.Path(f".trurn/sessions/{sid}.jsonl").resolve()
    async with await file.open("ab") as torn:
        await torn.write(b'{"kind":"message","mess')
    async with open_scripted_server([Reply("Still cold.")]) as server:
        argv = ["run", "--base-url", server.base_url, "--session", sid, "And now?"]
        status, _, err = await run_cli_in_thread(capsys, *argv)
        sent = [m.text for m in server.requests[0].messages]
    assert status == 0
    warning, notice = err.splitlines()
    assert warning.startswith(f"trurn: warning: {file}: dropped a torn last line of 23 bytes")
    assert notice == f"trurn: continuing session {sid} (2 messages)"
    assert sent == ["Oslo?", "Cold.", "And now?"]


async def test_a_session_open_in_this_process_is_locked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sid = await trio.to_thread.run_sync(lambda: make_session(chat(("q", "a"))))
    async with await SessionStore().open(sid):
        status, out, err = await run_cli_in_thread(capsys, "run", "--session", sid, "hi")
        assert "is already open for writing in this process" in the_error(status, err, 1)
        assert "you>" not in out
        status, _, err = await run_cli_in_thread(capsys, "sessions", "delete", "-y", sid)
        assert "open for writing in this process" in the_error(status, err, 1)
        # Reading works meanwhile.
        status, out, _ = await run_cli_in_thread(capsys, "sessions", "show", sid)
        assert status == 0
        assert out.startswith(f"# Session {sid}\n")


async def test_python_dash_m_trurn_run_then_delete_while_locked_elsewhere(
    tmp_path: Path, home: Path
) -> None:
    # Through a real process: the new session's id on stderr, the file under TRURN_HOME,
    # and the OS-level lock refusing another process's delete while this one writes.
    env = {**os.environ, "TRURN_HOME": str(home)}
    work = tmp_path / "work"
    done = await trio.run_process(
        [sys.executable, "-m", "trurn", "run", "weather in Quito?"],
        env=env,
        cwd=work,
        capture_stdout=True,
        capture_stderr=True,
    )
    assert done.returncode == 0, done.stderr
    assert "assistant> In Quito it is" in done.stdout.decode()
    sid = new_session_id(done.stderr.decode())
    assert (work / ".trurn" / "sessions" / f"{sid}.jsonl").is_symlink()

    async with await SessionStore().open(sid) as context:
        assert context.messages[0].content == "weather in Quito?"
        done = await trio.run_process(
            [sys.executable, "-m", "trurn", "sessions", "delete", "--yes", sid],
            env=env,
            cwd=work,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 1
    error = done.stderr.decode()
    assert error.startswith("trurn: error: ")
    assert error.endswith("is open for writing by another process\n")
    assert len(error.splitlines()) == 1
    assert done.stdout == b""


def test_sessions_help_lists_the_actions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        _cli.main(["sessions", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for text in ("list", "show", "export", "import", "fork", "delete", "TRURN_HOME"):
        assert text in out
