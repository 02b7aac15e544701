"""The app's themes: palette TOML files in ``themes/`` (package ``medusa_chat.themes``) -> Textual ``Theme``s.

User themes may be dropped as TOML files into ``data_dir()/themes``. A broken file is skipped and
reported; it never stops the app.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from textual.theme import Theme

_COLOURS = ("primary", "secondary", "accent", "foreground", "background", "surface", "panel", "boost",
            "warning", "error", "success")


def theme_from_dict(data: dict[str, Any], source: str) -> Theme:
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise ValueError(f"{source}: a theme needs a 'name'")
    if not isinstance(data.get("primary"), str):
        raise ValueError(f"{source}: a theme needs a 'primary' colour")
    kwargs: dict[str, Any] = {k: data[k] for k in _COLOURS if isinstance(data.get(k), str)}
    variables = data.get("variables", {})
    if not isinstance(variables, dict):
        raise ValueError(f"{source}: 'variables' must be a table")
    theme = Theme(
        name=data["name"],
        dark=bool(data.get("dark", True)),
        luminosity_spread=float(data.get("luminosity_spread", 0.15)),
        text_alpha=float(data.get("text_alpha", 0.95)),
        variables={str(k): str(v) for k, v in variables.items()},
        **kwargs,
    )
    theme.to_color_system()  # validates the colours
    return theme


def _parse(text: str, source: str) -> Theme:
    return theme_from_dict(tomllib.loads(text), source)


def builtin_themes() -> list[Theme]:
    root = resources.files("medusa_chat.themes")
    themes = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            themes.append(_parse(entry.read_text(encoding="utf-8"), entry.name))
    return themes


def user_themes(directory: Path | None) -> tuple[list[Theme], list[str]]:
    if directory is None or not directory.is_dir():
        return [], []
    themes, problems = [], []
    for path in sorted(directory.glob("*.toml")):
        try:
            themes.append(_parse(path.read_text(encoding="utf-8"), str(path)))
        except Exception as exc:
            problems.append(f"{path.name}: {exc}")
    return themes, problems
