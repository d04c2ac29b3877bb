"""Shared test setup: trurn's own pytest plugin gives the ``scripted_server`` fixture."""

pytest_plugins = ["trurn.testing.pytest_plugin"]
