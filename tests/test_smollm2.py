"""End to end on the real offline default model (SmolLM2-135M-Instruct) with the shipped heads, on the CPU."""

import json
from pathlib import Path

import pytest

from medusa_chat.bench import copy_conversations, read_prompts
from medusa_chat.engine.generator import GenerationConfig
from medusa_chat.loading import load_model
from medusa_chat.prompts import DEV_PROMPTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(smollm2_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDUSA_CHAT_CACHE_DIR", str(smollm2_cache))
        mp.setenv("MEDUSA_CHAT_CALIBRATION", "off")  # the preset tree: the test compares named trees
        return load_model("smollm2-135m-instruct", dtype="fp32")


@pytest.fixture(scope="module")
def prompts():
    return read_prompts(DEV_PROMPTS, 12)  # shipped with the package


def answer(loaded, prompt, **config):
    loaded.generator.reset()
    chat = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return loaded.generator.generate(loaded.chat_ids(chat), GenerationConfig(max_new_tokens=48, **config))


def test_loads_from_the_package_with_the_shipped_heads(smollm2):
    assert smollm2.name == "smollm2-135m-instruct"
    assert smollm2.num_heads >= 3 and smollm2.tree_name
    card = json.loads((Path(smollm2.spec.heads_dir()) / "config.json").read_text())
    assert card["medusa_num_heads"] == smollm2.num_heads


def test_medusa_output_equals_plain_and_heads_are_accepted(smollm2, prompts):
    """fp32 greedy: identical tokens with the default CPU tree and the 63-node reference tree."""
    default_tree = smollm2.tree_name
    tokens = steps = 0
    try:
        for prompt in prompts[:3]:
            plain = answer(smollm2, prompt, medusa=False)
            smollm2.generator.set_tree(default_tree)
            small = answer(smollm2, prompt)
            smollm2.generator.set_tree("mc_sim_7b_63")
            big = answer(smollm2, prompt)
            assert small.token_ids == big.token_ids == plain.token_ids, prompt
            assert small.text == plain.text
            tokens += big.new_tokens
            steps += big.steps
    finally:
        smollm2.generator.set_tree(default_tree)
    assert tokens / steps > 1.5  # the shipped heads' proposals are accepted (mean tokens per step)


def test_prompt_lookup_drafts_help_on_copying_tasks(smollm2, prompts):
    task = copy_conversations(smollm2, prompts[3:4])[0]  # "repeat your previous answer exactly"
    plain = answer(smollm2, task, medusa=False)
    heads = answer(smollm2, task)
    hybrid = answer(smollm2, task, prompt_lookup=10)
    assert hybrid.token_ids == heads.token_ids == plain.token_ids
    assert hybrid.mean_accepted > heads.mean_accepted + 0.5


def test_next_turn_reuses_the_conversation_cache(smollm2):
    gen = smollm2.generator
    gen.reset()
    turn1 = [{"role": "user", "content": "Name a colour."}]
    first = gen.generate(smollm2.chat_ids(turn1), GenerationConfig(max_new_tokens=16))
    turn2 = [*turn1, {"role": "assistant", "content": first.text}, {"role": "user", "content": "And another?"}]
    ids = smollm2.chat_ids(turn2)
    second = gen.generate(ids, GenerationConfig(max_new_tokens=16))
    assert second.reused_tokens >= len(smollm2.chat_ids(turn1))
    assert second.prompt_tokens == len(ids)


@pytest.mark.parametrize("quant", ["none", "4bit"])
def test_generate_on_the_console_prints_its_stages_and_nothing_of_the_libraries(smollm2_cache, tmp_path, quant):
    """What a user sees: one line per stage (a bar on a terminal), no library bars, no FutureWarning."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MEDUSA_CHAT_CACHE_DIR": str(smollm2_cache), "MEDUSA_CHAT_DATA_DIR": str(tmp_path / "data"),
           "MEDUSA_CHAT_CONFIG_DIR": str(tmp_path / "config"), "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "always::FutureWarning", "MEDUSA_CHAT_CALIBRATION": "off"}
    script = Path(sys.executable).with_name("medusa-chat")
    done = subprocess.run([str(script), "generate", "hi", "--max-new-tokens", "4", "--threads", "1", "--quant", quant],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    precision = "fp32" if quant == "none" else quant
    assert lines[0].startswith("loading SmolLM2 135M Instruct") and lines[0].endswith(f"({precision}) on cpu")
    assert lines[-1].startswith("[4 tokens, ") and len(lines) <= 3, lines  # a note at most in between
    assert not any(("%|" in line or "it/s" in line or "Warning" in line) for line in lines), lines
    assert done.stdout.strip()
