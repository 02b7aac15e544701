"""Self-distillation data: the base model's own greedy answers, kept as a versioned artifact.

Medusa heads must predict what the base model itself generates, so the training answers are the
base's own greedy continuations (greedy, because the verifier accepts a head's guess only when it
equals the base's greedy token). Generating them is the slow part of training on a CPU, so they
are generated once and kept as data: a directory with

- ``manifest.json``: format, model, the base weights' checksum, the chat template's hash, the
  generation settings, the prompt set, and one entry per shard (file, sha256, counts);
- ``answers-NNNNN.npz``: one shard per generation run: prompt ids, answer lengths and the answer
  token ids (uint16 where the vocabulary allows), compressed, readable without pickle.

Shards are written once and never rewritten: extending the data with more prompts adds shards, so
earlier answers stay byte-identical. An interrupted run keeps every finished shard (and flushes
the answers of the shard in progress); the next run answers only prompts not yet answered.
The default model's data ships with the project (:data:`medusa_chat.data.DISTILL_DIR`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..prompts import Prompt
from .batched import greedy_batch, length_buckets

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..engine.decoder import Decoder

FORMAT_VERSION = 2
MANIFEST = "manifest.json"


class DistillDataError(ValueError):
    """The data directory is unreadable, tampered with, or was made with other settings."""


@dataclass
class Sequence:
    """One distillation example: ``ids`` = prompt ids + answer ids; the answer starts at ``prompt_len``."""

    ids: list[int]
    prompt_len: int


@dataclass(frozen=True)
class GenerationSettings:
    """How the answers were generated (all shards of one artifact share them)."""

    max_new_tokens: int = 256
    max_prompt_tokens: int = 512
    dtype: str = "bfloat16"
    engine: str = "lean"
    decoding: str = "greedy"


@dataclass
class Progress:
    """Reported after every batch."""

    prompts_done: int
    prompts_total: int
    tokens: int  # answer tokens generated in this run
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Manifest:
    model: str
    base_checksum: str
    chat_template_sha256: str
    prompt_set: str
    generation: GenerationSettings
    shards: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # prompt ids over max_prompt_tokens
    format: int = FORMAT_VERSION

    def counts(self) -> dict[str, int]:
        return {
            "prompts": sum(s["prompts"] for s in self.shards),
            "answer_tokens": sum(s["answer_tokens"] for s in self.shards),
            "skipped": len(self.skipped),
        }

    def to_json(self) -> str:
        data = asdict(self)
        data["counts"] = self.counts()
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data.pop("counts", None)
            if data.get("format") != FORMAT_VERSION:
                raise DistillDataError(f"{path}: format {data.get('format')!r}, this version reads {FORMAT_VERSION}")
            data["generation"] = GenerationSettings(**data["generation"])
            return cls(**data)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as exc:
            raise DistillDataError(f"{path}: not a distillation manifest ({exc})") from exc


def chat_template_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The chat-templated prompt ids, ending with the assistant turn's header."""
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
    return list(ids)


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DistillData:
    """One artifact directory: read its answers, or extend it with answers to more prompts."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        self.manifest: Manifest | None = Manifest.from_file(path) if path.is_file() else None

    def shard_answers(self, shard: dict) -> dict[str, list[int]]:
        """Prompt id -> answer token ids of one shard (checked against its manifest hash), in shard order."""
        import numpy as np

        path = self.directory / shard["file"]
        if not path.is_file() or _sha256(path) != shard["sha256"]:
            raise DistillDataError(f"{path}: missing or modified (sha256 differs from {MANIFEST})")
        with np.load(path, allow_pickle=False) as data:
            ids, lengths, tokens = data["prompt_ids"], data["lengths"], data["tokens"].astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        return {prompt_id: tokens[offsets[i] : offsets[i + 1]].tolist() for i, prompt_id in enumerate(ids.tolist())}

    def answers(self) -> dict[str, list[int]]:
        """Prompt id -> answer token ids, from every shard."""
        answers: dict[str, list[int]] = {}
        for shard in self.manifest.shards if self.manifest else []:
            answers.update(self.shard_answers(shard))
        return answers

    def shard_sequences(
        self, tokenizer: PreTrainedTokenizerBase, prompts: Iterable[Prompt]
    ) -> list[tuple[dict, list[Sequence]]]:
        """Per shard, prompt + answer ids of every answer in it (in shard order); ``prompts`` give the texts."""
        self._check_tokenizer(tokenizer)
        texts = {p.id: p.text for p in prompts}
        out = []
        for shard in self.manifest.shards if self.manifest else []:
            sequences = []
            for prompt_id, answer in self.shard_answers(shard).items():
                if prompt_id not in texts:
                    raise DistillDataError(f"{self.directory}: prompt {prompt_id!r} is not in the prompt set")
                ids = encode_prompt(tokenizer, texts[prompt_id])
                sequences.append(Sequence(ids + answer, len(ids)))
            out.append((shard, sequences))
        return out

    def extend(
        self,
        decoder: Decoder,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[Prompt],
        eos: set[int],
        *,
        model_name: str,
        base_checksum: str,
        prompt_set: str,
        settings: GenerationSettings,
        batch_size: int = 64,
        shard_size: int = 512,
        progress: Callable[[Progress], None] | None = None,
        hidden_cache: Callable[[dict, torch.Tensor], None] | None = None,
    ) -> int:
        """Answer every prompt of ``prompts`` not answered yet, a shard at a time; returns how many were answered.

        Interrupting (``KeyboardInterrupt``) writes the answers finished so far as a shard, then re-raises.
        ``hidden_cache(shard entry, hidden [rows, H])`` receives the hidden states that chose each answer
        token (positions ``prompt_len - 1 .. len - 2`` of each sequence, in shard order), free by-products
        that spare head training a forward pass over the data.
        """
        import torch

        self._start(model_name, base_checksum, chat_template_sha256(tokenizer), prompt_set, settings)
        assert self.manifest is not None
        done = set(self.answers()) | set(self.manifest.skipped)
        pending = [p for p in prompts if p.id not in done]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
        started, tokens, answered = time.monotonic(), 0, 0
        for start in range(0, len(pending), shard_size):
            chunk = pending[start : start + shard_size]
            encoded = [encode_prompt(tokenizer, p.text) for p in chunk]
            limit = settings.max_prompt_tokens
            fits = [i for i, ids in enumerate(encoded) if len(ids) <= limit]
            self.manifest.skipped += [p.id for p, ids in zip(chunk, encoded, strict=True) if len(ids) > limit]
            finished: dict[int, list[int]] = {}
            states: dict[int, torch.Tensor] = {}
            try:
                for batch in length_buckets([len(encoded[i]) for i in fits], batch_size):
                    rows = [fits[b] for b in batch]
                    hidden: list[torch.Tensor] = []
                    outs = greedy_batch(
                        decoder, [encoded[i] for i in rows], settings.max_new_tokens, eos, pad, hidden
                    )
                    for i, answer, h in zip(rows, outs, hidden, strict=True):
                        finished[i] = answer
                        states[i] = h
                        tokens += len(answer)
                    if progress:
                        seconds = time.monotonic() - started
                        progress(Progress(answered + len(finished), len(pending), tokens, seconds))
            finally:
                shard = self._write_shard([(chunk[i].id, finished[i]) for i in sorted(finished)])
                if shard is not None and hidden_cache is not None:
                    hidden_cache(shard, torch.cat([states[i] for i in sorted(finished)]))
            answered += len(finished)
        return answered

    def _start(self, model: str, checksum: str, template: str, prompt_set: str, settings: GenerationSettings) -> None:
        """Create the manifest, or check that an existing one was made the same way."""
        if self.manifest is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.manifest = Manifest(model, checksum, template, prompt_set, settings)
            return
        m = self.manifest
        mine = {"base model weights": (m.base_checksum, checksum), "chat template": (m.chat_template_sha256, template),
                "prompt set": (m.prompt_set, prompt_set), "generation settings": (m.generation, settings)}
        differ = [name for name, (old, new) in mine.items() if old != new]
        if differ:
            raise DistillDataError(
                f"{self.directory} was made with other {', '.join(differ)}: use another --data directory"
            )

    def _write_shard(self, rows: list[tuple[str, list[int]]]) -> dict | None:
        """Write one shard and then the manifest, each atomically (a shard the manifest lacks is ignored)."""
        import numpy as np

        assert self.manifest is not None
        if not rows:
            self._write_manifest()
            return None
        tokens = [t for _, answer in rows for t in answer]
        dtype = np.uint16 if max(tokens, default=0) < 2**16 else np.int32
        name = f"answers-{len(self.manifest.shards):05d}.npz"
        tmp = self.directory / f".{name}.tmp.npz"
        np.savez_compressed(
            tmp,
            prompt_ids=np.array([prompt_id for prompt_id, _ in rows]),
            lengths=np.array([len(answer) for _, answer in rows], dtype=np.int32),
            tokens=np.array(tokens, dtype=dtype),
        )
        tmp.replace(self.directory / name)
        self.manifest.shards.append(
            {"file": name, "sha256": _sha256(self.directory / name), "prompts": len(rows), "answer_tokens": len(tokens)}
        )
        self._write_manifest()
        return self.manifest.shards[-1]

    def _write_manifest(self) -> None:
        assert self.manifest is not None
        tmp = self.directory / f".{MANIFEST}.tmp"
        tmp.write_text(self.manifest.to_json(), encoding="utf-8")
        tmp.replace(self.directory / MANIFEST)

    def _check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if self.manifest and self.manifest.chat_template_sha256 != chat_template_sha256(tokenizer):
            raise DistillDataError(f"{self.directory} was made with another chat template than this tokenizer's")


def default_data_dir(model: str) -> Path:
    """The shipped data for the default model; a per-model directory in the user data dir otherwise."""
    from ..data import DISTILL_DIR
    from ..default_model import NAME
    from ..paths import data_dir

    if model == NAME:
        return DISTILL_DIR / NAME
    return data_dir() / "distill" / Path(model).name
