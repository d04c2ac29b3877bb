"""Import time: ``import trurn`` against ``import trio, httpx, msgspec``, in fresh interpreters.

Each statement runs in its own ``python -c`` process, the two alternating so that a
noisy moment hits both; the figure is the median wall time of the whole process
(interpreter start-up included, as a user of the command line feels it). One untimed
run of each first writes the bytecode caches.

The caches go to a temporary ``PYTHONPYCACHEPREFIX`` for every module, dependencies
included, and ``PYTHONDONTWRITEBYTECODE`` is lifted for these runs. Otherwise an
editable checkout of trurn (no ``__pycache__``) in an environment that sets
``PYTHONDONTWRITEBYTECODE`` would compile trurn from source on every import while the
dependencies load the ``.pyc`` files their installer wrote, and the benchmark would
measure the compiler, not trurn.

``-X importtime`` then says where the difference goes: the modules ``import trurn``
loads that the bare dependencies do not, with their own ("self") import time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "BASELINE",
    "STARTUP",
    "TRURN",
    "Environment",
    "bytecode_cached",
    "extra_modules",
    "median_wall_ms",
]

Environment = dict[str, str]

STARTUP = "pass"
BASELINE = "import trio, httpx, msgspec"
TRURN = "import trurn"

# A directory without a trurn package in it, so "-c" imports the installed trurn.
_NEUTRAL_CWD = Path(__file__).resolve().parent


@contextmanager
def bytecode_cached() -> Iterator[Environment]:
    """An environment for the child interpreters with bytecode caches in a temporary
    directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="trurn-bench-pycache-") as cache:
        env = {
            name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"
        }
        env["PYTHONPYCACHEPREFIX"] = cache
        yield env


def _run(statement: str, env: Environment, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *options, "-c", statement],
        cwd=_NEUTRAL_CWD,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


def _wall_ms(statement: str, env: Environment) -> float:
    start = time.perf_counter()
    _run(statement, env)
    return (time.perf_counter() - start) * 1000


def median_wall_ms(statements: list[str], runs: int, env: Environment) -> dict[str, float]:
    """Median wall time (ms) of ``python -c <statement>`` for each statement."""
    for statement in statements:
        _run(statement, env)
    times: dict[str, list[float]] = {statement: [] for statement in statements}
    for _ in range(runs):
        for statement in statements:
            times[statement].append(_wall_ms(statement, env))
    return {statement: statistics.median(values) for statement, values in times.items()}


def _self_times_us(statement: str, env: Environment) -> dict[str, int]:
    """Each module's own import time (µs) from ``-X importtime``."""
    report = _run(statement, env, "-X", "importtime").stderr
    times: dict[str, int] = {}
    for line in report.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = line.removeprefix("import time:").split("|")
        times[name.strip()] = int(self_us)
    return times


def extra_modules(runs: int, env: Environment) -> list[tuple[str, float]]:
    """Modules ``import trurn`` loads beyond trio, httpx and msgspec, with their median
    self import time in ms, slowest first."""
    baseline = _self_times_us(BASELINE, env)
    samples: dict[str, list[int]] = {}
    for _ in range(runs):
        for name, self_us in _self_times_us(TRURN, env).items():
            if name not in baseline:
                samples.setdefault(name, []).append(self_us)
    medians = [(name, statistics.median(values) / 1000) for name, values in samples.items()]
    return sorted(medians, key=lambda item: -item[1])
