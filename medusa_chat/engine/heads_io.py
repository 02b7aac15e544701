"""Reading and writing Medusa heads in every layout seen in the wild.

One reader, :func:`load_heads`, accepts:

- the project's own directory: ``config.json`` (``medusa_num_heads``, ``medusa_num_layers``,
  ``base_model_name_or_path``) + ``medusa_lm_head.safetensors`` with FasterDecoding keys
  ``{i}.{j}.linear.weight|bias`` and ``{i}.{L}.weight`` (absent when the projection is shared);
- the same keys in a legacy ``medusa_lm_head.pt`` (read with ``weights_only=True``: a pickle
  that needs anything beyond tensors is refused and nothing in it runs);
- full-model (Medusa-2) checkpoints whose shards hold ``medusa_head.{i}...`` keys;
- vLLM's layout (``blocks.{i}.layers.{j}.weight``, ``lm_heads.{i}.weight``); blocks without a bias
  (``medusa_fc_bias: false``) get a zero one, and an export with ``original_lm_head: true`` (one
  ``lm_heads.0.weight``, the base ``lm_head``) is read as heads sharing the base projection.

The number of heads and layers is read from the weights, never trusted from the config
(FasterDecoding's v1.3 configs say 2 heads while the files hold 5).
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserError
from .heads import MedusaHeads

HEADS_SAFETENSORS = "medusa_lm_head.safetensors"
HEADS_PT = "medusa_lm_head.pt"
CONFIG = "config.json"

EXTRA_KEYS = ("root_weight", "root_bias", "draft_vocab")  # root-conditioned heads, draft vocabulary
_BLOCK = re.compile(r"^(\d+)\.(\d+)\.linear\.(weight|bias)$")
_PROJ = re.compile(r"^(\d+)\.(\d+)\.weight$")


class HeadsError(UserError, ValueError):
    """Medusa heads that are missing, unreadable or do not fit the base model."""


def save_heads(heads: MedusaHeads, directory: str | Path, base_model: str, extra: Mapping | None = None) -> Path:
    """Write ``heads`` in the project format (config.json + medusa_lm_head.safetensors)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in heads.state_dict().items()}
    tmp = directory / (HEADS_SAFETENSORS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / HEADS_SAFETENSORS)
    config = {
        "medusa_num_heads": heads.num_heads,
        "medusa_num_layers": heads.num_layers,
        "base_model_name_or_path": base_model,
        "hidden_size": heads.hidden_size,
        "vocab_size": heads.vocab_size,
        "shared_projection": heads.shared_projection,
        "head_kind": heads.kind,
        "draft_vocab_size": None if heads.draft_vocab is None else len(heads.draft_vocab),
        **(extra or {}),
    }
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def read_heads_config(path: str | Path) -> dict:
    """The heads' ``config.json`` next to (or inside) ``path``; empty when there is none."""
    path = Path(path)
    config = (path if path.is_dir() else path.parent) / CONFIG
    if not config.is_file():
        return {}
    try:
        value = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError, UnicodeDecodeError, unreadable
        raise HeadsError(f"{config} is not valid JSON ({exc}): fix it or re-download the heads") from exc
    if not isinstance(value, dict):
        raise HeadsError(
            f"{config} holds a JSON {type(value).__name__}, not an object: fix it or re-download the heads"
        )
    return value


def config_bool(config: Mapping, key: str, where: str | Path, default: bool = False) -> bool:
    """A boolean from a config: JSON true/false, 0/1 or the strings "true"/"false"; anything else is an error."""
    value = config.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise HeadsError(f"{where}: {key} must be true or false, not {value!r}")


def heads_file(directory: str | Path) -> Path | None:
    """The heads file a directory holds (``.safetensors`` before ``.pt``), None when it holds neither.

    A directory named like a heads file is an error, not a miss.
    """
    directory = Path(directory)
    for name in (HEADS_SAFETENSORS, HEADS_PT):
        candidate = directory / name
        if candidate.is_file():
            return candidate
        if candidate.exists():
            raise HeadsError(f"{candidate} is not a file: remove it or point --heads at the real heads file")
    return None


def heads_choice_note(directory: str | Path) -> str | None:
    """A note when a directory holds both heads files (the ``.safetensors`` one is used)."""
    directory = Path(directory)
    if directory.is_dir() and all((directory / n).is_file() for n in (HEADS_SAFETENSORS, HEADS_PT)):
        return f"{directory} holds both {HEADS_SAFETENSORS} and {HEADS_PT}: using {HEADS_SAFETENSORS}"
    return None


def load_heads_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The heads' tensors from a directory or file, keys in FasterDecoding layout."""
    path = Path(path)
    if not path.exists():
        raise HeadsError(f"no Medusa heads at {path}: the path does not exist")
    if path.is_dir():
        if (found := heads_file(path)) is not None:
            return load_heads_state(found)
        shards = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
        state = {}
        for shard in shards:
            state.update(_read_tensors(shard, want=lambda k: k.startswith(("medusa_head.", "blocks.", "lm_heads."))))
        if not state:
            raise HeadsError(
                f"no Medusa heads in {path}: expected {HEADS_SAFETENSORS}, {HEADS_PT} "
                "or model shards with medusa_head.* keys"
            )
        return normalise_keys(state)
    return normalise_keys(_read_tensors(path))


def _read_tensors(path: Path, want=lambda key: True) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise HeadsError(f"{path} is not a file: remove it or point --heads at the real heads file")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys() if want(k)}  # noqa: SIM118
        except Exception as exc:  # safetensors raises its own error types
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise HeadsError(
                f"{path} is not a readable safetensors file ({reason}): it is empty, truncated or damaged; "
                "re-download or re-train it"
            ) from exc
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(exc)
        if "Unsupported" not in detail:
            raise HeadsError(
                f"{path} is not a readable PyTorch checkpoint ({detail or 'not a pickle'}): it is empty, truncated "
                "or damaged; re-download or re-train it"
            ) from exc
        raise HeadsError(
            f"refused to load {path}: the pickle needs more than plain tensors ({detail}). "
            "Only weights are accepted; nothing in the file was run."
        ) from exc
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise HeadsError(
            f"{path} is not a readable PyTorch checkpoint ({reason}): it is empty, truncated or damaged; "
            "re-download or re-train it"
        ) from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HeadsError(f"{path} does not hold a state dict of tensors")
    return {k: v for k, v in state.items() if want(k)}


def _unpickler_detail(exc: Exception) -> str:
    """The one useful line of torch's long weights-only error (what the unpickler refused), shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if "WeightsUnpickler error:" in line]
    detail = lines[-1].split("WeightsUnpickler error:", 1)[1].strip() if lines else " ".join(str(exc).split())
    return detail.split(" was not an allowed global")[0][:200]


def normalise_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map Medusa-2 (``medusa_head.``) and vLLM (``blocks.``/``lm_heads.``) names to FasterDecoding's."""
    out: dict[str, torch.Tensor] = {}
    layers = {int(m.group(2)) for k in state if (m := re.match(r"^blocks\.(\d+)\.layers\.(\d+)\.", k))}
    num_layers = max(layers) + 1 if layers else 0
    for key, tensor in state.items():
        key = key.removeprefix("medusa_heads.").removeprefix("medusa_head.")
        if m := re.match(r"^blocks\.(\d+)\.layers\.(\d+)\.(weight|bias)$", key):
            key = f"{m[1]}.{m[2]}.linear.{m[3]}"
            if m[3] == "weight" and f"blocks.{m[1]}.layers.{m[2]}.bias" not in state:
                out[f"{m[1]}.{m[2]}.linear.bias"] = tensor.new_zeros(tensor.shape[0])  # vLLM without medusa_fc_bias
        elif m := re.match(r"^lm_heads\.(\d+)\.weight$", key):
            key = f"{m[1]}.{num_layers}.weight"
        out[key] = tensor
    return out


def heads_from_state(
    state: Mapping[str, torch.Tensor],
    hidden_size: int | None = None,
    vocab_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> MedusaHeads:
    """Build :class:`MedusaHeads` in ``dtype`` from a FasterDecoding-layout state dict, checking shapes.

    K and L are inferred from the keys. ``hidden_size``/``vocab_size`` are the base model's;
    a mismatch raises :class:`HeadsError` naming the tensor. The heads take the state's tensors
    (converted where ``dtype`` differs): no second copy of the weights is ever made.
    """
    blocks: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    projections: dict[int, tuple[int, torch.Tensor]] = {}
    extras = {k: state[k] for k in EXTRA_KEYS if k in state}
    if ("root_weight" in extras) != ("root_bias" in extras):
        raise HeadsError("root-conditioned heads need both root_weight and root_bias")
    for key, tensor in state.items():
        if key in extras:
            continue
        if m := _BLOCK.match(key):
            blocks.setdefault((int(m[1]), int(m[2])), {})[m[3]] = tensor
        elif m := _PROJ.match(key):
            projections[int(m[1])] = (int(m[2]), tensor)
        else:
            raise HeadsError(f"unexpected tensor {key!r} in Medusa heads")
    if not blocks:
        raise HeadsError("the Medusa heads file holds no residual blocks ({i}.{j}.linear.weight)")
    num_heads = max(i for i, _ in blocks) + 1
    num_layers = max(j for _, j in blocks) + 1
    for i in range(num_heads):
        for j in range(num_layers):
            if set(blocks.get((i, j), {})) != {"weight", "bias"}:
                raise HeadsError(f"Medusa head {i} lacks block {j} (weight and bias)")
    if projections and set(projections) != set(range(num_heads)):
        raise HeadsError(f"only heads {sorted(projections)} of {num_heads} have a vocab projection")
    if any(layer != num_layers for layer, _ in projections.values()):
        raise HeadsError("Medusa head vocab projections are not after the last block")

    h = blocks[(0, 0)]["weight"].shape[0]
    if hidden_size is not None and h != hidden_size:
        raise HeadsError(f"Medusa heads have hidden size {h} but the base model has {hidden_size}: wrong base model?")
    v = projections[0][1].shape[0] if projections else (vocab_size or 0)
    if vocab_size is not None and projections and v != vocab_size:
        raise HeadsError(f"Medusa heads project onto {v} tokens but the base model's vocabulary has {vocab_size}")
    draft = extras.get("draft_vocab")
    if draft is not None:
        if projections:
            raise HeadsError("a draft vocabulary needs heads that share the base lm_head, but these have their own")
        if draft.dim() != 1 or draft.dtype.is_floating_point or (vocab_size and int(draft.max()) >= vocab_size):
            raise HeadsError("the heads' draft_vocab is not a list of token ids of the base model's vocabulary")
    with torch.device("meta"):  # shapes only: the state's tensors become the parameters
        heads = MedusaHeads(h, v, num_heads, num_layers, shared_projection=not projections,
                            root_conditioned="root_weight" in extras, draft_vocab=draft)
    expected = heads.state_dict()
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            want = tuple(expected[key].shape)
            raise HeadsError(f"Medusa heads tensor {key} has shape {tuple(tensor.shape)}, expected {want}")
    heads.load_state_dict({k: v if k == "draft_vocab" else v.to(dtype) for k, v in state.items()}, assign=True)
    return heads


def load_heads(
    path: str | Path,
    hidden_size: int | None = None,
    vocab_size: int | None = None,
    lm_head: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> MedusaHeads:
    """Read heads in any supported layout, in ``dtype``, and check them against the base model's sizes.

    ``lm_head`` is the base model's output projection weight [V, H]: a lone projection among several
    heads that equals it (vLLM's ``original_lm_head``) is dropped and the heads share the base one.
    """
    return heads_from_state(heads_state(path, lm_head, vocab_size), hidden_size, vocab_size, dtype)


def heads_state(
    path: str | Path, lm_head: torch.Tensor | None = None, vocab_size: int | None = None
) -> dict[str, torch.Tensor]:
    """The heads' tensors in FasterDecoding layout, without a vLLM-style copy of the base lm_head."""
    directory = Path(path) if Path(path).is_dir() else Path(path).parent
    original = config_bool(read_heads_config(path), "original_lm_head", directory / CONFIG)
    return _drop_original_lm_head(load_heads_state(path), original, lm_head, vocab_size)


def _drop_original_lm_head(
    state: dict[str, torch.Tensor], original: bool, lm_head: torch.Tensor | None, vocab_size: int | None
) -> dict[str, torch.Tensor]:
    """``state`` without its single vocab projection when that projection is the base lm_head."""
    projections = [k for k in state if _PROJ.match(k)]
    num_heads = len({k.split(".")[0] for k in state if _BLOCK.match(k)})
    if len(projections) != 1 or not (original or num_heads > 1):
        return state
    projection = state[projections[0]]
    if vocab_size is not None and projection.shape[0] != vocab_size:
        raise HeadsError(
            f"Medusa heads project onto {projection.shape[0]} tokens but the base model's vocabulary has {vocab_size}"
        )
    if not original and not _same_weights(projection, lm_head):
        return state  # heads_from_state names the heads without a projection
    return {k: v for k, v in state.items() if k != projections[0]}


def _same_weights(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Whether ``a`` equals ``b``, compared in the lower of their two precisions."""
    if b is None or a.shape != b.shape:
        return False
    low = min(a.dtype, b.dtype, key=lambda d: torch.finfo(d).bits)
    return torch.equal(a.to(low), b.detach().to(device="cpu", dtype=low))
