"""Nox sessions for trurn, all on uv-built virtualenvs.

- ``tests-3.10`` .. ``tests-3.13``: install the built package with its ``test`` extra and run
  pytest (arguments after ``--`` go to pytest).
- ``minimums``: the same on 3.10 with the lowest versions of the direct dependencies that
  pyproject.toml allows.
- ``lint``: ``ruff check`` and ``ruff format --check``.
- ``typing``: ``mypy --strict`` on ``trurn/``.
- ``examples``: run every ``examples/*.py``; each must exit 0.
- ``bench``: run ``benchmarks/run.py`` (arguments after ``--`` go to it).

``python -m nox`` runs tests, lint and typing. Python 3.10 to 3.13 must be installed;
a missing one is an error, not a skip, and nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv"
nox.options.error_on_missing_interpreters = True
nox.options.download_python = "never"
nox.options.sessions = ["tests", "lint", "typing"]

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def _pyenv_bin_dirs() -> list[str]:
    """The ``bin`` dirs of the newest installed pyenv patch release of each of `PYTHONS`.

    pyenv's shims only answer for the versions named by ``pyenv global``, so a ``python3.10``
    shim can exist and still fail; putting the real ``bin`` dirs first avoids the shims.
    """
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    newest: dict[str, tuple[tuple[int, ...], Path]] = {}
    for bin_dir in root.glob("versions/3.1[0-3]*/bin"):
        parts = bin_dir.parent.name.split(".")
        if len(parts) != 3 or not all(part.isdigit() for part in parts):
            continue  # "3.13.0t", "3.12-dev", a pyenv-virtualenv: not a plain CPython release
        release = tuple(int(part) for part in parts)
        minor = ".".join(parts[:2])
        if minor not in newest or release > newest[minor][0]:
            newest[minor] = (release, bin_dir)
    return [str(bin_dir) for _, bin_dir in sorted(newest.values())]


os.environ["PATH"] = os.pathsep.join([*_pyenv_bin_dirs(), os.environ.get("PATH", "")])
# Only use interpreters already on this machine: CI can reach package registries and
# nothing else, so a download would hang or fail far from the real cause.
os.environ["UV_PYTHON_DOWNLOADS"] = "never"
os.environ["UV_PYTHON_PREFERENCE"] = "system"


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    # Not editable: the tests then import the wheel that users would get.
    session.install(".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python="3.10")
def minimums(session: nox.Session) -> None:
    session.install("--resolution=lowest-direct", ".[test]")
    session.run(
        "python",
        "-c",
        "from importlib.metadata import version; "
        "print(*(f'{name}=={version(name)}' for name in ('trio', 'httpx', 'msgspec')))",
    )
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


# On 3.10 because pyproject sets mypy's python_version to 3.10: the branches for old
# Pythons then need their backports (exceptiongroup) installed to type-check.
@nox.session(python="3.10")
def typing(session: nox.Session) -> None:
    # The test extra too: trurn.testing.pytest_plugin is typed against pytest.
    session.install(".[test]", "mypy")
    session.run("mypy", "--strict", "trurn")


EXAMPLE_ARGUMENTS = {"approval_demo.py": ["--yes"]}
"""Arguments for the examples that ask a person: CI answers by flag."""


@nox.session
def examples(session: nox.Session) -> None:
    session.install(".")
    paths = sorted(Path("examples").glob("*.py"))
    if not paths:
        session.error("no examples/*.py found")
    for path in paths:  # nox echoes each command, so the log shows which example failed
        session.run("python", str(path), *EXAMPLE_ARGUMENTS.get(path.name, []))


@nox.session
def bench(session: nox.Session) -> None:
    session.install(".")
    session.run("python", "benchmarks/run.py", *session.posargs)
