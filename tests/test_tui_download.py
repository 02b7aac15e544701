"""The model picker downloads from a real HTTP server speaking the Hub protocol, then loads the model."""

from __future__ import annotations

import asyncio
import json

import pytest

from medusa_chat import settings as settings_mod
from medusa_chat.engine.config import GenerationConfig
from medusa_chat.store import Store
from medusa_chat.tui.app import MedusaChatApp
from medusa_chat.tui.session import default_engine_factory
from medusa_chat.tui.widgets.prompt import PromptInput
from tests.hub_server import FakeHub
from tests.pilot import wait_idle, wait_loaded, wait_until


@pytest.fixture
def hub(tiny_model_dir, tmp_path, monkeypatch):
    heads_config = json.loads((tiny_model_dir / "medusa" / "config.json").read_text())
    heads_config["base_model_name_or_path"] = "test/tiny-base"
    with FakeHub() as server:
        server.add_dir("test/tiny-base", tiny_model_dir)
        heads = {
            "config.json": json.dumps(heads_config).encode(),
            "medusa_lm_head.safetensors": (tiny_model_dir / "medusa" / "medusa_lm_head.safetensors").read_bytes(),
        }
        server.add_repo("test/tiny-heads", heads)
        server.add_repo("test/gated-heads", heads, gated=True)
        server.use(monkeypatch)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        from medusa_chat.paths import user_models_dir

        for name, repo in (("tiny-hub", "test/tiny-heads"), ("tiny-gated", "test/gated-heads")):
            (user_models_dir() / f"{name}.toml").write_text(
                f'name = "{name}"\nrepo_id = "{repo}"\nhead_format = "medusa1-heads"\n'
                'base_repo_id = "test/tiny-base"\nparams = 100000\ndownload_size = 1000000\n'
            )
        yield server


def select_row(screen, name: str) -> None:
    table = screen.query_one("#models-table")
    keys = [row.key.value for row in table.ordered_rows]
    table.move_cursor(row=keys.index(name))


def test_download_with_progress_then_load(hub, tiny_model_dir, tmp_path):
    settings = settings_mod.Settings(GenerationConfig.for_chat(max_new_tokens=8))
    app = MedusaChatApp(model=str(tiny_model_dir), engine_factory=default_engine_factory,
                        store=Store(tmp_path / "h.db"), settings=settings, persist_settings=False)

    async def scenario(pilot):
        await wait_loaded(pilot)
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: app.screen.id == "models")
        screen = app.screen
        await wait_until(pilot, lambda: screen.rows.get("tiny-hub") is not None)
        assert screen.rows["tiny-hub"].state == "not downloaded"
        select_row(screen, "tiny-gated")
        await pilot.press("d")
        await wait_until(pilot, lambda: screen.downloading is None, timeout=60)
        assert "gated" in str(screen.query_one("#models-message").render())
        select_row(screen, "tiny-hub")
        await pilot.press("enter")  # not downloaded yet: refused
        assert "press d" in str(screen.query_one("#models-message").render())
        await pilot.press("d")
        await wait_until(pilot, lambda: screen.downloading is None, timeout=60)
        assert "downloaded" in str(screen.query_one("#download-label").render())
        bar = screen.query_one("#download-bar")
        assert bar.total and bar.progress == bar.total  # byte progress reached the whole download
        await wait_until(pilot, lambda: screen.rows["tiny-hub"].state == "cached", timeout=30)
        select_row(screen, "tiny-hub")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen is app.chat_screen)
        await wait_until(pilot, lambda: app.loaded is not None and app.loaded.name != str(tiny_model_dir)
                         and not app.loading, timeout=60)
        assert app.load_error is None
        app.chat_screen.query_one(PromptInput).focus()
        await pilot.press(*"hi", "enter")
        await wait_idle(pilot)
        assert app.chat_screen.turns[-1]["role"] == "assistant"

    async def main():
        async with app.run_test(size=(100, 32)) as pilot:
            await scenario(pilot)

    asyncio.run(main())
    assert hub.bytes_served  # bytes really went over HTTP
