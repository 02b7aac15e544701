"""The ``medusa-chat`` command line: the chat app by default, and scriptable subcommands."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from .cli_models import export_cmd, models_app
from .training.cli import eval_heads_cmd, train_cmd
from .tuning_cli import tune_cmd

app = typer.Typer(
    help="Local chat with Medusa decoding: faster generation with extra heads, no draft model.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.add_typer(models_app, name="models")
app.command("export")(export_cmd)
app.command("tune")(tune_cmd)
app.command("train")(train_cmd)
app.command("eval-heads")(eval_heads_cmd)

DEFAULT_MODEL = "smollm2-135m-instruct"

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Catalogue name, local HF directory or Hub repo id.")]
HeadsOpt = Annotated[str | None, typer.Option("--heads", help="Medusa heads (directory or file) to use instead.")]
TreeOpt = Annotated[str | None, typer.Option("--tree", help="A preset (cpu_8, mc_sim_7b_63, chain-4...) or tuned.")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="auto | fp32 | bf16 | fp16.")]
QuantOpt = Annotated[str | None, typer.Option("--quant", help="none | 4bit | 8bit (bitsandbytes, CUDA only).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when present).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for torch (1 on a busy machine).")]


def fail(message: str) -> None:
    """Print a one-line error and exit with status 1 (no traceback for expected failures)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def check_options_or_fail(*, tree: str | None = None, quant: str | None = None, dtype: str | None = None) -> None:
    """Refuse a bad --tree/--quant/--dtype before any model is loaded (the engine's own tree parser)."""
    from .tui.engine import check_options, check_tree

    problem = check_options(quant=quant, dtype=dtype) or check_tree(tree)
    if problem:
        fail(problem)


def check_text_or_fail(text: str | None, what: str) -> None:
    """Refuse text holding bytes that are not UTF-8 (they reach Python as lone surrogates)."""
    try:
        (text or "").encode("utf-8")
    except UnicodeEncodeError as exc:
        fail(f"{what} is not valid UTF-8 text (at character {exc.start + 1}): pass it in UTF-8")


def version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"medusa-chat {version('medusa-chat')}")
        except PackageNotFoundError:
            typer.echo("medusa-chat (not installed)")
        raise typer.Exit()


def load_or_fail(model: str, **kwargs):
    """``load_model`` with expected errors turned into clean messages; phases go to stderr."""
    check_options_or_fail(tree=kwargs.get("tree"), quant=kwargs.get("quant"), dtype=kwargs.get("dtype"))
    from .catalog import CatalogError
    from .engine.heads_io import HeadsError
    from .engine.tree import TreeError
    from .loading import LoadError, load_model

    try:
        return load_model(model, progress=lambda msg: typer.echo(msg, err=True), **kwargs)
    except (CatalogError, HeadsError, TreeError, LoadError, FileNotFoundError) as exc:
        fail(str(exc))


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model to open (default: the last one used).")
    ] = None,
    heads: HeadsOpt = None,
    tree: TreeOpt = None,
    quant: QuantOpt = None,
    dtype: DtypeOpt = None,
    theme: Annotated[str | None, typer.Option("--theme", help="Theme name for the app.")] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Open the chat app (the default when no command is given)."""
    if ctx.invoked_subcommand is not None:
        return
    check_options_or_fail(tree=tree, quant=quant, dtype=dtype)
    from .tui.app import run_app

    run_app(model=model, quant=quant, theme=theme, dtype=dtype, heads=heads, tree=tree)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The user message (the chat template is applied).")],
    model: ModelOpt = DEFAULT_MODEL,
    heads: HeadsOpt = None,
    no_medusa: Annotated[bool, typer.Option("--no-medusa", help="Plain decoding (no heads).")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 256,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    tree: TreeOpt = None,
    dtype: DtypeOpt = None,
    quant: QuantOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    acceptance: Annotated[
        str, typer.Option("--acceptance", help="With --temperature > 0: typical (fast) or exact (lossless sampling).")
    ] = "typical",
    lookup: Annotated[
        int, typer.Option("--lookup", min=0, help="Add prompt-lookup drafts of up to N tokens to the tree (0: off).")
    ] = 10,
    auto_fallback: Annotated[
        bool, typer.Option("--auto-fallback", help="Decode plainly while that is measured to be faster.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming text.")] = False,
) -> None:
    """Answer one prompt, streaming the text (or one JSON object with --json)."""
    from .engine.events import GenerationStats
    from .engine.generator import ContextLengthError, GenerationConfig

    check_text_or_fail(prompt, "the prompt")
    check_text_or_fail(system, "--system")
    try:
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            medusa=not no_medusa,
            seed=seed,
            acceptance=acceptance,
            prompt_lookup=lookup,
            auto_fallback=auto_fallback,
        )
    except ValueError as exc:
        fail(str(exc))
    loaded = load_or_fail(
        model, heads=heads, tree=tree, dtype=dtype, quant=quant, device=device, threads=threads
    )
    config.stop_strings = loaded.stop_strings
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if config.medusa and not loaded.generator.has_heads:
        typer.echo(f"note: {loaded.name} has no Medusa heads; decoding plainly", err=True)
    try:
        stats = None
        for item in loaded.generator.stream(loaded.chat_ids(messages), config):
            if isinstance(item, GenerationStats):
                stats = item
            elif not as_json:
                sys.stdout.write(item.text)
                sys.stdout.flush()
    except (ContextLengthError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted")
    assert stats is not None
    if as_json:
        typer.echo(json.dumps(generation_json(stats)))
    else:
        typer.echo()
        typer.echo(
            f"[{stats.new_tokens} tokens, {stats.steps} steps, {stats.mean_accepted:.2f} tokens/step, "
            f"{stats.tokens_per_s:.1f} tokens/s, medusa {'on' if stats.medusa else 'off'}, "
            f"tree {loaded.tree_name}, stop: {stats.stop_reason}]",
            err=True,
        )


def generation_json(stats) -> dict:
    """The ``generate --json`` object."""
    return {
        "text": stats.text,
        "token_ids": stats.token_ids,
        "new_tokens": stats.new_tokens,
        "steps": stats.steps,
        "mean_accepted": round(stats.mean_accepted, 4),
        "tokens_per_s": round(stats.tokens_per_s, 3),
        "medusa": stats.medusa,
        "stop_reason": stats.stop_reason,
        "prefill_s": round(stats.prefill_time, 4),
    }


@app.command()
def bench(
    model: ModelOpt = DEFAULT_MODEL,
    heads: HeadsOpt = None,
    prompts: Annotated[str, typer.Option("--prompts", help="JSONL file with a 'prompt' field per line.")] = "",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use the first N prompts.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 128,
    tree: TreeOpt = None,
    dtype: DtypeOpt = None,
    quant: QuantOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated: plain, medusa, hf, hf_lookup, hybrid (Medusa + lookup).")
    ] = "plain,medusa,hf,hf_lookup",
    copy: Annotated[
        bool,
        typer.Option("--copy-tasks", help="Two-turn chats whose second turn edits or quotes the model's first answer."),
    ] = False,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the full report to this file.")] = None,
) -> None:
    """Measure plain, Medusa, transformers generate and prompt lookup side by side, greedy."""
    from tqdm import tqdm

    from .bench import METHODS, copy_conversations, format_table, read_prompts
    from .bench import bench as run_bench

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        fail(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    if not prompts:
        fail("--prompts FILE.jsonl is required (for example ../shared/data/prompts/dev.jsonl)")
    try:
        texts = read_prompts(prompts, limit)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    loaded = load_or_fail(model, heads=heads, tree=tree, dtype=dtype, quant=quant, device=device, threads=threads)
    if copy:
        typer.echo(f"answering {len(texts)} first turns for the copy tasks", err=True)
        texts = copy_conversations(loaded, texts)
    bar = tqdm(total=len(texts) * len(chosen), desc="bench", unit="run", file=sys.stderr)

    def on_run(index: int, run) -> None:
        bar.set_postfix_str(f"prompt {index + 1}: {run.method} {run.tok_s:.1f} tok/s")
        bar.update()

    try:
        report = run_bench(loaded, texts, max_new_tokens, chosen, on_run)
    except ValueError as exc:
        fail(str(exc))
    finally:
        bar.close()
    typer.echo(format_table(report))
    if json_out:
        from pathlib import Path

        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(f"report written to {json_out}", err=True)


@app.command()
def trees() -> None:
    """List the tree presets with their size and depth, chain-N, and this machine's tuned tree."""
    from .engine.presets import PRESETS
    from .engine.tree import build_tree

    for name, choices in PRESETS.items():
        tree = build_tree(choices)
        typer.echo(f"{name:28s} {tree.size:3d} slots  depth {tree.depth}")
    typer.echo(f"{'chain-N':28s} N+1 slots  depth N   (the top-1 chain, e.g. chain-4)")
    typer.echo(f"{'tuned':28s} {tuned_summary(DEFAULT_MODEL)}")


def tuned_summary(model: str) -> str:
    """Whether a tree tuned on this machine exists for ``model`` (on the device and dtype it would use)."""
    try:
        import torch

        from .engine.tree import build_tree
        from .loading import cpu_has_bf16
        from .tuning import tuned_tree

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = "fp16" if device == "cuda" else ("bf16" if cpu_has_bf16() else "fp32")  # what --dtype auto picks
        choices = tuned_tree(model, device, dtype)
        if choices is not None:
            tree = build_tree(choices)
            return f"{tree.size:3d} slots  depth {tree.depth}   (tuned for {model} on {device} {dtype})"
    except Exception as exc:  # a listing never fails
        return f"unknown ({exc})"
    return f"none yet for {model} on this machine: run `medusa-chat tune --model {model}`"


if __name__ == "__main__":
    app()
