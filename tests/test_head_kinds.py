"""Root-conditioned heads, the draft vocabulary and the lean decoder inside the generator (fp64 tiny models)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medusa_chat.engine.decoder import attach_heads
from medusa_chat.engine.generator import GenerationConfig, Generator
from medusa_chat.engine.heads_io import load_heads, save_heads
from medusa_chat.engine.lean import from_state_dict
from medusa_chat.engine.quant import Dense, Int4
from medusa_chat.export import ExportError, export_heads
from tests.test_tree import trees
from tests.tiny import random_heads, tiny_model, tiny_tokenizer

TOK = tiny_tokenizer()
ARCHS = ["llama", "mistral"]


@pytest.fixture(scope="module")
def models():
    out = {}
    for seed, arch in enumerate(ARCHS):
        model = tiny_model(arch, vocab_size=len(TOK), seed=seed, eos_token_id=None)
        draft = torch.randperm(len(TOK), generator=torch.Generator().manual_seed(seed))[: len(TOK) // 3].sort().values
        out[arch] = (model, from_state_dict(model.config, model.state_dict(), torch.float64), draft)
    return out


def _generate(decoder, heads, prompt, tree, max_new, lookup=0, medusa=True):
    gen = Generator(decoder, TOK, heads, tree=tree if heads is not None else None, eos_ids=set())
    return gen.generate(prompt, GenerationConfig(max_new_tokens=max_new, prompt_lookup=lookup, medusa=medusa))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    arch=st.sampled_from(ARCHS),
    engine=st.sampled_from(["transformers", "lean"]),
    root=st.booleans(),
    shortlist=st.booleans(),
    choices=trees(max_rank=3),
    prompt=st.lists(st.integers(3, len(TOK) - 1), min_size=1, max_size=10),
    max_new=st.integers(1, 32),
    lookup=st.sampled_from([0, 4]),
)
def test_greedy_medusa_equals_plain_for_every_head_kind_and_engine(
    models, arch, engine, root, shortlist, choices, prompt, max_new, lookup
):
    model, lean, draft = models[arch]
    decoder = model if engine == "transformers" else lean
    heads = random_heads(model, root_conditioned=root, draft_vocab=draft if shortlist else None)
    plain = _generate(decoder, None, prompt, None, max_new, medusa=False)
    medusa = _generate(decoder, heads, prompt, choices, max_new, lookup)
    assert medusa.token_ids == plain.token_ids


def test_lean_plain_greedy_equals_transformers(models):
    model, lean, _ = models["llama"]
    prompt = TOK("The quick brown fox")["input_ids"]
    ours = _generate(lean, None, prompt, None, 40, medusa=False)
    theirs = _generate(model, None, prompt, None, 40, medusa=False)
    assert ours.token_ids == theirs.token_ids


def test_heads_on_a_4bit_decoder_run_in_int4_and_stay_lossless(models):
    """Attached heads take the decoder's weight format: int4 blocks, root mix and draft projection on the 4-bit lean
    decoder (a few times less to read per step); they propose much as dense heads do, and greedy output is unchanged."""
    model, _, draft = models["llama"]
    draft = draft[: len(draft) // 16 * 16]  # the int4 kernel takes rows in multiples of 16
    lean4 = from_state_dict(model.config, model.state_dict(), torch.float32, "int4")
    heads = random_heads(model, root_conditioned=True, draft_vocab=draft, seed=3).float()
    dense = random_heads(model, root_conditioned=True, draft_vocab=draft, seed=3).float()
    dense.use_base_projection(Dense(lean4.output_rows(draft)))
    attach_heads(heads, lean4)
    h = torch.randn(50, model.config.hidden_size)
    root = lean4.embed(torch.randint(3, len(TOK), (50,))).float()
    with torch.inference_mode():
        blocks = [block for head in heads for block in head[: heads.num_layers]]
        assert isinstance(heads.draft_projection, Int4)
        assert isinstance(heads._root_converted.linear(heads.root_weight), Int4)
        assert all(isinstance(b.converted.linear(b.linear.weight), Int4) for b in blocks)
        agree = (heads.propose(h, None, 1, 1, root) == dense.propose(h, None, 1, 1, root)).float().mean()
    assert agree >= 0.8
    prompt = TOK("The quick brown fox")["input_ids"]
    plain = _generate(lean4, None, prompt, None, 24, medusa=False)
    assert _generate(lean4, heads, prompt, "cpu_8", 24).token_ids == plain.token_ids
    block = heads[0][0]
    with torch.no_grad():  # a changed weight (a training step, a load) is converted again
        before = block.converted.linear(block.linear.weight)
        block.linear.weight.mul_(0.5)
        assert block.converted.linear(block.linear.weight) is not before
    assert block.converted.linear(block.linear.weight) is None  # while training: the parameter itself


def test_root_conditioned_heads_use_the_root_token(models):
    model, _, _ = models["llama"]
    heads = random_heads(model, root_conditioned=True)
    h = torch.randn(model.config.hidden_size, dtype=torch.float64)
    lm_head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    a = heads(h, lm_head, root=embed(torch.tensor(5)))
    b = heads(h, lm_head, root=embed(torch.tensor(6)))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="root"):
        heads(h, lm_head)


def test_save_load_round_trip_keeps_kind_and_draft_vocabulary(models, tmp_path):
    model, _, draft = models["llama"]
    heads = random_heads(model, root_conditioned=True, draft_vocab=draft).float()
    save_heads(heads, tmp_path / "h", base_model="tiny")
    loaded = load_heads(tmp_path / "h", model.config.hidden_size, model.config.vocab_size)
    assert loaded.kind == "root-conditioned" and torch.equal(loaded.draft_vocab, draft)
    for (name, p), (_, q) in zip(heads.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_tokens_outside_the_draft_vocabulary_are_never_proposed(models):
    model, _, draft = models["llama"]
    heads = random_heads(model, draft_vocab=draft).double()
    heads.use_base_projection(Dense(model.get_output_embeddings().weight.detach()[draft]))
    allowed = set(draft.tolist())
    for _ in range(20):
        proposals = heads.propose(torch.randn(model.config.hidden_size, dtype=torch.float64), None, 4, 10)
        assert set(proposals.flatten().tolist()) <= allowed


def test_export_refuses_root_conditioned_heads(models, tmp_path):
    model, _, _ = models["llama"]
    save_heads(random_heads(model, root_conditioned=True).float(), tmp_path / "h", base_model="tiny")
    with pytest.raises(ExportError, match="root-conditioned"):
        export_heads(tmp_path / "h", "vllm", tmp_path / "out")
