"""What the commands share: the error exit, the load options, the default model and loading with clean errors."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

from ..default_model import NAME as DEFAULT_MODEL
from ..errors import UserError
from ..options import option_problem
from .console import ConsoleProgress

__all__ = ["DEFAULT_MODEL", "check_options_or_fail", "check_text_or_fail", "fail", "load_or_fail"]

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Catalogue name, local HF directory or Hub repo id.")]
HeadsOpt = Annotated[str | None, typer.Option("--heads", help="Medusa heads (directory or file) to use instead.")]
TreeOpt = Annotated[str | None, typer.Option("--tree", help="A preset (cpu_8, mc_sim_7b_63, chain-4...) or tuned.")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="auto | fp32 | bf16 | fp16.")]
EngineOpt = Annotated[
    str | None, typer.Option("--engine", help="auto | lean | transformers (auto: the lean decoder on a CPU).")
]
QuantOpt = Annotated[
    str | None, typer.Option("--quant", help="auto | none | 4bit | 8bit (CPU: lean int4/int8; CUDA: bitsandbytes).")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda when present).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for torch (1 on a busy machine).")]


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with status 1 (no traceback for expected failures)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def check_options_or_fail(
    *, tree: str | None = None, quant: str | None = None, dtype: str | None = None, threads: int | None = None
) -> None:
    """Refuse a bad --tree/--quant/--dtype/--threads before any model is loaded."""
    if problem := option_problem(quant=quant, dtype=dtype, tree=tree, threads=threads):
        fail(problem)


def check_text_or_fail(text: str | None, what: str) -> None:
    """Refuse text holding bytes that are not UTF-8 (they reach Python as lone surrogates)."""
    try:
        (text or "").encode("utf-8")
    except UnicodeEncodeError as exc:
        fail(f"{what} is not valid UTF-8 text (at character {exc.start + 1}): pass it in UTF-8")


def load_or_fail(model: str, **kwargs):
    """``load_model`` with expected errors turned into clean messages; its stages go to stderr (a bar each)."""
    check_options_or_fail(
        tree=kwargs.get("tree"), quant=kwargs.get("quant"), dtype=kwargs.get("dtype"), threads=kwargs.get("threads")
    )
    from ..loading import load_model

    with ConsoleProgress() as progress:
        try:
            return load_model(model, progress=progress, **kwargs)
        except (UserError, FileNotFoundError) as exc:
            problem = str(exc)
    fail(problem)
