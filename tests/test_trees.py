"""Choosing the tree: names, tuned-tree files and the one resolver (torch-free)."""

import json

import pytest

from medusa_chat.engine.choices import TreeError
from medusa_chat.trees import AUTO, TUNED, resolve_tree, save_tuned, tree_path, tree_problem, tuned_tree


def test_saved_tree_round_trips_and_bad_files_are_ignored() -> None:
    assert tuned_tree("tiny", "cpu", "bf16") is None
    report = {"model": "org/tiny model", "device": "cpu", "dtype": "bf16", "choices": [[0], [1], [0, 0]]}
    path = save_tuned(report)
    assert path == tree_path("org/tiny model", "cpu", "bf16") and path.parent.name == "trees"
    assert "/" not in path.name and " " not in path.name
    assert tuned_tree("org/tiny model", "cpu", "bf16") == [[0], [1], [0, 0]]
    assert tuned_tree("org/tiny model", "cpu", "fp32") is None  # per precision
    with pytest.warns(UserWarning, match="depth 2"):
        assert tuned_tree("org/tiny model", "cpu", "bf16", num_heads=1) is None
    for corrupt in ("{not json", json.dumps({"choices": [[0, 0]]}), json.dumps([1, 2]), "\xff"):
        path.write_text(corrupt, encoding="latin-1")
        with pytest.warns(UserWarning, match="ignoring the tuned tree"):
            assert tuned_tree("org/tiny model", "cpu", "bf16") is None


def resolve(tree, **kwargs):
    return resolve_tree(tree, **{"model": "m", "device": "cpu", "dtype": "fp32", "num_heads": 4, **kwargs})


def test_resolve_tree_tuned_then_the_heads_default_then_the_device_default_cut_to_the_heads() -> None:
    assert (resolve(None).name, resolve(AUTO).name) == ("cpu_8", "cpu_8")
    assert resolve(None, device="cuda").name == "mc_sim_7b_63"
    assert resolve(None, default="cpu_16").name == "cpu_16"
    two = resolve(None, num_heads=2)
    assert two.name == "cpu_8/depth-2" and max(len(c) for c in two.choices) == 2 and two.note is None
    save_tuned({"model": "m", "device": "cpu", "dtype": "fp32", "choices": [[0], [1]]})
    assert resolve(None) == resolve(TUNED) == resolve(AUTO, default="cpu_16")
    assert resolve(None).choices == [[0], [1]] and resolve(None).name == TUNED
    assert resolve("cpu_4").name == "cpu_4"  # a named preset is used as named
    assert resolve(None, dtype="bf16").name == "cpu_8"  # tuned per precision


def test_tuned_without_a_tuned_tree_falls_back_with_a_note_and_bad_names_are_refused() -> None:
    chosen = resolve(TUNED, num_heads=3)
    assert chosen.name == "cpu_8/depth-3" and "no tuned tree for m" in chosen.note and "medusa-chat tune" in chosen.note
    with pytest.raises(TreeError, match="unknown tree"):
        resolve("bogus")
    assert tree_problem("bogus") and "unknown tree 'bogus'" in tree_problem("bogus")
    assert tree_problem(None) is tree_problem(TUNED) is tree_problem("chain-3") is None
    assert "at most 256" in tree_problem("chain-100000")
