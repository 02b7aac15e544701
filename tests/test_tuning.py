"""Tree tuning: the acceptance model, the size choice, saved trees and ``medusa-chat tune`` on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from medusa_chat.cli import app
from medusa_chat.engine.generator import GenerationConfig, Generator
from medusa_chat.engine.heads_io import save_heads
from medusa_chat.engine.tree import TOPK
from medusa_chat.loading import load_model
from medusa_chat.trees import tuned_tree
from medusa_chat.tuning import (
    RANK_MISS,
    Calibration,
    ConditionalAcceptance,
    build_best_tree,
    expected_accepted,
    grow_tree,
    interpolate_cost,
    measure_step_costs,
    measurement_sizes,
    predicted_speedups,
    smooth_costs,
)
from tests.tiny import fit_heads, greedy_sequence, random_heads, tiny_model, tiny_tokenizer, write_tiny_model_dir


def rates(*heads: list[float]) -> list[list[float]]:
    """Per-head rank hit rates, padded with zeros to the top-k."""
    return [list(h) + [0.0] * (TOPK - len(h)) for h in heads]


PROMPT = "The quick brown fox"
GEOMETRIC = [[0.6 * 0.8**d * 0.5**r for r in range(TOPK)] for d in range(4)]


def test_a_perfect_top1_head_gives_the_chain() -> None:
    perfect = rates([1.0], [1.0], [1.0])
    assert grow_tree(perfect, max_depth=3, max_nodes=10) == [(0,), (0, 0), (0, 0, 0)]
    assert expected_accepted([[0], [0, 0], [0, 0, 0]], perfect) == 4.0
    assert grow_tree(perfect, max_depth=2, max_nodes=10) == [(0,), (0, 0)]


def test_expected_accepted_is_one_plus_the_path_products() -> None:
    hits = rates([0.5, 0.3], [0.4, 0.1])
    choices = [[0], [1], [0, 0], [0, 1], [1, 0]]
    by_hand = 1 + 0.5 + 0.3 + 0.5 * 0.4 + 0.5 * 0.1 + 0.3 * 0.4
    assert expected_accepted(choices, hits) == pytest.approx(by_hand)
    # greedy growth takes the most probable addable node first
    assert grow_tree(hits, max_depth=2, max_nodes=5) == [(0,), (1,), (0, 0), (1, 0), (0, 1)]


def test_conditional_acceptance_sees_heads_that_are_right_together() -> None:
    # head 1 is right exactly when head 0 is right at rank 0
    rows = [(0, 0)] * 6 + [(1, RANK_MISS)] * 2 + [(RANK_MISS, RANK_MISS)] * 2
    model = ConditionalAcceptance(rows, prior_strength=4.0)
    assert model.rank_hits[0][:3] == [0.6, 0.2, 0.0]
    assert model.rank_hits[1][:2] == [0.6, 0.0]
    assert model.probability((0,)) == pytest.approx((6 + 4 * 0.6) / (10 + 4))
    # P(head1 rank0 | head0 rank0 right): 6 of 6 rows, shrunk toward the marginal 0.6 by 4 pseudo-rows
    assert model.probability((0, 0)) == pytest.approx(model.probability((0,)) * (6 + 4 * 0.6) / (6 + 4))
    assert model.probability((1, 0)) == pytest.approx(model.probability((1,)) * (0 + 4 * 0.6) / (2 + 4))
    unshrunk = ConditionalAcceptance(rows, prior_strength=0.0)
    assert unshrunk.probability((0, 0)) == pytest.approx(0.6)  # the independence product says 0.36
    assert expected_accepted([[0], [0, 0]], unshrunk) > expected_accepted([[0], [0, 0]], unshrunk.rank_hits)
    # many pseudo-rows: back to the reference's independence product
    assert ConditionalAcceptance(rows, prior_strength=1e9).probability((0, 0)) == pytest.approx(0.36)


def test_costs_are_interpolated_only_between_measured_sizes() -> None:
    costs = {2: 1.0, 6: 2.0}
    assert interpolate_cost(costs, 4) == pytest.approx(1.5)
    assert interpolate_cost(costs, 6) == 2.0
    assert interpolate_cost(costs, 1) is None and interpolate_cost(costs, 7) is None
    assert measurement_sizes(12) == [2, 3, 4, 5, 6, 7, 8, 10, 12]
    assert measurement_sizes(37)[-3:] == [28, 32, 37]


def test_smoothing_removes_dips_from_4_slots_on_and_keeps_smaller_sizes() -> None:
    measured = {2: 1.7, 3: 2.0, 4: 1.3, 5: 1.5, 6: 1.2, 8: 1.6, 10: 1.4, 12: 1.4}
    smoothed = smooth_costs(measured)
    assert smoothed == pytest.approx({2: 1.7, 3: 2.0, 4: 1.3, 5: 1.35, 6: 1.35, 8: 4.4 / 3, 10: 4.4 / 3, 12: 4.4 / 3})
    assert smooth_costs(smoothed) == pytest.approx(smoothed)


def test_steep_costs_pick_a_small_tree_and_flat_costs_a_large_one() -> None:
    sizes = measurement_sizes(64)
    steep, steep_speed = build_best_tree(GEOMETRIC, {q: 1 + 0.25 * (q - 1) for q in sizes}, 4, 63)
    flat, flat_speed = build_best_tree(GEOMETRIC, {q: 1 + 0.002 * (q - 1) for q in sizes}, 4, 63)
    assert 1 <= len(steep) < 8 and len(flat) == 63
    for choices, speed, slope in ((steep, steep_speed, 0.25), (flat, flat_speed, 0.002)):
        assert speed == pytest.approx(expected_accepted(choices, GEOMETRIC) / (1 + slope * len(choices)))
    # the chosen tree is a prefix of the greedy order, and no other prefix is predicted faster
    order = grow_tree(GEOMETRIC, 4, 63)
    assert [tuple(c) for c in steep] == order[: len(steep)]
    curve = predicted_speedups(order, GEOMETRIC, {q: 1 + 0.25 * (q - 1) for q in sizes})
    assert max(curve.values()) == pytest.approx(steep_speed)


def test_a_measured_bump_is_avoided_and_no_tree_beats_plain_when_steps_are_dear() -> None:
    hits = rates([0.5, 0.4, 0.3], [0.5])
    # as fp32 on a CPU: 2 and 3 slots cost more than 4
    choices, speed = build_best_tree(hits, {2: 1.7, 3: 2.0, 4: 1.3, 5: 1.6}, max_depth=2, max_nodes=4)
    assert choices == [[0], [1], [2]] and speed == pytest.approx((1 + 0.5 + 0.4 + 0.3) / 1.3)
    assert build_best_tree(hits, {2: 3.0, 5: 4.0}, max_depth=2, max_nodes=4) == ([], 1.0)


def test_costs_are_measured_at_the_mean_cache_length_of_a_calibration_step() -> None:
    calibration = Calibration(ranks=[], sequences=[[1] * 10 + [2] * 10, [3] * 4 + [4] * 2], prompt_lengths=[10, 4])
    assert calibration.typical_context() == [1] * 10  # mean of 10 + 10/2 and 4 + 2/2


def test_step_costs_come_from_real_generator_steps() -> None:
    tok = tiny_tokenizer()
    model = tiny_model(vocab_size=len(tok), dtype=torch.float32)
    gen = Generator(model, tok, random_heads(model, 3).float(), tree="chain-3")
    costs = measure_step_costs(gen, [2, 4, 9], list(range(3, 200)), repeats=2, steps=3)
    assert list(costs) == [2, 4, 9]
    assert all(math.isfinite(c) and c > 0 for c in costs.values())
    assert gen.tree_name == "chain-3" and gen.tree.size == 4 and gen.cached_ids == []
    with pytest.raises(ValueError, match="too few"):
        measure_step_costs(gen, [4], [3, 4, 5], order=[(0,)])


@pytest.fixture
def fitted_model_dir(tmp_path):
    """A tiny model whose heads are overfitted to its greedy answer to the calibration prompt."""
    path = write_tiny_model_dir(tmp_path / "tiny-tune")
    loaded = load_model(str(path), dtype="fp32", engine="transformers")
    ids = loaded.chat_ids([{"role": "user", "content": PROMPT}])
    answer = loaded.generator.generate(ids, GenerationConfig(max_new_tokens=40, medusa=False)).token_ids
    assert len(answer) >= 24  # the random model does not stop at once
    model = loaded.generator.decoder.model
    heads = fit_heads(model, loaded.generator.heads, greedy_sequence(model, ids, 40))
    save_heads(heads, path / "medusa", base_model=str(path))
    return path


def test_tune_end_to_end_writes_the_tree_and_a_report(fitted_model_dir, tmp_path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT}) + "\n" + json.dumps({"prompt": "Say hello."}) + "\n")
    out = tmp_path / "report.json"
    args = ["tune", "--model", str(fitted_model_dir), "--prompts", str(prompts), "--limit", "1", "--dtype", "fp32"]
    args += ["--max-nodes", "8", "--repeats", "2", "--max-new-tokens", "32", "--compare", "chain-2", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in ("predicted_speedup", "measured_speedup", "predicted_accepted", "measured_accepted", "costs", "date"):
        assert key in report
    assert report["name"] == "tuned" and report["device"] == "cpu" and report["dtype"] == "fp32"
    assert set(report["measured"]) == {"plain", "tuned", "chain-2"}
    assert report["tree_size"] == len(report["choices"]) + 1 and report["predicted_speedup"] >= 1.0
    # the heads were overfitted to this answer: acceptance is high, as calibrated and as measured
    assert report["rank_hits"][0][0] > 0.5 and report["measured"]["chain-2"]["mean_accepted"] > 1.5
    sizes = [int(q) for q in report["costs"]]
    assert sizes == measurement_sizes(max(sizes))
    assert tuned_tree(report["model"], "cpu", "fp32", num_heads=4) == report["choices"]
    assert "tuned tree:" in result.output and "tree saved to" in result.output
