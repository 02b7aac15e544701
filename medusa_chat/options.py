"""The load options a user passes (``--quant``, ``--dtype``, ``--tree``, ``--threads``), checked before anything loads.

Torch-free: the CLI and the app refuse a bad option at once, with one line.
"""

from __future__ import annotations

from .errors import UserError
from .trees import tree_problem

QUANTS = ("auto", "none", "4bit", "8bit")
ENGINES = ("auto", "lean", "transformers")
DTYPES = ("auto", "fp32", "bf16", "fp16")


class OptionError(UserError, ValueError):
    """A bad option, found before the model loads."""


def option_problem(
    *, quant: str | None = None, dtype: str | None = None, tree: str | None = None, threads: int | None = None
) -> str | None:
    """Why a precision, tree or thread option is invalid (one line), or None when all are fine."""
    if threads is not None and threads < 1:
        return f"--threads must be a positive number of CPU threads, not {threads}"
    if quant and quant not in QUANTS:
        return f"unknown --quant {quant!r}; choose one of: {', '.join(QUANTS)}"
    if dtype and dtype not in DTYPES:
        return f"unknown --dtype {dtype!r}; choose one of: {', '.join(DTYPES)}"
    return tree_problem(tree)


def check_options(
    *, quant: str | None = None, dtype: str | None = None, tree: str | None = None, threads: int | None = None
) -> None:
    """Raise :class:`OptionError` for a bad tree, precision, dtype or thread count."""
    if problem := option_problem(quant=quant, dtype=dtype, tree=tree, threads=threads):
        raise OptionError(problem)
