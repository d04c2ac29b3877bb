"""A pytest fixture that starts scripted OpenAI-compatible servers: ``scripted_server``.

Enable it in your root ``conftest.py`` (pytest-trio is required, e.g. with
``trio_mode = true``)::

    pytest_plugins = ["trurn.testing.pytest_plugin"]

Then ask for ``scripted_server`` and await it with a script; the server runs in the
test's ``nursery`` (pytest-trio's fixture) and stops when the test ends::

    from trurn.testing import Reply

    async def test_greeting(scripted_server):
        server = await scripted_server([Reply("Hello!")], api_key="test")
        provider = OpenAIChat("scripted", base_url=server.base_url, api_key="test")
        ...
"""

from __future__ import annotations

from functools import partial
from typing import Protocol

import pytest
import trio

from ._script import Script
from ._server import ScriptedServer, serve_scripted_server

__all__ = ["ScriptedServerFactory", "scripted_server"]


class ScriptedServerFactory(Protocol):
    """What the ``scripted_server`` fixture is: call it to start a server."""

    async def __call__(self, script: Script, *, api_key: str | None = None) -> ScriptedServer:
        """Start a server for ``script`` in the test's nursery and return it once listening."""
        ...


@pytest.fixture
async def scripted_server(nursery: trio.Nursery) -> ScriptedServerFactory:
    """Start scripted servers in the test's nursery: ``await scripted_server(script)``."""

    async def start(script: Script, *, api_key: str | None = None) -> ScriptedServer:
        server: ScriptedServer = await nursery.start(
            partial(serve_scripted_server, script, api_key=api_key)
        )
        return server

    return start
