"""``medusa-chat train`` and ``medusa-chat eval-heads`` (registered in :mod:`medusa_chat.cli`)."""

from __future__ import annotations

import shlex
import sys
from enum import StrEnum
from pathlib import Path

import typer

from ..default_model import NAME as DEFAULT_MODEL
from .distill_data import DEFAULT_PROMPTS_DIR


class Targets(StrEnum):
    soft = "soft"
    hard = "hard"


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
    prompts: Path = typer.Option(DEFAULT_PROMPTS_DIR / "train.jsonl", help="Training prompts (JSONL, field prompt)."),
    dev_prompts: Path = typer.Option(DEFAULT_PROMPTS_DIR / "dev.jsonl", help="Prompts for the final accuracy check."),
    num_heads: int = typer.Option(4, min=1, max=10, help="Number of Medusa heads."),
    num_layers: int = typer.Option(1, min=1, help="Residual blocks per head."),
    shared: bool = typer.Option(True, "--shared/--per-head", help="Share the base lm_head or give each head its own."),
    targets: Targets = typer.Option(Targets.hard, help="soft: the base's distribution; hard: its greedy token."),
    full_vocab: bool = typer.Option(False, "--full-vocab", help="Softmax over all tokens, not the data's shortlist."),
    epochs: int = typer.Option(2, min=1),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW, warm-up then cosine)."),
    batch_size: int = typer.Option(256, min=1, help="Token positions per optimizer step."),
    max_tokens: int = typer.Option(160, min=1, help="Answer length cap for the self-distillation data."),
    num_prompts: int = typer.Option(800, min=1, help="How many training prompts the base model answers."),
    max_prompt_tokens: int = typer.Option(512, min=1, help="Skip prompts longer than this (chat template included)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out."),
    eval_limit: int = typer.Option(100, min=0, help="Dev prompts for the final accuracy check (0: skip)."),
    checkpoint_every: int = typer.Option(100, min=1, help="Checkpoint every N steps."),
    threads: int = typer.Option(0, min=0, help="CPU threads for torch (0: torch's default)."),
) -> None:
    """Train Medusa heads on a frozen base model by self-distillation."""
    from .train import TrainConfig, train

    _threads(threads)
    config = TrainConfig(
        model=model, prompts=str(prompts), dev_prompts=str(dev_prompts), out=str(out), num_heads=num_heads,
        num_layers=num_layers, shared_projection=shared, targets=targets.value, full_vocab=full_vocab, epochs=epochs,
        lr=lr, batch_size=batch_size, max_tokens=max_tokens, max_prompt_tokens=max_prompt_tokens,
        num_prompts=num_prompts, device=device, eval_limit=eval_limit, checkpoint_every=checkpoint_every,
        command=shlex.join(["medusa-chat", *sys.argv[1:]]),
    )
    try:
        train(config, resume=resume, log=typer.echo)
    except (FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"heads written to {out}")


def eval_heads_cmd(
    model: str = typer.Option(DEFAULT_MODEL, help="Base model: catalogue name or a local Hugging Face directory."),
    heads: Path = typer.Option(..., help="Medusa heads (directory or file)."),
    prompts: Path = typer.Option(DEFAULT_PROMPTS_DIR / "dev.jsonl", help="Prompts (JSONL, field prompt)."),
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
    from .evaluate import evaluate_heads

    _threads(threads)
    try:
        base, tokenizer = load_base(model, device=device, dtype=getattr(torch, dtype.value))
        medusa = load_heads(heads, base.config.hidden_size, base.config.vocab_size)
    except (FileNotFoundError, HeadsError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    accuracy = evaluate_heads(base, tokenizer, medusa, prompts, limit=limit, steps=steps)
    typer.echo(accuracy.to_json() if as_json else accuracy.table())
