"""Prompt-lookup drafts: continue the newest n-gram the way it continued earlier in the context."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise

import torch


def lookup_draft(context: Sequence[int], max_tokens: int, ngram_sizes: Sequence[int] = (3, 2)) -> list[int]:
    """Up to ``max_tokens`` tokens that followed the most recent earlier occurrence of the context's last n-gram.

    Tries the longest n-gram first; returns [] when none recurs. One vectorised comparison per n-gram size.
    """
    ctx = torch.as_tensor(context, dtype=torch.long)
    for n in ngram_sizes:
        if len(ctx) <= n:
            continue
        windows = ctx[:-1].unfold(0, n, 1)  # every n-gram that ends before the last token
        starts = torch.nonzero((windows == ctx[-n:]).all(dim=1)).flatten()
        if len(starts):
            begin = int(starts[-1]) + n
            return ctx[begin : begin + max_tokens].tolist()
    return []


MIN_DRAFT_GAIN = 1.1  # predicted tokens/s over the tree alone a draft must promise (costs and rates are estimates)
HIT_PRIOR = (1.0, 3.0)  # (hits, misses) assumed before any draft was scored: a found n-gram is usually a coincidence


def draft_length(
    limit: int, tree_size: int, tree_tokens: float, hit_rate: float, costs: Mapping[int, float]
) -> int:
    """How many lookup tokens (0..``limit``) to verify with a tree of ``tree_size`` slots: the most expected
    tokens per unit of step time.

    The tree alone yields ``tree_tokens`` per step; a draft of n tokens adds ``hit_rate + hit_rate**2 + ...
    + hit_rate**n`` (each drafted token counts only when all before it were accepted) and makes the step cost
    that of ``tree_size + n`` slots (``costs``: measured step cost by slots, relative to a plain step). A draft
    must promise :data:`MIN_DRAFT_GAIN` over the tree alone: its rows cost more than the measured tree rows.
    """
    cost = cost_curve(costs)
    best, best_rate, gain = 0, MIN_DRAFT_GAIN * tree_tokens / cost(tree_size), 0.0
    for n in range(1, limit + 1):
        gain += hit_rate**n
        rate = (tree_tokens + gain) / cost(tree_size + n)
        if rate > best_rate:
            best, best_rate = n, rate
    return best


def step_cost(costs: Mapping[int, float], slots: int) -> float:
    """The cost of a step verifying ``slots`` tokens (see :func:`cost_curve`)."""
    return cost_curve(costs)(slots)


def cost_curve(costs: Mapping[int, float]) -> Callable[[int], float]:
    """Step cost by slots verified, interpolated linearly between measured sizes (a plain step costs 1) and extended
    past the largest along the last two; nothing measured: the cost grows with the rows verified."""
    points = sorted({1: 1.0, **costs}.items())
    if len(points) == 1:
        return float

    def cost(slots: int) -> float:
        for (q0, c0), (q1, c1) in pairwise(points):
            if slots <= q1:
                return c0 + (c1 - c0) * (slots - q0) / (q1 - q0)
        (q0, c0), (q1, c1) = points[-2:]
        return c1 + (c1 - c0) * (slots - q1) / (q1 - q0)

    return cost
