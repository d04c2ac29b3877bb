"""The results table (markdown, ready for the README) and the profile summary."""

from __future__ import annotations

import pstats
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Profile",
    "Row",
    "Target",
    "markdown",
    "own_functions",
    "profiles_table",
    "times",
    "verdict",
]

_TIMES = "\N{MULTIPLICATION SIGN}"


def times(ratio: float) -> str:
    """The ratio as the table shows it: two decimals and a multiplication sign."""
    return f"{ratio:.2f}{_TIMES}"


@dataclass(frozen=True)
class Target:
    """``trurn ÷ baseline`` must be at most ``bound`` (or at least, when ``at_least``).

    With a ``unit``, the bound is absolute instead: it applies to the row's ``value``
    (trurn's own figure, in that unit), and the ratio is for information.
    """

    bound: float
    at_least: bool = False
    unit: str | None = None

    def met(self, ratio: float) -> bool:
        return ratio >= self.bound if self.at_least else ratio <= self.bound

    def __str__(self) -> str:
        unit = _TIMES if self.unit is None else f" {self.unit}"
        return f"{'≥' if self.at_least else '≤'} {self.bound:g}{unit}"


@dataclass(frozen=True)
class Row:
    """One line of the table: the two figures, already formatted, and their ratio.

    ``value`` is trurn's figure as a number, for a target with a unit.
    """

    what: str
    baseline: str
    trurn: str
    ratio: float | None  # None: nothing to compare with (the baseline has no such thing)
    target: Target | None = None
    value: float | None = None


def verdict(row: Row) -> str:
    """``PASS`` or ``MISS`` against the row's target; ``info`` when it has none."""
    if row.target is None:
        return "info"
    if row.target.unit is None:
        if row.ratio is None:
            raise ValueError(f"{row.what}: a target on the ratio needs a ratio")
        judged = row.ratio
    elif row.value is None:
        raise ValueError(f"{row.what}: a target in {row.target.unit} needs the row's value")
    else:
        judged = row.value
    return "PASS" if row.target.met(judged) else "MISS"


def markdown(rows: list[Row]) -> str:
    header = ("Measurement", "Baseline", "trurn", "trurn ÷ baseline", "Target", "Result")
    lines = [_line(header), _line(tuple("---" for _ in header))]
    for row in rows:
        target = str(row.target) if row.target is not None else "—"
        verdict_text = verdict(row)
        if verdict_text != "info":
            verdict_text = f"**{verdict_text}**"
        ratio = "—" if row.ratio is None else times(row.ratio)
        cells = (row.what, row.baseline, row.trurn, ratio, target, verdict_text)
        lines.append(_line(cells))
    return "\n".join(lines)


def _line(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


@dataclass(frozen=True)
class Profile:
    """What one cProfile dump says, per turn."""

    client: str
    turns: int
    total_s: float
    pool_s: float
    task_steps: int | None

    @classmethod
    def load(cls, path: str, client: str, turns: int, task_steps: int | None) -> Profile:
        stats = _stats(path)
        total = sum(entry[2] for entry in stats.values())
        pool = sum(
            entry[3]
            for (filename, _, name), entry in stats.items()
            if "httpcore" in filename and name == _POOL_FUNCTION
        )
        return cls(client, turns, total, pool, task_steps)

    def cells(self) -> tuple[str, ...]:
        def per_turn(seconds: float) -> str:
            return f"{seconds / self.turns * 1000:.2f} ms"

        steps = "?" if self.task_steps is None else f"{self.task_steps / self.turns:.0f}"
        return (
            self.client,
            per_turn(self.total_s),
            f"{per_turn(self.pool_s)} ({self.pool_s / self.total_s:.0%})",
            per_turn(self.total_s - self.pool_s),
            steps,
        )


# httpcore's connection pool runs this on every request and every response close.
_POOL_FUNCTION = "_assign_requests_to_connections"


def _stats(path: str) -> dict[tuple[str, int, str], tuple[int, int, float, float, object]]:
    return pstats.Stats(path).stats  # type: ignore[attr-defined, no-any-return]


def profiles_table(rows: list[tuple[str, Profile]]) -> str:
    """Per scenario and client: CPU per turn under cProfile, the part in httpcore's pool
    bookkeeping, the rest, and Trio task steps per turn."""
    header = (
        "Scenario",
        "Client",
        "CPU/turn (cProfile)",
        f"in httpcore `{_POOL_FUNCTION}`",
        "the rest",
        "task steps/turn",
    )
    lines = [_line(header), _line(tuple("---" for _ in header))]
    lines += [_line((scenario, *profile.cells())) for scenario, profile in rows]
    return "\n".join(lines)


def own_functions(path: str, package_dir: Path, turns: int, limit: int = 15) -> str:
    """The functions of ``package_dir`` with the most own time (``tottime``) in the
    cProfile dump at ``path``, per turn, as a markdown table."""
    stats = _stats(path)
    total = sum(entry[2] for entry in stats.values())
    own = sorted(
        (
            (entry[2], entry[3], entry[1], key)
            for key, entry in stats.items()
            if key[0].startswith(str(package_dir))
        ),
        reverse=True,
    )
    own_total = sum(entry[0] for entry in own)
    lines = [
        f"trurn's own code takes {own_total / turns * 1000:.2f} ms of the "
        f"{total / turns * 1000:.2f} ms per turn under cProfile ({own_total / total:.0%}); "
        "its top functions by own time (calls of a coroutine count its resumptions):",
        "",
        "| trurn function | calls/turn | tottime µs/turn | cumtime µs/turn |",
        "| --- | --- | --- | --- |",
    ]
    for tottime, cumtime, calls, (filename, lineno, name) in own[:limit]:
        where = f"{Path(filename).relative_to(package_dir.parent)}:{lineno} {name}"
        lines.append(
            f"| `{where}` | {calls / turns:.1f} | {tottime / turns * 1e6:.0f} "
            f"| {cumtime / turns * 1e6:.0f} |"
        )
    return "\n".join(lines)
