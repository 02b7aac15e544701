"""Batched greedy decoding for self-distillation data: many prompts per forward pass.

A plain loop over any :class:`~medusa_chat.engine.decoder.Decoder` (no ``generate``): prompts
are left padded to the longest in the batch, positions and the attention mask come from the
padding, and only the last position's logits are computed. A row that emits EOS leaves the batch
at once (its cache rows are dropped), so finished answers cost nothing. Callers sort prompts by
length so a batch needs little or no padding. Greedy tokens equal one-prompt greedy decoding
(masked pad columns add exact zeros to attention).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..engine.decoder import Decoder


def greedy_batch(
    decoder: Decoder,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_ids: set[int],
    pad_id: int,
    hidden_out: list[torch.Tensor] | None = None,
) -> list[list[int]]:
    """The greedy answer to each prompt, each ending with its EOS token if one came before the cap.

    With ``hidden_out`` (a list), the final hidden states that chose each answer token are appended
    to it, one [n, H] tensor per prompt: the rows of positions ``len(prompt) - 1`` onwards, which is
    what head training reads.
    """
    device = decoder.device
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)  # [B, W]
    valid = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts], device=device)  # [B, W]
    positions = (valid.cumsum(-1) - 1).clamp(min=0)  # [B, W]
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    # Pad rows see themselves (so no row is all-masked); real rows never see a pad column.
    mask = (causal & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device)  # [B, W, W]
    eos = torch.tensor(sorted(eos_ids), device=device)
    answers: list[list[int]] = [[] for _ in prompts]
    rows = torch.arange(len(prompts), device=device)  # original index of each live row
    decoder.new_cache(len(prompts))
    with torch.inference_mode():
        hidden = decoder.forward(ids, positions, mask[:, None])
        states = hidden.new_empty(len(prompts), max_new_tokens, hidden.shape[-1]) if hidden_out is not None else None
        for step in range(max_new_tokens):
            if states is not None:
                states[rows, step] = hidden[:, -1]
            token = decoder.logits(hidden[:, -1]).argmax(-1)  # [B]
            for row, t in zip(rows.tolist(), token.tolist(), strict=True):
                answers[row].append(t)
            done = torch.isin(token, eos)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(-1)
                decoder.select_rows(keep)
                rows, token, valid, positions = rows[keep], token[keep], valid[keep], positions[keep]
            valid = torch.cat([valid, valid.new_ones(len(rows), 1)], dim=-1)
            positions = positions[:, -1:] + 1
            hidden = decoder.forward(token[:, None], positions, valid[:, None, None, :])
    decoder.new_cache(1)
    if states is not None and hidden_out is not None:
        hidden_out.extend(states[i, : len(a)].cpu() for i, a in enumerate(answers))
    return answers


def length_buckets(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``batch_size``, shortest prompts first (little padding)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
