"""The package's import structure: light entry points and no import cycles."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "medusa_chat"
HEAVY = ("torch", "transformers")
KNOWN_CYCLES: list[set[str]] = []  # no cycle may appear

HELP = """
import sys
from medusa_chat.cli import app
try:
    app(["--help"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
"""

FIRST_PAINT = """
import asyncio
from medusa_chat.settings import Settings
from medusa_chat.tui.app import MedusaChatApp

async def main():
    app = MedusaChatApp(settings=Settings(), persist_settings=False, load_on_start=False, calibrate=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.chat_screen is not None and app.chat_screen.is_mounted

asyncio.run(main())
"""


@pytest.mark.parametrize("code", [HELP, FIRST_PAINT], ids=["--help", "first paint"])
def test_help_and_the_first_paint_import_neither_torch_nor_transformers(code, tmp_path):
    report = f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    env = {**os.environ, **{f"MEDUSA_CHAT_{d}_DIR": str(tmp_path / d) for d in ("CONFIG", "DATA", "CACHE")}}
    done = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports when it runs (``if TYPE_CHECKING:`` blocks aside)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(n) for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)
    }  # fmt: skip
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def test_no_import_cycles_inside_the_package():
    paths = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(paths)) for name, path in paths.items()}
    # A package's own modules may import from it: an edge into a parent package is not a cycle by itself.
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert [c for c in cycles if set(c) not in KNOWN_CYCLES] == []
