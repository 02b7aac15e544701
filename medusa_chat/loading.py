"""From a ``--model`` value to a ready :class:`LoadedModel`: weights, tokenizer, heads, tree, chat template.

Where the files are: :func:`medusa_chat.hub.local_files` maps every catalogue layout to a model dir
and a heads path (nothing is fetched here: a model not in the cache gives a :class:`LoadError` naming
``medusa-chat models download``); the packaged default model is converted from its GGUF once.

Device and precision: CUDA when present, else CPU. ``dtype`` "auto" is fp32 on a CPU (greedy Medusa
equals plain decoding) and fp16 on CUDA. On a CPU, Llama/Mistral models run on the lean decoder
(``engine``), where ``quant`` "4bit"/"8bit" means int4/int8 weight-only layers (the default model's GGUF
is then read directly); on CUDA ``quant`` loads the base through bitsandbytes and the
heads stay in half precision. Before any weight is read the memory the model needs is estimated
(:mod:`medusa_chat.memory`) and a model that clearly cannot fit is refused with the nearest choice
that does; an out-of-memory error while loading frees the partial model and becomes a
:class:`LoadError`.
"""

from __future__ import annotations

import functools
import gc
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import calibration
from .catalog import ModelSpec, catalog, catalog_problems, chat_template_for, resolve
from .errors import UserError
from .machine import int4_kernel_fast
from .memory import OVERHEAD, cpu_memory, estimate_bytes, loading_heap, trim_heap
from .options import DTYPES, ENGINES, QUANTS, option_problem
from .progress import Progress, stage
from .quiet import quiet_transformers
from .trees import AUTO, TUNED, TreeChoice, resolve_tree

CALIBRATION_CHAT = (
    {"role": "user", "content": "Write a short paragraph about the sea."},
    {
        "role": "assistant",
        "content": (
            "The sea covers more than two thirds of the Earth and holds most of its water. It shapes the weather, "
            "stores heat from the sun and carries it around the globe in slow currents, warming some coasts and "
            "cooling others. Tides rise and fall twice a day as the Moon pulls on the water, and waves carry the "
            "energy of distant storms across whole oceans before they break on a beach. Beneath the surface lies a "
            "world of its own: kelp forests, coral reefs and open water where fish, whales and tiny plankton live, "
            "and deep trenches where no sunlight ever reaches. People have fished, traded and explored on the sea "
            "for thousands of years, and today it feeds billions, moves most of the world's goods and still keeps "
            "many of its secrets."
        ),
    },
    {"role": "user", "content": "Now write a short paragraph about mountains."},
)
"""A conversation of typical length (about 250 tokens): step costs and plain speed depend on the cache length."""
_HEAD_KEY_PREFIXES = ("medusa_head.", "blocks.", "lm_heads.")


class LoadError(UserError, RuntimeError):
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
    engine: str = "transformers"  # "lean" or "transformers"
    auto_tree: TreeChoice | None = None
    """The tree chosen for ``auto`` at load (calibrated here, or the preset default); None after a named tree."""

    @property
    def tree_name(self) -> str:
        return self.generator.tree_name

    @property
    def default_tree(self) -> str | None:
        """The tree the heads recommend (their catalogue entry's), if any."""
        return self.spec.default_tree

    @property
    def num_heads(self) -> int:
        heads = self.generator.heads
        return heads.num_heads if heads is not None else 0

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` (role/content dicts) rendered with the chat template, ready to answer.

        Exactly one BOS token starts the ids when the template writes one (``{{ bos_token }}``) or the
        tokenizer adds one by default; none when neither does.
        """
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=True, tokenize=False
        )
        bos, bos_id = self.tokenizer.bos_token, self.tokenizer.bos_token_id
        if not bos or bos_id is None:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        wants_bos = text.startswith(bos) or _adds_bos(self.tokenizer)
        while text.startswith(bos):
            text = text[len(bos) :]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [bos_id, *ids] if wants_bos else ids

    def calibrate(self, tokens: int = 16) -> float:
        """Plain greedy decoding speed (tokens/s) on :data:`CALIBRATION_CHAT`: the speedup gauge's baseline."""
        from .engine.generator import GenerationConfig

        ids = calibration_ids(self.chat_ids, self.generator.max_context)
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
    progress: Progress | None = None,
    engine: str | None = None,
) -> LoadedModel:
    """Load ``model`` (catalogue name, local directory or cached Hub repo) with its Medusa heads.

    ``engine``: "lean" (the CPU decoder of :mod:`medusa_chat.engine.lean`), "transformers", or
    "auto" (lean on a CPU when it takes the model, else transformers).

    ``heads`` overrides where the heads come from (a directory or file in any supported format).
    ``threads`` sets torch's CPU threads before anything loads. ``progress`` receives short phase strings
    and stage counts (:mod:`medusa_chat.progress`). Expected failures raise :class:`LoadError` (or the
    catalogue's, heads' and tree's own errors) and leave nothing of the model in memory.
    """
    import torch

    report = progress or (lambda _msg: None)
    started = time.perf_counter()
    if problem := option_problem(threads=threads):
        raise LoadError(problem)
    if threads:
        torch.set_num_threads(threads)
    spec = resolve(model)
    for problem in catalog_problems():
        report(f"warning: {problem}")
    device = _choose_device(device)
    engine = engine or "auto"
    if engine not in ENGINES:
        raise LoadError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    quant = _choose_quant(quant or "auto", dtype or "auto", device, engine, spec)
    dtype_name = _choose_dtype(dtype or "auto", device, quant)
    _check_quant(quant, device, spec.architecture, engine)
    can_quantise = device != "cpu" and _bnb_problem() is None  # bitsandbytes: the GPU's memory advice
    available = _available_bytes(device)
    notes = _check_memory(spec, spec.params, device, dtype_name, quant, available, can_quantise)
    params = spec.params
    try:
        gguf = spec.head_format == "gguf-package" and device == "cpu" and quant == "4bit"
        model_dir, heads_path = _locate(spec, heads, report, gguf)
        _check_weight_files(model_dir, spec)
        if not params:
            params = _stored_params([model_dir, *([heads_path] if heads_path else [])], spec)
            notes = _check_memory(spec, params, device, dtype_name, quant, available, can_quantise)
        with loading_heap():
            loaded = _assemble(spec, model_dir, heads_path, device, dtype_name, quant, tree, report, engine, gguf)
    except Exception as exc:
        traceback.clear_frames(exc.__traceback__)  # the frames hold the partial model: let it go now
        free_memory()
        if is_oom(exc):
            advice = _advice(spec, params, device, dtype_name, quant, available, can_quantise)
            raise LoadError(
                f"ran out of memory loading {spec.label} ({_setting(dtype_name, quant)}) on {device}; "
                f"the partial model was freed. {advice}"
            ) from exc
        raise
    loaded.notes[:0] = notes
    loaded.load_time = time.perf_counter() - started
    return loaded


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` means the machine ran out of memory (GPU or CPU), during loading or generation.

    After one during generation, ``generator.reset()`` and :func:`free_memory` give the memory back.
    """
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def free_memory() -> None:
    """Collect garbage, return cached GPU memory and the C heap's free pages (after a load, an out-of-memory
    or an unload: glibc keeps the pages of freed temporaries otherwise)."""
    gc.collect()
    trim_heap()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


# -- choices ---------------------------------------------------------------------------------------


def _choose_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LoadError(
                f"--device {device} asked for a GPU but torch sees no CUDA device (a CPU-only torch build, "
                "or no driver): use --device cpu"
            )
        return device
    raise LoadError(f"unknown device {device!r}: use cpu or cuda (cuda:N for another GPU)")


def default_setting(spec: ModelSpec, device: str | None = None) -> str:
    """The engine and precision ``spec`` loads with when nothing is asked, e.g. ``lean cpu 4bit (bf16)``."""
    from .engine.lean import SUPPORTED

    device = _choose_device(device)
    quant = _choose_quant("auto", "auto", device, "auto", spec)
    dtype = _choose_dtype("auto", device, quant)
    if device != "cpu" or (spec.architecture and spec.architecture not in SUPPORTED):
        engine = "transformers"
    else:  # an architecture the catalogue does not name is known once its config is read
        engine = "lean" if spec.architecture else "lean (or transformers)"
    return f"{engine} {device} " + (f"{quant} ({dtype})" if quant != "none" else dtype)


def _choose_quant(quant: str, dtype: str, device: str, engine: str, spec: ModelSpec) -> str:
    """``auto``: the model's own 4-bit weights on the lean decoder where it ships them (the offline
    default's GGUF) and torch's int4 kernel is vectorised on this CPU (AVX2 or AVX-512); dense otherwise.

    Both are lossless on their own terms: greedy Medusa equals greedy plain decoding.
    """
    if quant != "auto":
        return quant
    own_4bit = spec.head_format == "gguf-package" and device == "cpu" and engine != "transformers"
    return "4bit" if own_4bit and dtype == "auto" and int4_kernel_fast() else "none"


def _choose_dtype(dtype: str, device: str, quant: str) -> str:
    if dtype not in DTYPES:
        raise LoadError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if device == "cpu" and quant != "none":  # the int4/int8 CPU kernels are fast with bf16 activations
        if dtype in ("auto", "bf16"):
            return "bf16"
        raise LoadError(f"--quant {quant} on a CPU computes in bf16: drop --dtype {dtype} or use --quant none")
    if dtype == "auto":
        if device == "cpu":  # exact by default: bf16 is the explicit "fast, not exact" choice
            return "fp32"
        return "fp16"
    if dtype == "fp16" and device == "cpu":
        raise LoadError("fp16 is very slow for tree verification on a CPU: use --dtype bf16 or fp32")
    if dtype == "fp32" and quant != "none":
        raise LoadError(f"--quant {quant} computes in half precision: use --dtype fp16 or bf16 with it")
    return dtype


@functools.cache
def _bnb_problem() -> str | None:
    """Why bitsandbytes cannot quantise on this machine's GPU, or None when it can (checked once)."""
    try:
        from bitsandbytes.cextension import lib
    except Exception as exc:  # not installed, or a broken install
        return f"bitsandbytes cannot be imported ({exc})"
    if not getattr(lib, "compiled_with_cuda", False):
        return "the installed bitsandbytes has no CUDA support (a CPU-only build, or none matching this CUDA)"
    return None


def quant_problem(quant: str, device: str, architecture: str = "", engine: str = "auto") -> str | None:
    """Why ``quant`` (4bit/8bit) cannot run a model of ``architecture`` on ``device`` here, or None when it can.

    On a CPU 4/8-bit runs on the lean decoder, which takes the Llama family (``lean.SUPPORTED``; an unknown
    architecture, "", is left to the load); on a GPU it needs bitsandbytes with CUDA support.
    """
    if quant in ("none", "auto"):
        return None
    if device == "cpu":
        from .engine.lean import SUPPORTED

        if engine == "transformers":
            return "on a CPU 4/8-bit runs on the lean decoder, not transformers"
        if architecture and architecture not in SUPPORTED:
            takes = ", ".join(SUPPORTED)
            return f"on a CPU 4/8-bit runs on the lean decoder, which takes {takes} models, not {architecture}"
        return None
    if (bnb := _bnb_problem()) is not None:
        return f"4/8-bit on a GPU uses bitsandbytes, and {bnb}"
    return None


def _check_quant(quant: str, device: str, architecture: str, engine: str) -> None:
    """Refuse a ``--quant`` this machine cannot run for this model, with the nearest choice that works."""
    if quant not in QUANTS:
        raise LoadError(f"unknown quantisation {quant!r}: choose one of {', '.join(QUANTS)}")
    if (reason := quant_problem(quant, device, architecture, engine)) is None:
        return
    if device != "cpu":
        advice = "--quant none --dtype fp16, or reinstall bitsandbytes with CUDA support"
    elif engine == "transformers":
        advice = "--engine auto (or lean), or --quant none with transformers"
    else:
        advice = "--quant none (fp32, or --dtype bf16)"
    raise LoadError(f"--quant {quant} cannot run here: {reason}. Nearest working choice: {advice}")


# -- memory ----------------------------------------------------------------------------------------


def _setting(dtype: str, quant: str) -> str:
    return dtype if quant == "none" else quant


def _need_bytes(params: int, dtype: str, quant: str) -> int:
    """Estimated memory to run ``params`` parameters with this dtype / quantisation."""
    if quant != "none":
        return estimate_bytes(params, {"4bit": "4-bit", "8bit": "8-bit"}[quant])
    return estimate_bytes(params, "fp16") * (2 if dtype == "fp32" else 1)


def _choices(device: str, can_quantise: bool) -> list[tuple[str, str, str]]:
    """(flags, dtype, quant) a user can pick on ``device``, from the most to the least memory."""
    if device == "cpu":
        return [("--dtype fp32", "fp32", "none"), ("--dtype bf16", "bf16", "none")]
    quantised = [("--quant 8bit", "fp16", "8bit"), ("--quant 4bit", "fp16", "4bit")] if can_quantise else []
    return [("--quant none --dtype fp16", "fp16", "none"), *quantised]


def _available_bytes(device: str) -> int:
    """Free GPU memory for cuda, available RAM for cpu."""
    if device == "cpu":
        return cpu_memory()[1]
    import torch

    return torch.cuda.mem_get_info(torch.device(device))[0]


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def _check_memory(
    spec: ModelSpec, params: int, device: str, dtype: str, quant: str, available: int, can_quantise: bool
) -> list[str]:
    """Refuse a model whose weights alone exceed ``available`` bytes; a note when only the margin is short."""
    if not params:
        return []
    need = _need_bytes(params, dtype, quant)
    if need <= available:
        return []
    where = "RAM available" if device == "cpu" else f"GPU memory free on {device}"
    shortfall = f"{spec.label} needs about {_gb(need)} at {_setting(dtype, quant)} but only {_gb(available)} of {where}"
    if need / OVERHEAD > available:
        raise LoadError(f"{shortfall}: {_advice(spec, params, device, dtype, quant, available, can_quantise)}")
    return [f"{shortfall}: long chats may run out of memory"]


def _advice(
    spec: ModelSpec, params: int, device: str, dtype: str, quant: str, available: int, can_quantise: bool
) -> str:
    """The nearest choice that fits ``available``: a lighter precision, else a smaller catalogue model."""
    choices = _choices(device, can_quantise)
    size = params or 10**9  # unknown: compare the precisions on a nominal size
    need = _need_bytes(size, dtype, quant)
    for flags, d, q in choices:
        lighter = _need_bytes(size, d, q)
        if lighter < need and (not params or lighter <= available):
            return f"try {flags}" + (f" (about {_gb(lighter)})" if params else "")
    for other in sorted(catalog().values(), key=lambda s: s.params, reverse=True):
        if other.params and other.params < params and other.name != spec.name:
            fitting = next((f for f, d, q in choices if _need_bytes(other.params, d, q) <= available), None)
            if fitting:
                return f"choose a smaller model, e.g. --model {other.name} {fitting}"
    return "choose a smaller model" + ("" if device == "cpu" else " or free GPU memory")


def _stored_params(paths: list[Path], spec: ModelSpec | None = None) -> int:
    """Parameters in the weight files at ``paths`` (safetensors headers; other files assume 2 bytes each)."""
    files: set[Path] = set()
    for path in paths:
        files |= {path} if path.is_file() else {*path.glob("*.safetensors"), *path.glob("*.bin"), *path.glob("*.pt")}
    total = 0
    for file in sorted(f for f in files if f.is_file()):
        if file.suffix == ".safetensors":
            with _open_safetensors(file, spec) as f:
                total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
        else:
            total += file.stat().st_size // 2
    return total


def _open_safetensors(file: Path, spec: ModelSpec | None = None):
    """``safe_open`` of ``file`` (header checked against the file's length), or a LoadError naming it."""
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="pt")
    except Exception as exc:  # SafetensorError, OSError (a directory), ...
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise LoadError(f"{file} is empty, truncated or damaged ({reason}): {_damaged_advice(spec)}") from exc


def _damaged_advice(spec: ModelSpec | None) -> str:
    if spec is not None and spec.hub_repos:
        return f"run `medusa-chat models remove {spec.name} --yes`, then `medusa-chat models download {spec.name}`"
    return "replace it with a complete copy (download, convert or train it again)"


def _check_weight_files(model_dir: Path, spec: ModelSpec) -> None:
    """Every safetensors file of the base model has a sound header and its full length (cheap: headers only)."""
    for file in sorted(model_dir.glob("*.safetensors")):
        with _open_safetensors(file, spec):
            pass


# -- files -----------------------------------------------------------------------------------------


def _locate(spec: ModelSpec, heads: str | None, report, gguf: bool = False) -> tuple[Path, Path | None]:
    """(model dir, heads path or None) on local disk: ``--heads``, packaged heads, else beside the model.

    ``gguf``: the packaged GGUF is read directly, so the model dir holds only its config and tokenizer.
    """
    from .hub import HubError, local_files

    if spec.head_format == "gguf-package":
        from .default_model import DefaultModelError, ensure_converted, ensure_metadata

        try:
            model_dir, found = (ensure_metadata if gguf else ensure_converted)(progress=report), None
        except DefaultModelError as exc:
            raise LoadError(str(exc)) from exc
        except OSError as exc:
            raise LoadError(
                f"cannot write the converted default model to the cache ({exc}): "
                "set MEDUSA_CHAT_CACHE_DIR to a writable folder"
            ) from exc
    else:
        try:
            files = local_files(spec)
        except HubError as exc:
            raise LoadError(_not_downloaded(spec)) from exc
        model_dir, found = files.model_dir, files.heads_path
    if heads:
        override = Path(heads).expanduser()
        return model_dir, _find_heads(override, spec) or override
    packaged = spec.heads_dir()
    if packaged is not None and packaged.is_dir():
        return model_dir, packaged
    return model_dir, _find_heads(found, spec) if found else None


def _not_downloaded(spec: ModelSpec) -> str:
    if spec.head_format == "local" and spec.base_repo_id:
        base = spec.base_repo_id
        if base.startswith(("/", ".", "~")):
            return f"the base model {base} named by {spec.local_path}/config.json is not a directory"
        return f"the base model {base} of {spec.local_path} is not downloaded: run `medusa-chat models download {base}`"
    return f"{spec.label} is not (fully) downloaded: run `medusa-chat models download {spec.name}`"


def _find_heads(path: Path, spec: ModelSpec) -> Path | None:
    """Where Medusa heads are at ``path``: a file, heads files in it or ``medusa/``, or keys in its shards."""
    from .engine.heads_io import heads_file

    if path.is_file():
        return path
    for candidate in (path, path / "medusa"):
        if heads_file(candidate) is not None:
            return candidate
    if spec.head_format == "medusa2-full" or _shards_have_heads(path):
        return path
    return None


def _shards_have_heads(directory: Path) -> bool:
    """Whether the weight files in ``directory`` hold Medusa (or vLLM-layout) head tensors."""
    import json

    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (directory / index).is_file():
            try:
                keys = json.loads((directory / index).read_text(encoding="utf-8")).get("weight_map", {})
            except (ValueError, OSError, AttributeError) as exc:
                raise LoadError(f"{directory / index} is not a valid weight index ({exc}): replace it") from exc
            return any(isinstance(k, str) and k.startswith(_HEAD_KEY_PREFIXES) for k in keys)
    single = directory / "model.safetensors"
    if single.is_file():
        with _open_safetensors(single) as f:
            return any(k.startswith(_HEAD_KEY_PREFIXES) for k in f.keys())  # noqa: SIM118
    return False


# -- weights ---------------------------------------------------------------------------------------


def _assemble(
    spec: ModelSpec,
    model_dir: Path,
    heads_path: Path | None,
    device: str,
    dtype_name: str,
    quant: str,
    tree: str | None,
    report,
    engine: str = "auto",
    gguf: bool = False,
) -> LoadedModel:

    from .engine.generator import Generator
    from .engine.heads_io import heads_choice_note, load_heads
    from .engine.lookup import step_cost
    from .tuning import smooth_costs

    # One stage for the console: the weights, the decoder built from them, the heads.
    step = stage(report, f"loading {spec.label} ({_setting(dtype_name, quant)}) on {device}", 3)
    notes: list[str] = []
    decoder, tokenizer = _load_decoder(model_dir, device, dtype_name, quant, engine, gguf, notes, report, step)
    medusa = None
    if heads_path is not None:
        if note := heads_choice_note(heads_path):
            report(note)
            notes.append(note)
        config = decoder.config.get_text_config()
        lm_head = getattr(decoder.lm_head, "weight", None)  # dense projections only: no copy
        medusa = load_heads(heads_path, config.hidden_size, config.vocab_size, lm_head=lm_head, dtype=decoder.dtype)
    else:
        notes.append("no Medusa heads found: plain decoding only")
    step(3)
    generator = Generator(decoder, tokenizer, medusa)
    automatic = None  # the tree auto and an untuned "tuned" use: calibrated here, or the preset default
    if medusa is not None:
        where = {
            "model": spec.name,
            "device": device,
            "dtype": dtype_name,
            "num_heads": medusa.num_heads,
            "default": spec.default_tree,
        }
        chosen = resolve_tree(tree, **where)
        generator.set_tree(chosen.choices, name=chosen.name)
        if tree in (None, AUTO, TUNED) and chosen.name != TUNED:
            automatic = chosen
            if calibration.enabled():
                key = calibration.cache_key(spec.name, heads_path, device, dtype_name, quant, decoder.engine)
                result = calibration.load_cached(key) or _calibrate(generator, tokenizer, heads_path, key, report)
                automatic = TreeChoice(result.choices, result.name)
                report(
                    f"tree {result.name}: measured on this machine, predicted {result.predicted_speedup:.2f}x plain"
                    if result.choices
                    else "plain decoding: no tree is measured faster on this machine"
                )
                chosen = resolve_tree(tree, **where, automatic=automatic)  # a tuned fallback's note names it
                generator.set_tree(chosen.choices, name=chosen.name)
                if chosen.choices == result.choices:  # its measured costs size the prompt-lookup drafts
                    costs = smooth_costs(result.costs)
                    tokens = result.predicted_speedup * step_cost(costs, len(result.choices) + 1)
                    generator.use_step_costs(costs, tokens)
        if chosen.note:
            report(chosen.note)
            notes.append(chosen.note)
    return LoadedModel(
        name=spec.name,
        generator=generator,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype_name,
        quant=quant,
        engine=decoder.engine,
        chat_template=chat_template_for(spec, tokenizer),
        spec=spec,
        stop_strings=("USER:",) if spec.chat_template == "vicuna_v1.1" else (),
        notes=notes,
        auto_tree=automatic,
    )


def _calibrate(generator, tokenizer, heads_path: Path, key: dict, report):
    """First load on this machine: pick the tree by measurement (see :mod:`medusa_chat.calibration`)."""
    from .engine.heads_io import read_heads_config

    def render(messages: list[dict]) -> list[int]:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    ids = calibration_ids(render, generator.max_context)
    rates = calibration.rates_from_config(read_heads_config(heads_path)) or _measured_rates(generator, ids)
    return calibration.calibrate(generator, ids, rates, key, progress=report)


def calibration_ids(render: Callable[[list[dict]], list[int]], max_context: int) -> list[int]:
    """:data:`CALIBRATION_CHAT` rendered to prompt ids; only its first question when the whole would crowd the
    model's context."""
    for messages in (CALIBRATION_CHAT, CALIBRATION_CHAT[:1]):
        ids = render(list(messages))
        if len(ids) <= max_context // 2:
            break
    return ids


def _measured_rates(generator, ids: list[int]) -> list[list[float]]:
    """Per-head per-rank hit rates from one short greedy answer (heads without recorded accuracy)."""
    from .engine.tree import TOPK
    from .tuning import calibrate

    ranks = calibrate(generator, [ids], steps=32).ranks
    k = generator.heads.num_heads
    return [[sum(row[i] == r for row in ranks) / max(1, len(ranks)) for r in range(TOPK)] for i in range(k)]


def _load_decoder(
    path: Path,
    device: str,
    dtype_name: str,
    quant: str,
    engine: str,
    gguf: bool,
    notes: list[str],
    report,
    step=lambda _done: None,
):
    """(decoder, tokenizer): the lean decoder on a CPU when it takes the model (and CPU 4/8-bit), else transformers.

    ``step(1)`` when the weights are read, ``step(2)`` when the decoder is built from them.
    """
    import torch

    from .engine.decoder import TransformersDecoder
    from .engine.lean import UnsupportedModel, from_state_dict

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    if gguf:  # config and tokenizer without transformers: the default's memory stays small
        from .default_model import gguf_path
        from .engine.gguf_weights import GGUFError, load_gguf
        from .model_files import LightTokenizer, read_config

        tokenizer = LightTokenizer(path)  # first: its parsing peak stacks on less
        try:
            decoder = load_gguf(gguf_path(), read_config(path), dtype, note=report)
        except GGUFError as exc:
            raise LoadError(str(exc)) from exc
        step(2)
        return decoder, tokenizer
    lean = device == "cpu" and engine != "transformers"
    base, tokenizer = _load_base(path, device, "fp32" if lean else dtype_name, "none" if lean else quant)
    step(1)
    if not lean:
        step(2)
        return TransformersDecoder(base), tokenizer
    try:
        decoder = from_state_dict(
            base.config, base.state_dict(), dtype, {"none": None, "4bit": "int4", "8bit": "int8"}[quant]
        )
    except UnsupportedModel as exc:
        if quant != "none" or engine == "lean":
            raise LoadError(f"{exc}: on a CPU use --quant none --engine transformers") from exc
        note = f"{exc}: using transformers"
        report(note)
        notes.append(note)
        decoder = TransformersDecoder(base.to(dtype))
    step(2)
    return decoder, tokenizer


def _load_base(path: Path, device: str, dtype_name: str, quant: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if device != "cpu":
        kwargs["device_map"] = {"": torch.device(device).index or 0}  # straight onto the GPU
    if quant != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype)
            if quant == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        if not isinstance(exc, OSError | ValueError) and type(exc).__name__ != "SafetensorError":
            raise  # out of memory and the unexpected go to the caller
        reason = " ".join(str(exc).split())[:300]
        raise LoadError(f"cannot read a model from {path}: {reason}") from exc
    return model.eval(), tokenizer


def _adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` puts a BOS token first by default."""
    bos_id = tokenizer.bos_token_id
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return tokenizer("a")["input_ids"][:1] == [bos_id] and plain[:1] != [bos_id]
