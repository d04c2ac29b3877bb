"""Test helpers for code built on trurn: a scripted model behind a real HTTP server.

``open_scripted_server(script)`` runs a server on 127.0.0.1 that speaks both OpenAI
Chat Completions and Anthropic Messages and streams the scripted :class:`Reply`
objects (or injects a :class:`Fault`), so an agent can be tested offline, over real
sockets, end to end::

    async with open_scripted_server([Reply("Hello!")]) as server:
        provider = OpenAIChat("scripted", base_url=server.base_url, api_key="test")
        # or: AnthropicMessages("scripted", base_url=server.base_url, api_key="test")

pytest-trio users can instead enable the ``scripted_server`` fixture with
``pytest_plugins = ["trurn.testing.pytest_plugin"]`` in their root ``conftest.py``.
"""

from ._cassette import Cassette as Cassette
from ._cassette import CassetteFormatError as CassetteFormatError
from ._cassette import CassetteMismatch as CassetteMismatch
from ._cassette import RecordedError as RecordedError
from ._cassette import RecordedExchange as RecordedExchange
from ._cassette import RecordingTransport as RecordingTransport
from ._cassette import ReplayTransport as ReplayTransport
from ._cassette import load_cassette as load_cassette
from ._cassette import open_cassette as open_cassette
from ._script import ChatMessage as ChatMessage
from ._script import ChatRequest as ChatRequest
from ._script import DropConnection as DropConnection
from ._script import EndWithoutDone as EndWithoutDone
from ._script import ErrorChunk as ErrorChunk
from ._script import Fault as Fault
from ._script import FunctionDefinition as FunctionDefinition
from ._script import MalformedChunk as MalformedChunk
from ._script import MessagesMessage as MessagesMessage
from ._script import MessagesRequest as MessagesRequest
from ._script import MessagesTool as MessagesTool
from ._script import Reply as Reply
from ._script import RequestFunctionCall as RequestFunctionCall
from ._script import RequestToolCall as RequestToolCall
from ._script import Script as Script
from ._script import ScriptedToolCall as ScriptedToolCall
from ._script import StatusError as StatusError
from ._script import StreamOptions as StreamOptions
from ._script import ToolDefinition as ToolDefinition
from ._script import demo_model as demo_model
from ._server import ScriptedServer as ScriptedServer
from ._server import open_scripted_server as open_scripted_server
from ._server import serve_scripted_server as serve_scripted_server

__all__ = [
    "Cassette",
    "CassetteFormatError",
    "CassetteMismatch",
    "ChatMessage",
    "ChatRequest",
    "DropConnection",
    "EndWithoutDone",
    "ErrorChunk",
    "Fault",
    "FunctionDefinition",
    "MalformedChunk",
    "MessagesMessage",
    "MessagesRequest",
    "MessagesTool",
    "RecordedError",
    "RecordedExchange",
    "RecordingTransport",
    "ReplayTransport",
    "Reply",
    "RequestFunctionCall",
    "RequestToolCall",
    "Script",
    "ScriptedServer",
    "ScriptedToolCall",
    "StatusError",
    "StreamOptions",
    "ToolDefinition",
    "demo_model",
    "load_cassette",
    "open_cassette",
    "open_scripted_server",
    "serve_scripted_server",
]
