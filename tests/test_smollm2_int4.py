"""The offline default model on the lean decoder from its own 4-bit GGUF: greedy Medusa equals plain."""

import pytest

from medusa_chat.engine.generator import GenerationConfig
from medusa_chat.loading import load_model
from medusa_chat.prompts import DEV_PROMPTS, read_prompts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def int4(smollm2_cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDUSA_CHAT_CACHE_DIR", str(smollm2_cache))
        mp.setenv("MEDUSA_CHAT_CALIBRATION", "off")
        return load_model("smollm2-135m-instruct", quant="4bit", tree="cpu_16", threads=2)


def test_greedy_medusa_equals_plain_on_the_4bit_decoder(int4):
    assert (int4.engine, int4.quant) == ("lean", "4bit")
    steps = tokens = 0
    for prompt in read_prompts(DEV_PROMPTS, 6):
        ids = int4.chat_ids([{"role": "user", "content": prompt.text}])
        answers = {}
        for medusa in (False, True):
            int4.generator.reset()
            config = GenerationConfig(max_new_tokens=96, medusa=medusa, auto_fallback=False)
            answers[medusa] = int4.generator.generate(ids, config)
        assert answers[True].token_ids == answers[False].token_ids, prompt.id
        steps += answers[True].steps
        tokens += answers[True].new_tokens
    assert tokens / steps > 1.3  # the heads' proposals were accepted, so trees were verified


def test_calibration_measures_step_costs_at_a_typical_cache_length(int4, monkeypatch):
    """Step costs depend on the cache length: a tree row adds a fixed cost, a plain step grows with the cache;
    calibrating on a bare short prompt overstated tree costs and kept plain decoding where a tree pays."""
    from medusa_chat import calibration, loading

    measured: list[int] = []

    def measure(generator, sizes, prompt_ids, **_kwargs):
        measured.append(len(prompt_ids))
        return dict.fromkeys(sizes, 1.0)

    monkeypatch.setattr("medusa_chat.tuning.measure_step_costs", measure)
    monkeypatch.setattr(calibration, "save", lambda _result: None)
    heads = int4.spec.heads_dir()
    loading._calibrate(int4.generator, int4.tokenizer, heads, {"test": True}, lambda _m: None)
    assert measured and 200 <= measured[0] <= 400


def test_a_conversation_is_the_same_with_medusa_on_or_off(int4):
    """Greedy, turn after turn, with the app's settings (prompt lookup, automatic fallback) against plain decoding:
    every answer is the same, so toggling Medusa mid-conversation never changes what the model says."""
    answers: dict[bool, list[list[int]]] = {}
    saved = int4.generator.tree.choices, int4.generator.tree_name
    int4.generator.set_tree([[0]], name="chain-1")  # the tree calibration picks on 2-core CPUs
    for medusa in (False, True):
        int4.generator.reset()
        messages: list[dict] = []
        answers[medusa] = []
        for prompt in read_prompts(DEV_PROMPTS, 4):
            messages.append({"role": "user", "content": prompt.text})
            config = GenerationConfig.for_chat(max_new_tokens=512, medusa=medusa)
            stats = int4.generator.generate(int4.chat_ids(messages), config)
            messages.append({"role": "assistant", "content": stats.text})
            answers[medusa].append(stats.token_ids)
    int4.generator.set_tree([list(c) for c in saved[0]], name=saved[1])
    assert answers[True] == answers[False]
