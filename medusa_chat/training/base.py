"""The frozen base model used by training and evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import default_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def resolve_model(model: str) -> Path:
    """A local checkpoint directory for ``model``: the default model's name or a HF-format directory."""
    if model == default_model.NAME:
        return default_model.ensure_converted(lambda phase: print(f"[{default_model.NAME}] {phase}"))
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{model!r} is neither {default_model.NAME!r} nor a local Hugging Face model directory (no config.json)"
        )
    return path


def load_base(
    model: str, device: str = "cpu", dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the base model (frozen, eval mode) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(model)
    base = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32).to(device)
    base.eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return base, tokenizer


def base_checksum(model: str) -> str:
    """sha256 of the base weights: the default model's GGUF, or a local directory's weight files in name order."""
    import hashlib

    if model == default_model.NAME:
        files = [default_model.gguf_path()]
    else:
        root = Path(model).expanduser()
        files = sorted(root.glob("*.safetensors")) or sorted(root.glob("*.bin"))
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
