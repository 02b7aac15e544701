"""Calibration at first load: tree choice from injected step costs, the cache and its key, a real load."""

from __future__ import annotations

import torch

from medusa_chat import calibration
from medusa_chat.engine.heads_io import save_heads
from medusa_chat.loading import load_model
from tests.tiny import random_heads, tiny_model, write_tiny_model_dir

RATES = [[0.5, 0.2, 0.1] + [0.02] * 7, [0.3, 0.15, 0.05] + [0.02] * 7, [0.2, 0.1] + [0.02] * 8]


def test_expensive_trees_give_plain_decoding_and_cheap_ones_a_tree():
    def expensive(sizes, order):
        return {q: 1.0 + 0.6 * q for q in sizes}

    def cheap(sizes, order):
        return {q: 1.0 + 0.01 * q for q in sizes}

    choices, speedup, _ = calibration.choose_tree(RATES, expensive, num_heads=3)
    assert choices == [] and speedup == 1.0
    choices, speedup, costs = calibration.choose_tree(RATES, cheap, num_heads=3)
    assert len(choices) >= 4 and speedup > 1.5 and set(costs) <= set(calibration.SIZES)
    assert all(len(c) <= 3 for c in choices)


def test_the_cache_key_changes_with_the_heads(tmp_path):
    model = tiny_model(dtype=torch.float32)
    save_heads(random_heads(model, seed=1).float(), tmp_path / "a", base_model="tiny")
    save_heads(random_heads(model, seed=2).float(), tmp_path / "b", base_model="tiny")
    a = calibration.cache_key("tiny", tmp_path / "a", "cpu", "fp32", "none", "lean")
    b = calibration.cache_key("tiny", tmp_path / "b", "cpu", "fp32", "none", "lean")
    assert a != b and calibration.cache_path(a) != calibration.cache_path(b)
    assert calibration.cache_key("tiny", tmp_path / "a", "cpu", "fp32", "none", "lean") == a


def test_first_load_calibrates_and_later_loads_reuse_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDUSA_CHAT_CALIBRATION", "on")
    monkeypatch.setenv("MEDUSA_CHAT_DATA_DIR", str(tmp_path / "data"))
    path = write_tiny_model_dir(tmp_path / "tiny")
    phases: list[str] = []
    first = load_model(str(path), dtype="fp32", progress=phases.append)
    assert any("calibrating" in p for p in phases)
    assert first.tree_name.startswith(("calibrated-", "plain (calibrated)"))
    again: list[str] = []
    second = load_model(str(path), dtype="fp32", progress=again.append)
    assert second.tree_name == first.tree_name and not any("calibrating" in p for p in again)
    assert second.generator.step_costs == first.generator.step_costs  # they size prompt-lookup drafts
    assert set(first.generator.step_costs) >= {2, 3, 4} and first.generator.tree_tokens >= 1.0
    named = load_model(str(path), dtype="fp32", tree="cpu_4")
    assert named.tree_name == "cpu_4"  # a named tree is used as asked, never replaced
    assert named.generator.step_costs == {}  # not measured for it: drafts keep the asked length
