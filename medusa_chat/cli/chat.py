"""``medusa-chat`` with no command: open the chat app."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import DtypeOpt, HeadsOpt, QuantOpt, ThreadsOpt, TreeOpt, check_options_or_fail


def version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"medusa-chat {version('medusa-chat')}")
        except PackageNotFoundError:
            typer.echo("medusa-chat (not installed)")
        raise typer.Exit()


def main(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model to open (default: the last one used).")
    ] = None,
    heads: HeadsOpt = None,
    tree: TreeOpt = None,
    quant: QuantOpt = None,
    dtype: DtypeOpt = None,
    threads: ThreadsOpt = None,
    theme: Annotated[str | None, typer.Option("--theme", help="Theme name for the app.")] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Open the chat app (the default when no command is given)."""
    if ctx.invoked_subcommand is not None:
        return
    check_options_or_fail(tree=tree, quant=quant, dtype=dtype, threads=threads)
    from ..tui.app import run_app

    run_app(model=model, quant=quant, theme=theme, dtype=dtype, heads=heads, tree=tree, threads=threads)
