import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medusa_chat.engine.presets import CPU_TREES, REFERENCE_TREES, preset
from medusa_chat.engine.tree import TreeError, build_tree


def test_worked_example_buffer_by_buffer():
    """Spec section 3.3: choices [[0], [0,0], [1], [0,1]]."""
    tree = build_tree([[0], [0, 0], [1], [0, 1]])
    assert tree.choices == ((0,), (1,), (0, 0), (0, 1))
    assert tree.size == 5
    assert tree.ancestor_mask.int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 1, 0, 1, 0],
        [1, 1, 0, 0, 1],
    ]
    assert tree.tree_indices.tolist() == [0, 1, 2, 11, 12]
    assert tree.depths.tolist() == [0, 1, 1, 2, 2]
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1]
    assert tree.retrieve_indices.tolist() == [[0, 1, 4], [0, 1, 3], [0, 2, -1]]


# name: (nodes per depth, leaves, max tree index), from the spec's table in section 3.4
REFERENCE_STATS = {
    "mc_sim_7b_63": ([10, 28, 23, 2], 42, 32),
    "vicuna_7b_stage2": ([10, 23, 23, 7], 42, 34),
    "vicuna_7b_stage1_ablation": ([10, 21, 25, 7], 42, 34),
    "vicuna_7b_stage1": ([10, 32, 20, 1], 44, 31),
    "vicuna_13b_stage2": ([10, 19, 25, 9], 42, 34),
    "vicuna_13b_stage1": ([10, 29, 23, 1], 44, 31),
    "vicuna_33b_stage2": ([10, 24, 24, 5], 43, 33),
    "vicuna_33b_stage1": ([10, 34, 19], 46, 29),
    "zephyr_stage2": ([10, 27, 23, 3], 44, 32),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_TREES))
def test_reference_presets_match_the_published_shapes(name):
    per_depth, leaves, max_index = REFERENCE_STATS[name]
    tree = build_tree(preset(name))
    assert tree.size == 64
    assert torch.bincount(tree.depths)[1:].tolist() == per_depth
    assert tree.retrieve_indices.shape == (leaves, len(per_depth) + 1)
    assert int(tree.tree_indices.max()) == max_index


@pytest.mark.parametrize("name", sorted(CPU_TREES))
def test_cpu_presets_have_multiple_of_four_slots(name):
    tree = build_tree(preset(name), num_heads=4)
    assert tree.size % 4 == 0 and tree.size <= 16


def test_chain_preset():
    assert preset("chain-3") == [[0], [0, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    ("choices", "heads", "message"),
    [
        ([[0], [0, 0], [0, 0, 0]], 2, "depth 3 but the model has only 2"),
        ([[0], [1, 0]], None, "no parent: add [1]"),
        ([[0], [10]], None, "rank 10 outside 0..9"),
        ([[0], [0]], None, "listed twice"),
        ([[0], []], None, "non-empty list"),
        ([[0], ["a"]], None, "non-integer"),
        ("[[0]]", None, "list of rank paths"),
        ([[-1]], None, "rank -1"),
    ],
)
def test_malformed_trees_are_named(choices, heads, message):
    with pytest.raises(TreeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_tree(choices, num_heads=heads)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(TreeError, match=r"unknown tree 'nope'.*mc_sim_7b_63"):
        preset("nope")


@st.composite
def trees(draw, max_depth=4, max_nodes=24, max_rank=4):
    """Random prefix-closed trees: grow by adding a child to an existing node."""
    paths: list[tuple[int, ...]] = []
    for _ in range(draw(st.integers(0, max_nodes))):
        parent = draw(st.sampled_from([(), *paths]))
        if len(parent) >= max_depth:
            continue
        child = (*parent, draw(st.integers(0, max_rank)))
        if child not in paths:
            paths.append(child)
    return [list(p) for p in paths]


@settings(max_examples=60, deadline=None)
@given(trees())
def test_random_trees_are_consistent(choices):
    tree = build_tree(choices)
    slot_of = {(): 0, **{p: i + 1 for i, p in enumerate(tree.choices)}}
    for path, slot in slot_of.items():
        ancestors = {slot_of[path[:d]] for d in range(len(path) + 1)}
        assert set(torch.nonzero(tree.ancestor_mask[slot]).flatten().tolist()) == ancestors
        assert tree.depths[slot] == len(path)
        if path:
            assert tree.tree_indices[slot] == 1 + 10 * (len(path) - 1) + path[-1]
    leaves = {s for p, s in slot_of.items() if not any(q[: len(p)] == p and len(q) > len(p) for q in slot_of)}
    rows = tree.retrieve_indices.tolist()
    assert {[s for s in r if s >= 0][-1] for r in rows} == leaves
    for row in rows:
        chain = [s for s in row if s >= 0]
        assert chain[0] == 0
        assert all(tree.parents[b] == a for a, b in itertools.pairwise(chain))
