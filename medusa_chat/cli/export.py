"""``medusa-chat export``: Medusa heads in the layout vLLM or TGI loads."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import fail


def _cached_base(base: str) -> str:
    """The directory of ``--base`` when it names a downloaded model (catalogue name or Hub id)."""
    from ..catalog import CatalogError
    from ..export import ExportError
    from ..hub import HubError, local_files

    try:
        model_dir = local_files(base).model_dir
    except (CatalogError, HubError) as exc:
        raise ExportError(f"--base {base} is neither a model directory nor a downloaded model ({exc})") from exc
    if model_dir is None:
        raise ExportError(f"--base {base} has no transformers model directory: pass the base model's directory")
    return str(model_dir)


def export_cmd(
    heads_path: Annotated[str, typer.Argument(help="Medusa heads: a directory or file in any supported layout.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="vllm or tgi.")] = "vllm",
    out: Annotated[str, typer.Option("--out", "-o", help="Output directory.")] = "medusa-export",
    base: Annotated[
        str | None, typer.Option("--base", help="Base model dir or cached model (when the heads share its lm_head).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out directory.")] = False,
) -> None:
    """Write Medusa heads in the layout vLLM or TGI loads."""
    from pathlib import Path

    from ..engine.heads_io import HeadsError
    from ..export import ExportError, export_heads
    from ..hub import HubError

    try:
        if base and not Path(base).expanduser().is_dir():
            base = _cached_base(base)
        path = export_heads(heads_path, fmt, out, base=base, force=force)
    except (ExportError, HeadsError, HubError) as exc:
        fail(str(exc))
    typer.echo(f"wrote {fmt} heads to {path}")
