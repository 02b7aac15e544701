"""Heads checkpoints: round trip, and clear errors for what does not fit."""

import pytest
import torch

from medusa_chat.engine.heads import MedusaHeads
from medusa_chat.engine.heads_io import HeadsError, load_heads, save_heads


@pytest.mark.parametrize("shared", [True, False])
def test_round_trip_keeps_layout_and_weights(tmp_path, shared):
    heads = MedusaHeads(16, 40, num_heads=3, num_layers=2, shared_projection=shared)
    torch.nn.init.normal_(heads[1][0].linear.weight)
    save_heads(heads, tmp_path, base_model="base")
    back = load_heads(tmp_path, hidden_size=16, vocab_size=40)
    assert (back.num_heads, back.num_layers, back.shared_projection) == (3, 2, shared)
    for (k, v), (k2, v2) in zip(heads.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)
    keys = set(back.state_dict())
    assert "2.1.linear.bias" in keys and ("2.2.weight" in keys) == (not shared)


def test_errors_name_the_problem(tmp_path):
    save_heads(MedusaHeads(16, 40, 2, shared_projection=False), tmp_path / "h", base_model="base")
    with pytest.raises(HeadsError, match="hidden size 16 but the base model has 32"):
        load_heads(tmp_path / "h", hidden_size=32, vocab_size=40)
    with pytest.raises(HeadsError, match="project onto 40 tokens but the base model's vocabulary has 50"):
        load_heads(tmp_path / "h", hidden_size=16, vocab_size=50)
    with pytest.raises(HeadsError, match="does not exist"):
        load_heads(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeadsError, match="no Medusa heads in"):
        load_heads(tmp_path / "empty")
    corrupt = tmp_path / "c" / "medusa_lm_head.safetensors"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(HeadsError, match="not a readable safetensors file"):
        load_heads(corrupt.parent)
