import math

import pytest
import torch

from medusa_chat.engine.acceptance import best_path, greedy_nodes, typical_nodes, typical_thresholds
from medusa_chat.engine.sampling import select, top_p_filter
from medusa_chat.engine.tree import build_tree


def logits_for(probs: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def test_threshold_is_epsilon_for_peaked_distributions():
    probs = torch.tensor([0.97, 0.01, 0.01, 0.01], dtype=torch.float64)
    entropy = -(probs * torch.log(probs + 1e-5)).sum()
    assert entropy < math.log(0.3 / 0.09)
    assert typical_thresholds(probs, 0.09, 0.3).item() == pytest.approx(0.09)


def test_threshold_shrinks_with_entropy():
    probs = torch.full((20,), 0.05, dtype=torch.float64)  # H = ln 20 ~ 3.0 nats
    entropy = -(probs * torch.log(probs + 1e-5)).sum()
    assert typical_thresholds(probs, 0.09, 0.3).item() == pytest.approx(0.3 * math.exp(-entropy.item()))


def _two_node_case(p_child: float, rest: int = 3):
    """Root then one child; the root's distribution gives the child token probability p_child."""
    other = (1 - p_child) / rest
    probs = [p_child] + [other] * rest
    logits = torch.stack([logits_for(probs), logits_for(probs)])
    return torch.tensor([1, 0]), logits, torch.tensor([-1, 0])


def test_typical_accepts_strictly_above_the_threshold():
    # distribution (0.1, 0.3, 0.3, 0.3): entropy 1.31 nats -> threshold = min(0.09, 0.3*e^-1.31) = 0.0809
    tokens, logits, parents = _two_node_case(0.1)
    ok, _ = typical_nodes(tokens, logits, parents, temperature=1.0)
    assert ok.tolist() == [True, True]
    # (0.05, 0.95/3 x3): entropy 1.24 -> threshold 0.087 > 0.05: rejected
    tokens, logits, parents = _two_node_case(0.05)
    ok, _ = typical_nodes(tokens, logits, parents, temperature=1.0)
    assert ok.tolist() == [True, False]


def test_typical_boundary_uses_strict_inequality():
    # A flat distribution over 4 tokens: entropy ~ ln 4 -> threshold 0.3 * exp(-H) ~ 0.075 < 0.25
    tokens, logits, parents = _two_node_case(0.25)
    probs = torch.softmax(logits[0], -1)
    threshold = typical_thresholds(probs, 0.25, 100.0)  # threshold capped at exactly 0.25 == p
    assert threshold.item() == pytest.approx(0.25)
    ok, _ = typical_nodes(tokens, logits, parents, temperature=1.0, threshold=0.25, alpha=100.0)
    assert ok.tolist() == [True, False]
    ok, _ = typical_nodes(tokens, logits, parents, temperature=1.0, threshold=0.2499, alpha=100.0)
    assert ok.tolist() == [True, True]


def test_temperature_zero_is_greedy():
    torch.manual_seed(0)
    tree = build_tree([[0], [1], [0, 0], [0, 1], [1, 0]])
    logits = torch.randn(tree.size, 16, dtype=torch.float64)
    tokens = torch.randint(0, 16, (tree.size,))
    tokens[1] = int(logits[0].argmax())
    greedy = greedy_nodes(tokens, logits, tree.parents)
    ok, _ = typical_nodes(tokens, logits, tree.parents, temperature=0.0)
    assert torch.equal(ok, greedy)
    ok_cold, _ = typical_nodes(tokens, logits, tree.parents, temperature=1e-4)
    assert torch.equal(ok_cold, greedy)


def test_best_path_picks_longest_then_most_probable():
    tree = build_tree([[0], [1], [0, 0], [1, 0]])  # slots: 1=(0) 2=(1) 3=(0,0) 4=(1,0)
    ok = torch.tensor([True, True, True, False, True])
    row, length = best_path(ok, tree.retrieve_indices)
    assert length == 2
    assert tree.retrieve_indices[row].tolist() == [0, 2, 4]
    ok = torch.tensor([True, True, True, True, True])
    scores = torch.tensor([0.0, -0.1, -0.1, -3.0, -0.2])
    row, length = best_path(ok, tree.retrieve_indices, scores)
    assert length == 2 and tree.retrieve_indices[row].tolist() == [0, 2, 4]
    row, length = best_path(torch.tensor([True, False, False, False, False]), tree.retrieve_indices)
    assert length == 0


def test_padding_slots_are_never_accepted():
    tree = build_tree([[0], [1], [0, 0]])  # the path through (1) is shorter: padded with -1
    ok = torch.tensor([True, False, True, True])  # everything but (0)
    row, length = best_path(ok, tree.retrieve_indices)
    assert length == 1 and tree.retrieve_indices[row, 1] == 2


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = top_p_filter(probs, 0.8)
    assert kept.tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0])
    assert top_p_filter(probs, 0.1).tolist() == pytest.approx([1.0, 0, 0, 0])


def test_sampling_is_seeded_and_greedy_at_zero():
    logits = torch.tensor([0.0, 2.0, 1.0])
    assert select(logits) == 1
    draws = [select(logits, 1.0, 1.0, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert len(set(draws)) == 1
