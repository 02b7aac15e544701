"""Medusa-1 head training on a frozen base (self-distillation, spec §5).

Pipeline: the base answers the training prompts greedily (:mod:`.distill_data`, cached), the
frozen base runs once over those sequences (:mod:`.features`, cached), then only the heads
train on the cached hidden states: head i at row t predicts token t+2+i, loss weighted 0.8**i.
Targets are either the base's own distribution at the target position (``soft``: cross-entropy
to its renormalised top-20, i.e. KL up to a constant) or the greedy token itself (``hard``).
By default the softmax runs over a shortlist (every token of the data or of the base's top-5
anywhere in it): a few times less vocab-projection work on a CPU; ``full_vocab`` uses all tokens.
The output directory always holds the latest heads (project format); ``training_state.pt``
next to them (optimizer, step) lets ``resume`` continue an interrupted run, and is removed when
the run completes, when the model card is written.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..engine.heads import MedusaHeads
from ..engine.heads_io import save_heads
from .base import load_base
from .distill_data import DEFAULT_PROMPTS_DIR, distill_sequences
from .evaluate import HeadsAccuracy, evaluate_heads
from .features import Features, load_or_extract

if TYPE_CHECKING:
    import torch

STATE_FILE = "training_state.pt"
DECAY = 0.8
WARMUP = 0.03
SHORTLIST_TOP_K = 5


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in checkpoints and the model card)."""

    model: str = "smollm2-135m-instruct"
    prompts: str = str(DEFAULT_PROMPTS_DIR / "train.jsonl")
    dev_prompts: str = str(DEFAULT_PROMPTS_DIR / "dev.jsonl")
    out: str = "medusa-heads"
    num_heads: int = 4
    num_layers: int = 1
    shared_projection: bool = True
    targets: str = "hard"
    full_vocab: bool = False
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 256
    max_tokens: int = 160
    max_prompt_tokens: int = 512
    num_prompts: int = 800
    gen_batch_size: int = 16
    device: str = "cpu"
    eval_limit: int = 100
    eval_steps: int = 20
    checkpoint_every: int = 100
    seed: int = 0
    command: str = ""

    # Settings that must match for --resume to continue a run.
    RESUME_KEYS = ("model", "prompts", "num_heads", "num_layers", "shared_projection", "targets", "full_vocab",
                   "epochs", "lr", "batch_size", "max_tokens", "max_prompt_tokens", "num_prompts", "seed")


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 3 % of steps, then cosine decay to zero."""
    warmup = max(1, int(total * WARMUP))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Vocab:
    """The softmax's vocabulary: ``ids`` (sorted token ids) and ``index`` (token id -> column, -1 if absent)."""

    ids: torch.Tensor
    index: torch.Tensor

    @classmethod
    def build(cls, feats: Features, vocab_size: int, full: bool) -> Vocab:
        """All tokens, or the shortlist of tokens in the data or in the base's top-5 anywhere in it."""
        import torch

        if full:
            ids = torch.arange(vocab_size, device=feats.tokens.device)
        else:
            top = feats.teacher_ids[:, :SHORTLIST_TOP_K].flatten().long()
            ids = torch.cat([feats.tokens[feats.tokens >= 0], top]).unique()
        index = torch.full((vocab_size,), -1, dtype=torch.long, device=ids.device)
        index[ids] = torch.arange(len(ids), device=ids.device)
        return cls(ids, index)


def head_losses(
    heads: MedusaHeads, projection: torch.Tensor, vocab: Vocab, feats: Features, rows: torch.Tensor, soft: bool
) -> tuple[torch.Tensor, list[float]]:
    """Weighted loss for a batch of rows, plus each head's top-1 accuracy against the greedy token.

    ``projection`` holds the base lm_head rows of ``vocab`` (used when the heads share it).
    """
    import torch
    import torch.nn.functional as F

    k = heads.num_heads
    x = feats.hidden[rows].float()
    # [K, B, |vocab|]
    logits = heads.hidden(x) @ projection.T if heads.shared_projection else heads(x)[..., vocab.ids]
    logp = torch.log_softmax(logits, dim=-1)
    total = torch.zeros((), device=x.device)
    accs = []
    for i in range(k):
        valid = feats.remaining[rows] > 2 + i
        if not valid.any():
            accs.append(float("nan"))
            continue
        lp = logp[i][valid]
        target = vocab.index[feats.tokens[rows[valid], 2 + i]]
        if soft:
            teacher = rows[valid] + 1 + i
            columns = vocab.index[feats.teacher_ids[teacher].long()]  # -1: outside the shortlist, dropped
            p = torch.softmax(feats.teacher_logp[teacher].float().masked_fill(columns < 0, -torch.inf), dim=-1)
            loss = -(p * lp.gather(1, columns.clamp(min=0))).sum(-1).mean()
        else:
            loss = F.nll_loss(lp, target)
        total = total + DECAY**i * loss
        accs.append((lp.argmax(-1) == target).float().mean().item())
    return total, accs


@dataclass
class TrainResult:
    """What a call to :func:`train` did."""

    heads: MedusaHeads
    step: int  # optimizer steps done in the run so far (all calls)
    total_steps: int
    steps_this_call: int
    losses: list[float]  # weighted loss of each step of this call
    data_cached: bool  # the distillation data came from the cache
    accuracy: HeadsAccuracy | None  # dev accuracy, measured when the run completes

    @property
    def complete(self) -> bool:
        return self.step >= self.total_steps


def train(
    config: TrainConfig, resume: bool = False, stop_after: int | None = None, log: Callable[[str], None] = print
) -> TrainResult:
    """Run (or ``resume``) a training run, stopping after ``stop_after`` steps of this call if given.

    A stopped run leaves its checkpoint (heads + ``training_state.pt``) for a later ``resume``;
    a completed one is evaluated on the dev prompts and gets its model card.
    """
    import torch
    from tqdm import tqdm

    out = Path(config.out)
    state_path = out / STATE_FILE
    state = None
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {state_path} does not exist")
        state = torch.load(state_path, weights_only=True)
        saved = json.loads(state["config"])
        changed = [k for k in TrainConfig.RESUME_KEYS if saved.get(k) != getattr(config, k)]
        if changed:
            raise ValueError(f"cannot resume: settings differ from the interrupted run ({', '.join(changed)})")

    started = time.monotonic()
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    base, tokenizer = load_base(config.model, device=config.device, dtype=torch.bfloat16)
    hidden_size, vocab_size = base.config.hidden_size, base.config.vocab_size
    if config.num_heads + 2 > 12:
        raise ValueError("at most 10 heads")

    log(f"self-distillation data: {config.num_prompts} prompts, up to {config.max_tokens} tokens each")
    with tqdm(desc="generating answers", unit="prompt") as bar:
        sequences, data_file, data_cached = distill_sequences(
            base, tokenizer, _model_id(config.model), config.prompts, count=config.num_prompts,
            max_tokens=config.max_tokens, batch_size=config.gen_batch_size, max_prompt_tokens=config.max_prompt_tokens,
            progress=lambda done, total: _advance(bar, done, total),
        )
    log(f"{'reused' if data_cached else 'generated'} {len(sequences)} sequences ({data_file})")
    with tqdm(desc="base hidden states", unit="seq") as bar:
        feats, cached = load_or_extract(base, sequences, data_file.parent, lambda d, n: _advance(bar, d, n))
    feats = Features(**{k: v.to(device) for k, v in feats.as_dict().items()})
    log(f"{'reused' if cached else 'computed'} features: {len(feats)} positions")

    heads = MedusaHeads(hidden_size, vocab_size, config.num_heads, config.num_layers, config.shared_projection)
    lm_head = base.get_output_embeddings()
    vocab = Vocab.build(feats, vocab_size, config.full_vocab)
    projection = lm_head.weight.detach()[vocab.ids].float()
    log(f"softmax over {len(vocab.ids)} of {vocab_size} tokens")
    heads.init_projections_from(lm_head)
    heads.float().to(device)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.lr, weight_decay=0.0)
    rows_all = torch.nonzero(feats.remaining > 2).squeeze(1)  # head 0 has a target
    steps_per_epoch = math.ceil(len(rows_all) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    step = first_step = 0
    if state is not None:
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        step = first_step = int(state["step"])
        log(f"resuming at step {step}/{total_steps}")

    soft = config.targets == "soft"
    bar = tqdm(total=total_steps, initial=step, desc="training heads", unit="step")
    heads.train()
    losses: list[float] = []
    last_step = total_steps if stop_after is None else min(total_steps, step + stop_after)
    while step < last_step:
        epoch, index = divmod(step, steps_per_epoch)
        order = torch.randperm(len(rows_all), generator=torch.Generator().manual_seed(config.seed + epoch))
        rows = rows_all[order[index * config.batch_size : (index + 1) * config.batch_size].to(device)]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, config.lr)
        loss, accs = head_losses(heads, projection, vocab, feats, rows, soft)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", acc=" ".join(f"{a:.2f}" for a in accs))
        if step % config.checkpoint_every == 0 or step == last_step:
            _checkpoint(heads, optimizer, step, config)
    bar.close()
    heads.eval()
    result = TrainResult(heads, step, total_steps, step - first_step, losses, data_cached, None)
    if not result.complete:
        log(f"stopped at step {step}/{total_steps}; continue with --resume")
        return result
    train_seconds = time.monotonic() - started

    accuracy = None
    if config.eval_limit > 0:
        with tqdm(desc="dev accuracy", unit="prompt") as ebar:
            accuracy = evaluate_heads(
                base, tokenizer, heads, config.dev_prompts, limit=config.eval_limit, steps=config.eval_steps,
                progress=lambda d, n: _advance(ebar, d, n),
            )
        log(accuracy.table())
    extra = {"training": _public(config), "step": step, "dev_accuracy": accuracy.to_dict() if accuracy else None}
    save_heads(heads, out, config.model, extra=extra)
    (out / "README.md").write_text(
        model_card(config, accuracy, len(sequences), len(feats), train_seconds, data_file.name)
    )
    state_path.unlink(missing_ok=True)
    result.accuracy = accuracy
    return result


def _checkpoint(heads: MedusaHeads, optimizer: torch.optim.Optimizer, step: int, config: TrainConfig) -> None:
    """Latest heads in project format + the optimizer state, each written atomically."""
    import torch

    out = Path(config.out)
    save_heads(heads, out, config.model, extra={"training": _public(config), "step": step})
    tmp = out / (STATE_FILE + ".tmp")
    state = {"heads": heads.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "config": json.dumps(_public(config))}
    torch.save(state, tmp)
    tmp.replace(out / STATE_FILE)


def _public(config: TrainConfig) -> dict:
    return asdict(config)


def _model_id(model: str) -> str:
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _advance(bar, done: int, total: int) -> None:
    bar.total = total
    bar.n = done
    bar.refresh()


def model_card(
    config: TrainConfig, accuracy: HeadsAccuracy | None, sequences: int, positions: int, seconds: float, data: str
) -> str:
    """The README.md written next to trained heads."""
    projection = "shared with the base lm_head (heads hold only their residual blocks)" if config.shared_projection \
        else "one vocab projection per head, initialised from the base lm_head"
    lines = [
        f"# Medusa heads for {config.model}",
        "",
        f"{config.num_heads} Medusa-1 heads, {config.num_layers} residual block(s) each;",
        f"vocab projection {projection}.",
        "Head i reads the base model's final-norm hidden state at position t and predicts token t+2+i.",
        "Trained with the base model frozen (only the heads train), in fp32, by medusa-chat's own trainer.",
        "",
        "## Command",
        "",
        "```",
        config.command or "(called from Python)",
        "```",
        "",
        "## Data",
        "",
        f"Self-distillation: the base model answered the first {config.num_prompts} prompts of "
        f"`{Path(config.prompts).name}` (prompts over {config.max_prompt_tokens} tokens skipped; {sequences} kept)",
        "with its own chat template, **greedy** decoding (bf16 forward), at most "
        f"{config.max_tokens} new tokens. Greedy because the heads must predict the model's own greedy",
        "continuation: that is what the app's verifier accepts. Training rows: the last prompt position and every",
        f"answer position ({positions} in all). Answer cache: `{data}` under the cache directory.",
        "",
        "The prompts come from medusa-chat's prompt set (English instructions without responses; the responses are",
        "the base model's own). Sources and licences: databricks-dolly-15k (CC BY-SA 3.0, Copyright (2023)",
        "Databricks, Inc., includes Wikipedia material under CC BY-SA 3.0), GSM8K train split (MIT, OpenAI),",
        "GPTeacher roleplay and codegen (MIT, Teknium; GPT-4-generated instructions), Open Assistant prompt-lottery",
        "prompts (Apache-2.0, LAION / Open Assistant contributors), MBPP non-test tasks (CC BY 4.0, Austin et al.),",
        "Awesome ChatGPT Prompts (CC0 1.0), Self-Instruct seed tasks (Apache-2.0, Wang et al.), Vicuna-bench",
        "questions (Apache-2.0, LMSYS). No MT-Bench question is in the data. The prompts themselves are not",
        "redistributed here: the heads are weights trained on the base model's answers to them.",
        "",
        "## Training",
        "",
        f"- targets: **{config.targets}** "
        + ("(cross-entropy to the base's own top-20 distribution at the target position, renormalised)"
           if config.targets == "soft" else "(the base's greedy token)"),
        "- softmax over "
        + ("the full vocabulary" if config.full_vocab else "the tokens of the data or of the base's top-5 anywhere"),
        f"- loss: sum over heads of 0.8**i x loss of head i; AdamW, lr {config.lr}, 3 % warm-up then cosine;"
        f" {config.epochs} epoch(s) of batches of {config.batch_size} positions",
        f"- wall time of the run: {seconds / 60:.1f} min on {config.device} (incl. answer generation if not cached)",
        "",
        "## Accuracy on the dev prompts",
        "",
    ]
    if accuracy is None:
        lines.append("Not measured.")
    else:
        lines += [
            f"First {config.eval_limit} prompts of `{Path(config.dev_prompts).name}`, {config.eval_steps} greedy steps "
            "each, bf16 base forward; head i at step s is scored against the base's greedy token at step s+i+1:",
            "",
            "| head | tokens ahead | top-1 | top-5 |",
            "|---|---|---|---|",
        ]
        for i, (t1, t5) in enumerate(zip(accuracy.top(1), accuracy.top(5), strict=True)):
            lines.append(f"| {i} | {i + 2} | {t1:.3f} | {t5:.3f} |")
    return "\n".join(lines) + "\n"
