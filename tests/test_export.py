"""``medusa-chat export``: the vLLM and TGI layouts, key by key, and back through ``load_heads``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from medusa_chat.engine.heads import MedusaHeads
from medusa_chat.engine.heads_io import load_heads, load_heads_state, save_heads
from medusa_chat.export import ExportError, export_heads
from medusa_chat.memory import BYTES_PER_PARAM, Device, cpu_memory, detect_device, estimate_bytes, estimates

H, V, K = 32, 96, 3


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=H, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=V, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    directory = tmp_path_factory.mktemp("base")
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def _heads(tmp_path, shared: bool, layers: int = 1):
    torch.manual_seed(2)
    heads = MedusaHeads(H, V, K, num_layers=layers, shared_projection=shared)
    for p in heads.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return heads, save_heads(heads, tmp_path / "heads", base_model="org/base")


def _tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def _lm_head(base_dir) -> torch.Tensor:
    return _tensors(base_dir / "model.safetensors")["lm_head.weight"]


def test_vllm_shared_heads_use_original_lm_head(tmp_path, base_dir):
    heads, path = _heads(tmp_path, shared=True)
    out = export_heads(path, "vllm", tmp_path / "vllm", base=base_dir)
    config = json.loads((out / "config.json").read_text())
    assert config == {
        "model_type": "medusa", "architectures": ["MedusaModel"], "hidden_size": H, "vocab_size": V,
        "num_heads": K, "num_hidden_layers": 1, "truncated_vocab_size": None, "medusa_fc_bias": True,
        "original_lm_head": True, "base_model_name_or_path": str(base_dir),
    }  # fmt: skip
    tensors = _tensors(out / "model.safetensors")
    blocks = {f"blocks.{h}.layers.0.{p}" for h in range(K) for p in ("weight", "bias")}
    assert set(tensors) == blocks | {"lm_heads.0.weight"}
    assert all(tensors[f"blocks.{h}.layers.0.weight"].shape == (H, H) for h in range(K))
    assert all(tensors[f"blocks.{h}.layers.0.bias"].shape == (H,) for h in range(K))
    torch.testing.assert_close(tensors["lm_heads.0.weight"], _lm_head(base_dir))
    state = load_heads_state(out)  # our reader maps the vLLM names back
    for key, tensor in heads.state_dict().items():
        torch.testing.assert_close(state[key], tensor)
    again = export_heads(out, "tgi", tmp_path / "tgi-again", base=base_dir)  # a vLLM export exports again
    assert load_heads(again).num_heads == K


def test_vllm_per_head_projections_round_trip(tmp_path):
    heads, path = _heads(tmp_path, shared=False, layers=2)
    out = export_heads(path, "vllm", tmp_path / "vllm")
    config = json.loads((out / "config.json").read_text())
    assert (config["num_heads"], config["num_hidden_layers"], config["original_lm_head"]) == (K, 2, False)
    assert config["base_model_name_or_path"] == "org/base"
    tensors = _tensors(out / "model.safetensors")
    blocks = {f"blocks.{h}.layers.{j}.{p}" for h in range(K) for j in range(2) for p in ("weight", "bias")}
    assert set(tensors) == blocks | {f"lm_heads.{h}.weight" for h in range(K)}
    assert all(tensors[f"lm_heads.{h}.weight"].shape == (V, H) for h in range(K))
    loaded = load_heads(out, H, V)
    for key, tensor in heads.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], tensor)


def test_tgi_layout_gives_each_head_a_projection_with_the_same_logits(tmp_path, base_dir):
    heads, path = _heads(tmp_path, shared=True)
    out = export_heads(path, "tgi", tmp_path / "tgi", base=base_dir)
    config = json.loads((out / "config.json").read_text())
    assert config["medusa_num_heads"] == K and config["medusa_num_layers"] == 1
    assert config["base_model_name_or_path"] == str(base_dir)
    tensors = _tensors(out / "medusa_lm_head.safetensors")
    expected = {f"{i}.0.linear.{p}" for i in range(K) for p in ("weight", "bias")} | {f"{i}.1.weight" for i in range(K)}
    assert set(tensors) == expected
    assert all(tensors[f"{i}.1.weight"].shape == (V, H) for i in range(K))
    exported = load_heads(out, H, V)
    assert not exported.shared_projection
    lm_head = torch.nn.Linear(H, V, bias=False)
    lm_head.weight.data = _lm_head(base_dir)
    x = torch.randn(2, 5, H)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), heads(x, lm_head=lm_head))


def test_tgi_per_head_and_legacy_pt_input(tmp_path):
    heads, _ = _heads(tmp_path, shared=False)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save({k: v.to(torch.bfloat16) for k, v in heads.state_dict().items()}, legacy / "medusa_lm_head.pt")
    (legacy / "config.json").write_text(json.dumps({"base_model_name_or_path": "lmsys/vicuna-7b-v1.3",
                                                    "medusa_num_heads": 2, "medusa_num_layers": 1}))  # fmt: skip
    out = export_heads(legacy, "tgi", tmp_path / "tgi")
    config = json.loads((out / "config.json").read_text())
    assert config["medusa_num_heads"] == K  # from the weights, not the config's 2
    assert config["base_model_name_or_path"] == "lmsys/vicuna-7b-v1.3"
    assert {t.dtype for t in _tensors(out / "medusa_lm_head.safetensors").values()} == {torch.bfloat16}


def test_shared_heads_need_the_base_and_a_matching_one(tmp_path, base_dir):
    _, path = _heads(tmp_path, shared=True)
    with pytest.raises(ExportError, match="--base"):
        export_heads(path, "tgi", tmp_path / "o")
    with pytest.raises(ExportError, match="choose one of"):
        export_heads(path, "onnx", tmp_path / "o", base=base_dir)
    torch.manual_seed(0)
    other = MedusaHeads(H * 2, V, K)
    wrong = save_heads(other, tmp_path / "wide", base_model="x")
    with pytest.raises(ExportError, match="hidden size 32 but the heads have 64"):
        export_heads(wrong, "vllm", tmp_path / "o", base=base_dir)


def test_memory_estimates_and_device_detection(tmp_path):
    params = 7_000_000_000
    assert [estimate_bytes(params, p) for p in BYTES_PER_PARAM] == [16_800_000_000, 8_400_000_000, 4_200_000_000]
    small = Device("cpu", "CPU RAM", 16 * 10**9, 10 * 10**9)
    assert [(e.precision, e.fits) for e in estimates(params, small)] == [
        ("fp16", False), ("8-bit", True), ("4-bit", True)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown precision"):
        estimate_bytes(params, "fp8")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384 kB\nMemFree:  1024 kB\nMemAvailable:   8192 kB\n")
    assert cpu_memory(meminfo) == (16384 * 1024, 8192 * 1024)
    device = detect_device()
    assert device.kind in ("cuda", "cpu") and 0 < device.available_bytes <= device.total_bytes


def test_export_command(tmp_path, base_dir):
    from typer.testing import CliRunner

    from medusa_chat.cli import app

    _, path = _heads(tmp_path, shared=True)
    out = tmp_path / "tgi"
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(path), "--format", "tgi", "--out", str(out), "--base", str(base_dir)])
    assert result.exit_code == 0, result.output
    assert (out / "medusa_lm_head.safetensors").is_file() and "wrote tgi heads" in result.output
    result = runner.invoke(app, ["export", str(path), "--format", "vllm", "--out", str(tmp_path / "v")])
    assert result.exit_code == 1 and "--base" in result.output


def test_export_refuses_a_non_empty_directory_unless_forced(tmp_path, base_dir):
    from typer.testing import CliRunner

    from medusa_chat.cli import app

    _, path = _heads(tmp_path, shared=False)
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"the base model's weights")
    (model / "config.json").write_text('{"model_type": "llama"}')
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(path), "--format", "vllm", "--out", str(model)])
    assert result.exit_code == 1 and "not empty" in result.output and "--force" in result.output
    assert (model / "model.safetensors").read_bytes() == b"the base model's weights"
    assert "Traceback" not in result.output
    forced = runner.invoke(app, ["export", str(path), "--format", "vllm", "--out", str(model), "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((model / "config.json").read_text())["model_type"] == "medusa"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["export", str(path), "--out", str(empty)]).exit_code == 0


def test_export_out_naming_a_file_and_base_naming_nothing_are_one_line_errors(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medusa_chat.cli import app

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("MEDUSA_CHAT_CONFIG_DIR", str(tmp_path / "config"))
    _, path = _heads(tmp_path, shared=True)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(path), "--out", str(a_file)])
    assert result.exit_code == 1 and "is a file" in result.output and a_file.read_text() == "keep me"
    for base in ("no-such-model", str(tmp_path / "missing-dir"), "owner/not-downloaded"):
        result = runner.invoke(app, ["export", str(path), "--out", str(tmp_path / "o"), "--base", base])
        assert result.exit_code == 1 and f"--base {base} is neither" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and isinstance(result.exception, SystemExit)
