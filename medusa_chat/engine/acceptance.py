"""Which tree nodes the base model accepts, and the longest accepted root-to-leaf path.

Acceptance is decided per node: a non-root node is acceptable when its token passes the test
against the base model's distribution at its parent (greedy: it is the argmax; typical: its
probability exceeds ``min(threshold, alpha * exp(-entropy))``). A path is accepted up to its
first unacceptable node; the best path is the longest (ties: the first, or for typical
acceptance the most probable).
"""

from __future__ import annotations

import torch

from .sampling import select


def greedy_nodes(tokens: torch.Tensor, logits: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """Per node: is its token the argmax of the base logits at its parent? The root always is.

    ``tokens`` [T], ``logits`` [T, V] (after each node), ``parents`` [T] (-1 for the root).
    """
    predicted = logits.argmax(-1)
    ok = tokens == predicted[parents.clamp(min=0)]
    ok[0] = True
    return ok


def typical_thresholds(probs: torch.Tensor, threshold: float, alpha: float) -> torch.Tensor:
    """Per distribution [..., V]: ``min(threshold, alpha * exp(-entropy))`` (entropy in nats)."""
    entropy = -(probs * torch.log(probs + 1e-5)).sum(-1)
    return torch.clamp(alpha * torch.exp(-entropy), max=threshold)


def typical_nodes(
    tokens: torch.Tensor,
    logits: torch.Tensor,
    parents: torch.Tensor,
    temperature: float,
    threshold: float = 0.09,
    alpha: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Typical acceptance per node; returns (acceptable [T] bool, log-probability [T]).

    A node is acceptable when ``p(token | parent) > min(threshold, alpha * exp(-H(parent)))``
    under the base distribution at ``temperature``. Temperature 0 reduces to greedy.
    """
    if temperature <= 0:
        ok = greedy_nodes(tokens, logits, parents)
        return ok, torch.zeros(ok.shape, dtype=torch.float32, device=ok.device)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    parent = parents.clamp(min=0)
    p = probs[parent, tokens]
    ok = p > typical_thresholds(probs, threshold, alpha)[parent]
    ok[0] = True
    logp = torch.log(p.clamp(min=1e-30))
    logp[0] = 0.0
    return ok, logp


def best_path(
    ok: torch.Tensor, retrieve: torch.Tensor, scores: torch.Tensor | None = None
) -> tuple[int, int]:
    """(row of ``retrieve``, accepted length) of the longest accepted path.

    ``ok`` [T] per-node acceptance, ``retrieve`` [P, D+1] slots per path padded with -1.
    The accepted length counts nodes after the root. Ties go to the first row, or with
    ``scores`` (per-node log-probabilities) to the path whose accepted nodes score highest.
    """
    padded = torch.cat([ok, ok.new_zeros(1)])  # index -1 (padding) reads False
    path_ok = padded[retrieve[:, 1:]]
    lengths = torch.cumprod(path_ok.to(torch.int32), dim=-1).sum(-1)
    longest = int(lengths.max())
    if scores is None or longest == 0:
        return int(torch.argmax(lengths)), longest
    path_scores = torch.cat([scores, scores.new_zeros(1)])[retrieve[:, 1 : longest + 1]].sum(-1)
    path_scores = torch.where(lengths == longest, path_scores, torch.full_like(path_scores, -torch.inf))
    return int(torch.argmax(path_scores)), longest


def sample_walk(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    logits: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[list[int], int]:
    """Lossless speculative sampling down the tree: (accepted slots, the next token).

    From the root, draw the next token from the base distribution at the current node; when a
    child carries that token, move to it and draw again; otherwise stop. Every emitted token is
    a draw from the base model's own (temperature, top-p) distribution, so the output has exactly
    the distribution of plain sampling. The draw that stopped the walk is the next token.
    One draw per depth; children are found with one tensor comparison, not a loop over nodes.
    """
    path = [0]
    while True:
        token = select(logits[path[-1]], temperature, top_p, generator)
        children = torch.nonzero((parents == path[-1]) & (tokens == token)).flatten()
        if not len(children):
            return path, token
        path.append(int(children[0]))  # the first listed child wins among equal tokens
