"""``medusa-chat tune``: build and save the fastest tree for this machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from ..prompts import DEV_PROMPTS
from .common import DEFAULT_MODEL, fail, load_or_fail


def tune_cmd(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Catalogue name, local directory or Hub id."),
    heads: str | None = typer.Option(None, "--heads", help="Medusa heads (directory or file) to use instead."),
    prompts: Path = typer.Option(DEV_PROMPTS, help="Calibration prompts (JSONL, field prompt)."),
    limit: int = typer.Option(20, min=1, help="Calibration prompts used for acceptance."),
    dtype: str | None = typer.Option(None, "--dtype", help="auto | fp32 | bf16 | fp16."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch (1 on a busy machine)."),
    max_nodes: int = typer.Option(63, "--max-nodes", min=1, help="Largest tree considered (nodes, root excluded)."),
    repeats: int = typer.Option(5, min=1, help="Interleaved rounds of step-cost measurements."),
    measure_limit: int = typer.Option(10, "--measure-limit", min=1, help="Prompts for the final speed check."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=8, help="Answer tokens per prompt (both phases)."),
    compare: str = typer.Option("", help="Comma-separated tree presets to check beside the tuned tree."),
    save: bool = typer.Option(True, "--save/--no-save", help="Save the tree as this model's default here."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the full report to this file."),
) -> None:
    """Measure step costs and head accuracy here, and save the tree with the most tokens per second."""
    from tqdm import tqdm

    from ..bench import read_prompts
    from ..engine.presets import preset
    from ..trees import save_tuned
    from ..tuning import tune

    try:
        texts = read_prompts(prompts, limit)
        extra = {name: preset(name) for name in (n.strip() for n in compare.split(",")) if name}
    except (OSError, ValueError) as exc:  # TreeError is a ValueError
        fail(str(exc))
    loaded = load_or_fail(model, heads=heads, dtype=dtype, device=device, threads=threads)
    bar = tqdm(desc="tune", file=sys.stderr, unit="step")
    current = [""]

    def progress(phase: str, done: int, total: int) -> None:
        if current[0] != phase:
            current[0] = phase
            bar.reset(total=total)
            bar.set_description(phase)
        bar.n = done
        bar.refresh()

    try:
        report = tune(
            loaded, texts, max_nodes=max_nodes, steps=max_new_tokens, repeats=repeats, measure_limit=measure_limit,
            max_new_tokens=max_new_tokens, compare=extra, progress=progress,
        )  # fmt: skip
    except ValueError as exc:  # TreeError is a ValueError
        fail(str(exc))
    finally:
        bar.close()
    typer.echo(format_report(report))
    if save:
        typer.echo(f"tree saved to {save_tuned(report)} (used by default for {loaded.name} on {loaded.device}, "
                   f"{loaded.dtype})")  # fmt: skip
    if json_out:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(f"report written to {json_out}", err=True)


def format_report(report: dict) -> str:
    """Step costs and predicted speedups per tree size, then the chosen tree's predicted and measured speedup."""
    lines = ["slots  measured cost  smoothed  predicted speedup", "-----  -------------  --------  -----------------"]
    curve, smoothed = report["predicted_curve"], report["smoothed_costs"]
    for size, cost in report["costs"].items():
        mark = "  <- tuned" if int(size) == report["tree_size"] else ""
        lines.append(f"{size:>5}  {cost:13.3f}  {smoothed[size]:8.3f}  {curve.get(size, float('nan')):17.3f}{mark}")
    measured = report["measured"]
    lines.append("")
    lines.append(f"{'tree':14s} {'tok/s':>8s} {'tokens/step':>12s} {'speedup':>8s}")
    for name, row in measured.items():
        lines.append(f"{name:14s} {row['tok_s']:8.2f} {row['mean_accepted']:12.2f} {row['speedup']:8.2f}")
    lines.append(
        f"tuned tree: {report['tree_size']} slots, depth {report['depth']}; "
        f"predicted {report['predicted_speedup']:.2f}x ({report['predicted_accepted']:.2f} tokens/step), "
        f"measured {report['measured_speedup']:.2f}x ({report['measured_accepted']:.2f} tokens/step) "
        f"for {report['model']} on {report['device']} ({report['dtype']}, {report['settings']['threads']} threads)"
    )
    lines.append(f"choices: {json.dumps(report['choices'])}")
    return "\n".join(lines)
