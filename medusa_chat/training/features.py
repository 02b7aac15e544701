"""Frozen-base features for head training: the final hidden state at every answer position.

Row r is position ``t`` of some sequence, for ``t`` from ``prompt_len - 1`` (the last prompt token,
where the app applies the heads after prefill) to ``len - 2``; ``ahead[r, d]`` is the token at
``t + 1 + d`` (``d = 0`` is the root the base model picks, ``d = 1 + i`` head i's target).
Hidden states are cached per distillation shard: ``medusa-chat distill`` writes them as a by-product
of generation, and a shard without them gets one batched forward pass of the base.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .distill_data import Sequence

if TYPE_CHECKING:
    from ..engine.decoder import Decoder

PAD = -100


@dataclass
class Features:
    hidden: torch.Tensor  # [N, H] final-norm hidden states
    ahead: torch.Tensor  # [N, D] token ids at t + 1 + d (PAD past the end)
    sequence_end: torch.Tensor  # [N] index of the sequence's last row + 1 (rows of one sequence are contiguous)

    def __len__(self) -> int:
        return self.hidden.shape[0]


def shard_hidden_path(shard_sha256: str, engine: str, dtype: str) -> Path:
    """Where the hidden states of one distillation shard are cached (per decoder and precision)."""
    from ..paths import cache_dir

    directory = cache_dir() / "features"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{shard_sha256[:24]}-{engine}-{dtype}.safetensors"


def save_shard_hidden(path: Path, hidden: torch.Tensor) -> None:
    """Write ``hidden`` [rows, H] atomically (safetensors)."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({"hidden": hidden.contiguous()}, str(tmp))
    tmp.replace(path)


def load_shard_hidden(path: Path, rows: int) -> torch.Tensor | None:
    """The cached hidden states of a shard, or None when absent, unreadable or of the wrong length."""
    from safetensors.torch import load_file

    try:
        hidden = load_file(str(path))["hidden"]
    except Exception:  # absent or damaged cache: recompute
        return None
    return hidden if hidden.shape[0] == rows else None


def answer_rows(seq: Sequence) -> int:
    return len(seq.ids) - seq.prompt_len


def extract_hidden(
    decoder: Decoder, sequences: list[Sequence], batch_tokens: int = 8192, progress: Callable[[int], None] | None = None
) -> torch.Tensor:
    """Hidden states of positions ``prompt_len - 1 .. len - 2`` of each sequence, concatenated in order."""
    order = sorted(range(len(sequences)), key=lambda s: len(sequences[s].ids))
    parts: dict[int, torch.Tensor] = {}
    start = 0
    with torch.inference_mode():
        while start < len(order):
            end = start + 1
            while end < len(order) and len(sequences[order[end]].ids) * (end - start + 1) <= batch_tokens:
                end += 1
            batch = [sequences[s] for s in order[start:end]]
            width = max(len(s.ids) for s in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            for row, seq in enumerate(batch):  # right padded: causal attention never sees the pad
                ids[row, : len(seq.ids)] = torch.tensor(seq.ids)
            decoder.new_cache(len(batch))
            positions = torch.arange(width)[None].expand(len(batch), -1)
            hidden = decoder.forward(ids.to(decoder.device), positions.to(decoder.device), None)
            for row, (index, seq) in enumerate(zip(order[start:end], batch, strict=True)):
                parts[index] = hidden[row, seq.prompt_len - 1 : len(seq.ids) - 1].cpu()
            if progress:
                progress(end - start)
            start = end
    decoder.new_cache(1)
    return torch.cat([parts[i] for i in range(len(sequences))])


def build_features(sequences: list[Sequence], hidden: torch.Tensor, depth: int) -> Features:
    """Rows and look-ahead tokens for ``sequences`` whose hidden rows are ``hidden`` (see :func:`extract_hidden`)."""
    ahead, ends, offset = [], [], 0
    for seq in sequences:
        n = answer_rows(seq)
        padded = torch.tensor(seq.ids + [PAD] * (depth + 1))
        positions = torch.arange(seq.prompt_len - 1, len(seq.ids) - 1)
        ahead.append(padded[positions[:, None] + 1 + torch.arange(depth + 1)])
        offset += n
        ends.append(torch.full((n,), offset))
    if hidden.shape[0] != offset:
        raise ValueError(f"{hidden.shape[0]} hidden rows for {offset} answer positions")
    return Features(hidden, torch.cat(ahead), torch.cat(ends))
