"""Prompt-lookup drafts: continue the newest n-gram the way it continued earlier in the context."""

from __future__ import annotations

from collections.abc import Sequence


def lookup_draft(context: Sequence[int], max_tokens: int, ngram_sizes: Sequence[int] = (3, 2)) -> list[int]:
    """Up to ``max_tokens`` tokens that followed the most recent earlier occurrence of the context's last n-gram.

    Tries the longest n-gram first; returns [] when none recurs.
    """
    n_ctx = len(context)
    for n in ngram_sizes:
        if n_ctx <= n:
            continue
        pattern = list(context[-n:])
        last = pattern[-1]
        for end in range(n_ctx - 2, n - 2, -1):  # end: index of the candidate match's last token
            if context[end] == last and list(context[end - n + 1 : end + 1]) == pattern:
                draft = list(context[end + 1 : end + 1 + max_tokens])
                if draft:
                    return draft
    return []
