"""The ``trurn`` command: run one agent turn in the terminal, or serve the offline model.

``trurn run "question"`` streams a turn (text as it arrives, tool calls and their
results marked). The model comes from ``--model``, a provider string such as
``anthropic:claude-sonnet-4-5`` (see :func:`trurn.providers.provider_from_string` for the
prefixes and the environment variables they read), or from ``--base-url`` and a bare
model name for any OpenAI-compatible server. With neither, it starts trurn's scripted
OpenAI-compatible server in-process and uses its built-in offline model, so it works with
no network and no key. ``trurn mock-server --port N`` serves that model to other clients.

Each ``trurn run`` is saved in a session of :class:`~trurn.SessionStore` (under
``$TRURN_HOME``, else ``~/.trurn``, linked from the work dir): a new one by default, whose
id goes to stderr; ``--continue`` or ``--session ID`` goes on with an earlier one, and
``--no-session`` keeps the history in memory. ``trurn sessions ...`` lists, shows,
exports, imports, forks and deletes sessions.

Exit status: 0 when the command did its work, 1 when it failed (the provider refused a
key, a server was unreachable, a session is unknown, corrupt or open in another
process), 2 for bad arguments or configuration (argparse's usage errors, options that
contradict each other, a malformed session id, a :class:`~trurn.ConfigurationError` such
as a missing API key, each printed as one ``trurn: error:`` line), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import httpx
import msgspec
import trio

from . import events
from ._agent import Agent
from ._context import Context, SessionRecoveryWarning
from ._errors import (
    ConfigurationError,
    SessionIdError,
    SessionNotFoundError,
    TrurnError,
    unwrapped,
)
from ._journal import read_journal
from ._store import SessionInfo, SessionStore, render_markdown
from ._tools import tool
from ._version import __version__
from .providers import OpenAIChat, Provider
from .providers._select import is_provider_prefix, provider_from_string
from .testing import demo_model, open_scripted_server, serve_scripted_server

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["main"]

_OFFLINE_MODEL = "trurn-offline"
_BASE_URL_MODEL = "gpt-4o-mini"
_BASE_URL_KEY_ENV = "OPENAI_API_KEY"
# The prefixes provider_from_string knows; with --base-url, a model that starts with one
# is a provider string given by mistake, not a model name.
_PREFIXES = ("openai", "anthropic", "ollama", "openai-compatible")
# Replies may take minutes to stream; connecting should not.
_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
_EPILOG = """\
provider strings for --model:
  openai:MODEL                 key from OPENAI_API_KEY, base URL from OPENAI_BASE_URL if set
  anthropic:MODEL              key from ANTHROPIC_API_KEY, base URL from ANTHROPIC_BASE_URL
  ollama:MODEL                 http://localhost:11434/v1 (or OLLAMA_HOST), no key
  openai-compatible:MODEL@URL  key from OPENAI_COMPATIBLE_API_KEY if set
sessions are kept under $TRURN_HOME/global_sessions (default ~/.trurn/global_sessions)
and linked from WORK_DIR/.trurn/sessions; see "trurn sessions --help"
exit status: 0 done, 1 the provider, the turn or the session failed, 2 bad arguments
"""
_SESSIONS_EPILOG = """\
sessions are kept under $TRURN_HOME/global_sessions (default ~/.trurn/global_sessions)
and linked from WORK_DIR/.trurn/sessions; an ID is found in the global store
exit status: 0 done, 1 the session is unknown, corrupt or in use, 2 bad arguments
"""

_FORECASTS = ["sunny, 22°C", "light rain, 14°C", "cloudy, 17°C", "clear skies, 9°C", "snow, -2°C"]


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city (a demo tool: the forecast is made up)."""
    return f"{_FORECASTS[sum(map(ord, city.lower())) % len(_FORECASTS)]} (demo data)"


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trurn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"trurn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run one agent turn and stream it",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("message", help="what to ask the agent")
    run.add_argument(
        "--model",
        help="a provider string such as openai:gpt-4o-mini or anthropic:claude-sonnet-4-5 "
        "(see below), or with --base-url a bare model name (default: gpt-4o-mini); "
        "with neither, the built-in offline model",
    )
    run.add_argument(
        "--base-url",
        help="an OpenAI-compatible API for a bare --model name, e.g. http://localhost:8000/v1",
    )
    run.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the API key (default: OPENAI_API_KEY with "
        "--base-url, where an unset one sends no key; the provider's own with --model)",
    )
    run.add_argument("--system", help="system prompt")
    run.add_argument(
        "--max-steps", type=_int_in(1, 1000), default=10, help="model calls at most (default 10)"
    )

    session = run.add_argument_group(
        "session", "where the conversation is kept (pick one; the default is --new)"
    )
    session.add_argument(
        "--new", action="store_true", help="start a new session; its id is printed on stderr"
    )
    session.add_argument("--session", metavar="ID", help="continue the session ID")
    session.add_argument(
        "-c",
        "--continue",
        dest="continue_latest",
        action="store_true",
        help="continue the work dir's most recent session",
    )
    session.add_argument(
        "--no-session", action="store_true", help="keep the conversation in memory only"
    )
    _add_work_dir(session, "where sessions are linked and looked for")

    serve = commands.add_parser("mock-server", help="serve the offline model over HTTP")
    serve.add_argument(
        "--port", type=_int_in(1, 65535), default=8000, help="port on 127.0.0.1 (default 8000)"
    )

    sessions = commands.add_parser(
        "sessions",
        help="list, show, export, import, fork and delete sessions",
        epilog=_SESSIONS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = sessions.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the sessions of a work dir, newest first")
    _add_work_dir(listing, "whose sessions to list")
    listing.add_argument("--all", action="store_true", help="every session in the store")
    listing.add_argument("--json", action="store_true", help="a JSON array, for programs")
    listing.set_defaults(handler=_list_sessions)

    show = actions.add_parser("show", help="print a session as Markdown")
    show.add_argument("session_id", metavar="ID")
    show.set_defaults(handler=_show_session)

    export = actions.add_parser("export", help="write a session to a Markdown file")
    export.add_argument("session_id", metavar="ID")
    export.add_argument("-o", "--output", metavar="FILE", help="where to write (default: ID.md)")
    export.set_defaults(handler=_export_session)

    load = actions.add_parser("import", help="make a new session from an exported Markdown file")
    load.add_argument("file", metavar="FILE")
    load.add_argument("--session-id", metavar="ID", help="the new session's id (default: fresh)")
    _add_work_dir(load, "where the new session is linked")
    load.set_defaults(handler=_import_session)

    fork = actions.add_parser(
        "fork", help="copy a session, or its first N messages, into a new one"
    )
    fork.add_argument("session_id", metavar="ID")
    fork.add_argument(
        "--upto", metavar="N", type=_int_in(0, 10**9), help="copy only the first N messages"
    )
    _add_work_dir(fork, "where the new session is linked")
    fork.set_defaults(handler=_fork_session)

    delete = actions.add_parser("delete", help="remove a session's file and links")
    delete.add_argument("session_id", metavar="ID")
    delete.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=_delete_session)
    return parser


def _add_work_dir(group: argparse._ActionsContainer, purpose: str) -> None:
    group.add_argument(
        "--work-dir", metavar="DIR", help=f"the project directory {purpose} (default: .)"
    )


class _Printer:
    """Renders a turn's events as a terminal transcript."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._in_text = False

    def __call__(self, event: events.Event) -> None:
        # Small writes to a terminal; buffered by TextIO and flushed per event.
        write = self._out.write
        if isinstance(event, events.AssistantDelta):
            if not self._in_text:
                write("assistant> ")
                self._in_text = True
            write(event.text)
        elif isinstance(event, events.ToolCallStarted):
            self._end_text()
            write(f"  -> {event.call.name}({event.call.arguments_raw or '{}'})\n")
        elif isinstance(event, events.ToolExit):
            marker = "<-" if event.status == "ok" else "<- [" + event.status + "]"
            write(f"  {marker} {event.name}: {event.content}\n")
        elif isinstance(event, events.AssistantFinal):
            self._end_text()
        elif isinstance(event, events.TurnFinished):
            self._end_text()
            usage = event.usage
            write(f"[{event.stop_reason}; {usage.total_tokens} tokens]\n")
        self._out.flush()

    def _end_text(self) -> None:
        if self._in_text:
            self._out.write("\n")
            self._in_text = False


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    async with httpx.AsyncClient(timeout=_TIMEOUT) as client:
        # The provider first: a configuration error leaves no session behind.
        provider = _chosen_provider(args, os.environ, client)
        async with await _open_context(args) as context:
            if provider is not None:
                return await _turn(provider, context, args, out)
            async with open_scripted_server(demo_model) as server:
                out.write(f"(using the built-in offline model, served at {server.base_url})\n")
                offline = OpenAIChat(_OFFLINE_MODEL, base_url=server.base_url, client=client)
                return await _turn(offline, context, args, out)


def _check_run_options(args: argparse.Namespace) -> None:
    """Refuse session options that contradict each other, and settle the work dir."""
    chosen = [
        flag
        for flag, given in (
            ("--new", args.new),
            ("--session", args.session is not None),
            ("--continue", args.continue_latest),
            ("--no-session", args.no_session),
        )
        if given
    ]
    if len(chosen) > 1:
        raise ConfigurationError(f"{chosen[0]} and {chosen[1]} cannot be used together: pick one")
    if args.no_session:
        if args.work_dir is not None:
            raise ConfigurationError(
                "--work-dir says where sessions go; it cannot be used with --no-session"
            )
        return
    args.work_dir = _work_dir(args.work_dir)


def _work_dir(given: str | None) -> Path:
    """``--work-dir`` (default: the current directory) made absolute; it must exist.

    Synchronous: it looks at the disk, so it runs before Trio starts.
    """
    path = Path(os.path.abspath(os.curdir if given is None else given))
    if not path.is_dir():
        raise ConfigurationError(f"--work-dir {given}: not a directory")
    return path


async def _open_context(args: argparse.Namespace) -> Context:
    """The history the turn runs on: in memory, or a new, named or latest session
    (opened for writing; the caller closes it). Says on stderr which session it is."""
    if args.no_session:
        return Context()
    store = SessionStore()
    # A crash may have left a torn last line; restoring drops it with a warning, which
    # the user should see as one line rather than as Python's warning format.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SessionRecoveryWarning)
        if args.session is not None:
            context = await store.open(args.session, work_dir=args.work_dir)
        elif args.continue_latest:
            found = await store.continue_latest(args.work_dir)
            if found is None:
                raise SessionNotFoundError(
                    f"no session to continue in {args.work_dir}"
                    " (run without --continue to start one)",
                    path=store.sessions_dir(args.work_dir),
                )
            context = found
        else:
            context = await store.create(args.work_dir)
    for warning in caught:
        _note(f"warning: {warning.message}")
    if args.session is None and not args.continue_latest:
        _note(
            f"new session {context.session_id}"
            f" (continue it with --continue, or --session {context.session_id})"
        )
    else:
        _note(f"continuing session {context.session_id} ({len(context.messages)} messages)")
    return context


def _note(text: str) -> None:
    """One line for the user on stderr, outside the transcript on stdout."""
    print(f"trurn: {text}", file=sys.stderr, flush=True)


def _chosen_provider(
    args: argparse.Namespace, env: Mapping[str, str], client: httpx.AsyncClient
) -> Provider | None:
    """The provider ``--model``, ``--base-url`` and ``--api-key-env`` name; ``None`` for the
    offline model. Raises :class:`ConfigurationError` for a combination that does not work."""
    model: str | None = args.model
    key_env: str | None = args.api_key_env
    if args.base_url:
        # Today's form: any OpenAI-compatible server, a bare model name, a key if one is set.
        prefix = (model or "").partition(":")[0].strip().lower()
        if prefix in _PREFIXES:
            raise ConfigurationError(
                f"--model {prefix}:... is a provider string: drop --base-url, or write "
                "--model openai-compatible:MODEL@URL"
            )
        api_key = env.get(key_env or _BASE_URL_KEY_ENV) or None
        try:
            return OpenAIChat(
                model or _BASE_URL_MODEL, base_url=args.base_url, api_key=api_key, client=client
            )
        except ValueError as exc:
            raise ConfigurationError(f"--base-url: {exc}") from None
    if model is None:
        return None
    if ":" not in model:
        prefix, slash, name = model.partition("/")
        example = f"{prefix}:{name}" if slash and is_provider_prefix(prefix) else f"openai:{model}"
        raise ConfigurationError(
            f"--model {model} needs a provider prefix (e.g. {example}) or a --base-url"
        )
    api_key = None
    if key_env is not None:
        api_key = env.get(key_env) or None
        if api_key is None:
            raise ConfigurationError(f"set {key_env} (named by --api-key-env) to the API key")
    return provider_from_string(model, api_key=api_key, client=client, env=env)


async def _turn(provider: Provider, context: Context, args: argparse.Namespace, out: TextIO) -> int:
    agent = Agent(provider, tools=[get_weather], system=args.system, max_steps=args.max_steps)
    out.write(f"you> {args.message}\n")
    await agent.run_turn(context, args.message, on_event=_Printer(out))
    return 0


async def _serve(port: int, out: TextIO) -> int:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_scripted_server, demo_model, port=port))
        out.write(f"serving the offline model at {server.base_url} (Ctrl-C stops)\n")
        out.flush()
    return 0


# -- trurn sessions ----------------------------------------------------------------------
#
# Each handler gets the store and the parsed arguments and returns the exit status. What
# a command makes (a session id, a file) goes to stdout, alone on its line, for scripts.

_Handler = Callable[[SessionStore, argparse.Namespace, TextIO], Awaitable[int]]


def _check_sessions_options(args: argparse.Namespace) -> None:
    """Refuse ``--all`` with ``--work-dir``, and settle the work dir where there is one."""
    if getattr(args, "all", False):
        if args.work_dir is not None:
            raise ConfigurationError("--all and --work-dir cannot be used together: pick one")
        return
    if hasattr(args, "work_dir"):
        args.work_dir = _work_dir(args.work_dir)


async def _list_sessions(store: SessionStore, args: argparse.Namespace, out: TextIO) -> int:
    infos = await store.list(None if args.all else args.work_dir)
    if args.json:
        out.write(sessions_json(infos) + "\n")
    elif infos:
        out.write(sessions_table(infos))
    else:
        where = "in the store" if args.all else f"in {args.work_dir}"
        out.write(f"no sessions {where} ({store.root})\n")
    return 0


def sessions_json(infos: Sequence[SessionInfo]) -> str:
    """``trurn sessions list --json``: the :class:`SessionInfo` fields, paths as strings,
    times as unix seconds (pure)."""
    return msgspec.json.format(msgspec.json.encode(infos, enc_hook=_encode_path), indent=2).decode()


def _encode_path(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def sessions_table(infos: Sequence[SessionInfo]) -> str:
    """``trurn sessions list``: one line per session, newest first as given (pure)."""
    rows = [("ID", "UPDATED", "MESSAGES", "TOKENS", "TITLE")]
    for info in infos:
        if info.error is not None:
            rows.append((info.session_id, "-", "-", "-", f"(cannot be read: {info.error})"))
            continue
        updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.updated_at))
        usage = info.last_usage
        tokens = "-" if usage is None else str(usage.total_tokens)
        title = info.title if info.title is not None else "(no message yet)"
        rows.append((info.session_id, updated, str(info.message_count), tokens, title))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = []
    for row in rows:
        cells = [
            row[0].ljust(widths[0]),
            row[1].ljust(widths[1]),
            row[2].rjust(widths[2]),
            row[3].rjust(widths[3]),
            row[4],
        ]
        lines.append("  ".join(cells) + "\n")
    return "".join(lines)


async def _show_session(store: SessionStore, args: argparse.Namespace, out: TextIO) -> int:
    # export_markdown only writes files; this is the same rendering, to stdout.
    path = await store.find(args.session_id)
    contents = await read_journal(path)
    out.write(render_markdown(contents.header, contents.records, session_id=args.session_id))
    return 0


async def _export_session(store: SessionStore, args: argparse.Namespace, out: TextIO) -> int:
    dest = args.output if args.output is not None else f"{args.session_id}.md"
    written = await store.export_markdown(args.session_id, dest)
    out.write(f"{written}\n")
    return 0


async def _import_session(store: SessionStore, args: argparse.Namespace, out: TextIO) -> int:
    async with await store.import_markdown(
        args.file, work_dir=args.work_dir, session_id=args.session_id
    ) as context:
        out.write(f"{context.session_id}\n")
    return 0


async def _fork_session(store: SessionStore, args: argparse.Namespace, out: TextIO) -> int:
    try:
        forked = await store.fork(args.session_id, upto=args.upto, work_dir=args.work_dir)
    except ValueError as exc:
        if isinstance(exc, TrurnError):  # a SessionIdError: reported as it is
            raise
        raise ConfigurationError(f"--upto: {exc}") from None
    async with forked:
        out.write(f"{forked.session_id}\n")
    return 0


async def _delete_session(store: SessionStore, args: argparse.Namespace, out: TextIO) -> int:
    path = await store.find(args.session_id)
    if not args.yes and not await _confirm(f"delete session {args.session_id} ({path})? [y/N] "):
        _note(f"session {args.session_id} was not deleted (answer y, or pass --yes)")
        return 1
    await store.delete(args.session_id)
    out.write(f"deleted session {args.session_id}\n")
    return 0


async def _confirm(question: str) -> bool:
    """Ask on stderr and read a line of stdin (in a thread; abandoned on Ctrl-C)."""
    sys.stderr.write(question)
    sys.stderr.flush()
    answer = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    if not answer.endswith("\n"):  # end of input: end the prompt's line
        sys.stderr.write("\n")
    return answer.strip().lower() in ("y", "yes")


async def _sessions(args: argparse.Namespace, out: TextIO) -> int:
    handler: _Handler = args.handler
    return await handler(SessionStore(), args, out)


def _describe(error: OSError) -> str:
    """``FILE: reason``, or the reason alone when no file is involved (a taken port)."""
    reason = error.strerror or str(error)
    return reason if error.filename is None else f"{error.filename}: {reason}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trurn`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    out = sys.stdout
    try:
        if args.command == "run":
            _check_run_options(args)
            return trio.run(_run, args, out)
        if args.command == "sessions":
            _check_sessions_options(args)
            return trio.run(_sessions, args, out)
        return trio.run(_serve, args.port, out)
    except (ConfigurationError, SessionIdError) as exc:  # nothing was done: a usage error
        out.flush()
        print(f"trurn: error: {exc}", file=sys.stderr)
        return 2
    except TrurnError as exc:
        out.flush()
        print(f"trurn: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, KeyboardInterrupt, BaseExceptionGroup) as exc:
        # A taken mock-server port, a Ctrl-C: maybe in groups from trio's nurseries.
        error = unwrapped(exc)
        out.flush()
        if isinstance(error, KeyboardInterrupt):
            print("trurn: interrupted", file=sys.stderr)
            return 130
        if not isinstance(error, OSError):
            raise
        print(f"trurn: error: {_describe(error)}", file=sys.stderr)
        return 1
