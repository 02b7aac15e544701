"""Head accuracy against the base model's own greedy continuation (spec §5.3).

For each prompt the base generates greedily; at step s (the base has read the prompt and s
generated tokens) head i is scored against the base's greedy token of step s+i+1, i.e. the
token i+2 positions ahead. Per head the result holds the hit rate at every rank of its top-10:
``rank_hits[i][r]`` is the fraction of scored steps whose true token was head i's rank-r guess,
so top-k accuracy is the sum of the first k rates (the tree tuner consumes these rates).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..engine.decoder import attach_heads
from ..prompts import read_prompts
from .batched import greedy_batch
from .distill_data import encode_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..engine.decoder import Decoder
    from ..engine.heads import MedusaHeads

TOP_RANKS = 10


@dataclass
class HeadsAccuracy:
    """Per-head rank hit rates and the number of scored steps per head."""

    rank_hits: list[list[float]]
    samples: list[int]

    def top(self, k: int) -> list[float]:
        return [sum(rates[:k]) for rates in self.rank_hits]

    def to_dict(self) -> dict:
        return {
            "heads": {
                f"head{i}": {
                    "top1": self.top(1)[i],
                    "top5": self.top(5)[i],
                    "samples": self.samples[i],
                    "rank_hits": rates,
                }
                for i, rates in enumerate(self.rank_hits)
            }
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        lines = ["head  ahead  top-1   top-5   steps", "----  -----  ------  ------  -----"]
        for i, (t1, t5) in enumerate(zip(self.top(1), self.top(5), strict=True)):
            lines.append(f"{i:>4}  {i + 2:>5}  {t1:6.3f}  {t5:6.3f}  {self.samples[i]:>5}")
        return "\n".join(lines)


def evaluate_heads(
    decoder: Decoder,
    tokenizer: PreTrainedTokenizerBase,
    heads: MedusaHeads,
    prompts_path: str | Path,
    eos_ids: set[int],
    *,
    limit: int | None = 100,
    steps: int = 20,
    batch_size: int = 32,
    max_prompt_tokens: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> HeadsAccuracy:
    """Score ``heads`` on the first ``limit`` prompts of a JSONL file over ``steps`` greedy steps each."""
    import torch

    k = heads.num_heads
    encoded = [encode_prompt(tokenizer, p.text) for p in read_prompts(prompts_path, limit)]
    encoded = sorted((p for p in encoded if len(p) <= max_prompt_tokens), key=len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    hits = torch.zeros(k, TOP_RANKS, dtype=torch.long)
    samples = torch.zeros(k, dtype=torch.long)
    heads = attach_heads(heads, decoder)
    for start in range(0, len(encoded), batch_size):
        hidden: list[torch.Tensor] = []
        answers = greedy_batch(decoder, encoded[start : start + batch_size], steps + k, eos_ids, pad_id, hidden)
        for answer, h in zip(answers, hidden, strict=True):
            greedy = torch.tensor(answer)
            positions = min(steps, len(greedy) - 1)  # step s needs greedy[s + 1] for head 0
            if positions <= 0:
                continue
            with torch.inference_mode():
                roots = greedy[:positions].to(decoder.device)
                root = decoder.embed(roots) if heads.root_conditioned else None
                top = heads.propose(h[:positions].to(decoder.device), decoder.lm_head, k, TOP_RANKS, root).cpu()
            for i in range(k):  # top: [K, S, 10]
                valid = min(positions, len(greedy) - 1 - i)
                if valid <= 0:
                    continue
                truth = greedy[i + 1 : i + 1 + valid]
                hits[i] += (top[i, :valid] == truth[:, None]).sum(0)
                samples[i] += valid
        if progress:
            progress(min(start + batch_size, len(encoded)), len(encoded))
    rates = hits.double() / samples.clamp(min=1)[:, None].double()
    return HeadsAccuracy(rank_hits=rates.tolist(), samples=samples.tolist())
