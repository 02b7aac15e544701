"""Medusa heads: K heads of L residual blocks each, then a vocab projection.

The module layout mirrors the FasterDecoding state dict, so checkpoints load without renaming:
``{i}.{j}.linear.weight|bias`` for block j of head i and ``{i}.{L}.weight`` for head i's own
vocab projection. With ``shared_projection`` the heads have no projection of their own and reuse
the base model's ``lm_head`` (one batched matmul over the K heads: much cheaper on a CPU).
Head i reads the base model's last hidden state at position t and predicts token t+2+i.
"""

from __future__ import annotations

import torch
from torch import nn


class ResBlock(nn.Module):
    """``x + SiLU(W x + b)``; W starts at zero so a new block is (nearly) the identity."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.silu(self.linear(x))


class MedusaHeads(nn.ModuleList):
    """K Medusa heads; index i is head i (an ``nn.Sequential`` of blocks, then maybe a projection)."""

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        num_heads: int,
        num_layers: int = 1,
        shared_projection: bool = True,
    ) -> None:
        heads = []
        for _ in range(num_heads):
            layers: list[nn.Module] = [ResBlock(hidden_size) for _ in range(num_layers)]
            if not shared_projection:
                layers.append(nn.Linear(hidden_size, vocab_size, bias=False))
            heads.append(nn.Sequential(*layers))
        super().__init__(heads)
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.num_layers = num_layers
        self.shared_projection = shared_projection

    @property
    def num_heads(self) -> int:
        return len(self)

    def hidden(self, x: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """The first ``count`` heads' residual blocks applied to ``x`` [..., H] -> [count, ..., H]."""
        return torch.stack([head[: self.num_layers](x) for head in list(self)[:count]])

    def forward(self, x: torch.Tensor, lm_head: nn.Module | None = None, count: int | None = None) -> torch.Tensor:
        """Logits of the first ``count`` heads (all by default) for hidden states ``x`` [..., H] -> [count, ..., V].

        ``lm_head`` is the base model's output projection, required when the projection is shared
        (then all heads go through it in one batched matmul).
        """
        if self.shared_projection:
            if lm_head is None:
                raise ValueError("these Medusa heads share the base lm_head: pass it as lm_head")
            return lm_head(self.hidden(x, count))
        return torch.stack([head(x) for head in list(self)[:count]])

    def init_projections_from(self, lm_head: nn.Module) -> None:
        """Copy the base ``lm_head`` into every per-head projection (the Medusa-1 initialisation)."""
        if self.shared_projection:
            return
        with torch.no_grad():
            for head in self:
                head[-1].weight.copy_(lm_head.weight)
