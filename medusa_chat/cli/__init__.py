"""The ``medusa-chat`` command line: the chat app by default, and scriptable subcommands (a module per group)."""

from __future__ import annotations

import typer

from ..training.cli import distill_cmd, eval_heads_cmd, train_cmd
from . import bench, chat, export, generate, models, trees, tune

app = typer.Typer(
    help="Local chat with Medusa decoding: faster generation with extra heads, no draft model.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.callback(invoke_without_command=True)(chat.main)
app.add_typer(models.models_app, name="models")
app.command("export")(export.export_cmd)
app.command("tune")(tune.tune_cmd)
app.command("train")(train_cmd)
app.command("eval-heads")(eval_heads_cmd)
app.command("distill")(distill_cmd)
app.command("generate")(generate.generate)
app.command("bench")(bench.bench)
app.command("trees")(trees.trees)
