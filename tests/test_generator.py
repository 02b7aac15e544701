"""The engine on tiny random models of each architecture, in fp64 (no argmax ties)."""

import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medusa_chat.engine.generator import ContextLengthError, GenerationConfig, Generator
from medusa_chat.engine.tree import TreeError
from tests.test_tree import trees
from tests.tiny import fit_heads, greedy_sequence, random_heads, tiny_model, tiny_tokenizer

ARCHS = ["llama", "mistral", "qwen2"]
TOK = tiny_tokenizer()
PROMPT = TOK("The quick brown fox")["input_ids"]


@pytest.fixture(scope="module")
def setups():
    """Per architecture: a model, heads fitted to its greedy continuation, and random heads."""
    out = {}
    for seed, arch in enumerate(ARCHS):
        model = tiny_model(arch, vocab_size=len(TOK), seed=seed, eos_token_id=None)
        sequence = greedy_sequence(model, PROMPT, 48)
        fitted = fit_heads(model, random_heads(model, shared=False, seed=seed), sequence, steps=80)
        out[arch] = (model, fitted, random_heads(model, seed=seed + 10), sequence[len(PROMPT) :])
    return out


def run(model, heads, prompt, tree="cpu_16", eos=None, **config):
    gen = Generator(model, TOK, heads, tree=tree, eos_ids=eos)
    events = list(gen.stream(prompt, GenerationConfig(**config)))
    return events[:-1], events[-1]


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_greedy_matches_a_full_forward_reference(setups, arch):
    model, _, _, reference = setups[arch]
    _, stats = run(model, None, PROMPT, eos=set(), max_new_tokens=48, medusa=False)
    assert stats.token_ids == reference
    assert stats.steps == 48 and stats.mean_accepted == 1.0 and not stats.medusa


@pytest.mark.parametrize("arch", ARCHS)
def test_fitted_heads_accept_spans_and_stay_lossless(setups, arch):
    model, fitted, _, reference = setups[arch]
    steps, stats = run(model, fitted, PROMPT, eos=set(), max_new_tokens=48)
    assert stats.token_ids == reference
    assert stats.medusa and stats.mean_accepted > 2.0
    assert max(e.accepted for e in steps) >= 4
    assert all(e.from_heads == [False] + [True] * (e.accepted - 1) for e in steps)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    arch=st.sampled_from(ARCHS),
    choices=trees(max_rank=3),
    fitted=st.booleans(),
    prompt=st.lists(st.integers(3, len(TOK) - 1), min_size=1, max_size=12),
    max_new=st.integers(1, 40),
    eos_pick=st.one_of(st.none(), st.integers(0, 39)),
    lookup=st.sampled_from([0, 0, 4, 10]),
)
def test_greedy_medusa_equals_plain_greedy(setups, arch, choices, fitted, prompt, max_new, eos_pick, lookup):
    model, fitted_heads, random, _ = setups[arch]
    heads = fitted_heads if fitted else random
    _, plain = run(model, None, prompt, eos=set(), max_new_tokens=max_new, medusa=False)
    eos = None
    if eos_pick is not None and eos_pick < len(plain.token_ids):
        eos = {plain.token_ids[eos_pick]}
        _, plain = run(model, None, prompt, eos=eos, max_new_tokens=max_new, medusa=False)
    prompt_lookup = lookup
    _, medusa = run(model, heads, prompt, tree=choices, eos=eos or set(), max_new_tokens=max_new,
                    prompt_lookup=prompt_lookup)
    assert medusa.token_ids == plain.token_ids
    assert medusa.text == plain.text
    assert medusa.stop_reason == plain.stop_reason


def _span_step(steps):
    """(tokens before it, the step) of the first step that accepted at least 3 tokens."""
    before = 0
    for event in steps:
        if event.accepted >= 3:
            return before, event
        before += event.accepted
    raise AssertionError("no step accepted 3 tokens")


@pytest.mark.parametrize("arch", ARCHS)
def test_eos_inside_an_accepted_span_ends_the_output_there(setups, arch):
    model, fitted, _, reference = setups[arch]
    steps, _ = run(model, fitted, PROMPT, eos=set(), max_new_tokens=48)
    _before, step = _span_step(steps)
    eos_token = step.token_ids[1]
    cut = reference.index(eos_token)
    _, stats = run(model, fitted, PROMPT, eos={eos_token}, max_new_tokens=48)
    assert stats.stop_reason == "eos"
    assert stats.token_ids == reference[:cut]
    assert eos_token not in stats.token_ids


@pytest.mark.parametrize("arch", ARCHS)
def test_max_new_tokens_mid_span(setups, arch):
    model, fitted, _, reference = setups[arch]
    steps, _ = run(model, fitted, PROMPT, eos=set(), max_new_tokens=48)
    before, _ = _span_step(steps)
    _, stats = run(model, fitted, PROMPT, eos=set(), max_new_tokens=before + 2)
    assert stats.token_ids == reference[: before + 2]
    assert stats.stop_reason == "max_new_tokens"


def test_cache_after_medusa_steps_equals_plain_decoding(setups):
    model, fitted, _, _ = setups["llama"]
    gen = Generator(model, TOK, fitted, tree="cpu_16", eos_ids=set())
    stats = gen.generate(PROMPT, GenerationConfig(max_new_tokens=20))
    assert stats.mean_accepted > 1.5
    cached = gen.cached_ids
    assert cached == PROMPT + stats.token_ids[:-1]  # see the next test
    reference = Generator(model, TOK, eos_ids=set())
    reference.generate(cached, GenerationConfig(max_new_tokens=1, medusa=False))  # prefill = plain forward
    for ours, theirs in zip(gen.cache.layers, reference.cache.layers, strict=True):
        n = ours.keys.shape[2]
        assert n == len(cached)
        torch.testing.assert_close(ours.keys, theirs.keys[:, :, :n], atol=1e-10, rtol=0)
        torch.testing.assert_close(ours.values, theirs.values[:, :, :n], atol=1e-10, rtol=0)


@pytest.mark.parametrize("stop", ["eos", "max_new_tokens"])
def test_the_cache_ends_at_the_same_place_whichever_mode_wrote_the_answer(setups, stop):
    """The next turn's prefill recomputes from where the cache ends, in a batched pass that rounds differently
    from steps: plain steps (which leave their last token pending) and tree steps (which cache every token they
    accept, an end-of-sequence token too) must leave the same prefix cached, or toggling Medusa (or the automatic
    fallback switching) changes the next answer of a conversation."""
    model, fitted, _, reference = setups["llama"]
    first_seen = [t for i, t in enumerate(reference) if 8 <= i < 20 and reference.index(t) == i]
    eos = {first_seen[0]} if stop == "eos" else set()
    for config in ({"medusa": False}, {}, {"prompt_lookup": 4}, {"auto_fallback": True}):
        gen = Generator(model, TOK, fitted, tree="cpu_16", eos_ids=eos)
        stats = gen.generate(PROMPT, GenerationConfig(max_new_tokens=24, **config))
        assert stats.stop_reason == stop and stats.new_tokens >= 8
        assert gen.cached_ids == PROMPT + stats.token_ids[:-1], config


def test_next_turn_reuses_the_cached_prefix(setups):
    model, fitted, _, _ = setups["qwen2"]
    gen = Generator(model, TOK, fitted, tree="cpu_8", eos_ids=set())
    first = gen.generate(PROMPT, GenerationConfig(max_new_tokens=12))
    turn2 = PROMPT + first.token_ids + TOK(" and then?")["input_ids"]
    second = gen.generate(turn2, GenerationConfig(max_new_tokens=12))
    assert second.reused_tokens >= len(PROMPT) + len(first.token_ids) - 1
    fresh_gen = Generator(model, TOK, fitted, tree="cpu_8", eos_ids=set())
    fresh = fresh_gen.generate(turn2, GenerationConfig(max_new_tokens=12))
    assert second.token_ids == fresh.token_ids
    assert fresh.reused_tokens == 0
    edited = gen.generate(PROMPT[:2] + TOK(" lazy")["input_ids"], GenerationConfig(max_new_tokens=4))
    assert edited.reused_tokens == 2


def test_cancel_stops_between_steps_and_keeps_the_partial_answer(setups):
    model, fitted, _, reference = setups["llama"]
    gen = Generator(model, TOK, fitted, tree="cpu_8", eos_ids=set())
    cancel = threading.Event()
    got = []
    for item in gen.stream(PROMPT, GenerationConfig(max_new_tokens=48), cancel):
        if hasattr(item, "stop_reason"):
            stats = item
            break
        got.extend(item.token_ids)
        cancel.set()
    assert stats.stop_reason == "cancelled"
    assert stats.steps == 1 and stats.token_ids == got == reference[: len(got)]
    again = gen.generate(PROMPT, GenerationConfig(max_new_tokens=48))
    assert again.token_ids == reference


def test_stop_strings_cut_the_text_and_never_stream_them(setups):
    model, fitted, _, _ = setups["llama"]
    _, full = run(model, fitted, PROMPT, eos=set(), max_new_tokens=40)
    stop = full.text[10:13]
    assert stop and stop in full.text
    steps, stats = run(model, fitted, PROMPT, eos=set(), max_new_tokens=40, stop_strings=[stop])
    streamed = "".join(e.text for e in steps)
    assert stats.stop_reason == "stop_string"
    assert streamed == stats.text == full.text[: full.text.index(stop)]


def test_text_deltas_never_split_a_character():
    model = tiny_model("llama", vocab_size=len(TOK))
    heads = random_heads(model)
    # Byte tokens of "東京😀" fed as a forced prompt continuation are multi-token characters; check the
    # deltas of an actual generation concatenate to the final text with no replacement characters inside.
    steps, stats = run(model, heads, TOK("東京😀")["input_ids"], eos=set(), max_new_tokens=40)
    text = "".join(e.text for e in steps)
    assert text == stats.text == TOK.decode(stats.token_ids, skip_special_tokens=True)
    from medusa_chat.engine.text import TextStream

    stream = TextStream(TOK)
    emoji = TOK("😀")["input_ids"]
    assert len(emoji) > 1
    deltas = [stream.push([t]) for t in emoji]
    assert deltas[:-1] == [""] * (len(emoji) - 1) and deltas[-1] == "😀"


def test_prompt_beyond_the_context_is_refused(setups):
    model, fitted, _, _ = setups["llama"]
    gen = Generator(model, TOK, fitted, max_context=16)
    with pytest.raises(ContextLengthError, match="17 tokens but this model's context holds 16"):
        gen.generate(list(range(3, 20)), GenerationConfig())


def test_generation_stops_at_the_context_limit(setups):
    model, fitted, _, reference = setups["llama"]
    gen = Generator(model, TOK, fitted, tree="cpu_16", max_context=len(PROMPT) + 20, eos_ids=set())
    stats = gen.generate(PROMPT, GenerationConfig(max_new_tokens=100))
    assert stats.stop_reason == "context"
    assert stats.token_ids == reference[: len(stats.token_ids)]
    assert len(PROMPT) + len(stats.token_ids) <= len(PROMPT) + 21


def test_a_tree_deeper_than_the_heads_is_refused(setups):
    model, _, _, _ = setups["llama"]
    heads = random_heads(model, num_heads=2)
    with pytest.raises(TreeError, match="only 2 Medusa head"):
        Generator(model, TOK, heads, tree="mc_sim_7b_63")


def test_typical_sampling_is_seeded_and_runs(setups):
    model, fitted, _, _ = setups["mistral"]
    _, a = run(model, fitted, PROMPT, eos=set(), max_new_tokens=30, temperature=0.7, seed=3)
    _, b = run(model, fitted, PROMPT, eos=set(), max_new_tokens=30, temperature=0.7, seed=3)
    assert a.token_ids == b.token_ids and a.new_tokens == 30 and a.medusa
    _, c = run(model, None, PROMPT, eos=set(), max_new_tokens=30, temperature=0.7, top_p=0.9, seed=3, medusa=False)
    assert c.new_tokens == 30


def test_bad_token_ids_are_refused_and_the_generator_stays_usable(setups):
    model, fitted, _, reference = setups["llama"]
    gen = Generator(model, TOK, fitted, eos_ids=set())
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        gen.generate([*PROMPT, len(TOK) + 5], GenerationConfig())
    with pytest.raises(ValueError, match="acceptance must be one of"):
        gen.generate(PROMPT, GenerationConfig(temperature=1.0, acceptance="nucleus"))
    assert gen.generate(PROMPT, GenerationConfig(max_new_tokens=48)).token_ids == reference
