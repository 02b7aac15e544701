"""Side-by-side speed measurements: plain decoding, Medusa, transformers ``generate`` and prompt lookup.

Every prompt runs every method, in rotation, in one process, greedy, so the ratios compare like
with like on the same machine state. Tokens/s counts wall time from the prompt to the last token
(prefill included) for every method.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .machine import cpu_model

METHODS = ("plain", "medusa", "hf", "hf_lookup", "hybrid", "tf_plain", "tf_medusa")
REFERENCE_METHODS = ("hf", "hf_lookup", "tf_plain", "tf_medusa")
"""Methods that run on the transformers path (a second model when the main one is on the lean decoder)."""
DEFAULT_METHODS = ("plain", "medusa", "hf", "hf_lookup")
LOOKUP_TOKENS = 10
FOLLOW_UPS = (
    "Repeat your previous answer exactly.",
    "Rewrite your answer, adding a title at the top.",
    "Put your answer in a numbered list.",
    "Quote the most important sentence of your answer, then explain it.",
)
"""Second turns that edit or quote the first answer: the copy-from-context case of real chats."""

Conversation = list[dict[str, str]]


@dataclass
class Run:
    """One method on one prompt."""

    method: str
    new_tokens: int
    seconds: float
    steps: int = 0
    decode_seconds: float = 0.0
    token_ids: list[int] = field(default_factory=list)

    @property
    def tok_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def read_prompts(path: str | Path, limit: int | None = None) -> list[str]:
    """The prompt texts of a JSONL file (see :func:`medusa_chat.prompts.read_prompts`)."""
    from .prompts import read_prompts as read

    return [p.text for p in read(path, limit)]


def copy_conversations(loaded, prompts: list[str], answer_tokens: int = 96) -> list[Conversation]:
    """Two-turn chats: each prompt, the model's own greedy answer, then a follow-up that edits or quotes it."""
    from .engine.generator import GenerationConfig

    chats = []
    for i, prompt in enumerate(prompts):
        first = [{"role": "user", "content": prompt}]
        loaded.generator.reset()
        answer = loaded.generator.generate(loaded.chat_ids(first), GenerationConfig(max_new_tokens=answer_tokens))
        follow_up = FOLLOW_UPS[i % len(FOLLOW_UPS)]
        chats.append([*first, {"role": "assistant", "content": answer.text}, {"role": "user", "content": follow_up}])
    loaded.generator.reset()
    return chats


def as_conversation(prompt: str | Conversation) -> Conversation:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def run_engine(loaded, ids: list[int], max_new_tokens: int, medusa: bool, lookup: int = 0) -> Run:
    """Our generator, greedy, from an empty cache."""
    from .engine.generator import GenerationConfig

    gen = loaded.generator
    gen.reset()
    config = GenerationConfig(max_new_tokens=max_new_tokens, medusa=medusa, prompt_lookup=lookup)
    started = time.perf_counter()
    stats = gen.generate(ids, config)
    seconds = time.perf_counter() - started
    gen.reset()
    method = "hybrid" if lookup else ("medusa" if medusa else "plain")
    return Run(method, stats.new_tokens, seconds, stats.steps, stats.decode_time, stats.token_ids)


def run_hf(loaded, ids: list[int], max_new_tokens: int, lookup: bool) -> Run:
    """transformers ``generate``, greedy (with prompt lookup decoding when ``lookup``)."""
    import torch

    gen = loaded.generator
    model = gen.decoder.model  # a TransformersDecoder: the reference model of a lean-decoder bench
    eos = sorted(gen.eos_ids)
    inputs = torch.tensor([ids], device=gen.device)
    extra = {"prompt_lookup_num_tokens": LOOKUP_TOKENS} if lookup else {}
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos or None,
            pad_token_id=eos[0] if eos else 0,
            **extra,
        )
    seconds = time.perf_counter() - started
    new = out[0, len(ids) :].tolist()
    if new and new[-1] in gen.eos_ids:
        new = new[:-1]
    return Run("hf_lookup" if lookup else "hf", len(new), seconds, token_ids=new)


RUNNERS: dict[str, Callable] = {
    "plain": lambda m, ids, n: run_engine(m, ids, n, medusa=False),
    "medusa": lambda m, ids, n: run_engine(m, ids, n, medusa=True),
    "hf": lambda m, ids, n: run_hf(m, ids, n, lookup=False),
    "hf_lookup": lambda m, ids, n: run_hf(m, ids, n, lookup=True),
    "hybrid": lambda m, ids, n: run_engine(m, ids, n, medusa=True, lookup=LOOKUP_TOKENS),
    "tf_plain": lambda m, ids, n: _renamed(run_engine(m, ids, n, medusa=False), "tf_plain"),
    "tf_medusa": lambda m, ids, n: _renamed(run_engine(m, ids, n, medusa=True), "tf_medusa"),
}


def _renamed(run: Run, method: str) -> Run:
    run.method = method
    return run


def peak_rss_mb() -> float | None:
    """This process's peak resident memory since the last :func:`reset_peak_rss` (Linux), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def bench(
    loaded,
    prompts: list[str | Conversation],
    max_new_tokens: int = 128,
    methods: Iterable[str] = DEFAULT_METHODS,
    on_run: Callable[[int, Run], None] | None = None,
    reference=None,
    profile: bool = False,
) -> dict:
    """Run every method on every prompt or conversation (rotating the order per prompt) and summarise.

    ``reference`` is the same model on the transformers path, for :data:`REFERENCE_METHODS` when
    ``loaded`` runs on the lean decoder (by default they run on ``loaded`` itself). ``profile``
    times the sections of each step of our generator's methods (``summary["profile"]``, ms per step).
    """
    from .engine.profile import StepProfile

    methods = [m for m in METHODS if m in set(methods)]
    if "medusa" in methods and not loaded.generator.has_heads:
        raise ValueError(f"{loaded.name} has no Medusa heads to benchmark: pass --heads")
    reference = reference or loaded
    if any(m in REFERENCE_METHODS for m in methods) and reference.engine != "transformers":
        raise ValueError("hf, hf_lookup, tf_plain and tf_medusa need the model on the transformers path")

    def target(method: str):
        return reference if method in REFERENCE_METHODS else loaded

    warm = loaded.chat_ids([{"role": "user", "content": "Hi"}])
    for method in methods:
        RUNNERS[method](target(method), warm, 4)
    per_prompt = []
    profiles = {m: StepProfile(loaded.device) for m in methods if profile and m not in ("hf", "hf_lookup")}
    for i, prompt in enumerate(prompts):
        ids = loaded.chat_ids(as_conversation(prompt))
        order = methods[i % len(methods) :] + methods[: i % len(methods)]
        runs = {}
        for method in order:
            generator = target(method).generator
            generator.profile = profiles.get(method)
            try:
                runs[method] = RUNNERS[method](target(method), ids, max_new_tokens)
            finally:
                generator.profile = None
            if on_run:
                on_run(i, runs[method])
        per_prompt.append(runs)
    report = summarise(loaded, prompts, per_prompt, methods, max_new_tokens)
    if profiles:
        report["summary"]["profile"] = {m: {k: round(v, 3) for k, v in p.per_step_ms().items()}
                                        for m, p in profiles.items()}
    return report


def summarise(
    loaded, prompts: list[str | Conversation], per_prompt: list[dict[str, Run]], methods: list[str], max_new_tokens: int
):
    """The ``{"summary": ..., "prompts": [...]}`` report."""
    import torch

    def total(method: str) -> float:
        runs = [r[method] for r in per_prompt]
        seconds = sum(r.seconds for r in runs)
        return sum(r.new_tokens for r in runs) / seconds if seconds else 0.0

    def median(method: str) -> float:
        return statistics.median(r[method].tok_s for r in per_prompt)

    def step_time(method: str) -> float:
        runs = [r[method] for r in per_prompt]
        steps = sum(r.steps for r in runs)
        return sum(r.decode_seconds for r in runs) / steps if steps else 0.0

    speed = {m: total(m) for m in methods}
    summary: dict = {}
    for m in METHODS:
        summary[f"{m}_tok_s"] = round(speed[m], 3) if m in speed else None
        summary[f"{m}_tok_s_median"] = round(median(m), 3) if m in speed else None
    has = set(methods)
    summary["speedup_vs_plain"] = _ratio(speed, "medusa", "plain")
    summary["speedup_vs_hf"] = _ratio(speed, "medusa", "hf")
    summary["speedup_hybrid_vs_medusa"] = _ratio(speed, "hybrid", "medusa")
    summary["speedup_hybrid_vs_plain"] = _ratio(speed, "hybrid", "plain")
    summary["plain_vs_tf_plain"] = _ratio(speed, "plain", "tf_plain")
    summary["tf_speedup_vs_tf_plain"] = _ratio(speed, "tf_medusa", "tf_plain")
    if {"medusa", "plain"} <= has:
        medusa_runs = [r["medusa"] for r in per_prompt]
        summary["mean_accepted"] = round(
            sum(r.new_tokens for r in medusa_runs) / max(1, sum(r.steps for r in medusa_runs)), 4
        )
        plain_step = step_time("plain")
        summary["step_overhead"] = round(step_time("medusa") / plain_step, 4) if plain_step else None
        identical = [r["medusa"].token_ids == r["plain"].token_ids for r in per_prompt]
        summary["identical_fraction"] = round(sum(identical) / len(identical), 4)
    else:
        summary.update(mean_accepted=None, step_overhead=None, identical_fraction=None)
    summary["machine"] = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": loaded.device,
        "python": platform.python_version(),
    }
    summary["settings"] = {
        "model": loaded.name,
        "dtype": loaded.dtype,
        "quant": loaded.quant,
        "engine": loaded.engine,
        "tree": loaded.tree_name,
        "tree_size": loaded.generator.tree.size,
        "max_new_tokens": max_new_tokens,
        "prompts": len(prompts),
        "methods": methods,
    }
    rows = []
    for prompt, runs in zip(prompts, per_prompt, strict=True):
        chat = as_conversation(prompt)
        row = {"prompt": chat[0]["content"][:200], "turns": (len(chat) + 1) // 2, "last": chat[-1]["content"][:200]}
        for m, r in runs.items():
            data = asdict(r)
            data.pop("token_ids")
            data["tok_s"] = round(r.tok_s, 3)
            row[m] = data
        if {"medusa", "plain"} <= has:
            row["identical"] = runs["medusa"].token_ids == runs["plain"].token_ids
        if {"hybrid", "plain"} <= has:
            row["hybrid_identical"] = runs["hybrid"].token_ids == runs["plain"].token_ids
        rows.append(row)
    return {"summary": summary, "prompts": rows}


def _ratio(speed: dict[str, float], a: str, b: str) -> float | None:
    if a in speed and b in speed and speed[b] > 0:
        return round(speed[a] / speed[b], 4)
    return None


def format_table(report: dict) -> str:
    """A plain-text table of the summary."""
    s = report["summary"]
    lines = [f"{'method':12s} {'tok/s (total)':>14s} {'tok/s (median)':>15s}"]
    for m in METHODS:
        if s.get(f"{m}_tok_s") is not None:
            lines.append(f"{m:12s} {s[f'{m}_tok_s']:14.2f} {s[f'{m}_tok_s_median']:15.2f}")
    keys = ("speedup_vs_plain", "speedup_vs_hf", "speedup_hybrid_vs_medusa", "speedup_hybrid_vs_plain",
            "plain_vs_tf_plain", "tf_speedup_vs_tf_plain", "mean_accepted", "step_overhead", "identical_fraction")
    for key in keys:
        if s.get(key) is not None:
            lines.append(f"{key:20s} {s[key]:.3f}")
    st = s["settings"]
    lines.append(
        f"model {st['model']} ({st['engine']}, {st['dtype']}, quant {st['quant']}), "
        f"tree {st['tree']} ({st['tree_size']} slots), "
        f"{st['prompts']} prompts x {st['max_new_tokens']} new tokens, {s['machine']['threads']} threads"
    )
    for name, mb in (s.get("peak_rss_mb") or {}).items():
        lines.append(f"peak RSS {name}: {mb:.0f} MB")
    if s.get("profile"):
        lines += ["", format_profile(s["profile"])]
    return "\n".join(lines)


def format_profile(profile: dict[str, dict[str, float]]) -> str:
    """Milliseconds per step in each section, a column per method."""
    from .engine.profile import SECTIONS

    methods = list(profile)
    lines = [f"{'ms per step':14s}" + "".join(f"{m:>11s}" for m in methods)]
    for section in (*SECTIONS, "other", "total"):
        if any(section in profile[m] for m in methods):
            cells = "".join(f"{profile[m][section]:11.2f}" if section in profile[m] else f"{'':11s}" for m in methods)
            lines.append(f"{section:14s}{cells}")
    return "\n".join(lines)
