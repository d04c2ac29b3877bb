"""The ``trurn`` command: run one agent turn in the terminal, or serve the offline model.

``trurn run "question"`` streams a turn (text as it arrives, tool calls and their
results marked). With no ``--base-url`` it starts trurn's scripted OpenAI-compatible
server in-process and uses its built-in offline model, so it works with no network
and no key. ``trurn mock-server --port N`` serves that model to other clients.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import TextIO

import trio

from . import events
from ._agent import Agent
from ._context import Context
from ._errors import TrurnError
from ._tools import tool
from ._version import __version__
from .providers import OpenAIChat
from .testing import demo_model, open_scripted_server, serve_scripted_server

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["main"]

_OFFLINE_MODEL = "trurn-offline"

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

    run = commands.add_parser("run", help="run one agent turn and stream it")
    run.add_argument("message", help="what to ask the agent")
    run.add_argument("--base-url", help="an OpenAI-compatible API, e.g. http://localhost:11434/v1")
    run.add_argument("--model", help="model name (default: gpt-4o-mini with --base-url)")
    run.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        metavar="VAR",
        help="environment variable holding the API key (default: OPENAI_API_KEY)",
    )
    run.add_argument("--system", help="system prompt")
    run.add_argument(
        "--max-steps", type=_int_in(1, 1000), default=10, help="model calls at most (default 10)"
    )

    serve = commands.add_parser("mock-server", help="serve the offline model over HTTP")
    serve.add_argument(
        "--port", type=_int_in(1, 65535), default=8000, help="port on 127.0.0.1 (default 8000)"
    )
    return parser


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
    if args.base_url:
        api_key = os.environ.get(args.api_key_env) or None
        provider = OpenAIChat(args.model or "gpt-4o-mini", base_url=args.base_url, api_key=api_key)
        return await _turn(provider, args, out)
    async with open_scripted_server(demo_model) as server:
        out.write(f"(using the built-in offline model, served at {server.base_url})\n")
        provider = OpenAIChat(args.model or _OFFLINE_MODEL, base_url=server.base_url)
        return await _turn(provider, args, out)


async def _turn(provider: OpenAIChat, args: argparse.Namespace, out: TextIO) -> int:
    async with provider:
        agent = Agent(provider, tools=[get_weather], system=args.system, max_steps=args.max_steps)
        out.write(f"you> {args.message}\n")
        await agent.run_turn(Context(), args.message, on_event=_Printer(out))
    return 0


async def _serve(port: int, out: TextIO) -> int:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_scripted_server, demo_model, port=port))
        out.write(f"serving the offline model at {server.base_url} (Ctrl-C stops)\n")
        out.flush()
    return 0


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``, also when trio's nurseries wrapped it in a group."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trurn`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    out = sys.stdout
    try:
        if args.command == "run":
            return trio.run(_run, args, out)
        return trio.run(_serve, args.port, out)
    except TrurnError as exc:
        out.flush()
        print(f"trurn: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, BaseExceptionGroup) as exc:  # e.g. the port of mock-server is taken
        error = _os_error(exc)
        if error is None:
            raise
        print(f"trurn: error: {error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        out.flush()
        print("trurn: interrupted", file=sys.stderr)
        return 130
