"""``medusa-chat generate``: answer one prompt, streaming the text or as one JSON object."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from ..engine.config import GenerationConfig
from ..engine.events import GenerationStats
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
    check_text_or_fail,
    fail,
    load_or_fail,
)

CHAT = GenerationConfig.for_chat()
"""The defaults ``generate`` shares with the app."""


def generate(
    prompt: Annotated[str, typer.Argument(help="The user message (the chat template is applied).")],
    model: ModelOpt = DEFAULT_MODEL,
    heads: HeadsOpt = None,
    no_medusa: Annotated[bool, typer.Option("--no-medusa", help="Plain decoding (no heads).")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 256,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = CHAT.temperature,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = CHAT.top_p,
    tree: TreeOpt = None,
    dtype: DtypeOpt = None,
    quant: QuantOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    acceptance: Annotated[
        str, typer.Option("--acceptance", help="With --temperature > 0: typical (fast) or exact (lossless sampling).")
    ] = CHAT.acceptance,
    lookup: Annotated[
        int, typer.Option("--lookup", min=0, help="Add prompt-lookup drafts of up to N tokens to the tree (0: off).")
    ] = CHAT.prompt_lookup,
    auto_fallback: Annotated[
        bool, typer.Option("--auto-fallback/--no-auto-fallback", help="Decode plainly while that is measured faster.")
    ] = CHAT.auto_fallback,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming text.")] = False,
    engine: EngineOpt = None,
) -> None:
    """Answer one prompt, streaming the text (or one JSON object with --json)."""
    check_text_or_fail(prompt, "the prompt")
    check_text_or_fail(system, "--system")
    try:
        config = GenerationConfig.for_chat(
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
        model, heads=heads, tree=tree, dtype=dtype, quant=quant, device=device, threads=threads, engine=engine
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
    except ValueError as exc:  # the context length, the prompt's tokens
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted")
    assert stats is not None
    if as_json:
        typer.echo(
            json.dumps(
                generation_json(stats)
                | {
                    "engine": loaded.engine,
                    "dtype": loaded.dtype,
                    "quant": loaded.quant,
                    "tree": loaded.tree_name,
                }
            )
        )
    else:
        typer.echo()
        typer.echo(
            f"[{stats.new_tokens} tokens, {stats.steps} steps, {stats.mean_accepted:.2f} tokens/step, "
            f"{stats.tokens_per_s:.1f} tokens/s, medusa {'on' if stats.medusa else 'off'}, "
            f"tree {loaded.tree_name}, {loaded.engine} {loaded.dtype}"
            f"{'' if loaded.quant == 'none' else ' ' + loaded.quant}, stop: {stats.stop_reason}]",
            err=True,
        )


def generation_json(stats: GenerationStats) -> dict:
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
