"""Prompt-lookup drafts in the tree, lossless speculative sampling and automatic fallback."""

import math

import pytest
import torch

from medusa_chat.engine.acceptance import sample_walk
from medusa_chat.engine.generator import GenerationConfig, Generator
from medusa_chat.engine.lookup import lookup_draft
from medusa_chat.engine.tree import build_tree, with_chain
from tests.tiny import fit_heads, greedy_sequence, random_heads, tiny_model, tiny_tokenizer

TOK = tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", vocab_size=len(TOK), seed=5, eos_token_id=None)


def test_lookup_finds_the_latest_longest_ngram():
    ctx = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    assert lookup_draft(ctx, 3) == [7, 8, 5]  # the most recent earlier "1 2 3" continues with 7 8 5
    assert lookup_draft([4, 5, 6, 4, 5], 2) == [6, 4]
    assert lookup_draft([1, 2, 3, 4], 5) == []


def test_chain_slots_hang_from_the_root():
    tree = with_chain(build_tree([[0], [0, 0]]), 3)
    assert tree.size == 6
    assert tree.parents.tolist() == [-1, 0, 1, 0, 3, 4]
    assert tree.depths.tolist() == [0, 1, 2, 1, 2, 3]
    assert tree.retrieve_indices.tolist() == [[0, 1, 2, -1], [0, 3, 4, 5]]
    assert tree.ancestor_mask[5].tolist() == [True, False, False, True, True, True]


def test_lookup_drafts_stay_lossless(model):
    """Drafts rarely match on a random model; the real model's copying is checked end to end (test_smollm2)."""
    heads = random_heads(model, seed=1)
    prompt = TOK("The quick brown fox")["input_ids"]
    copy_prompt = prompt + greedy_sequence(model, prompt, 30)[len(prompt) :] + prompt
    plain_gen = Generator(model, TOK, eos_ids=set())
    plain = plain_gen.generate(copy_prompt, GenerationConfig(max_new_tokens=30, medusa=False))
    for with_heads in (heads, None):
        gen = Generator(model, TOK, with_heads, tree="cpu_8", eos_ids=set())
        events = list(gen.stream(copy_prompt, GenerationConfig(max_new_tokens=30, prompt_lookup=10)))
        assert events[-1].token_ids == plain.token_ids
        assert max(e.tree_size for e in events[:-1]) > gen.tree.size  # lookup chains were verified


def test_sample_walk_follows_matching_children():
    tree = build_tree([[0], [1], [0, 0]])  # slots: 1=(0) 2=(1) 3=(0,0)
    tokens = torch.tensor([5, 6, 7, 8])
    logits = torch.full((4, 10), -1e9)
    logits[0, 6] = 0.0  # at the root the base surely says 6: move to slot 1
    logits[1, 8] = 0.0  # then 8: move to slot 3
    logits[3, 2] = 0.0  # then 2: no child, stop; 2 is the next token
    path, nxt = sample_walk(tokens, tree.parents, logits, temperature=1.0)
    assert path == [0, 1, 3] and nxt == 2


def _chi_square(counts: dict, probs: dict, n: int) -> tuple[float, float]:
    """(statistic, critical value at p = 0.001) of a goodness-of-fit test; rare bins are merged."""
    big = [k for k, p in probs.items() if p * n >= 5]
    observed = [counts.get(k, 0) for k in big] + [n - sum(counts.get(k, 0) for k in big)]
    expected = [probs[k] * n for k in big] + [n * (1 - sum(probs[k] for k in big))]
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True) if e > 0)
    dof = len(observed) - 1
    z = 3.09  # Wilson-Hilferty approximation of the chi-square quantile
    critical = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    return stat, critical


def test_exact_sampling_matches_the_base_distribution(model):
    """The first two sampled tokens follow the model's own joint distribution (chi-square over 2000 seeds)."""
    prompt = TOK("The quick")["input_ids"]
    temperature = 0.3  # peaked enough that sampled tokens often match the heads' proposals
    sequence = greedy_sequence(model, prompt, 32)
    heads = fit_heads(model, random_heads(model, shared=False, seed=2), sequence, steps=60)
    with torch.inference_mode():
        first = torch.softmax(model(torch.tensor([prompt])).logits[0, -1] / temperature, -1)
        batch = torch.tensor([[*prompt, t] for t in range(len(TOK))])
        second = torch.softmax(model(batch).logits[:, -1] / temperature, -1)
    joint = (first[:, None] * second).flatten()
    probs = {divmod(i, len(TOK)): p for i, p in enumerate(joint.tolist()) if p > 1e-7}

    gen = Generator(model, TOK, heads, tree="mc_sim_7b_63", eos_ids=set())
    counts: dict = {}
    drafted = 0
    n = 2000
    for seed in range(n):
        gen.reset()
        config = GenerationConfig(max_new_tokens=2, temperature=temperature, acceptance="exact", seed=seed)
        events = list(gen.stream(prompt, config))
        drafted += sum(sum(e.from_heads) for e in events[:-1])
        key = tuple(events[-1].token_ids)
        counts[key] = counts.get(key, 0) + 1
    stat, critical = _chi_square(counts, probs, n)
    assert stat < critical, (stat, critical)
    assert drafted > 0.3 * n  # head proposals were accepted often: the walk through the tree was exercised


def test_fallback_keeps_greedy_output_and_reports_it(model):
    heads = random_heads(model, seed=3)  # random heads on a 64-slot tree: slower than plain decoding
    prompt = TOK("The quick brown fox")["input_ids"]
    plain = Generator(model, TOK, eos_ids=set()).generate(prompt, GenerationConfig(max_new_tokens=40, medusa=False))
    gen = Generator(model, TOK, heads, tree="mc_sim_7b_63", eos_ids=set())
    events = list(gen.stream(prompt, GenerationConfig(max_new_tokens=40, auto_fallback=True)))
    stats = events[-1]
    assert stats.token_ids == plain.token_ids
    assert stats.fallback_steps > 20
    assert any(e.fallback for e in events[:-1]) and gen.plain_rate is not None
