"""Where a turn sits among nested turns: its parent, its root, its depth.

A tool may run a whole turn of its own (a subagent, through :func:`trurn.run_turn` or
another :class:`~trurn.Agent`). That nested turn runs in the tool's task, inside the
parent turn's nursery, so cancelling the parent cancels it; and it finds its parent
through a context variable, which Trio copies into every task a turn starts. Events
(``turn_started``) and session turn markers carry the result.
"""

from __future__ import annotations

import contextvars

import msgspec

from ._errors import SubagentDepthError

__all__ = ["CURRENT_TURN", "DEFAULT_MAX_DEPTH", "TurnLineage", "current_turn", "lineage_for"]

DEFAULT_MAX_DEPTH = 8
"""How deep turns may nest by default: a top-level turn is depth 0."""


class TurnLineage(msgspec.Struct, frozen=True, kw_only=True):
    """A turn's place in the tree of turns.

    ``chain`` is every turn id from the root down to this one (so ``chain[0]`` is
    ``root_turn_id`` and ``chain[-1]`` is ``turn_id``); ``depth`` is ``len(chain) - 1``.
    """

    turn_id: str
    parent_turn_id: str | None
    root_turn_id: str
    depth: int
    chain: tuple[str, ...]


CURRENT_TURN: contextvars.ContextVar[TurnLineage | None] = contextvars.ContextVar(
    "trurn_current_turn", default=None
)
"""Set by the turn loop for the duration of a turn (private to trurn)."""


def current_turn() -> TurnLineage | None:
    """The turn the calling task runs in (a tool sees its own turn), or ``None``."""
    return CURRENT_TURN.get()


def lineage_for(turn_id: str, parent: TurnLineage | None, *, max_depth: int) -> TurnLineage:
    """The lineage of a new turn started under ``parent`` (``None``: a top-level turn).

    Raises :class:`~trurn.SubagentDepthError` if it would be deeper than ``max_depth``.
    """
    if parent is None:
        return TurnLineage(
            turn_id=turn_id, parent_turn_id=None, root_turn_id=turn_id, depth=0, chain=(turn_id,)
        )
    depth = parent.depth + 1
    if depth > max_depth:
        raise SubagentDepthError(
            f"a turn nested {depth} deep is over the limit of {max_depth} "
            f"(root turn {parent.root_turn_id}); raise the agent's max_depth if this "
            "nesting is intended"
        )
    return TurnLineage(
        turn_id=turn_id,
        parent_turn_id=parent.turn_id,
        root_turn_id=parent.root_turn_id,
        depth=depth,
        chain=(*parent.chain, turn_id),
    )
