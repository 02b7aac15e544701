"""``load_model`` end to end on tiny random models: every head layout, Hub snapshots, memory, dtype, BOS."""

from __future__ import annotations

import gc
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from medusa_chat import default_model, hub
from medusa_chat.catalog import CHAT_TEMPLATES, ModelSpec
from medusa_chat.engine.generator import GenerationConfig
from medusa_chat.engine.heads_io import load_heads, save_heads
from medusa_chat.export import export_heads
from medusa_chat.loading import LoadedModel, LoadError, _check_memory, is_oom, load_model
from medusa_chat.memory import cpu_memory
from medusa_chat.paths import user_models_dir

from .hub_server import FakeHub
from .tiny import fit_heads, greedy_sequence, random_heads, tiny_model, tiny_tokenizer

NEW_TOKENS = 24
PROMPT = "The quick brown fox"


def _copy_model(base: Path, to: Path) -> Path:
    shutil.copytree(base, to)
    return to


def _medusa2_dir(base: Path, heads, to: Path) -> Path:
    """A Medusa-2 full model: the base split into shards, the heads as ``medusa_head.*`` keys in the last one."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.config.medusa_num_heads, model.config.medusa_num_layers = heads.num_heads, heads.num_layers
    model.save_pretrained(to, max_shard_size="100KB")
    for file in base.iterdir():  # the tokenizer files
        if not (to / file.name).exists() and file.name != "model.safetensors":
            shutil.copy(file, to)
    index_file = to / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    assert last != sorted(set(index["weight_map"].values()))[0], "the base should span several shards"
    shard = load_file(str(to / last))
    for key, tensor in heads.state_dict().items():
        shard[f"medusa_head.{key}"] = tensor.contiguous()
        index["weight_map"][f"medusa_head.{key}"] = last
    save_file(shard, str(to / last), metadata={"format": "pt"})
    index_file.write_text(json.dumps(index))
    return to


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base, heads fitted to its greedy continuation, and those heads in every layout (plus a fake Hub)."""
    root = tmp_path_factory.mktemp("loading")
    tok = tiny_tokenizer()
    base = tiny_model("llama", vocab_size=len(tok), dtype=torch.float32)
    base_dir = root / "base"
    base.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    prompt = tok(PROMPT)["input_ids"]
    sequence = greedy_sequence(base, prompt, NEW_TOKENS + 8)
    assert tok.eos_token_id not in sequence[len(prompt) :]  # the greedy answer runs the full length
    shared = fit_heads(base, random_heads(base, 4, shared=True), sequence)
    own = fit_heads(base, random_heads(base, 4, shared=False, seed=1), sequence)

    save_heads(shared, root / "shared", base_model=str(base_dir))
    save_heads(own, root / "own", base_model=str(base_dir))
    save_heads(shared, _copy_model(base_dir, root / "local") / "medusa", base_model=str(base_dir))
    export_heads(root / "shared", "vllm", root / "vllm", base=base_dir)
    pt = root / "medusa_lm_head.pt"
    torch.save({k: v.to(torch.bfloat16) for k, v in own.state_dict().items()}, pt)  # legacy: bf16 pickle
    legacy_config = json.dumps({"base_model_name_or_path": "test/tiny-base", "medusa_num_heads": 2}).encode()
    medusa2 = _medusa2_dir(base_dir, own, root / "medusa2")

    with FakeHub() as server:
        server.add_dir("test/tiny-base", base_dir)
        server.add_dir("test/medusa2", medusa2)
        server.add_repo("test/heads-pt", {"config.json": legacy_config, "medusa_lm_head.pt": pt.read_bytes()})
        server.add_dir("test/heads-st", root / "own")
        server.root, server.base_dir, server.prompt, server.sequence = root, base_dir, prompt, sequence
        yield server


@pytest.fixture
def hub_env(world, tmp_path, monkeypatch):
    """The fake Hub and an empty HF cache for one test."""
    world.use(monkeypatch)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return world


def _user_entry(text: str) -> None:
    directory = user_models_dir()
    directory.mkdir(parents=True, exist_ok=True)
    name = text.split('"')[1]
    (directory / f"{name}.toml").write_text(text)


def _greedy(loaded: LoadedModel, prompt: list[int], medusa: bool):
    loaded.generator.reset()
    return loaded.generator.generate(prompt, GenerationConfig(max_new_tokens=NEW_TOKENS, medusa=medusa))


def _load(fmt: str, world) -> LoadedModel:
    root, base = world.root, world.base_dir
    if fmt == "project":  # heads-only dir (config names the base dir)
        return load_model(str(root / "shared"), dtype="fp32")
    if fmt == "local-medusa-subdir":
        return load_model(str(root / "local"), dtype="fp32")
    if fmt == "heads-override":
        return load_model(str(root / "local"), heads=str(root / "own"), dtype="fp32")
    if fmt == "vllm":
        return load_model(str(base), heads=str(root / "vllm"), dtype="fp32")
    if fmt == "legacy-pt-hub":  # a bare Hub id: heads-only repo, base named in its config
        hub.download("test/heads-pt")
        return load_model("test/heads-pt", dtype="fp32")
    if fmt == "safetensors-heads-hub":  # catalogue entry: heads repo + separate base repo
        _user_entry('name = "tiny-heads"\nrepo_id = "test/heads-st"\nhead_format = "medusa1-heads"\n'
                    'base_repo_id = "test/tiny-base"\n')  # fmt: skip
        hub.download("tiny-heads")
        return load_model("tiny-heads", dtype="fp32")
    if fmt == "medusa2-hub":
        hub.download("test/medusa2")
        return load_model("test/medusa2", dtype="fp32")
    if fmt == "gguf-package-default":  # the packaged default, already converted (a tiny model stands in)
        target = default_model.converted_dir()
        _copy_model(base, target)
        (target / default_model.MARKER).write_text("done\n")
        return load_model(default_model.NAME, heads=str(root / "shared"), dtype="fp32")
    raise AssertionError(fmt)


FORMATS = {  # format -> heads share the base lm_head
    "project": True,
    "local-medusa-subdir": True,
    "heads-override": False,
    "vllm": True,
    "legacy-pt-hub": False,
    "safetensors-heads-hub": False,
    "medusa2-hub": False,
    "gguf-package-default": True,
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_head_layout_loads_and_medusa_equals_plain_greedy(hub_env, fmt):
    loaded = _load(fmt, hub_env)
    assert (loaded.device, loaded.dtype, loaded.quant, loaded.num_heads) == ("cpu", "fp32", "none", 4)
    assert loaded.generator.heads.shared_projection is FORMATS[fmt]
    assert loaded.notes == []
    prompt = hub_env.prompt
    plain = _greedy(loaded, prompt, medusa=False)
    medusa = _greedy(loaded, prompt, medusa=True)
    assert medusa.medusa and not plain.medusa
    assert medusa.token_ids == plain.token_ids == hub_env.sequence[len(prompt) :][: len(plain.token_ids)]
    assert plain.new_tokens == NEW_TOKENS
    assert medusa.steps < medusa.new_tokens / 2  # the fitted heads were read right: most steps accept a span


def test_model_not_downloaded_names_the_download_command(hub_env, tmp_path):
    with pytest.raises(LoadError, match=r"medusa-chat models download test/heads-pt`"):
        load_model("test/heads-pt")
    hub.download("test/heads-pt")
    shutil.rmtree(hub.hub_cache_dir() / "models--test--tiny-base")  # heads cached, base gone
    with pytest.raises(LoadError, match=r"not \(fully\) downloaded: run `medusa-chat models download test/heads-pt`"):
        load_model("test/heads-pt")
    save_heads(random_heads(tiny_model(vocab_size=320), 2), tmp_path / "heads", base_model="test/not-here")
    with pytest.raises(LoadError, match=r"base model test/not-here .* `medusa-chat models download test/not-here`"):
        load_model(str(tmp_path / "heads"))


def test_cpu_quantisation_runs_on_the_lean_decoder(world):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for quant in ("4bit", "8bit"):
        loaded = load_model(str(world.root / "local"), quant=quant)
        assert (loaded.engine, loaded.quant, loaded.dtype) == ("lean", quant, "bf16")
        assert loaded.generator.generate(world.prompt, GenerationConfig(max_new_tokens=4)).new_tokens == 4
        with pytest.raises(LoadError, match=rf"--quant {quant} cannot run here: .* lean decoder, not transformers"):
            load_model(str(world.root / "local"), quant=quant, engine="transformers")
    with pytest.raises(LoadError, match=r"torch sees no CUDA device.*use --device cpu"):
        load_model(str(world.root / "local"), device="cuda", quant="4bit")
    with pytest.raises(LoadError, match="unknown quantisation"):
        load_model(str(world.root / "local"), quant="3bit")


def test_dtype_auto_on_cpu_is_exact_fp32_and_bf16_is_a_choice(world):
    loaded = load_model(str(world.root / "local"))
    assert (loaded.dtype, loaded.quant, loaded.engine) == ("fp32", "none", "lean")
    assert loaded.generator.decoder.dtype == torch.float32
    fast = load_model(str(world.root / "local"), dtype="bf16")
    assert fast.generator.decoder.dtype == torch.bfloat16
    assert next(loaded.generator.heads.parameters()).dtype == loaded.generator.decoder.dtype
    with pytest.raises(LoadError, match="use --dtype bf16 or fp32"):
        load_model(str(world.root / "local"), dtype="fp16")


def test_a_model_too_big_for_ram_is_refused_before_any_file_is_read():
    _user_entry('name = "huge"\nrepo_id = "test/huge"\nhead_format = "medusa2-full"\nparams = 1_000_000_000_000_000\n')
    with pytest.raises(LoadError, match=r"huge needs about .* GB at bf16 but only .* of RAM available") as info:
        load_model("huge", device="cpu", dtype="bf16")
    assert "choose a smaller model" in str(info.value)  # nothing lighter than bf16 on a CPU


def test_memory_refusal_suggests_the_nearest_precision_that_fits():
    available = cpu_memory()[1]
    params = available // 3  # fp32 weights (4 B each) exceed the RAM; bf16 with its margin (2.4 B) fits
    _user_entry(f'name = "big"\nrepo_id = "test/big"\nhead_format = "medusa2-full"\nparams = {params}\n')
    with pytest.raises(LoadError, match=r"try --dtype bf16 \(about"):
        load_model("big", device="cpu", dtype="fp32")


def test_gpu_memory_advice_goes_to_8bit_4bit_then_a_smaller_model():
    spec = ModelSpec(name="vicuna-13b", params=13_966_161_920)
    gb = 10**9
    with pytest.raises(LoadError, match=r"needs about 33.5 GB at fp16 but only 16.0 GB of GPU memory free on cuda: "
                       r"try --quant 4bit \(about 8.4 GB\)"):  # fmt: skip
        _check_memory(spec, spec.params, "cuda", "fp16", "none", 16 * gb, can_quantise=True)
    with pytest.raises(LoadError, match="try --quant 8bit"):
        _check_memory(spec, spec.params, "cuda", "fp16", "none", 20 * gb, can_quantise=True)
    with pytest.raises(LoadError, match=r"choose a smaller model, e\.g\. --model smollm2-135m-instruct"):
        _check_memory(spec, spec.params, "cuda", "fp16", "none", 16 * gb, can_quantise=False)
    notes = _check_memory(spec, spec.params, "cuda", "fp16", "none", 30 * gb, can_quantise=True)  # 27.9 GB weights
    assert len(notes) == 1 and "long chats may run out of memory" in notes[0]
    assert _check_memory(spec, spec.params, "cuda", "fp16", "4bit", 16 * gb, can_quantise=True) == []


def test_out_of_memory_while_loading_frees_the_partial_model(world, tmp_path):
    """A config asking for a 2**40-token vocabulary: the allocator really fails inside from_pretrained."""
    from transformers import LlamaForCausalLM

    huge = _copy_model(world.base_dir, tmp_path / "huge-vocab")
    config = json.loads((huge / "config.json").read_text())
    (huge / "config.json").write_text(json.dumps({**config, "vocab_size": 2**40}))
    weights = load_file(str(huge / "model.safetensors"))
    small = {k: v for k, v in weights.items() if not k.startswith(("model.embed_tokens", "lm_head"))}
    save_file(small, str(huge / "model.safetensors"), metadata={"format": "pt"})

    def live_models() -> int:
        gc.collect()
        return sum(type(o) is LlamaForCausalLM for o in gc.get_objects())

    before = live_models()
    with pytest.raises(LoadError, match=r"ran out of memory loading .*huge-vocab \(fp32\) on cpu; the partial model "
                       r"was freed\. try --dtype bf16") as info:  # fmt: skip
        load_model(str(huge), dtype="fp32")
    assert is_oom(info.value.__cause__)
    assert live_models() == before
    loaded = load_model(str(world.root / "local"), dtype="fp32")  # the caller carries on
    assert _greedy(loaded, world.prompt, medusa=True).new_tokens == NEW_TOKENS


def test_is_oom_recognises_gpu_and_cpu_out_of_memory_errors():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(MemoryError())
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**45)  # 128 TiB: the CPU allocator refuses
    assert is_oom(info.value)
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))


# -- chat templates and BOS --------------------------------------------------------------------------


def _bos_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer that, like Llama's, puts ``<s>`` first by default."""
    words = ["<s>", "</s>", "<unk>", "USER:", "ASSISTANT:", "hi", "A", "chat", "<|user|>", "<|assistant|>"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _chat(tokenizer, template: str) -> LoadedModel:
    return LoadedModel("t", None, tokenizer, "cpu", "fp32", "none", template, ModelSpec(name="t"))


MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("template", ["vicuna_v1.1", "zephyr"])
def test_chat_ids_start_with_exactly_one_bos_when_the_tokenizer_adds_one(template):
    tok = _bos_tokenizer()
    assert tok("hi")["input_ids"] == [0, 5]
    ids = _chat(tok, CHAT_TEMPLATES[template]).chat_ids(MESSAGES)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    text = tok.apply_chat_template(MESSAGES, chat_template=CHAT_TEMPLATES[template], add_generation_prompt=True,
                                   tokenize=False).removeprefix("<s>")  # fmt: skip
    assert ids == tok(text)["input_ids"]  # what FastChat feeds: the prompt with the tokenizer's own BOS


@pytest.mark.parametrize("template", ["vicuna_v1.1", "zephyr", "tokenizer"])
def test_chat_ids_have_no_bos_when_neither_template_nor_tokenizer_has_one(template):
    tok = tiny_tokenizer()
    chosen = tok.chat_template if template == "tokenizer" else CHAT_TEMPLATES[template]
    ids = _chat(tok, chosen).chat_ids(MESSAGES)
    text = tok.apply_chat_template(MESSAGES, chat_template=chosen, add_generation_prompt=True, tokenize=False)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert "None" not in tok.decode(ids) and tok.decode(ids) == text


def test_catalogue_template_and_stop_string_are_used(hub_env):
    _user_entry('name = "tiny-vicuna"\nrepo_id = "test/medusa2"\nhead_format = "medusa2-full"\n'
                'chat_template = "vicuna_v1.1"\nparams = 200_000\n')  # fmt: skip
    hub.download("tiny-vicuna")
    loaded = load_model("tiny-vicuna", dtype="fp32")
    assert loaded.chat_template == CHAT_TEMPLATES["vicuna_v1.1"] and loaded.stop_strings == ("USER:",)
    ids = loaded.chat_ids(MESSAGES)
    assert loaded.tokenizer.decode(ids).startswith("A chat between") and ids[-1] != loaded.tokenizer.eos_token_id


# -- heads_io: vLLM exports --------------------------------------------------------------------------


def test_vllm_export_with_original_lm_head_reads_back_as_shared_heads(world):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(world.base_dir, dtype=torch.float32)
    lm_head = base.get_output_embeddings().weight
    vllm, shared = world.root / "vllm", load_heads(world.root / "shared")
    config = json.loads((vllm / "config.json").read_text())
    heads = load_heads(vllm, 64, 320, lm_head=lm_head)
    assert heads.shared_projection and heads.num_heads == 4
    for key, tensor in shared.state_dict().items():
        torch.testing.assert_close(heads.state_dict()[key], tensor)
    # without the config flag the lone projection is recognised as the base lm_head (also in lower precision)
    (vllm / "config.json").write_text(json.dumps({**config, "original_lm_head": False}))
    try:
        assert load_heads(vllm, 64, 320, lm_head=lm_head.to(torch.bfloat16)).shared_projection
        with pytest.raises(Exception, match=r"only heads \[0\] of 4 have a vocab projection"):
            load_heads(vllm, 64, 320, lm_head=torch.zeros_like(lm_head))
    finally:
        (vllm / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="project onto 320 tokens but the base model's vocabulary has 300"):
        load_heads(vllm, 64, 300, lm_head=lm_head)


def test_vllm_blocks_without_bias_get_a_zero_bias(world, tmp_path):
    weights = load_file(str(world.root / "vllm" / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.endswith(".bias")}, str(tmp_path / "model.safetensors"))
    config = json.loads((world.root / "vllm" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "medusa_fc_bias": False}))
    heads = load_heads(tmp_path, 64, 320)
    assert heads.shared_projection
    assert all(not head[0].linear.bias.any() for head in heads)
    torch.testing.assert_close(heads[2][0].linear.weight, weights["blocks.2.layers.0.weight"])


def test_a_tuned_tree_becomes_the_default_and_trees_fit_the_heads(tiny_model_dir, tmp_path):
    from medusa_chat.trees import save_tuned

    loaded = load_model(str(tiny_model_dir), dtype="fp32")
    assert loaded.tree_name == "cpu_8"
    fallback = load_model(str(tiny_model_dir), dtype="fp32", tree="tuned")  # none yet: the default, with a note
    assert fallback.tree_name == "cpu_8" and any("no tuned tree" in n for n in fallback.notes)
    tuned = [[0], [0, 0], [1]]
    save_tuned({"model": loaded.name, "device": "cpu", "dtype": "fp32", "choices": tuned})
    loaded = load_model(str(tiny_model_dir), dtype="fp32")
    assert loaded.tree_name == "tuned" and loaded.generator.tree.size == 4
    assert load_model(str(tiny_model_dir), dtype="fp32", tree="cpu_4").tree_name == "cpu_4"
    assert load_model(str(tiny_model_dir), dtype="fp32", tree="tuned").generator.tree.size == 4

    model = tiny_model("llama", vocab_size=len(tiny_tokenizer()), dtype=torch.float32)
    two = tmp_path / "two-heads"
    model.save_pretrained(two)
    tiny_tokenizer().save_pretrained(two)
    save_heads(random_heads(model, num_heads=2).float(), two / "medusa", base_model=str(two))
    loaded = load_model(str(two), dtype="fp32")  # cpu_8 is 4 deep: cut to the 2 heads there are
    assert loaded.tree_name == "cpu_8/depth-2" and loaded.generator.tree.depth == 2


@pytest.mark.parametrize(("capability", "runs_as"), [("avx2", "lean cpu 4bit (bf16)"), ("default", "lean cpu fp32")])
def test_the_default_runs_on_its_4bit_weights_where_the_int4_kernel_is_vectorised(capability, runs_as):
    import subprocess
    import sys

    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    code = ("from medusa_chat import catalog, default_model, loading\n"
            "print(loading.default_setting(catalog.get(default_model.NAME)))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == runs_as
