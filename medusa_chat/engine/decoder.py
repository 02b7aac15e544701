"""What the generator needs of a decoder, and the transformers implementation of it.

A decoder owns its KV cache. The generator (and batched distillation) drive any decoder through
:class:`Decoder` and never know which one they have: :class:`TransformersDecoder` (every
architecture, CUDA, bitsandbytes) or the lean CPU decoder of :mod:`.lean`.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from .cache import cache_length, keep_path, new_cache, truncate
from .quant import Dense, Linear


class Decoder(Protocol):
    """A causal decoder over its own KV cache (batch rows share one cache length)."""

    device: torch.device
    dtype: torch.dtype  # activations
    engine: str  # "transformers" or "lean", shown to users
    config: object  # the transformers config the weights came with

    @property
    def lm_head(self): ...  # callable hidden [..., H] -> logits [..., V] (the heads may share it)

    @property
    def vocab_size(self) -> int: ...

    @property
    def cache_length(self) -> int: ...

    def new_cache(self, batch: int = 1) -> None: ...

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``ids`` [B, q] at ``positions`` [B, q]; ``mask`` [B, 1, q, L + q] bool (None: causal) -> hidden [B, q, H]."""

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...  # fp32

    def embed(self, ids: torch.Tensor) -> torch.Tensor: ...

    def output_rows(self, ids: torch.Tensor) -> torch.Tensor: ...  # dense lm_head rows [n, H] (draft vocabulary)

    def linear(self, weight: torch.Tensor) -> Linear: ...  # ``weight`` [N, K] in the decoder's weight format

    def keep_path(self, start: int, slots: torch.Tensor) -> None: ...

    def truncate(self, length: int) -> None: ...

    def select_rows(self, rows: torch.Tensor) -> None: ...


def attach_heads(heads, decoder: Decoder):
    """``heads`` in the decoder's device and dtype, their matrices in its weight format (int4 on a 4-bit lean
    decoder) and their draft projection (rows of its lm_head), ready to run."""
    heads = heads.to(device=decoder.device, dtype=decoder.dtype).eval()
    heads.use_linear(decoder.linear)
    if heads.draft_vocab is not None:
        heads.use_base_projection(decoder.linear(decoder.output_rows(heads.draft_vocab)))
    return heads


class TransformersDecoder:
    """A transformers causal LM over a ``DynamicCache``, behind :class:`Decoder`."""

    engine = "transformers"

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config
        self.generation_config = getattr(model, "generation_config", None)
        self._body = model.get_decoder()
        self._head = model.get_output_embeddings()
        self._softcap = getattr(model.config, "final_logit_softcapping", None)
        self.device = next(model.parameters()).device
        self.dtype = _float_dtype(model)
        self.cache = new_cache()

    @property
    def lm_head(self) -> nn.Module:
        return self._head

    @property
    def vocab_size(self) -> int:
        return self._head.weight.shape[0]

    @property
    def cache_length(self) -> int:
        return cache_length(self.cache)

    def new_cache(self, batch: int = 1) -> None:
        self.cache = new_cache()

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if ids.shape == (1, 1):  # one token of one row sees the whole cache: no mask to build
            mask = None
        if mask is not None:  # transformers takes an additive float mask
            mask = torch.zeros(mask.shape, dtype=self.dtype, device=self.device).masked_fill(
                ~mask, torch.finfo(self.dtype).min
            )
        out = self._body(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True)
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self._head(hidden).float()
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def output_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self._head.weight.detach()[ids.to(self._head.weight.device)]

    def linear(self, weight: torch.Tensor) -> Linear:
        return Dense(weight.detach().to(self.device, self.dtype))

    def keep_path(self, start: int, slots: torch.Tensor) -> None:
        keep_path(self.cache, start, slots)

    def truncate(self, length: int) -> None:
        truncate(self.cache, length)

    def select_rows(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype activations run in (a quantised model's compute dtype, not its int storage)."""
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.float32
