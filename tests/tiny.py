"""Tiny randomly initialised models, tokenizers and heads, built on the fly for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from medusa_chat.engine.heads import MedusaHeads
from medusa_chat.engine.heads_io import save_heads

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Medusa decoding verifies several tokens in one forward pass.",
    "Café, naïve, über, 東京, 😀 and other multi-byte characters.",
    "def add(a, b):\n    return a + b\n",
] * 20

ARCHITECTURES = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML special tokens and a chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = CHATML
    return fast


def tiny_model(arch: str = "llama", vocab_size: int = 320, seed: int = 0, dtype=torch.float64, **overrides):
    """A 2-layer random causal LM of the given architecture (fp64 by default: no argmax ties)."""
    torch.manual_seed(seed)
    params = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        eos_token_id=2,
        pad_token_id=0,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    params.update(overrides)
    config = ARCHITECTURES[arch](**params)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def random_heads(
    model, num_heads: int = 4, num_layers: int = 1, shared: bool = True, seed: int = 0, scale=0.3,
    root_conditioned: bool = False, draft_vocab: torch.Tensor | None = None,
):
    """Heads with random residual blocks (a zero-initialised block would only echo the base)."""
    torch.manual_seed(seed)
    cfg = model.config
    heads = MedusaHeads(cfg.hidden_size, cfg.vocab_size, num_heads, num_layers, shared_projection=shared,
                        root_conditioned=root_conditioned, draft_vocab=draft_vocab)
    with torch.no_grad():
        for name, p in heads.named_parameters():
            p.copy_(torch.randn_like(p) * (scale if "linear" in name else 0.2))
    return heads.to(next(model.parameters()).dtype)


def write_tiny_model_dir(path: Path, arch: str = "llama", num_heads: int = 4, shared: bool = True) -> Path:
    """A local HF model directory (fp32 weights, tokenizer, chat template) with Medusa heads inside."""
    tok = tiny_tokenizer()
    model = tiny_model(arch, vocab_size=len(tok), dtype=torch.float32)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    save_heads(random_heads(model, num_heads, shared=shared).float(), path / "medusa", base_model=str(path))
    return path


def greedy_sequence(model, prompt: list[int], n: int) -> list[int]:
    """Prompt + n greedy tokens by plain full forwards (an independent reference, no cache)."""
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids


def fit_heads(model, heads: MedusaHeads, sequence: list[int], steps: int = 150, lr: float = 0.05) -> MedusaHeads:
    """Overfit ``heads`` to ``sequence`` (head i at t -> token t+2+i), so Medusa steps accept spans."""
    ids = torch.tensor([sequence])
    with torch.no_grad():
        hidden = model.get_decoder()(ids).last_hidden_state[0]
    lm_head = model.get_output_embeddings()
    opt = torch.optim.Adam(heads.parameters(), lr=lr)
    for _ in range(steps):
        logits = heads(hidden, lm_head)  # [K, S, V]
        loss = sum(
            torch.nn.functional.cross_entropy(logits[i, : -(2 + i)], ids[0, 2 + i :]) for i in range(heads.num_heads)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return heads.eval()
