"""The ``trurn`` command: run one agent turn in the terminal, or serve the offline model.

``trurn run "question"`` streams a turn (text as it arrives, tool calls and their
results marked). The model comes from ``--model``, a provider string such as
``anthropic:claude-sonnet-4-5`` (see :func:`trurn.providers.provider_from_string` for the
prefixes and the environment variables they read), or from ``--base-url`` and a bare
model name for any OpenAI-compatible server. With neither, it starts trurn's scripted
OpenAI-compatible server in-process and uses its built-in offline model, so it works with
no network and no key. ``trurn mock-server --port N`` serves that model to other clients.

Exit status: 0 when the turn ran, 1 when the provider or the turn failed (a refused key,
an unreachable server), 2 for bad arguments or configuration (argparse's usage errors,
and a :class:`~trurn.ConfigurationError` such as a missing API key, printed as one
``trurn: error:`` line), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TextIO

import httpx
import trio

from . import events
from ._agent import Agent
from ._context import Context
from ._errors import ConfigurationError, TrurnError
from ._tools import tool
from ._version import __version__
from .providers import OpenAIChat, Provider
from .providers._select import provider_from_string
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
exit status: 0 done, 1 the provider or the turn failed, 2 bad arguments or configuration
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
    async with httpx.AsyncClient(timeout=_TIMEOUT) as client:
        provider = _chosen_provider(args, os.environ, client)
        if provider is not None:
            return await _turn(provider, args, out)
        async with open_scripted_server(demo_model) as server:
            out.write(f"(using the built-in offline model, served at {server.base_url})\n")
            offline = OpenAIChat(_OFFLINE_MODEL, base_url=server.base_url, client=client)
            return await _turn(offline, args, out)


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
        raise ConfigurationError(
            f"--model {model} needs a provider prefix (e.g. openai:{model}) or a --base-url"
        )
    api_key = None
    if key_env is not None:
        api_key = env.get(key_env) or None
        if api_key is None:
            raise ConfigurationError(f"set {key_env} (named by --api-key-env) to the API key")
    return provider_from_string(model, api_key=api_key, client=client, env=env)


async def _turn(provider: Provider, args: argparse.Namespace, out: TextIO) -> int:
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
    except ConfigurationError as exc:  # nothing was sent: a usage error, like argparse's
        out.flush()
        print(f"trurn: error: {exc}", file=sys.stderr)
        return 2
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
