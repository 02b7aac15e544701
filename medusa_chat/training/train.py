"""Medusa head training on a frozen base (self-distillation, spec §5).

Pipeline: the base model's greedy answers come from a distillation data directory
(:mod:`.distill_data`; the default model's ships with the project, and is extended here only when
more prompts are asked for than it holds), the base's hidden states at every answer position come
from the per-shard cache or one batched forward (:mod:`.features`), then only the heads train:
head i at row t predicts token t+2+i, loss weighted 0.8**i. Root-conditioned heads also read the
embedding of token t+1. Targets are the greedy token (``hard``) or the base's own distribution at
the target position over the heads' vocabulary (``soft``: KL up to a constant). The heads' vocabulary
is the draft vocabulary (the most frequent answer tokens), stored with the heads and used at
inference too, or the full vocabulary.
The output directory always holds the latest heads; ``training_state.pt`` next to them lets
``resume`` continue an interrupted run, and is removed when the run completes and the card is written.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine.heads import MedusaHeads
from ..engine.heads_io import save_heads
from ..prompts import DEV_PROMPTS, TRAIN_PROMPTS, read_prompts
from .base import load_base
from .distill_data import DistillData, GenerationSettings, Sequence, eos_token_ids
from .evaluate import HeadsAccuracy, evaluate_heads
from .features import (
    PAD,
    Features,
    answer_rows,
    build_features,
    extract_hidden,
    load_shard_hidden,
    save_shard_hidden,
    shard_hidden_path,
)

STATE_FILE = "training_state.pt"
DECAY = 0.8
WARMUP = 0.03
HEAD_KINDS = ("medusa-1", "root-conditioned")


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in checkpoints and the model card)."""

    model: str = "smollm2-135m-instruct"
    prompts: str = str(TRAIN_PROMPTS)
    dev_prompts: str = str(DEV_PROMPTS)
    out: str = "medusa-heads"
    data: str = ""  # distillation data directory ("" = the shipped one for the default model)
    num_heads: int = 4
    num_layers: int = 1
    shared_projection: bool = True
    head_kind: str = "root-conditioned"
    targets: str = "hard"
    full_vocab: bool = False
    draft_vocab: int = 4096  # heads' vocabulary: the most frequent answer tokens (0 or full_vocab: all)
    epochs: int = 1
    lr: float = 3e-3
    batch_size: int = 1024
    max_tokens: int = 192  # answer cap, when answers must be generated
    max_prompt_tokens: int = 512
    num_prompts: int = 0  # answers to train on (0: all in the data)
    gen_batch_size: int = 96
    device: str = "cpu"
    eval_limit: int = 100
    eval_steps: int = 20
    checkpoint_every: int = 200
    seed: int = 0
    command: str = ""

    # Settings that must match for --resume to continue a run.
    RESUME_KEYS = ("model", "prompts", "data", "num_heads", "num_layers", "shared_projection", "head_kind", "targets",
                   "full_vocab", "draft_vocab", "epochs", "lr", "batch_size", "num_prompts", "seed")


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 3 % of steps, then cosine decay to zero."""
    warmup = max(1, int(total * WARMUP))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Vocab:
    """The heads' vocabulary: ``ids`` (token ids, most frequent first) and ``index`` (token id -> column, -1)."""

    ids: torch.Tensor
    index: torch.Tensor

    @classmethod
    def build(cls, feats: Features, vocab_size: int, size: int) -> Vocab:
        """The ``size`` most frequent target tokens of the data (all tokens when ``size`` is 0)."""
        if size <= 0 or size >= vocab_size:
            ids = torch.arange(vocab_size)
        else:
            targets = feats.ahead[:, 1:]
            counts = torch.bincount(targets[targets >= 0].flatten(), minlength=vocab_size)
            ids = counts.argsort(descending=True, stable=True)[:size]
        index = torch.full((vocab_size,), -1, dtype=torch.long)
        index[ids] = torch.arange(len(ids))
        return cls(ids, index)

    @property
    def full(self) -> bool:
        return len(self.ids) == len(self.index)

    def coverage(self, feats: Features) -> float:
        """Fraction of head-0 targets inside the vocabulary."""
        targets = feats.ahead[:, 1]
        targets = targets[targets >= 0]
        return float((self.index[targets] >= 0).float().mean()) if len(targets) else 1.0


def head_losses(
    heads: MedusaHeads,
    projection: torch.Tensor,
    embed: torch.Tensor,
    vocab: Vocab,
    feats: Features,
    rows: torch.Tensor,
    soft: bool,
) -> tuple[torch.Tensor, list[float]]:
    """Weighted loss for a batch of rows, plus each head's top-1 accuracy against the greedy token.

    ``projection`` holds the base lm_head rows of ``vocab``; ``embed`` the base input embeddings.
    """
    x = feats.hidden[rows].float()
    roots = feats.ahead[rows, 0].clamp(min=0)
    root = embed[roots] if heads.root_conditioned else None
    if heads.shared_projection:
        logits = heads.hidden(x, root=root) @ projection.T  # [K, B, |vocab|]
    else:
        logits = heads(x, root=root)[..., vocab.ids]
    logp = torch.log_softmax(logits, dim=-1)
    total = torch.zeros(())
    accs = []
    for i in range(heads.num_heads):
        target = feats.ahead[rows, 1 + i]
        column = vocab.index[target.clamp(min=0)]
        valid = (target != PAD) & (column >= 0)
        if not valid.any():
            accs.append(float("nan"))
            continue
        lp = logp[i][valid]
        if soft:  # the base's distribution where it predicts the target: the hidden state one row before it
            teacher_rows = rows[valid] + 1 + i
            with torch.no_grad():
                p = torch.softmax(feats.hidden[teacher_rows].float() @ projection.T, dim=-1)
            loss = -(p * lp).sum(-1).mean()
        else:
            loss = F.nll_loss(lp, column[valid])
        total = total + DECAY**i * loss
        accs.append((lp.argmax(-1) == column[valid]).float().mean().item())
    return total, accs


@dataclass
class TrainResult:
    """What a call to :func:`train` did."""

    heads: MedusaHeads
    step: int  # optimizer steps done in the run so far (all calls)
    total_steps: int
    steps_this_call: int
    losses: list[float]  # weighted loss of each step of this call
    rows: int  # training positions
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
    from tqdm import tqdm

    if config.head_kind not in HEAD_KINDS:
        raise ValueError(f"head kind must be one of {', '.join(HEAD_KINDS)}, not {config.head_kind!r}")
    if config.head_kind == "root-conditioned" and not config.shared_projection and config.draft_vocab:
        raise ValueError("a draft vocabulary needs heads that share the base lm_head (--shared)")
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
    base, tokenizer = load_base(config.model, device=config.device, dtype=torch.float32)
    decoder = fast_decoder(base)
    feats = training_features(config, base, tokenizer, decoder, log)
    hidden_size, vocab_size = base.config.hidden_size, base.config.vocab_size
    size = 0 if config.full_vocab or not config.shared_projection else config.draft_vocab
    vocab = Vocab.build(feats, vocab_size, size)
    log(f"{len(feats)} positions; heads' vocabulary: {len(vocab.ids)} of {vocab_size} tokens "
        f"({vocab.coverage(feats):.1%} of head-0 targets)")

    heads = MedusaHeads(
        hidden_size, vocab_size, config.num_heads, config.num_layers, config.shared_projection,
        root_conditioned=config.head_kind == "root-conditioned", draft_vocab=None if vocab.full else vocab.ids,
    )
    lm_head = base.get_output_embeddings()
    heads.init_projections_from(lm_head)
    projection = lm_head.weight.detach()[vocab.ids].float()
    embed = base.get_input_embeddings().weight.detach().float()
    optimizer = torch.optim.AdamW(heads.parameters(), lr=config.lr, weight_decay=0.0)
    rows_all = torch.nonzero(feats.ahead[:, 1] != PAD).squeeze(1)  # head 0 has a target
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
        rows = rows_all[order[index * config.batch_size : (index + 1) * config.batch_size]]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, config.lr)
        loss, accs = head_losses(heads, projection, embed, vocab, feats, rows, soft)
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
    result = TrainResult(heads, step, total_steps, step - first_step, losses, len(feats), None)
    if not result.complete:
        log(f"stopped at step {step}/{total_steps}; continue with --resume")
        return result
    train_seconds = time.monotonic() - started

    accuracy = None
    if config.eval_limit > 0:
        with tqdm(desc="dev accuracy", unit="prompt") as ebar:
            accuracy = evaluate_heads(
                decoder, tokenizer, heads, config.dev_prompts, eos_token_ids(base, tokenizer),
                limit=config.eval_limit, steps=config.eval_steps, progress=lambda d, n: _advance(ebar, d, n),
            )
        log(accuracy.table())
    extra = {"training": recorded(config), "step": step, "dev_accuracy": accuracy.to_dict() if accuracy else None}
    save_heads(heads, out, config.model, extra=extra)
    (out / "README.md").write_text(model_card(config, accuracy, len(feats), train_seconds, vocab.coverage(feats)))
    state_path.unlink(missing_ok=True)
    result.accuracy = accuracy
    return result


def fast_decoder(base, dtype: torch.dtype = torch.bfloat16):
    """The lean decoder in ``dtype`` when it takes the model (CPU), else transformers."""
    from ..engine.decoder import TransformersDecoder
    from ..engine.lean import UnsupportedModel, from_state_dict

    if base.device.type == "cpu":
        try:
            return from_state_dict(base.config, base.state_dict(), dtype)
        except UnsupportedModel:
            pass
    return TransformersDecoder(base)


def data_dir_for(config: TrainConfig) -> Path:
    from .distill_data import default_data_dir

    return Path(config.data) if config.data else default_data_dir(config.model)


def training_features(config: TrainConfig, base, tokenizer, decoder, log: Callable[[str], None]) -> Features:
    """The distillation data as training rows: answers (generated if too few), hidden states (cached per shard)."""
    from tqdm import tqdm

    from .base import base_checksum

    store = DistillData(data_dir_for(config))
    prompts = read_prompts(config.prompts)
    held = store.manifest.counts()["prompts"] if store.manifest else 0
    if config.num_prompts > held or held == 0:
        want = config.num_prompts or len(prompts)
        log(f"{store.directory} holds {held} answers: answering up to {want} prompts")
        settings = GenerationSettings(config.max_tokens, config.max_prompt_tokens, _dtype_name(decoder.dtype),
                                      engine=decoder.engine)
        store.extend(decoder, tokenizer, prompts[:want], eos_token_ids(base, tokenizer), model_name=config.model,
                     base_checksum=base_checksum(config.model), prompt_set=Path(config.prompts).name,
                     settings=settings, batch_size=config.gen_batch_size)
    sequences: list[Sequence] = []
    hidden: list[torch.Tensor] = []
    shards = store.shard_sequences(tokenizer, prompts)
    dtype = _dtype_name(decoder.dtype)
    with tqdm(total=sum(len(s) for _, s in shards), desc="base hidden states", unit="seq") as bar:
        for shard, shard_seqs in shards:
            path = shard_hidden_path(shard["sha256"], decoder.engine, dtype)
            cached = load_shard_hidden(path, sum(answer_rows(s) for s in shard_seqs))
            if cached is None:
                cached = extract_hidden(decoder, shard_seqs, progress=bar.update)
                save_shard_hidden(path, cached)
            else:
                bar.update(len(shard_seqs))
            seqs = shard_seqs[: config.num_prompts - len(sequences)] if config.num_prompts else shard_seqs
            sequences += seqs
            hidden.append(cached[: sum(answer_rows(s) for s in seqs)])
            if config.num_prompts and len(sequences) >= config.num_prompts:
                break
    return build_features(sequences, torch.cat(hidden), config.num_heads)


PATH_FIELDS = ("prompts", "dev_prompts", "out", "data")


def recorded(config: TrainConfig) -> dict:
    """``config`` as stored with the heads: paths inside the project relative to it, others by name only,
    so a card never carries one machine's absolute paths (checkpoints keep the real ones for ``resume``)."""
    import shlex

    root = Path(__file__).resolve().parents[2]  # the directory that holds the medusa_chat package

    def portable(value: str) -> str:
        path = Path(value)
        if not value or not path.is_absolute():
            return value
        try:
            return str(path.resolve().relative_to(root))
        except ValueError:
            return path.name

    data = asdict(config)
    for key in PATH_FIELDS:
        data[key] = portable(data[key])
    if data["command"]:
        data["command"] = shlex.join(portable(word) for word in shlex.split(data["command"]))
    return data


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _checkpoint(heads: MedusaHeads, optimizer: torch.optim.Optimizer, step: int, config: TrainConfig) -> None:
    """Latest heads in project format + the optimizer state, each written atomically."""
    out = Path(config.out)
    save_heads(heads, out, config.model, extra={"training": recorded(config), "step": step})
    tmp = out / (STATE_FILE + ".tmp")
    state = {"heads": heads.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "config": json.dumps(asdict(config))}
    torch.save(state, tmp)
    tmp.replace(out / STATE_FILE)


def _advance(bar, done: int, total: int) -> None:
    bar.total = total
    bar.n = done
    bar.refresh()


def model_card(
    config: TrainConfig, accuracy: HeadsAccuracy | None, positions: int, seconds: float, coverage: float
) -> str:
    """The README.md written next to trained heads."""
    kind = (f"{config.head_kind}: each head also reads the embedding of the token after position t (the tree's root)"
            if config.head_kind == "root-conditioned" else f"{config.head_kind} (FasterDecoding format)")
    vocab = "the full vocabulary" if config.full_vocab or not config.draft_vocab else (
        f"a draft vocabulary of the {config.draft_vocab} most frequent answer tokens "
        f"({coverage:.1%} of head-0 targets), stored with the heads")
    lines = [
        f"# Medusa heads for {config.model}",
        "",
        f"{config.num_heads} heads, {config.num_layers} residual block(s) each, kind {kind}.",
        f"Projection shared with the base lm_head, onto {vocab}." if config.shared_projection
        else "One vocab projection per head, initialised from the base lm_head.",
        "Head i reads the base model's final-norm hidden state at position t and predicts token t+2+i.",
        "Trained with the base model frozen (only the heads train), in fp32, by medusa-chat's own trainer.",
        "",
        "## Command",
        "",
        "```",
        recorded(config)["command"] or "(called from Python)",
        "```",
        "",
        "## Data",
        "",
        "Self-distillation: the base model's own greedy answers to medusa-chat's training prompts, from the "
        "distillation data shipped with the project (`medusa_chat/data/distill/`, see its `manifest.json`:",
        f"prompt ids, base checksum, generation settings). {positions} training positions (the last prompt position "
        "and every answer position). Prompt sources and licences: `medusa_chat/data/prompts/SOURCES.md`.",
        "",
        "## Training",
        "",
        f"- targets: **{config.targets}** "
        + ("(the base's own distribution at the target position over the heads' vocabulary)"
           if config.targets == "soft" else "(the base's greedy token)"),
        f"- loss: sum over heads of 0.8**i x loss of head i; AdamW, lr {config.lr}, 3 % warm-up then cosine;"
        f" {config.epochs} epoch(s) of batches of {config.batch_size} positions",
        f"- wall time of the run: {seconds / 60:.1f} min on {config.device}",
        "",
        "## Accuracy on the dev prompts",
        "",
    ]
    if accuracy is None:
        lines.append("Not measured.")
    else:
        lines += [
            f"First {config.eval_limit} prompts of `{Path(config.dev_prompts).name}`, {config.eval_steps} greedy steps "
            "each; head i at step s is scored against the base's greedy token at step s+i+1:",
            "",
            "| head | tokens ahead | top-1 | top-5 |",
            "|---|---|---|---|",
        ]
        for i, (t1, t5) in enumerate(zip(accuracy.top(1), accuracy.top(5), strict=True)):
            lines.append(f"| {i} | {i + 2} | {t1:.3f} | {t5:.3f} |")
    return "\n".join(lines) + "\n"
