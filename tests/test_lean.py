"""The lean decoder against transformers' Llama, Mistral and Qwen2 models, and batched greedy decoding."""

from __future__ import annotations

from itertools import product

import pytest
import torch

from medusa_chat.engine.lean import UnsupportedModel, from_state_dict
from medusa_chat.engine.quant import Int4, quantize_int4
from tests.tiny import tiny_model


def _lean(model, dtype=torch.float32, quant=None):
    return from_state_dict(model.config, model.state_dict(), dtype, quant)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_logits_match_transformers_prefill_steps_and_tree(arch):
    model = tiny_model(arch, dtype=torch.float32, num_attention_heads=4, num_key_value_heads=2)
    lean = _lean(model)
    torch.manual_seed(1)
    ids = torch.randint(5, 300, (1, 12))
    with torch.inference_mode():
        ref = model(ids).logits[0]
        out = lean.logits(lean.forward(ids[:, :7], torch.arange(7)[None]))[0]
        for t in range(7, 12):  # one-token steps
            step = lean.logits(lean.forward(ids[:, t : t + 1], torch.tensor([[t]])))[0]
            out = torch.cat([out, step])
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)

        # A tree step over 4 nodes (root, two children, a grandchild), then compaction of one path.
        parents = [-1, 0, 0, 1]
        depths = torch.tensor([0, 1, 1, 2])
        ancestors = torch.eye(4, dtype=torch.bool)
        for node, parent in enumerate(parents):
            while parent >= 0:
                ancestors[node, parent] = True
                parent = parents[parent]
        tree_ids = torch.tensor([[17, 40, 41, 99]])
        mask = torch.cat([torch.ones(4, 12, dtype=torch.bool), ancestors], dim=-1)[None, None]
        tree = lean.logits(lean.forward(tree_ids, 12 + depths[None], mask))[0]
        path = torch.tensor([0, 1, 3])
        lean.cache.keep_path(12, path)
        seq = torch.cat([ids[0], tree_ids[0, path]])[None]
        full = model(seq).logits[0]
        torch.testing.assert_close(tree[path], full[12:15], atol=1e-5, rtol=1e-5)
        after = lean.logits(lean.forward(torch.tensor([[5]]), torch.tensor([[15]])))[0]
        torch.testing.assert_close(after[0], model(torch.cat([seq, torch.tensor([[5]])], 1)).logits[0, -1],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_tree_rows_equal_one_token_steps_bit_for_bit(dtype, kv_heads):
    """int4 weights (a row-independent kernel): every tree row's hidden state equals the one-token
    step along its path exactly, at many cache lengths and groupings of query heads, so greedy
    Medusa is lossless on this decoder."""
    from medusa_chat.engine.presets import PRESETS
    from medusa_chat.engine.tree import build_tree, with_chain

    model = tiny_model("llama", dtype=torch.float32, num_attention_heads=4, num_key_value_heads=kv_heads)
    lean = _lean(model, dtype, quant="int4")
    torch.manual_seed(3)
    chain = [[0], [0, 0], [0, 0, 0]]  # rows see a prefix of the cache: attended over slices, not gathers
    trees = (build_tree(PRESETS["cpu_16"], topk=10), build_tree(chain), with_chain(build_tree([[0]]), 3))
    for length, tree in product((5, 17, 31, 63, 64, 93, 127), trees):
        ids = torch.randint(5, 300, (1, length))
        tree_ids = torch.randint(5, 300, (1, tree.size))
        with torch.inference_mode():
            lean.new_cache()
            lean.forward(ids, torch.arange(length)[None])
            prefix = (lean.cache.k.clone(), lean.cache.v.clone())
            mask = torch.cat([torch.ones(tree.size, length, dtype=torch.bool), tree.ancestor_mask], -1)
            rows = lean.forward(tree_ids, length + tree.depths[None], mask[None, None])[0]
            for node in range(tree.size):
                path = torch.nonzero(tree.ancestor_mask[node]).flatten()  # ancestors in order, then the node
                lean.cache.k, lean.cache.v = prefix[0].clone(), prefix[1].clone()
                lean.cache.length = length
                for depth, slot in enumerate(path.tolist()):
                    visible = torch.ones(1, 1, 1, length + depth + 1, dtype=torch.bool)
                    step = lean.forward(tree_ids[:, slot : slot + 1], torch.tensor([[length + depth]]), visible)
                assert torch.equal(step[0, 0], rows[node]), (length, node)


def test_row_plan_slices_chains_and_appends_ancestors():
    from medusa_chat.engine.lean import _row_plan
    from medusa_chat.engine.tree import build_tree, with_chain

    assert _row_plan(torch.ones(1, 9, dtype=torch.bool)) == [(0, 9, None)]  # a one-token step sees a slice
    tree = with_chain(build_tree([[0]]), 2)  # root, head 0's guess, then a 2-token lookup chain from the root
    mask = torch.cat([torch.ones(tree.size, 7, dtype=torch.bool), tree.ancestor_mask], -1)
    plan = _row_plan(mask)
    assert [(r.row, r.prefix) for r in plan] == [(0, 8), (1, 9), (2, 8), (3, 8)]
    assert plan[0].extra is None and plan[1].extra is None  # the root and its child: slices of the cache
    assert plan[2].extra.tolist() == [9] and plan[3].extra.tolist() == [9, 10]  # chain rows skip slot 1


def test_unsupported_architecture_is_refused():
    from transformers import GPT2Config

    with pytest.raises(UnsupportedModel, match="gpt2"):
        from_state_dict(GPT2Config(n_layer=1), {}, torch.float32)
    sliding = tiny_model("qwen2", dtype=torch.float32, use_sliding_window=True, sliding_window=8)
    with pytest.raises(UnsupportedModel, match="sliding-window"):
        _lean(sliding)


def test_int4_kernel_computes_its_dequantised_weight():
    torch.manual_seed(0)
    weight = torch.randn(64, 128)
    layer = Int4(*quantize_int4(weight), dtype=torch.float32)
    dense = layer.dequantize()
    assert (dense - weight).abs().max() < (weight.abs().max() / 7)
    x = torch.randn(3, 128)
    torch.testing.assert_close(layer(x), x @ dense.T, atol=1e-4, rtol=1e-4)


def _greedy_alone(model, prompt: list[int], steps: int, eos: set[int]) -> list[int]:
    ids, answer = list(prompt), []
    with torch.inference_mode():
        for _ in range(steps):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            answer.append(token)
            ids.append(token)
            if token in eos:
                break
    return answer


@pytest.mark.parametrize("engine", ["transformers", "lean"])
def test_batched_greedy_equals_one_prompt_greedy(engine):
    from medusa_chat.engine.decoder import TransformersDecoder
    from medusa_chat.training.batched import greedy_batch

    model = tiny_model("llama", dtype=torch.float32, num_attention_heads=4, num_key_value_heads=2)
    decoder = TransformersDecoder(model) if engine == "transformers" else _lean(model)
    torch.manual_seed(3)
    prompts = [torch.randint(5, 300, (n,)).tolist() for n in (3, 9, 5, 9, 1)]
    eos = {_greedy_alone(model, prompts[1], 4, set())[3]}  # a token one row emits mid-answer: EOS mid-batch
    expected = [_greedy_alone(model, p, 12, eos) for p in prompts]
    assert any(len(a) < 12 for a in expected) and any(len(a) == 12 for a in expected)
    assert greedy_batch(decoder, prompts, 12, eos, pad_id=0) == expected


def test_int8_kernel_computes_its_dequantised_weight():
    from medusa_chat.engine.quant import Int8

    torch.manual_seed(0)
    weight = torch.randn(64, 128)
    layer = Int8(weight, torch.float32)
    dense = layer.rows(torch.arange(64))
    assert (dense - weight).abs().max() < weight.abs().max() / 100
    x = torch.randn(3, 128)
    torch.testing.assert_close(layer(x), x @ dense.T, atol=1e-4, rtol=1e-4)


def test_int4_stacked_from_row_blocks_equals_the_whole_matrix():
    torch.manual_seed(2)
    weight = torch.randn(320, 96)
    whole = Int4(*quantize_int4(weight), dtype=torch.bfloat16)
    parts = (Int4(*quantize_int4(weight[i : i + 128]), dtype=torch.bfloat16) for i in (0, 128, 256))
    stacked = Int4.stack_rows(parts, 320)
    x = torch.randn(5, 96).to(torch.bfloat16)
    assert torch.equal(stacked(x), whole(x)) and stacked.out_features == 320


def test_int4_rows_are_dequantised_a_block_at_a_time_exactly(monkeypatch):
    from medusa_chat.engine import quant

    torch.manual_seed(4)
    layer = Int4(*quantize_int4(torch.randn(320, 96)), dtype=torch.bfloat16)
    whole = layer.dequantize()
    monkeypatch.setattr(quant, "ROWS_AT_A_TIME", 128)
    ids = torch.tensor([300, 0, 127, 128, 5, 319, 200])
    assert torch.equal(layer.rows(ids), whole[ids])
