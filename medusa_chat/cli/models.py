"""``medusa-chat models list|download|remove|info``."""

from __future__ import annotations

import json
import threading
from typing import Annotated

import typer

from ..units import human_bytes, human_duration
from .common import fail

models_app = typer.Typer(help="List, download, inspect and remove models.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Catalogue name, local directory or Hub repo id (owner/name[@rev]).")]


def _spec(name: str):
    from ..catalog import CatalogError, resolve

    try:
        return resolve(name)
    except CatalogError as exc:
        fail(str(exc))


def _rows() -> tuple[dict, list[dict]]:
    from ..catalog import catalog
    from ..hub import cached_state
    from ..memory import detect_device, estimates

    device = detect_device()
    rows = []
    for spec in catalog().values():
        state = cached_state(spec)
        rows.append(
            {
                "name": spec.name,
                "display_name": spec.label,
                "repo_id": spec.repo_id,
                "base_repo_id": spec.base_repo_id,
                "head_format": spec.head_format,
                "source": spec.source,
                "cached": state.complete,
                "size_on_disk": state.size_on_disk,
                "to_download": state.to_download,
                "params": spec.params,
                "memory": {e.precision: {"bytes": e.bytes, "fits": e.fits} for e in estimates(spec.params, device)},
            }
        )
    dev = {"kind": device.kind, "name": device.name, "total": device.total_bytes, "available": device.available_bytes}
    return dev, rows


@models_app.command("list")
def list_models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Catalogue entries: cached or not, sizes, memory per precision and whether it fits this machine."""
    from ..catalog import catalog_problems

    device, rows = _rows()
    for problem in catalog_problems():
        typer.secho(f"warning: {problem}", fg=typer.colors.YELLOW, err=True)
    if as_json:
        typer.echo(json.dumps({"device": device, "models": rows}, indent=2))
        return
    typer.echo(f"memory: {device['name']} ({device['kind']}), {human_bytes(device['available'])} available")
    typer.echo(f"{'name':30s} {'cached':8s} {'on disk':>9s} {'to fetch':>9s}   fp16 / 8-bit / 4-bit (fits?)")
    for row in rows:
        cached = "yes" if row["cached"] else "partial" if row["size_on_disk"] else "no"
        memory = " / ".join(f"{human_bytes(m['bytes'])} {'✓' if m['fits'] else '✗'}" for m in row["memory"].values())
        typer.echo(
            f"{row['name']:30s} {cached:8s} {human_bytes(row['size_on_disk']):>9s} "
            f"{human_bytes(row['to_download']):>9s}   {memory}"
        )


@models_app.command("info")
def info(
    name: NameArg,
    remote: Annotated[bool, typer.Option("--remote", help="Ask the Hub for the exact files and sizes.")] = False,
) -> None:
    """Everything known about one model (and with --remote, the files a download needs)."""
    from ..hub import HubError, cached_state, plan
    from ..loading import default_setting

    spec = _spec(name)
    state = cached_state(spec)
    fields = {
        "name": spec.name,
        "display name": spec.label,
        "repo": spec.repo_id and f"{spec.repo_id}@{spec.revision}",
        "base model": spec.base_repo_id,
        "head format": spec.head_format,
        "architecture": spec.architecture,
        "parameters": f"{spec.params / 1e9:.2f} B" if spec.params else None,
        "heads": spec.num_heads,
        "default tree": spec.default_tree,
        "chat template": spec.chat_template,
        "runs as": default_setting(spec),
        "license": spec.license,
        "source": spec.source,
        "cached": "yes" if state.complete else "no",
        "on disk": human_bytes(state.size_on_disk),
        "path": state.path,
        "note": spec.note,
    }
    for key, value in fields.items():
        if value not in (None, ""):
            typer.echo(f"{key:14s} {value}")
    if remote:
        try:
            the_plan = plan(spec)
        except HubError as exc:
            fail(str(exc))
        for f in the_plan.files:
            typer.echo(f"  {f.repo_id}/{f.filename:40s} {human_bytes(f.size):>9s}")
        typer.echo(f"total {human_bytes(the_plan.total)}, still to download {human_bytes(the_plan.missing)}")


@models_app.command("download")
def download(name: NameArg) -> None:
    """Download a model into the Hugging Face cache. Ctrl-C stops; running it again resumes."""
    from ..hub import DownloadCancelled, HubError
    from ..hub import download as fetch

    spec = _spec(name)
    cancel = threading.Event()
    outcome: dict = {}

    def show(event) -> None:
        width = 30
        filled = int(width * event.downloaded / event.total) if event.total else width
        line = (
            f"\r[{'#' * filled}{'.' * (width - filled)}] {human_bytes(event.downloaded)}/{human_bytes(event.total)} "
            f"{human_bytes(int(event.rate))}/s ETA {human_duration(event.eta)}  {event.filename[-30:]:30s}"
        )
        typer.echo(line, nl=event.done, err=True)

    finished = threading.Event()

    def work() -> None:
        try:
            outcome["path"] = fetch(spec, progress=show, cancel=cancel)
        except Exception as exc:  # handed to the main thread
            outcome["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=work, daemon=True).start()
    try:  # an Event, not Thread.join: an interrupted join can leave the thread looking finished
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        cancel.set()
        finished.wait()
    error = outcome.get("error")
    if isinstance(error, DownloadCancelled):
        typer.echo("", err=True)
        fail(f"cancelled; partial files are kept: run `medusa-chat models download {name}` to resume")
    if isinstance(error, HubError):
        fail(str(error))
    if error is not None:
        raise error
    typer.echo(f"{spec.label} is ready: {outcome['path']}")


@models_app.command("remove")
def remove(
    name: NameArg,
    keep_base: Annotated[bool, typer.Option("--keep-base", help="Keep the base model of heads-only entries.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a model's files from the Hugging Face cache."""
    from ..hub import cached_state
    from ..hub import remove as delete

    spec = _spec(name)
    if not spec.hub_repos:
        fail(f"{spec.label} is not in the Hugging Face cache (it is local or packaged)")
    size = cached_state(spec).size_on_disk
    if not yes:
        typer.confirm(f"Delete {', '.join(spec.hub_repos)} ({human_bytes(size)}) from the cache?", abort=True)
    typer.echo(f"freed {human_bytes(delete(spec, keep_base=keep_base))}")
