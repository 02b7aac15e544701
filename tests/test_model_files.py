"""The default model's tokenizer and config read without transformers, against transformers' own."""

from __future__ import annotations

import random

import pytest

from medusa_chat.default_model import ensure_metadata
from medusa_chat.model_files import LightTokenizer, read_config
from medusa_chat.prompts import read_prompts


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer

    directory = ensure_metadata()
    return LightTokenizer(directory), AutoTokenizer.from_pretrained(directory)


def _dev_texts() -> list[str]:
    from medusa_chat.data import DEV_PROMPTS as DEV

    return [p.text for p in read_prompts(DEV, 200)]


def test_chat_ids_equal_transformers_on_every_dev_prompt(tokenizers):
    light, reference = tokenizers
    texts = _dev_texts()
    assert len(texts) == 200
    for text in texts:
        for messages in ([{"role": "user", "content": text}],
                         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]):
            rendered = light.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            assert rendered == reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = light.apply_chat_template(messages, add_generation_prompt=True)
            expected = reference.apply_chat_template(messages, add_generation_prompt=True)
            assert ids == list(expected["input_ids"] if hasattr(expected, "keys") else expected)
            assert light(text, add_special_tokens=False) == {"input_ids": reference(text, add_special_tokens=False)[
                "input_ids"]}


def test_decoding_equals_transformers_with_and_without_special_tokens(tokenizers):
    light, reference = tokenizers
    rng = random.Random(0)
    samples = [light.encode(text, add_special_tokens=False) for text in _dev_texts()[:50]]
    samples += [[rng.randrange(light._tokenizer.get_vocab_size()) for _ in range(40)] for _ in range(50)]
    samples += [[1, 2, *s[:20], 2, 0] for s in samples[:20]]  # special tokens among the text
    for ids in samples:
        for skip in (True, False):
            assert light.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip)
    for name in ("bos_token", "eos_token", "pad_token", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(light, name) == getattr(reference, name), name
    assert light.chat_template == reference.chat_template


def test_config_has_what_the_lean_decoder_reads():
    from transformers import AutoConfig

    from medusa_chat.engine.lean import LlamaSpec

    directory = ensure_metadata()
    light, reference = read_config(directory), AutoConfig.from_pretrained(directory)
    assert LlamaSpec.from_config(light) == LlamaSpec.from_config(reference)
    assert light.get_text_config().eos_token_id == reference.eos_token_id


def test_loading_the_default_model_never_imports_transformers():
    """The default's memory goal rests on this: transformers alone costs ~100 MB (once written, the config and
    tokenizer directory is all the default needs; writing it from the GGUF uses transformers, once)."""
    import subprocess
    import sys

    ensure_metadata()

    code = ("import sys; from medusa_chat.loading import load_model; "
            "m = load_model('smollm2-135m-instruct', threads=1); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] == 'transformers'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
