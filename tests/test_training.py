"""Self-distillation, head training and evaluation on a tiny random Llama (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from medusa_chat.engine.decoder import TransformersDecoder
from medusa_chat.engine.heads_io import load_heads
from medusa_chat.prompts import Prompt, read_prompts
from medusa_chat.training.base import load_base
from medusa_chat.training.cli import eval_heads_cmd
from medusa_chat.training.distill_data import (
    DistillData,
    DistillDataError,
    GenerationSettings,
    encode_prompt,
    eos_token_ids,
)
from medusa_chat.training.evaluate import evaluate_heads
from medusa_chat.training.train import STATE_FILE, TrainConfig, train

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPTS = [
    "Name three colours.",
    "What is two plus two?",
    "Write a haiku about the sea.",
    "Say hello.",
    "List the days of the week.",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama (hidden 64, 2 layers) with a byte-level tokenizer and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    directory = tmp_path_factory.mktemp("tiny-llama")
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, initializer_range=0.2,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.fixture
def prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDUSA_CHAT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    return path


def config_for(model: Path, prompts: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        model=str(model), prompts=str(prompts), dev_prompts=str(prompts), out=str(out), num_heads=3,
        data=str(out.parent / "data"), epochs=30, lr=3e-3, batch_size=32, max_tokens=24, num_prompts=len(PROMPTS),
        gen_batch_size=4, eval_limit=3, eval_steps=6, checkpoint_every=5, draft_vocab=64,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def _extend(store: DistillData, base, tokenizer, prompts: list[Prompt], **settings) -> int:
    return store.extend(
        TransformersDecoder(base), tokenizer, prompts, eos_token_ids(base, tokenizer), model_name="tiny",
        base_checksum="c0ffee", prompt_set="prompts.jsonl", settings=GenerationSettings(**settings), batch_size=3,
        shard_size=4,
    )


def test_distillation_data_extends_without_touching_earlier_answers(tiny_model: Path, prompts: Path) -> None:
    base, tokenizer = load_base(str(tiny_model))
    texts = read_prompts(prompts)
    store = DistillData(prompts.parent / "data")
    assert _extend(store, base, tokenizer, texts[:4], max_new_tokens=10) == 4
    first = (store.directory / "answers-00000.npz").read_bytes()
    answers = store.answers()
    assert len(answers) == 4 and all(0 < len(a) <= 10 for a in answers.values())

    again = DistillData(store.directory)  # a later run: only new prompts are answered
    assert _extend(again, base, tokenizer, texts, max_new_tokens=10) == 2
    assert (store.directory / "answers-00000.npz").read_bytes() == first
    assert again.manifest.counts()["prompts"] == 6 and len(again.manifest.shards) == 2
    assert {k: v for k, v in again.answers().items() if k in answers} == answers
    (_shard, sequences), _ = again.shard_sequences(tokenizer, texts)
    prompt_ids = encode_prompt(tokenizer, texts[0].text)
    assert sequences[0].ids == prompt_ids + answers[texts[0].id] and sequences[0].prompt_len == len(prompt_ids)

    with pytest.raises(DistillDataError, match="generation settings"):
        _extend(DistillData(store.directory), base, tokenizer, texts, max_new_tokens=8)
    (store.directory / "answers-00001.npz").write_bytes(b"tampered")
    with pytest.raises(DistillDataError, match="modified"):
        DistillData(store.directory).answers()


@pytest.mark.parametrize("kind", ["root-conditioned", "medusa-1"])
def test_train_lowers_loss_checkpoints_and_resumes(tiny_model: Path, prompts: Path, tmp_path: Path, kind) -> None:
    out = tmp_path / "heads"
    config = config_for(tiny_model, prompts, out, targets="hard", head_kind=kind)
    first = train(config, stop_after=12, log=lambda _: None)
    assert first.step == 12 and not first.complete
    assert (out / STATE_FILE).is_file() and not (out / "README.md").exists()
    heads = load_heads(out, hidden_size=64)
    assert heads.num_heads == 3 and heads.shared_projection and heads.kind == kind
    assert heads.draft_vocab is not None and len(heads.draft_vocab) == 64
    assert json.loads((out / "config.json").read_text())["step"] == 12
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 12

    with pytest.raises(ValueError, match="lr"):
        train(config_for(tiny_model, prompts, out, targets="hard", head_kind=kind, lr=1e-2), resume=True,
              log=lambda _: None)

    second = train(config, resume=True, log=lambda _: None)
    assert second.complete and second.step == second.total_steps
    assert second.steps_this_call == second.total_steps - 12
    losses = first.losses + second.losses
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert not (out / STATE_FILE).exists()
    card = (out / "README.md").read_text()
    assert "| 0 | 2 |" in card and "**hard**" in card and kind in card
    saved = json.loads((out / "config.json").read_text())
    assert saved["step"] == second.total_steps and set(saved["dev_accuracy"]["heads"]) == {"head0", "head1", "head2"}
    assert saved["head_kind"] == kind
    assert load_heads(out, 64).state_dict().keys() == second.heads.state_dict().keys()


def test_soft_targets_train(tiny_model: Path, prompts: Path, tmp_path: Path) -> None:
    result = train(config_for(tiny_model, prompts, tmp_path / "h", targets="soft", epochs=10, eval_limit=0),
                   log=lambda _: None)
    assert sum(result.losses[-3:]) < sum(result.losses[:3])


def test_resume_without_checkpoint_fails(tiny_model: Path, prompts: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(config_for(tiny_model, prompts, tmp_path / "none"), resume=True, log=lambda _: None)


def test_eval_heads_accuracy(tiny_model: Path, prompts: Path, tmp_path: Path) -> None:
    result = train(config_for(tiny_model, prompts, tmp_path / "h", epochs=3, eval_limit=0), log=lambda _: None)
    base, tokenizer = load_base(str(tiny_model))
    accuracy = evaluate_heads(
        TransformersDecoder(base), tokenizer, result.heads, prompts, eos_token_ids(base, tokenizer), limit=4, steps=5
    )
    data = accuracy.to_dict()["heads"]
    assert list(data) == ["head0", "head1", "head2"]
    for head in data.values():
        assert 0.0 <= head["top1"] <= head["top5"] <= sum(head["rank_hits"]) <= 1.0 + 1e-9
        assert len(head["rank_hits"]) == 10 and head["samples"] > 0

    app = typer.Typer()
    app.command("eval-heads")(eval_heads_cmd)
    app.command("noop")(lambda: None)  # a second command keeps "eval-heads" a subcommand
    args = ["eval-heads", "--model", str(tiny_model), "--heads", str(tmp_path / "h"), "--prompts", str(prompts)]
    cli = CliRunner().invoke(app, [*args, "--limit", "4", "--steps", "5", "--json", "--dtype", "float32"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["heads"]["head0"]["top1"] == pytest.approx(data["head0"]["top1"])
    table = CliRunner().invoke(app, [*args, "--limit", "2"])
    assert table.exit_code == 0 and "top-1" in table.stdout


def test_the_stored_training_config_carries_no_absolute_paths():
    from medusa_chat.prompts import DEV_PROMPTS, TRAIN_PROMPTS
    from medusa_chat.training.train import TrainConfig, recorded

    config = TrainConfig(prompts=str(TRAIN_PROMPTS), dev_prompts=str(DEV_PROMPTS), out="/somewhere/else/heads",
                         command="medusa-chat train --out /somewhere/else/heads --epochs 2")
    stored = recorded(config)
    assert stored["prompts"] == "medusa_chat/data/prompts/train.jsonl.gz"
    assert stored["dev_prompts"] == "medusa_chat/data/prompts/dev.jsonl"
    assert stored["out"] == "heads" and stored["data"] == ""
    assert stored["command"] == "medusa-chat train --out heads --epochs 2"
    assert config.out == "/somewhere/else/heads"  # the run itself (and resume) keeps the real paths
