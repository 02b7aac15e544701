"""Prompt-lookup drafts: continue the newest n-gram the way it continued earlier in the context."""

from __future__ import annotations

from collections.abc import Sequence

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
