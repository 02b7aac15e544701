"""Which candidate tree a model uses: names, the tuned-tree files under ``data_dir()/trees``, and one resolver.

Torch-free (plain JSON and the presets' data): the CLI and the app's first paint use it.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .engine.choices import TreeError, check_choices
from .engine.presets import DEFAULT_CPU_TREE, DEFAULT_GPU_TREE, PRESETS, fit_to_heads, preset
from .paths import data_dir

AUTO = "auto"
"""The model's default: tuned here, else its own recommended tree, else the device's preset."""
TUNED = "tuned"
"""The tree ``medusa-chat tune`` saved for the model, device and precision."""


def tree_names() -> list[str]:
    """Every tree a user can pick by name (``chain-N`` aside): auto, tuned, then the presets."""
    return [AUTO, TUNED, *PRESETS]


def tree_problem(tree: str | None) -> str | None:
    """Why ``tree`` names no tree (one line), or None when it does (or is empty)."""
    if not tree or tree in (AUTO, TUNED):
        return None
    try:
        preset(tree)
    except TreeError as exc:
        return str(exc)
    return None


# -- tuned trees ---------------------------------------------------------------------------------------


def tree_path(model: str, device: str, dtype: str) -> Path:
    """Where the tuned tree of a model on a device and precision is saved."""
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", part).strip("_") or "_" for part in (model, device, dtype)]
    directory = data_dir() / "trees"
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{'__'.join(safe)}.json"


def save_tuned(report: Mapping) -> Path:
    """Write a tuning report (``model``, ``device``, ``dtype``, ``choices``...) where :func:`tuned_tree` finds it."""
    path = tree_path(report["model"], report["device"], report["dtype"])
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def tuned_tree(model_name: str, device: str, dtype: str, num_heads: int | None = None) -> list[list[int]] | None:
    """The saved tuned tree's choices, or None when there is none or it cannot be used (with a warning).

    ``num_heads``, when given, rejects a tree deeper than the heads now loaded.
    """
    path = tree_path(model_name, device, dtype)
    if not path.is_file():
        return None
    try:
        choices = json.loads(path.read_text(encoding="utf-8"))["choices"]
        check_choices(choices, num_heads=num_heads)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:  # TreeError is a ValueError
        reason = str(exc) if isinstance(exc, TreeError) else f"{type(exc).__name__}: {exc}"
        warnings.warn(f"ignoring the tuned tree in {path}: {reason}; run `medusa-chat tune` again", stacklevel=2)
        return None
    return [list(c) for c in choices]


# -- the one resolver ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeChoice:
    """A resolved tree: its choices, the name shown for it, and a note for the user (or None)."""

    choices: list[list[int]]
    name: str
    note: str | None = None


def resolve_tree(
    tree: str | None,
    *,
    model: str,
    device: str,
    dtype: str,
    num_heads: int,
    default: str | None = None,
    automatic: TreeChoice | None = None,
) -> TreeChoice:
    """The tree to use for ``tree`` (a preset, ``chain-N``, :data:`TUNED`, :data:`AUTO` or None).

    A preset is used as named (:class:`TreeError` when unknown). Otherwise: the tree tuned on this
    machine, else ``automatic`` (the tree calibration picked when the model was loaded), else
    ``default`` (the heads' own recommended tree), else the device's preset, cut to ``num_heads``.
    :data:`TUNED` without a tuned tree falls back the same way, with a note naming the tree used.
    """
    if tree and tree not in (AUTO, TUNED):
        return TreeChoice(preset(tree), tree)
    try:
        tuned = tuned_tree(model, device, dtype, num_heads=num_heads)
    except OSError:  # the data directory cannot be created or read: no tuned tree
        tuned = None
    if tuned is not None:
        return TreeChoice(tuned, TUNED)
    if automatic is not None:
        choices, name = automatic.choices, automatic.name
    else:
        name = default or (DEFAULT_CPU_TREE if device == "cpu" else DEFAULT_GPU_TREE)
        full = preset(name)
        choices = fit_to_heads(full, num_heads)
        if len(choices) < len(full):
            name = f"{name}/depth-{num_heads}"
    note = None
    if tree == TUNED:
        note = f"no tuned tree for {model} on {device} ({dtype}) yet: using {name}; run `medusa-chat tune -m {model}`"
    return TreeChoice(choices, name, note)
