"""Candidate trees: from a list of rank paths to the buffers one verification step needs.

A tree is given as Medusa "choices": paths of per-depth ranks such as ``[[0], [0, 0], [1]]``.
The node ``(r1, ..., rd)`` sits at depth d, carries head (d-1)'s rank-rd proposal and hangs
under ``(r1, ..., r(d-1))``. The root (depth 0) is the base model's own next token and is
not listed. Slots are numbered root first, then paths sorted by (length, ranks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .choices import MAX_NODES, TOPK, TreeError, chain, check_choices, check_size

__all__ = ["MAX_NODES", "TOPK", "Tree", "TreeError", "build_tree", "chain", "check_size", "with_chain"]


@dataclass(frozen=True)
class Tree:
    """Everything a verification step needs, as CPU tensors (move with :meth:`to`).

    - ``parents[s]``: parent slot of slot s (-1 for the root).
    - ``depths[s]``: depth of slot s; position id offset of its token.
    - ``tree_indices[s]``: index of slot s's token in the flat candidate vector
      ``[root, head0 top-k..., head1 top-k..., ...]`` (``topk`` proposals per head).
    - ``ancestor_mask[s, t]``: True when slot s may attend to slot t (t is s or an ancestor).
    - ``retrieve_indices[p]``: slots of the root-to-leaf path p, padded with -1.
    """

    choices: tuple[tuple[int, ...], ...]
    parents: torch.Tensor
    depths: torch.Tensor
    tree_indices: torch.Tensor
    ancestor_mask: torch.Tensor
    retrieve_indices: torch.Tensor
    topk: int

    @property
    def size(self) -> int:
        """Number of slots, root included."""
        return len(self.parents)

    @property
    def depth(self) -> int:
        """Depth of the deepest head node (the number of heads the tree needs)."""
        return max((len(c) for c in self.choices), default=0)

    def to(self, device: torch.device | str) -> Tree:
        """A copy with every tensor on ``device``."""
        moved = {
            name: getattr(self, name).to(device)
            for name in ("parents", "depths", "tree_indices", "ancestor_mask", "retrieve_indices")
        }
        return Tree(choices=self.choices, topk=self.topk, **moved)


def build_tree(
    choices: Sequence[Sequence[int]], num_heads: int | None = None, topk: int = TOPK
) -> Tree:
    """Validate ``choices`` and build the tree's buffers.

    Raises :class:`TreeError` for a path deeper than ``num_heads``, a path whose parent is
    missing, a rank outside ``[0, topk)``, a duplicate, or anything that is not a list of
    integer lists.
    """
    paths = check_choices(choices, num_heads, topk)
    slot_of = {(): 0}
    for slot, path in enumerate(paths, start=1):
        slot_of[path] = slot
    size = len(paths) + 1

    parents = [-1] + [slot_of[p[:-1]] for p in paths]
    depths = [0] + [len(p) for p in paths]
    tree_indices = [0] + [1 + topk * (len(p) - 1) + p[-1] for p in paths]

    ancestor_mask = torch.zeros(size, size, dtype=torch.bool)
    for slot in range(size):
        node = slot
        while node >= 0:
            ancestor_mask[slot, node] = True
            node = parents[node]

    is_parent = set(parents)
    leaves = [s for s in range(size) if s not in is_parent]
    chains = []
    for leaf in reversed(leaves):  # deepest / lexicographically last first, as the reference
        chain, node = [], leaf
        while node >= 0:
            chain.append(node)
            node = parents[node]
        chains.append(chain[::-1])
    width = max(len(c) for c in chains)
    retrieve = torch.full((len(chains), width), -1, dtype=torch.long)
    for row, chain in enumerate(chains):
        retrieve[row, : len(chain)] = torch.tensor(chain)

    return Tree(
        choices=tuple(paths),
        parents=torch.tensor(parents, dtype=torch.long),
        depths=torch.tensor(depths, dtype=torch.long),
        tree_indices=torch.tensor(tree_indices, dtype=torch.long),
        ancestor_mask=ancestor_mask,
        retrieve_indices=retrieve,
        topk=topk,
    )


def with_chain(tree: Tree, length: int) -> Tree:
    """``tree`` plus a chain of ``length`` extra slots hanging from the root (a prompt-lookup draft).

    The chain's slots come after the tree's; their tokens are not head proposals, so
    ``tree_indices`` covers only the original slots.
    """
    if length <= 0:
        return tree
    size, device = tree.size, tree.parents.device
    chain_slots = torch.arange(size, size + length, device=device)
    parents = torch.cat([tree.parents, torch.cat([chain_slots.new_zeros(1), chain_slots[:-1]])])
    depths = torch.cat([tree.depths, torch.arange(1, length + 1, device=device)])
    mask = torch.zeros(size + length, size + length, dtype=torch.bool, device=device)
    mask[:size, :size] = tree.ancestor_mask
    mask[size:, 0] = True
    mask[size:, size:] = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    width = max(tree.retrieve_indices.shape[1], length + 1)
    retrieve = torch.full((tree.retrieve_indices.shape[0] + 1, width), -1, dtype=torch.long, device=device)
    retrieve[:-1, : tree.retrieve_indices.shape[1]] = tree.retrieve_indices
    retrieve[-1, 0] = 0
    retrieve[-1, 1 : length + 1] = chain_slots
    return Tree(tree.choices, parents, depths, tree.tree_indices, mask, retrieve, tree.topk)
