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
