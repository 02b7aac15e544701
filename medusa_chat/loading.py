"""From a ``--model`` value to a ready :class:`LoadedModel`: weights, tokenizer, heads, tree, chat template.

Device and precision: CUDA when present, else CPU. ``dtype`` "auto" picks bf16 on a CPU with native
bf16 instructions (tree verification costs little more than one token there) and fp32 otherwise;
fp16 on CUDA. ``quant`` "4bit"/"8bit" loads the base through bitsandbytes (CUDA only); the heads stay
in half precision.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import ModelSpec, chat_template_for, resolve

DTYPES = ("auto", "fp32", "bf16", "fp16")
QUANTS = ("none", "4bit", "8bit")
CALIBRATION_PROMPT = "Write a short paragraph about the sea."


class LoadError(RuntimeError):
    """The model cannot be loaded as asked; the message says what to do instead."""


@dataclass
class LoadedModel:
    """A model ready to chat: its generator (engine), tokenizer and how it was loaded."""

    name: str
    generator: Any  # medusa_chat.engine.generator.Generator
    tokenizer: Any
    device: str
    dtype: str
    quant: str
    chat_template: str
    spec: ModelSpec
    stop_strings: tuple[str, ...] = ()
    load_time: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def tree_name(self) -> str:
        return self.generator.tree_name

    @property
    def num_heads(self) -> int:
        heads = self.generator.heads
        return heads.num_heads if heads is not None else 0

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` (role/content dicts) rendered with the chat template, ready to answer."""
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def calibrate(self, tokens: int = 16) -> float:
        """Plain greedy decoding speed (tokens/s) on a short fixed prompt: the speedup gauge's baseline."""
        from .engine.generator import GenerationConfig

        ids = self.chat_ids([{"role": "user", "content": CALIBRATION_PROMPT}])
        stats = self.generator.generate(ids, GenerationConfig(max_new_tokens=tokens, medusa=False))
        self.generator.reset()
        return stats.tokens_per_s

    def unload(self) -> None:
        """Free the model's memory (CPU or GPU)."""
        self.generator = None
        free_memory()


def load_model(
    model: str,
    heads: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    quant: str | None = None,
    tree: str | None = None,
    threads: int | None = None,
    progress=None,
) -> LoadedModel:
    """Load ``model`` (catalogue name, local directory or cached Hub repo) with its Medusa heads.

    ``heads`` overrides where the heads come from (a directory or file in any supported format).
    ``progress`` receives short phase strings.
    """
    import torch

    from .engine.generator import Generator
    from .engine.heads_io import load_heads

    report = progress or (lambda _msg: None)
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    spec = resolve(model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    quant = quant or "none"
    dtype_name = _choose_dtype(dtype or "auto", device)
    _check_quant(quant, device)

    base_path = _base_path(spec, report)
    report(f"loading {spec.label} ({dtype_name}{'' if quant == 'none' else ', ' + quant}) on {device}")
    try:
        base, tokenizer = _load_base(base_path, device, dtype_name, quant)
    except torch.OutOfMemoryError as exc:
        free_memory()
        raise LoadError(f"out of memory loading {spec.label} on {device}: try --quant 4bit or a smaller model") from exc

    notes: list[str] = []
    heads_path = Path(heads) if heads else _heads_path(spec, base_path)
    medusa = None
    if heads_path is not None:
        report(f"loading Medusa heads from {heads_path}")
        config = base.config.get_text_config()
        medusa = load_heads(heads_path, config.hidden_size, config.vocab_size)
    else:
        notes.append("no Medusa heads found: plain decoding only")
    tree_name = tree or spec.default_tree or ("cpu_8" if device == "cpu" else "mc_sim_7b_63")
    generator = Generator(base, tokenizer, medusa, tree=tree_name if medusa is not None else None)
    template = chat_template_for(spec, tokenizer)
    stops = ("USER:",) if spec.chat_template == "vicuna_v1.1" else ()
    return LoadedModel(
        name=spec.name,
        generator=generator,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype_name,
        quant=quant,
        chat_template=template,
        spec=spec,
        stop_strings=stops,
        load_time=time.perf_counter() - started,
        notes=notes,
    )


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _choose_dtype(dtype: str, device: str) -> str:
    if dtype not in DTYPES:
        raise LoadError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if dtype != "auto":
        if dtype == "fp16" and device == "cpu":
            raise LoadError("fp16 is very slow for tree verification on a CPU: use --dtype bf16 or fp32")
        return dtype
    if device == "cpu":
        return "bf16" if cpu_has_bf16() else "fp32"
    return "fp16"


def _check_quant(quant: str, device: str) -> None:
    if quant not in QUANTS:
        raise LoadError(f"unknown quantisation {quant!r}: choose one of {', '.join(QUANTS)}")
    if quant == "none":
        return
    if device != "cuda":
        raise LoadError(
            f"{quant} loading uses bitsandbytes, which needs a CUDA GPU and none is available here; "
            "use --quant none (with --dtype bf16 on a CPU that supports it, else fp32)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # a build without CUDA support raises at import
        raise LoadError(f"bitsandbytes cannot run here ({exc}); use --quant none --dtype fp16") from exc


def _base_path(spec: ModelSpec, report) -> Path:
    """The local directory of the base model's weights and tokenizer."""
    if spec.head_format == "gguf-package":
        from .default_model import ensure_converted

        return ensure_converted(progress=report)
    if spec.local_path is not None and spec.base_repo_id is None:
        return spec.local_path
    repo = spec.base_repo_id or spec.repo_id
    if repo and Path(repo).expanduser().is_dir():
        return Path(repo).expanduser()
    return _cached_repo(repo, "main" if spec.base_repo_id else spec.revision, spec.name)


def _cached_repo(repo_id: str, revision: str, name: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError as exc:
        raise LoadError(f"{repo_id} is not downloaded yet: run `medusa-chat models download {name}`") from exc


def _heads_path(spec: ModelSpec, base_path: Path) -> Path | None:
    """Where the heads are: packaged, a heads-only repo, beside the base, or inside its shards."""
    from .engine.heads_io import HEADS_PT, HEADS_SAFETENSORS

    packaged = spec.heads_dir()
    if packaged is not None and packaged.is_dir():
        return packaged
    if spec.local_path is not None and spec.base_repo_id is not None:
        return spec.local_path  # a local heads-only directory
    if spec.base_repo_id and spec.repo_id and not Path(spec.base_repo_id).is_dir():
        return _cached_repo(spec.repo_id, spec.revision, spec.name)
    for candidate in (base_path, base_path / "medusa"):
        if any((candidate / f).is_file() for f in (HEADS_SAFETENSORS, HEADS_PT)):
            return candidate
    if spec.head_format == "medusa2-full" or _shards_have_heads(base_path):
        return base_path
    return None


def _shards_have_heads(directory: Path) -> bool:
    import json

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return any(k.startswith("medusa_head.") for k in json.loads(index.read_text()).get("weight_map", {}))
    single = directory / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return any(k.startswith("medusa_head.") for k in f.keys())  # noqa: SIM118
    return False


def _load_base(path: Path, device: str, dtype_name: str, quant: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if quant != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype)
            if quant == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise LoadError(f"cannot read a model from {path}: {exc}") from exc
    if quant == "none":
        model.to(device)
    return model.eval(), tokenizer


def free_memory() -> None:
    """Collect garbage and return cached GPU memory (after an out-of-memory or an unload)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
