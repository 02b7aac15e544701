"""Write Medusa heads in the layouts vLLM and TGI load (``medusa-chat export``).

- vLLM (``speculative_config={"method": "medusa", "model": DIR}``): ``config.json`` with
  ``model_type: medusa`` and ``model.safetensors`` with ``blocks.{h}.layers.{l}.weight|bias`` and
  ``lm_heads.{h}.weight``. Heads that share the base ``lm_head`` are written with
  ``original_lm_head: true`` and the base projection as ``lm_heads.0.weight``. Biases are kept
  (``medusa_fc_bias: true``).
- TGI (``--model-id DIR``): ``config.json`` with ``medusa_num_heads``, ``medusa_num_layers``,
  ``base_model_name_or_path`` and ``medusa_lm_head.safetensors`` with ``{i}.{j}.linear.*`` and
  ``{i}.{L}.weight``. TGI's V1 loader needs a projection per head, so shared heads get a copy of the
  base ``lm_head`` in each (TGI's V2 loader could share it, but only for one block per head).

Shared heads need the base model (``base``: a local model dir) for its ``lm_head`` weight.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError

FORMATS = ("vllm", "tgi")


class ExportError(UserError, ValueError):
    """Heads that cannot be written in the asked layout (e.g. no base model for a shared projection)."""


def base_lm_head(base: str | Path):
    """The base model's output projection [V, H], read from its weight files without building the model."""
    import torch
    from safetensors import safe_open

    base = Path(base)
    config = json.loads((base / "config.json").read_text()) if (base / "config.json").is_file() else {}
    tied = config.get("tie_word_embeddings", False)
    names = ["lm_head.weight", *(["model.embed_tokens.weight"] if tied else [])]
    for shard in sorted(base.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for name in names:
                if name in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                    return f.get_tensor(name)
    for shard in sorted(base.glob("pytorch_model*.bin")):
        state = torch.load(str(shard), map_location="cpu", weights_only=True, mmap=True)
        for name in names:
            if name in state:
                return state[name].clone()
    raise ExportError(f"no lm_head.weight in the weight files of {base}")


def check_out_dir(out_dir: str | Path, force: bool = False) -> Path:
    """``out_dir`` as a Path when it is new, an empty directory, or (with ``force``) any directory."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file: name a new or empty directory")
    if out.is_dir() and not force and any(out.iterdir()):
        raise ExportError(f"--out {out} is not empty: name a new or empty directory, or pass --force to overwrite")
    return out


def export_heads(
    heads_path: str | Path, fmt: str, out_dir: str | Path, base: str | Path | None = None, force: bool = False
) -> Path:
    """Write the heads at ``heads_path`` (any layout ``load_heads`` reads) as ``fmt`` into ``out_dir``.

    ``out_dir`` must be new or empty unless ``force`` (then files of the same name are replaced).
    """
    from safetensors.torch import save_file

    from .engine.heads_io import heads_from_state, heads_state, read_heads_config

    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = check_out_dir(out_dir, force)
    state = heads_state(heads_path)
    heads = heads_from_state(state)  # checks the layout, infers K, L and H
    if heads.root_conditioned:
        raise ExportError(
            f"the heads in {heads_path} are root-conditioned (medusa-chat's own kind): vLLM and TGI take only "
            "Medusa-1 heads; train Medusa-1 heads (medusa-chat train --head-kind medusa-1) to export"
        )
    state = {k: v for k, v in state.items() if k != "draft_vocab"}  # the formats score the whole vocabulary
    k, layers, hidden = heads.num_heads, heads.num_layers, heads.hidden_size
    config = read_heads_config(heads_path)
    base_name = str(base) if base else config.get("base_model_name_or_path", "")
    dtype = state["0.0.linear.weight"].dtype
    projection = None
    if heads.shared_projection:
        if base is None:
            raise ExportError(
                f"the heads in {heads_path} share the base model's lm_head: pass the base model dir with --base"
            )
        projection = base_lm_head(base).to(dtype)
        if projection.shape[1] != hidden:
            raise ExportError(f"the base lm_head has hidden size {projection.shape[1]} but the heads have {hidden}")
    vocab = projection.shape[0] if projection is not None else heads.vocab_size

    out.mkdir(parents=True, exist_ok=True)
    names = [(i, j, p) for i in range(k) for j in range(layers) for p in ("weight", "bias")]
    if fmt == "vllm":
        tensors = {f"blocks.{i}.layers.{j}.{p}": state[f"{i}.{j}.linear.{p}"] for i, j, p in names}
        if projection is not None:
            tensors["lm_heads.0.weight"] = projection
        else:
            tensors |= {f"lm_heads.{i}.weight": state[f"{i}.{layers}.weight"] for i in range(k)}
        meta = {
            "model_type": "medusa",
            "architectures": ["MedusaModel"],
            "hidden_size": hidden,
            "vocab_size": vocab,
            "num_heads": k,
            "num_hidden_layers": layers,
            "truncated_vocab_size": None,
            "medusa_fc_bias": True,
            "original_lm_head": projection is not None,
            "base_model_name_or_path": base_name,
        }
        weights = out / "model.safetensors"
    else:
        tensors = {f"{i}.{j}.linear.{p}": state[f"{i}.{j}.linear.{p}"] for i, j, p in names}
        for i in range(k):  # a copy per head: safetensors refuses tensors that share memory
            own = projection.clone() if projection is not None else state[f"{i}.{layers}.weight"]
            tensors[f"{i}.{layers}.weight"] = own
        meta = {
            "medusa_num_heads": k,
            "medusa_num_layers": layers,
            "base_model_name_or_path": base_name,
            "hidden_size": hidden,
            "vocab_size": vocab,
        }
        weights = out / "medusa_lm_head.safetensors"
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(weights), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
