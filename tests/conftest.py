"""Shared test setup: trurn's own pytest plugin gives the ``scripted_server`` fixture,
and ``watchdog`` fails a test that hangs."""

import pytest
import trio
import trio.testing

pytest_plugins = ["trurn.testing.pytest_plugin"]


@pytest.fixture
async def watchdog(nursery: trio.Nursery) -> None:
    """Fails a test that hangs (a regression here tends to wait forever) instead of
    hanging: 1000 s on the virtual clock, 5 s on the real one. A test must name it as an
    argument (pytest-trio ignores autouse async fixtures)."""
    virtual = isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)

    async def watch() -> None:
        await trio.sleep(1000 if virtual else 5)
        raise AssertionError("the test hung")

    nursery.start_soon(watch)
