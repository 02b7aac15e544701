"""Frozen-base features for head training: final hidden states and the base's own top-k predictions.

The base model runs once per sequence (no grad). Only the rows the heads are trained on are kept:
positions ``prompt_len - 1 .. len - 1`` of every sequence, i.e. the last prompt token (where the
app applies the heads after prefill) and every answer position. For each kept row the base's
top-k next-token log-probabilities are stored too (the soft targets). Features are cached next to
the distillation data, so runs that change only head settings skip the base forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .distill_data import Sequence, sequences_digest

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

TEACHER_TOP_K = 20


@dataclass
class Features:
    """Row r is position ``t`` of some sequence; ``remaining[r]`` = len - t; ``tokens[r, d]`` = ids[t + d]."""

    hidden: torch.Tensor  # [N, H] final-norm hidden states (base dtype)
    tokens: torch.Tensor  # [N, D] ids at t + d for d < D (-100 past the end)
    remaining: torch.Tensor  # [N] tokens left in the sequence from t on
    teacher_ids: torch.Tensor  # [N, k] base top-k ids for position t + 1
    teacher_logp: torch.Tensor  # [N, k] their log-probabilities

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def extract_features(
    model: PreTrainedModel,
    sequences: list[Sequence],
    max_ahead: int = 12,
    batch_tokens: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> Features:
    """Run the frozen base over ``sequences`` (right padded batches) and collect the training rows."""
    import torch

    device = model.device
    order = sorted(range(len(sequences)), key=lambda s: len(sequences[s].ids))
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in Features.__dataclass_fields__}
    start = 0
    while start < len(order):
        width = len(sequences[order[start]].ids)
        end = start + 1
        while end < len(order) and len(sequences[order[end]].ids) * (end - start + 1) <= batch_tokens:
            width = len(sequences[order[end]].ids)
            end += 1
        batch = [sequences[s] for s in order[start:end]]
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq.ids)] = torch.tensor(seq.ids)
            mask[row, : len(seq.ids)] = 1
        with torch.no_grad():
            hidden = model.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            for row, seq in enumerate(batch):
                first, length = seq.prompt_len - 1, len(seq.ids)
                h = hidden[row, first:length]
                logp = torch.log_softmax(model.lm_head(h).float(), dim=-1)
                top = logp.topk(TEACHER_TOP_K, dim=-1)
                padded = torch.tensor(seq.ids + [-100] * max_ahead)
                positions = torch.arange(first, length)
                parts["hidden"].append(h.cpu())
                parts["tokens"].append(padded[positions[:, None] + torch.arange(max_ahead)])
                parts["remaining"].append(length - positions)
                parts["teacher_ids"].append(top.indices.to(torch.int32).cpu())
                parts["teacher_logp"].append(top.values.cpu())
        start = end
        if progress:
            progress(start, len(order))
    return Features(**{name: torch.cat(tensors) for name, tensors in parts.items()})


def load_or_extract(
    model: PreTrainedModel,
    sequences: list[Sequence],
    directory: Path,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Features, bool]:
    """Features for ``sequences``, cached in ``directory``; returns (features, loaded from cache)."""
    import torch

    dtype = str(model.dtype).removeprefix("torch.")
    path = directory / f"features-{sequences_digest(sequences)}-{dtype}.pt"
    if path.is_file():
        return Features(**torch.load(path, weights_only=True)), True
    features = extract_features(model, sequences, progress=progress)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(features.as_dict(), tmp)
    tmp.replace(path)
    return features, False
