"""``medusa-chat trees``: the tree presets, chain-N and this machine's tuned tree."""

from __future__ import annotations

from collections.abc import Sequence

import typer

from ..engine.presets import PRESETS
from ..trees import tuned_tree
from .common import DEFAULT_MODEL


def trees() -> None:
    """List the tree presets with their size and depth, chain-N, and this machine's tuned tree."""
    for name, choices in PRESETS.items():
        size, depth = shape(choices)
        typer.echo(f"{name:28s} {size:3d} slots  depth {depth}")
    typer.echo(f"{'chain-N':28s} N+1 slots  depth N   (the top-1 chain, e.g. chain-4)")
    typer.echo(f"{'tuned':28s} {tuned_summary(DEFAULT_MODEL)}")


def shape(choices: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(slots with the root, depth) of a tree."""
    return len(choices) + 1, max((len(c) for c in choices), default=0)


def tuned_summary(model: str) -> str:
    """Whether a tree tuned on this machine exists for ``model`` (on the device and dtype it would use)."""
    try:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = "fp16" if device == "cuda" else "fp32"  # what --dtype auto picks
        choices = tuned_tree(model, device, dtype)
        if choices is not None:
            size, depth = shape(choices)
            return f"{size:3d} slots  depth {depth}   (tuned for {model} on {device} {dtype})"
    except Exception as exc:  # a listing never fails
        return f"unknown ({exc})"
    return f"none yet for {model} on this machine: run `medusa-chat tune --model {model}`"
