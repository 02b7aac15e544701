"""Tree choices as plain data: rank paths such as ``[[0], [0, 0], [1]]``, checked without torch.

:mod:`medusa_chat.engine.tree` turns checked choices into the buffers a verification step needs.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UserError

TOPK = 10
"""Proposals kept per head (the reference implementation's constant)."""

MAX_NODES = 256
"""Most tree paths (slots besides the root) a tree may have: 4x the reference trees. A verification pass
costs about the tree's size in tokens and its buffers grow with its square, so bigger trees only slow down."""


class TreeError(UserError, ValueError):
    """A malformed list of tree choices."""


def check_choices(
    choices: Sequence[Sequence[int]], num_heads: int | None = None, topk: int = TOPK
) -> list[tuple[int, ...]]:
    """The paths of ``choices`` sorted by (length, ranks); :class:`TreeError` when they are not a valid tree.

    Refused: a path deeper than ``num_heads``, a path whose parent is missing, a rank outside
    ``[0, topk)``, a duplicate, more than :data:`MAX_NODES` paths, anything but a list of integer lists.
    """
    if isinstance(choices, str | bytes) or not isinstance(choices, Sequence):
        raise TreeError(f"tree choices must be a list of rank paths like [[0], [0, 0]], got {choices!r:.100}")
    check_size(len(choices))
    paths: list[tuple[int, ...]] = []
    for raw in choices:
        if isinstance(raw, str | bytes) or not isinstance(raw, Sequence) or not raw:
            raise TreeError(f"each tree path must be a non-empty list of ranks, got {raw!r}")
        if not all(isinstance(r, int) and not isinstance(r, bool) for r in raw):
            raise TreeError(f"tree path {list(raw)} holds a non-integer rank")
        path = tuple(raw)
        bad = [r for r in path if not 0 <= r < topk]
        if bad:
            raise TreeError(f"tree path {list(path)} has rank {bad[0]} outside 0..{topk - 1} (top-k is {topk})")
        paths.append(path)
    seen: set[tuple[int, ...]] = set()
    for path in paths:
        if path in seen:
            raise TreeError(f"tree path {list(path)} is listed twice")
        seen.add(path)
    for path in paths:
        if len(path) > 1 and path[:-1] not in seen:
            raise TreeError(f"tree path {list(path)} has no parent: add {list(path[:-1])}")
    if num_heads is not None:
        deepest = max(paths, key=len, default=())
        if len(deepest) > num_heads:
            raise TreeError(
                f"tree path {list(deepest)} has depth {len(deepest)} but the model has only "
                f"{num_heads} Medusa head(s); use a tree of depth <= {num_heads}"
            )
    return sorted(paths, key=lambda p: (len(p), p))


def check_size(nodes: int) -> None:
    """Refuse a tree of more than :data:`MAX_NODES` nodes (besides the root)."""
    if nodes > MAX_NODES:
        raise TreeError(
            f"the tree has {nodes} nodes but at most {MAX_NODES} are allowed (the reference trees have 63); "
            "choose a smaller tree"
        )


def chain(depth: int) -> list[list[int]]:
    """The top-1 chain ``[[0], [0, 0], ...]`` of the given depth."""
    return [[0] * d for d in range(1, depth + 1)]
