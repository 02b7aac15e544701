"""``medusa-chat bench``: plain, Medusa, transformers generate and prompt lookup side by side."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from .common import (
    DEFAULT_MODEL,
    DeviceOpt,
    DtypeOpt,
    EngineOpt,
    HeadsOpt,
    ModelOpt,
    QuantOpt,
    ThreadsOpt,
    TreeOpt,
    fail,
    load_or_fail,
)


def bench(
    model: ModelOpt = DEFAULT_MODEL,
    heads: HeadsOpt = None,
    prompts: Annotated[
        str, typer.Option("--prompts", help="JSONL file with a 'prompt' field per line (default: the shipped dev set).")
    ] = "",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use the first N prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 128,
    tree: TreeOpt = None,
    dtype: DtypeOpt = None,
    quant: QuantOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            help="Comma-separated: plain, medusa, hf, hf_lookup, hybrid (Medusa + lookup), and tf_plain, tf_medusa "
            "(the engine on the transformers path, to compare with the lean decoder).",
        ),
    ] = "plain,medusa,hf,hf_lookup",
    engine: EngineOpt = None,
    copy: Annotated[
        bool,
        typer.Option("--copy-tasks", help="Two-turn chats whose second turn edits or quotes the model's first answer."),
    ] = False,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the full report to this file.")] = None,
    profile: Annotated[
        bool,
        typer.Option("--profile", help="Also print where each step's time goes (heads, tree forward, logits, ...)."),
    ] = False,
) -> None:
    """Measure plain, Medusa, transformers generate and prompt lookup side by side, greedy."""
    from tqdm import tqdm

    from ..bench import (
        METHODS,
        REFERENCE_METHODS,
        copy_conversations,
        format_table,
        peak_rss_mb,
        read_prompts,
        reset_peak_rss,
    )
    from ..bench import bench as run_bench

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        fail(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    if not prompts:
        from ..prompts import DEV_PROMPTS

        prompts = str(DEV_PROMPTS)
    try:
        texts = read_prompts(prompts, limit)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    reset_peak_rss()
    loaded = load_or_fail(
        model, heads=heads, tree=tree, dtype=dtype, quant=quant, device=device, threads=threads, engine=engine
    )
    peaks = {f"{loaded.engine} (load)": peak_rss_mb()}
    reference = None
    if loaded.engine != "transformers" and any(m in REFERENCE_METHODS for m in chosen):
        typer.echo("loading the transformers path for hf/tf methods", err=True)
        reset_peak_rss()
        reference = load_or_fail(
            model, heads=heads, tree="chain-1", dtype=dtype if loaded.quant != "none" else loaded.dtype,
            device=device, threads=threads, engine="transformers", quant="none",
        )
        if loaded.generator.has_heads:  # the same tree on both paths
            reference.generator.set_tree([list(c) for c in loaded.generator.tree.choices], name=loaded.tree_name)
        peaks["transformers (load, on top)"] = peak_rss_mb()
    if copy:
        typer.echo(f"answering {len(texts)} first turns for the copy tasks", err=True)
        texts = copy_conversations(loaded, texts)
    bar = tqdm(total=len(texts) * len(chosen), desc="bench", unit="run", file=sys.stderr)

    def on_run(index: int, run) -> None:
        bar.set_postfix_str(f"prompt {index + 1}: {run.method} {run.tok_s:.1f} tok/s")
        bar.update()

    try:
        report = run_bench(loaded, texts, max_new_tokens, chosen, on_run, reference=reference, profile=profile)
        report["summary"]["peak_rss_mb"] = {k: v for k, v in peaks.items() if v is not None}
    except ValueError as exc:
        fail(str(exc))
    finally:
        bar.close()
    typer.echo(format_table(report))
    if json_out:
        from pathlib import Path

        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(f"report written to {json_out}", err=True)
