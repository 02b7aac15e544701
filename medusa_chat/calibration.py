"""Calibration at first load: the tree with the most expected tokens/s on this machine, or plain decoding.

``medusa-chat tune`` is the thorough version (minutes). This one runs when a model is loaded on a
machine with no tree measured for it, in well under 30 s: the heads' acceptance comes from their
own measured per-rank hit rates (``dev_accuracy`` in their config, written by ``train``) or a
short greedy run; step costs are measured for a few tree sizes against plain steps at the same
cache length (medians); the greedy-grown tree with the highest expected accepted tokens per unit
of step cost wins, and plain decoding wins when no tree is predicted at least
:data:`MIN_GAIN` faster. The result is cached per model, heads checksum, device, precision,
engine and CPU (model name and instruction set), so later loads reuse it.
``MEDUSA_CHAT_CALIBRATION=off`` skips it (the preset default is used).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .machine import cpu_flags, cpu_model, kernel_capability
from .paths import data_dir

SIZES = (2, 3, 4, 6, 8, 12, 16)
MIN_GAIN = 1.05
CACHE_VERSION = 6
CALIBRATION_NAME = "calibrated"

CostMeasure = Callable[[Sequence[int], Sequence[Sequence[int]]], Mapping[int, float]]
"""``measure(sizes, node_order)`` -> step cost of each size relative to a plain step."""


@dataclass
class TreeCalibration:
    choices: list[list[int]]  # [] = plain decoding is faster here
    predicted_speedup: float
    costs: dict[int, float]
    seconds: float
    key: dict

    @property
    def name(self) -> str:
        return f"{CALIBRATION_NAME}-{len(self.choices) + 1}" if self.choices else "plain (calibrated)"


def enabled() -> bool:
    return os.environ.get("MEDUSA_CHAT_CALIBRATION", "on").lower() not in ("0", "off", "no", "false")


def cpu_signature() -> str:
    """CPU model name, the instruction-set flags that change kernel speed and the set torch's kernels use."""
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    return f"{cpu_model()} [{' '.join(flags)}] kernels {kernel_capability()}"


def heads_checksum(heads_path: Path | None) -> str:
    """sha256 of the heads' weight files (the tree is only valid for the heads it was measured with)."""
    digest = hashlib.sha256()
    if heads_path is not None:
        files = [heads_path] if heads_path.is_file() else sorted(heads_path.glob("*.safetensors"))
        files += sorted(heads_path.glob("*.pt")) if heads_path.is_dir() else []
        for file in files:
            digest.update(file.read_bytes())
    return digest.hexdigest()


def cache_key(model: str, heads_path: Path | None, device: str, dtype: str, quant: str, engine: str) -> dict:
    return {"version": CACHE_VERSION, "model": model, "heads": heads_checksum(heads_path), "device": device,
            "dtype": dtype, "quant": quant, "engine": engine, "cpu": cpu_signature() if device == "cpu" else device}


def cache_path(key: Mapping) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return data_dir() / "calibration" / f"{digest}.json"


def load_cached(key: Mapping) -> TreeCalibration | None:
    try:
        data = json.loads(cache_path(key).read_text(encoding="utf-8"))
        if data.get("key") != dict(key):
            return None
        data["costs"] = {int(q): c for q, c in data["costs"].items()}
        return TreeCalibration(**data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def save(result: TreeCalibration) -> None:
    try:
        path = cache_path(result.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError:  # an unwritable data directory: calibrate again next time
        pass


def rates_from_config(config: Mapping) -> list[list[float]] | None:
    """Per-head per-rank hit rates the heads' trainer measured on dev prompts, if recorded."""
    heads = (config.get("dev_accuracy") or {}).get("heads") or {}
    rates = [heads[f"head{i}"].get("rank_hits") for i in range(len(heads)) if f"head{i}" in heads]
    return rates if rates and all(isinstance(r, list) and r for r in rates) else None


def choose_tree(
    rates: Sequence[Sequence[float]], measure: CostMeasure, num_heads: int, max_size: int = SIZES[-1]
) -> tuple[list[list[int]], float, dict[int, float]]:
    """(choices, predicted speedup, measured costs): the best greedy-grown tree, or [] when none pays."""
    from .tuning import build_best_tree, grow_tree, smooth_costs

    order = grow_tree(list(rates)[:num_heads], num_heads, max_size - 1)
    sizes = [q for q in SIZES if q <= len(order) + 1]
    costs = dict(measure(sizes, order))
    choices, speedup = build_best_tree(list(rates)[:num_heads], smooth_costs(costs), num_heads, max_size - 1)
    if speedup < MIN_GAIN:
        return [], 1.0, costs
    return choices, speedup, costs


def calibrate(
    generator, prompt_ids: Sequence[int], rates: Sequence[Sequence[float]], key: dict,
    progress: Callable[[str], None] = lambda _m: None,
) -> TreeCalibration:
    """Measure step costs on ``generator`` at ``prompt_ids`` and pick the tree (cached under ``key``)."""
    from .tuning import measure_step_costs

    started = time.perf_counter()

    def measure(sizes: Sequence[int], order: Sequence[Sequence[int]]) -> Mapping[int, float]:
        def report(_phase: str, done: int, total: int) -> None:
            progress(f"calibrating the tree for this machine (once): {done}/{total}")

        return measure_step_costs(generator, sizes, prompt_ids, repeats=3, steps=6, order=order, progress=report)

    choices, speedup, costs = choose_tree(rates, measure, generator.heads.num_heads)
    result = TreeCalibration(choices, speedup, costs, time.perf_counter() - started, key)
    save(result)
    return result
