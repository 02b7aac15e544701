"""Prompt-lookup drafts in the tree, lossless speculative sampling and automatic fallback."""

import math

import pytest
import torch

from medusa_chat.engine.acceptance import sample_walk
from medusa_chat.engine.generator import GenerationConfig, Generator
from medusa_chat.engine.lookup import draft_length, lookup_draft, step_cost
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


COSTS = {2: 1.2, 3: 1.45, 4: 1.7, 8: 2.9, 16: 7.0}  # step cost by slots, relative to a plain step


def test_step_cost_interpolates_measured_sizes():
    assert step_cost(COSTS, 1) == 1.0
    assert step_cost(COSTS, 3) == 1.45
    assert step_cost(COSTS, 6) == pytest.approx(2.3)  # between 4 and 8
    assert step_cost(COSTS, 20) == pytest.approx(7.0 + 4 * (7.0 - 2.9) / 8)  # past the largest, along the last two
    assert step_cost({}, 5) == 5.0


def test_lookup_drafts_get_longer_as_they_pay():
    lengths = [draft_length(10, 1, 1.0, p, COSTS) for p in (0.1, 0.5, 0.7, 0.9)]
    assert lengths == sorted(lengths) and lengths[0] == 0 and lengths[-1] > 2
    steep = {2: 1.6, 16: 16.0}  # a draft never pays when one more row costs more than it can bring
    assert draft_length(10, 1, 1.0, 0.55, steep) == 0
    assert draft_length(0, 1, 1.0, 0.99, COSTS) == 0


def test_measured_costs_cut_lookup_drafts_and_output_stays_the_same(model):
    prompt = TOK("The quick brown fox")["input_ids"]
    copy_prompt = prompt + greedy_sequence(model, prompt, 30)[len(prompt) :] + prompt
    config = GenerationConfig(max_new_tokens=30, prompt_lookup=10)
    free = Generator(model, TOK, eos_ids=set())
    long_drafts = list(free.stream(copy_prompt, config))
    capped = Generator(model, TOK, eos_ids=set())
    capped.use_step_costs({2: 1.9, 16: 20.0})  # one more row costs nearly a whole step: drafts never pay
    no_drafts = list(capped.stream(copy_prompt, config))
    assert max(e.tree_size for e in long_drafts[:-1]) > 2
    assert max(e.tree_size for e in no_drafts[:-1]) == 1
    assert no_drafts[-1].token_ids == long_drafts[-1].token_ids
    cheap = Generator(model, TOK, eos_ids=set())
    cheap.use_step_costs({2: 1.05, 3: 1.1, 16: 1.5})  # cheap rows: drafts grow as they keep being accepted
    sizes = [e.tree_size for e in list(cheap.stream(copy_prompt, config))[:-1]]
    assert max(sizes) > 2


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
    assert any(e.fallback for e in events[:-1])
