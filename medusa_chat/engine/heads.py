"""Medusa heads: K heads of L residual blocks each, then a vocab projection.

The module layout mirrors the FasterDecoding state dict, so checkpoints load without renaming:
``{i}.{j}.linear.weight|bias`` for block j of head i and ``{i}.{L}.weight`` for head i's own
vocab projection. With ``shared_projection`` the heads have no projection of their own and reuse
the base model's ``lm_head`` (one batched matmul over the K heads: much cheaper on a CPU).
Head i reads the base model's last hidden state at position t and predicts token t+2+i.

Two additions, both optional and stored with the heads:

- **root-conditioned heads** (``root_conditioned``): at draft time the token at t+1 (the tree's
  root, the base model's own next token) is known exactly. These heads first mix its embedding
  into the hidden state, ``x = h + SiLU(W [h; e(root)] + b)`` (W starts at zero: a new fuse is
  Medusa-1), then run their blocks. Not a FasterDecoding format: ``export`` refuses them.
- **a draft vocabulary** (``draft_vocab``): the heads score only a shortlist of token ids (the
  tokens the model actually writes), projecting onto those rows of the base ``lm_head``: a few
  times less work per step on a CPU. Tokens outside it are never proposed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .quant import Linear


class Converted:
    """A weight in another format (the decoder's: int4 on a 4-bit decoder) for inference, remade whenever the weight
    changes (an optimizer step, a load): training and gradients always see the parameter itself."""

    def __init__(self, make: Callable[[torch.Tensor], Linear]) -> None:
        self.make = make
        self._source: tuple[int, int, int] | None = None  # (tensor, storage, version) it was made from
        self._linear: Linear | None = None

    def linear(self, weight: torch.Tensor) -> Linear | None:
        """``weight`` converted, or None while gradients are wanted (use the parameter then)."""
        if torch.is_grad_enabled() and weight.requires_grad:
            return None
        source = (id(weight), weight.data_ptr(), weight._version)  # a new tensor, new data (.to) or an in-place change
        if source != self._source:
            self._linear, self._source = self.make(weight.detach()), source
        return self._linear


class ResBlock(nn.Module):
    """``x + SiLU(W x + b)``; W starts at zero so a new block is (nearly) the identity."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        self.converted: Converted | None = None  # W in the decoder's weight format, see MedusaHeads.use_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = self.converted.linear(self.linear.weight) if self.converted else None
        y = self.linear(x) if fast is None else fast(x) + self.linear.bias
        return x + nn.functional.silu(y)


class MedusaHeads(nn.ModuleList):
    """K Medusa heads; index i is head i (an ``nn.Sequential`` of blocks, then maybe a projection)."""

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        num_heads: int,
        num_layers: int = 1,
        shared_projection: bool = True,
        root_conditioned: bool = False,
        draft_vocab: torch.Tensor | None = None,
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
        self.root_conditioned = root_conditioned
        if root_conditioned:  # parameters, not submodules: iterating the list yields only the heads
            self.root_weight = nn.Parameter(torch.zeros(hidden_size, 2 * hidden_size))
            self.root_bias = nn.Parameter(torch.zeros(hidden_size))
        if draft_vocab is not None and not shared_projection:
            raise ValueError("a draft vocabulary needs heads that share the base lm_head")
        self.register_buffer("draft_vocab", None if draft_vocab is None else draft_vocab.long())
        self.draft_projection: Linear | None = None  # rows of the base lm_head, see use_base_projection
        self._root_converted: Converted | None = None  # root_weight in the decoder's weight format, see use_linear

    @property
    def num_heads(self) -> int:
        return len(self)

    @property
    def kind(self) -> str:
        return "root-conditioned" if self.root_conditioned else "medusa-1"

    def hidden(self, x: torch.Tensor, count: int | None = None, root: torch.Tensor | None = None) -> torch.Tensor:
        """The first ``count`` heads' blocks applied to ``x`` [..., H] -> [count, ..., H].

        ``root`` [..., H] is the embedding of the token after ``x``'s position (root-conditioned heads).
        """
        x = self._fuse_root(x, root)
        return torch.stack([head[: self.num_layers](x) for head in list(self)[:count]])

    def _fuse_root(self, x: torch.Tensor, root: torch.Tensor | None) -> torch.Tensor:
        """``x + SiLU(W [x; root] + b)`` for root-conditioned heads; ``x`` itself for Medusa-1 heads."""
        if not self.root_conditioned:
            return x
        if root is None:
            raise ValueError("root-conditioned heads need the embedding of the root token")
        both = torch.cat([x, root.to(x.dtype)], -1)
        fast = self._root_converted.linear(self.root_weight) if self._root_converted else None
        if fast is None:
            mixed = nn.functional.linear(both, self.root_weight, self.root_bias)
        else:
            mixed = fast(both) + self.root_bias
        return x + nn.functional.silu(mixed)

    def forward(
        self,
        x: torch.Tensor,
        lm_head: nn.Module | None = None,
        count: int | None = None,
        root: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Full-vocabulary logits of the first ``count`` heads for ``x`` [..., H] -> [count, ..., V].

        ``lm_head`` is the base model's output projection, required when the projection is shared
        (then all heads go through it in one batched matmul).
        """
        if self.shared_projection:
            if lm_head is None:
                raise ValueError("these Medusa heads share the base lm_head: pass it as lm_head")
            return lm_head(self.hidden(x, count, root))
        x = self._fuse_root(x, root)
        return torch.stack([head(x) for head in list(self)[:count]])

    def use_base_projection(self, rows: Linear) -> None:
        """Give draft-vocabulary heads their projection: ``rows`` = the base lm_head's rows of ``draft_vocab``."""
        self.draft_projection = rows

    def use_linear(self, make: Callable[[torch.Tensor], Linear]) -> None:
        """Run the blocks' matrices through ``make`` from now on (the decoder's format: int4 on a 4-bit decoder,
        a few times less to read per step), outside training: the parameters stay what is trained and saved, and a
        changed parameter is converted again (:class:`Converted`)."""
        for head in self:
            for block in head[: self.num_layers]:
                block.converted = Converted(make)
        if self.root_conditioned:
            self._root_converted = Converted(make)

    def draft_logits(
        self, x: torch.Tensor, lm_head: nn.Module | None, count: int | None = None, root: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits over the heads' vocabulary (the draft vocabulary when there is one) [count, ..., V']."""
        if self.draft_vocab is None:
            return self(x, lm_head, count, root)
        if self.draft_projection is None:
            raise ValueError("draft-vocabulary heads need use_base_projection() before use")
        return self.draft_projection(self.hidden(x, count, root))

    def token_ids(self, columns: torch.Tensor) -> torch.Tensor:
        """Token ids of columns of :meth:`draft_logits`."""
        return columns if self.draft_vocab is None else self.draft_vocab[columns]

    def propose(
        self, x: torch.Tensor, lm_head: nn.Module | None, count: int, k: int, root: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Each of the first ``count`` heads' top-``k`` token ids for ``x`` [..., H] -> [count, ..., k]."""
        return self.token_ids(self.draft_logits(x, lm_head, count, root).topk(k, dim=-1).indices)

    def init_projections_from(self, lm_head: nn.Module) -> None:
        """Copy the base ``lm_head`` into every per-head projection (the Medusa-1 initialisation)."""
        if self.shared_projection:
            return
        with torch.no_grad():
            for head in self:
                head[-1].weight.copy_(lm_head.weight)
