"""``medusa-chat train`` and ``medusa-chat eval-heads`` (registered in :mod:`medusa_chat.cli`)."""

from __future__ import annotations

import shlex
import sys
from enum import StrEnum
from pathlib import Path

import typer

from ..default_model import NAME as DEFAULT_MODEL
from ..prompts import DEV_PROMPTS, TRAIN_PROMPTS


class Targets(StrEnum):
    soft = "soft"
    hard = "hard"


class HeadKind(StrEnum):
    root = "root-conditioned"
    medusa1 = "medusa-1"


class Dtype(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"


def _threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def train_cmd(
    model: str = typer.Option(DEFAULT_MODEL, help="Base model: catalogue name or a local Hugging Face directory."),
    out: Path = typer.Option(..., "--out", help="Directory for the heads, checkpoints and model card."),
    prompts: Path = typer.Option(TRAIN_PROMPTS, help="Training prompts (JSONL or JSONL.gz, fields id and prompt)."),
    dev_prompts: Path = typer.Option(DEV_PROMPTS, help="Prompts for the final accuracy check."),
    data: Path | None = typer.Option(
        None, help="Distillation data directory (default: the shipped data for the default model)."
    ),
    num_heads: int = typer.Option(4, min=1, max=10, help="Number of Medusa heads."),
    num_layers: int = typer.Option(1, min=1, help="Residual blocks per head."),
    shared: bool = typer.Option(True, "--shared/--per-head", help="Share the base lm_head or give each head its own."),
    head_kind: HeadKind = typer.Option(
        HeadKind.root, help="root-conditioned: heads also read the root token (not exportable); medusa-1: classic."
    ),
    targets: Targets = typer.Option(Targets.hard, help="soft: the base's distribution; hard: its greedy token."),
    full_vocab: bool = typer.Option(False, "--full-vocab", help="Score the whole vocabulary (no draft vocabulary)."),
    draft_vocab: int = typer.Option(4096, min=0, help="Heads' vocabulary: the N most frequent answer tokens (0: all)."),
    epochs: int = typer.Option(1, min=1),
    lr: float = typer.Option(3e-3, help="Peak learning rate (AdamW, warm-up then cosine)."),
    batch_size: int = typer.Option(1024, min=1, help="Token positions per optimizer step."),
    max_tokens: int = typer.Option(192, min=1, help="Answer length cap, when answers must be generated."),
    num_prompts: int = typer.Option(0, min=0, help="Train on the first N answers (0: all; more: generate)."),
    max_prompt_tokens: int = typer.Option(512, min=1, help="Skip prompts longer than this (chat template included)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out."),
    eval_limit: int = typer.Option(100, min=0, help="Dev prompts for the final accuracy check (0: skip)."),
    checkpoint_every: int = typer.Option(200, min=1, help="Checkpoint every N steps."),
    threads: int = typer.Option(0, min=0, help="CPU threads for torch (0: torch's default)."),
) -> None:
    """Train Medusa heads on a frozen base model by self-distillation."""
    from .distill_data import DistillDataError
    from .train import TrainConfig, train

    _threads(threads)
    config = TrainConfig(
        model=model, prompts=str(prompts), dev_prompts=str(dev_prompts), out=str(out), data=str(data or ""),
        num_heads=num_heads, num_layers=num_layers, shared_projection=shared, head_kind=head_kind.value,
        targets=targets.value, full_vocab=full_vocab, draft_vocab=draft_vocab, epochs=epochs, lr=lr,
        batch_size=batch_size, max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens, num_prompts=num_prompts,
        device=device, eval_limit=eval_limit, checkpoint_every=checkpoint_every,
        command=shlex.join(["medusa-chat", *sys.argv[1:]]),
    )
    try:
        train(config, resume=resume, log=typer.echo)
    except (FileNotFoundError, ValueError, DistillDataError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"heads written to {out}")


def distill_cmd(
    model: str = typer.Option(DEFAULT_MODEL, help="Base model: catalogue name or a local Hugging Face directory."),
    data: Path | None = typer.Option(
        None, help="Data directory to create or extend (default: the shipped data for the default model)."
    ),
    prompts: Path = typer.Option(TRAIN_PROMPTS, help="Prompts (JSONL or JSONL.gz, fields id and prompt)."),
    num_prompts: int = typer.Option(8000, min=1, help="Answer the first N prompts (those answered already are kept)."),
    max_new_tokens: int = typer.Option(256, min=1, help="Answer length cap."),
    max_prompt_tokens: int = typer.Option(512, min=1, help="Skip prompts longer than this (chat template included)."),
    batch_size: int = typer.Option(64, min=1, help="Prompts decoded together."),
    shard_size: int = typer.Option(512, min=1, help="Prompts per shard (the unit kept when interrupted)."),
    dtype: Dtype = typer.Option(Dtype.bfloat16, help="Precision of the decoder that answers."),
    threads: int = typer.Option(0, min=0, help="CPU threads for torch (0: torch's default)."),
) -> None:
    """Generate (or extend) self-distillation data: the base model's greedy answers, batched.

    Ctrl-C (or SIGTERM) keeps every answer finished so far; run the same command again to go on.
    """
    import signal

    import torch
    from tqdm import tqdm

    from ..engine.decoder import TransformersDecoder
    from ..engine.lean import UnsupportedModel, from_state_dict
    from ..prompts import read_prompts
    from .base import base_checksum, load_base
    from .distill_data import DistillData, DistillDataError, GenerationSettings, Progress, eos_token_ids
    from .features import save_shard_hidden, shard_hidden_path

    _threads(threads)
    from .distill_data import default_data_dir

    directory = data or default_data_dir(model)
    try:
        chosen = read_prompts(prompts, num_prompts)
        store = DistillData(directory)
        base, tokenizer = load_base(model, dtype=torch.float32)
        try:
            decoder = from_state_dict(base.config, base.state_dict(), getattr(torch, dtype.value))
        except UnsupportedModel as exc:
            typer.echo(f"note: {exc}; answering with transformers", err=True)
            decoder = TransformersDecoder(base.to(getattr(torch, dtype.value)))
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        bar = tqdm(total=len(chosen), desc="answering", unit="prompt", smoothing=0.05)

        def report(p: Progress) -> None:
            bar.total = p.prompts_total
            bar.n = p.prompts_done
            bar.set_postfix_str(f"{p.tokens} tokens, {p.tokens_per_second:.0f} tok/s")
            bar.refresh()

        settings = GenerationSettings(max_new_tokens, max_prompt_tokens, dtype.value, engine=decoder.engine)
        answered = store.extend(
            decoder, tokenizer, chosen, eos_token_ids(base, tokenizer), model_name=model,
            base_checksum=base_checksum(model), prompt_set=prompts.name, settings=settings,
            batch_size=batch_size, shard_size=shard_size, progress=report,
            hidden_cache=lambda shard, hidden: save_shard_hidden(
                shard_hidden_path(shard["sha256"], settings.engine, settings.dtype), hidden
            ),
        )
        bar.close()
    except KeyboardInterrupt:
        counts = store.manifest.counts() if store.manifest else {}
        typer.echo(f"\ninterrupted: {directory} keeps {counts}; run the same command to go on", err=True)
        raise typer.Exit(130) from None
    except (FileNotFoundError, ValueError, DistillDataError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    counts = store.manifest.counts() if store.manifest else {}
    typer.echo(f"answered {answered} new prompts; {directory} holds {counts}")


def eval_heads_cmd(
    model: str = typer.Option(DEFAULT_MODEL, help="Base model: catalogue name or a local Hugging Face directory."),
    heads: Path = typer.Option(..., help="Medusa heads (directory or file)."),
    prompts: Path = typer.Option(DEV_PROMPTS, help="Prompts (JSONL, field prompt)."),
    limit: int = typer.Option(100, min=1, help="How many prompts."),
    steps: int = typer.Option(20, min=1, help="Greedy steps scored per prompt."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (per-head top-1/top-5 and top-10 rank hit rates)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    dtype: Dtype = typer.Option(Dtype.float32, help="Base model dtype."),
    threads: int = typer.Option(0, min=0, help="CPU threads for torch (0: torch's default)."),
) -> None:
    """Per-head top-1/top-5 accuracy against the base model's own greedy continuation."""
    import torch

    from ..engine.heads_io import HeadsError, load_heads
    from .base import load_base
    from .distill_data import eos_token_ids
    from .evaluate import evaluate_heads
    from .train import fast_decoder

    _threads(threads)
    try:
        base, tokenizer = load_base(model, device=device, dtype=getattr(torch, dtype.value))
        medusa = load_heads(heads, base.config.hidden_size, base.config.vocab_size)
        accuracy = evaluate_heads(
            fast_decoder(base, getattr(torch, dtype.value)), tokenizer, medusa, prompts,
            eos_token_ids(base, tokenizer), limit=limit, steps=steps,
        )
    except (FileNotFoundError, HeadsError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(accuracy.to_json() if as_json else accuracy.table())
