"""The KV cache between steps: keep the accepted path's entries, contiguous; roll back to a prefix.

Works on transformers' ``DynamicCache`` (``cache.layers[i].keys/values`` shaped
[batch, kv_heads, seq, head_dim]). Call inside ``torch.inference_mode()``: the cache tensors
are inference tensors and are edited in place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import DynamicCache


def new_cache() -> DynamicCache:
    """An empty cache with plain (full-attention) layers."""
    from transformers import DynamicCache

    return DynamicCache()


def cache_length(cache: DynamicCache) -> int:
    return int(cache.get_seq_length())


def keep_path(cache: DynamicCache, start: int, slots: torch.Tensor) -> None:
    """After a tree step appended T entries at ``start``, keep only ``slots`` (ascending tree slots).

    Their entries move to ``start, start+1, ...`` and the rest of the tree is dropped.
    """
    kept = len(slots)
    if not torch.equal(slots, torch.arange(kept, device=slots.device)):
        src = slots + start
        for layer in cache.layers:
            layer.keys[:, :, start : start + kept] = layer.keys[:, :, src]  # RHS gather copies first
            layer.values[:, :, start : start + kept] = layer.values[:, :, src]
    truncate(cache, start + kept)


def truncate(cache: DynamicCache, length: int) -> None:
    """Drop every entry at or after position ``length``."""
    extra = cache_length(cache) - length
    if extra > 0:
        cache.crop(-extra)
