"""Pilot tests of the app's flows against the real engine (``load_model``) on a tiny random model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from medusa_chat import settings as settings_mod
from medusa_chat.engine.config import GenerationConfig
from medusa_chat.store import Store
from medusa_chat.tui.app import MedusaChatApp
from medusa_chat.tui.screens import models as models_screen
from medusa_chat.tui.session import LoadRequest, default_engine_factory
from medusa_chat.tui.widgets.message import MessageView
from medusa_chat.tui.widgets.prompt import PromptInput
from tests.pilot import wait_idle, wait_loaded, wait_until

SIZE = (100, 32)


def run(app: MedusaChatApp, scenario) -> None:
    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await scenario(pilot)

    asyncio.run(main())


def make_app(tmp_path, model_dir, *, max_new_tokens=24, factory=None, **kwargs) -> MedusaChatApp:
    settings = settings_mod.Settings(GenerationConfig.for_chat(max_new_tokens=max_new_tokens))
    return MedusaChatApp(
        model=str(model_dir),
        engine_factory=factory or default_engine_factory,
        store=Store(tmp_path / "history.db"),
        settings=settings,
        persist_settings=False,
        **kwargs,
    )


async def send(pilot, text: str) -> None:
    pilot.app.chat_screen.query_one(PromptInput).focus()
    await pilot.press(*text)
    await pilot.press("enter")


def answers(app) -> list[MessageView]:
    return [v for v in app.chat_screen.query(MessageView) if v.role == "assistant"]


def slow_factory(delay: float):
    """The real loader; each engine step is slowed down so Esc lands mid-answer."""

    def factory(request: LoadRequest):
        loaded = default_engine_factory(request)
        stream = loaded.generator.stream

        def slowed(*args, **kwargs):
            for item in stream(*args, **kwargs):
                time.sleep(delay)
                yield item

        loaded.generator.stream = slowed
        return loaded

    return factory


def test_send_stream_persist_and_reopen(tmp_path, tiny_model_dir):
    app = make_app(tmp_path, tiny_model_dir)

    async def scenario(pilot):
        await wait_loaded(pilot)
        assert app.baseline_tps and app.baseline_tps > 0  # calibrated at load
        assert "Medusa ON" in str(app.sub_title)
        await send(pilot, "hello there")
        await wait_idle(pilot)
        [answer] = answers(app)
        assert answer.content and not answer.stopped
        stats = answer.stats
        assert stats["medusa"] is True and stats["new_tokens"] > 0 and stats["tokens_per_s"] > 0
        assert stats["mean_accepted"] >= 1.0 and "speedup" in stats
        gauge_text = app.chat_screen.query_one("#gauges").parts["accepted"]
        assert "mean" in gauge_text
        # a second turn uses the chat template over the whole conversation
        await send(pilot, "and again")
        await wait_idle(pilot)
        assert [t["role"] for t in app.chat_screen.turns] == ["user", "assistant", "user", "assistant"]

    run(app, scenario)
    texts = [t["content"] for t in app.chat_screen.turns]

    # A new app instance reopens the stored conversation from the history screen.
    again = make_app(tmp_path, tiny_model_dir)

    async def reopen(pilot):
        await wait_loaded(pilot)
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: pilot.app.screen.id == "history")
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(again.chat_screen.turns) == 4)
        assert [t["content"] for t in again.chat_screen.turns] == texts
        views = answers(again)
        assert views[-1].stats["new_tokens"] > 0  # stats kept per answer
        await send(pilot, "third")  # continuing the reopened chat works
        await wait_idle(pilot)
        assert len(again.chat_screen.turns) == 6

    run(again, reopen)
    [conversation] = Store(tmp_path / "history.db").list_conversations()
    assert conversation.message_count == 6


def test_escape_stops_and_next_prompt_works(tmp_path, tiny_model_dir):
    app = make_app(tmp_path, tiny_model_dir, max_new_tokens=200, factory=slow_factory(0.05))

    async def scenario(pilot):
        await wait_loaded(pilot)
        await send(pilot, "tell me a long story")
        chat = app.chat_screen
        await wait_until(pilot, lambda: chat.job is not None and chat.job.gauges.steps >= 3)
        await pilot.press("escape")
        [answer] = answers(app)
        assert answer.stopped and not chat.generating  # at once, before the worker ends
        partial = answer.content
        assert partial
        assert "stopped" in str(answer.query_one(".message--stats").render())
        await wait_idle(pilot)
        assert answer.content == partial  # kept as it was when stopped
        app.settings.generation.max_new_tokens = 5
        await send(pilot, "short one")
        await wait_idle(pilot)
        _first, second = answers(app)
        assert not second.stopped and second.content
        assert second.stats["new_tokens"] <= 5

    run(app, scenario)
    conv = Store(tmp_path / "history.db").list_conversations()[0]
    stored = Store(tmp_path / "history.db").get(conv.id).messages
    assert [(m.role, m.stopped) for m in stored] == [
        ("user", False), ("assistant", True), ("user", False), ("assistant", False)
    ]


def test_toggle_medusa_while_typing_refreshes_baseline(tmp_path, tiny_model_dir):
    app = make_app(tmp_path, tiny_model_dir, max_new_tokens=16)

    async def scenario(pilot):
        await wait_loaded(pilot)
        calibrated = app.baseline_tps
        app.chat_screen.query_one(PromptInput).focus()
        await pilot.press(*"abc")
        await pilot.press("ctrl+t")  # works while the prompt has focus
        assert app.medusa is False
        assert app.chat_screen.query_one(PromptInput).text == "abc"
        assert "Medusa OFF" in str(app.sub_title)
        assert "Medusa OFF" in app.chat_screen.query_one("#gauges").parts["mode"]
        await pilot.press("enter")
        await wait_idle(pilot)
        [answer] = answers(app)
        assert answer.stats["medusa"] is False and answer.stats["mean_accepted"] == 1.0
        if answer.stats["new_tokens"] >= 8:
            assert app.baseline_tps == pytest.approx(answer.stats["tokens_per_s"], rel=1e-3)
            assert app.baseline_tps != calibrated
        await pilot.press("ctrl+t")
        assert app.medusa is True

    run(app, scenario)


def test_compare_mode_reports_identical_outputs(tmp_path, tiny_model_dir):
    app = make_app(tmp_path, tiny_model_dir, max_new_tokens=20)

    async def scenario(pilot):
        await wait_loaded(pilot)
        await send(pilot, "compare me")
        await wait_idle(pilot)
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: pilot.app.screen.id == "compare", timeout=60)
        screen = pilot.app.screen
        result = screen.result
        assert result.identical
        assert result.plain.medusa is False and result.medusa.medusa is True
        assert result.plain.token_ids == result.medusa.token_ids
        assert "identical: yes" in str(screen.query_one("#compare-verdict").render())
        assert "tok/s" in str(screen.query_one("#compare-medusa .compare-stats").render())
        await pilot.press("escape")
        await wait_until(pilot, lambda: pilot.app.screen is app.chat_screen)

    run(app, scenario)


def test_load_another_model_from_the_picker(tmp_path, tiny_model_dir, monkeypatch):
    other = str(tiny_model_dir)
    rows = [
        models_screen.Row("medusa-vicuna-7b-v1.3", "Vicuna 7B", "not downloaded", 13_500_000_000, 6_738_415_616,
                          None),
        models_screen.Row(other, "tiny (local)", "cached", 1_000_000, 100_000, None),
    ]
    monkeypatch.setattr(models_screen, "scan_catalog", lambda: rows)
    loads: list[LoadRequest] = []

    def factory(request):
        loads.append(request)
        return default_engine_factory(request)

    app = make_app(tmp_path, tiny_model_dir, factory=factory)

    async def scenario(pilot):
        await wait_loaded(pilot)
        first = app.loaded
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: pilot.app.screen.id == "models")
        screen = pilot.app.screen
        await wait_until(pilot, lambda: screen.query_one("#models-table").row_count == 2)
        await pilot.press("enter")  # not downloaded: refused with a message
        assert "not downloaded" in str(screen.query_one("#models-message").render())
        await pilot.press("down")
        screen.query_one("#precision").value = "fp32"
        await pilot.press("enter")
        await wait_until(pilot, lambda: pilot.app.screen is app.chat_screen)
        await wait_until(pilot, lambda: app.loaded is not first and not app.loading, timeout=60)
        assert loads[-1].model == other and loads[-1].dtype == "fp32"
        assert app.loaded.dtype in ("fp32", "float32")
        await send(pilot, "still works")
        await wait_idle(pilot)
        assert answers(app)[-1].content

    run(app, scenario)


def test_load_failure_is_reported_and_app_survives(tmp_path, tiny_model_dir):
    app = make_app(tmp_path, tmp_path / "no-such-model")

    async def scenario(pilot):
        await wait_until(pilot, lambda: app.load_error is not None, timeout=60)
        assert "no-such-model" in app.load_error
        assert "Could not load" in str(app.chat_screen.query_one("#status").render())
        await send(pilot, "hello")  # refused politely, prompt kept
        assert app.chat_screen.query_one(PromptInput).text == "hello"

    run(app, scenario)


def test_settings_validation_and_persistence(tmp_path, tiny_model_dir):
    app = make_app(tmp_path, tiny_model_dir)
    app.persist_settings = True

    async def scenario(pilot):
        await wait_loaded(pilot)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: pilot.app.screen.id == "settings")
        screen = pilot.app.screen
        screen.query_one("#field-temperature").value = "3"
        screen.query_one("#field-top_p").value = "0"
        await pilot.press("ctrl+s")
        assert pilot.app.screen is screen  # not saved
        assert "between 0 and 2" in str(screen.query_one("#error-temperature").render())
        assert "(0, 1]" in str(screen.query_one("#error-top_p").render())
        assert settings_mod.load()[0].generation.temperature == 0.0  # nothing invalid was written
        screen.query_one("#field-temperature").value = "0"
        screen.query_one("#field-top_p").value = "1"
        screen.query_one("#field-max_new_tokens").value = "12"
        screen.query_one("#field-tree").value = "cpu_4" if "cpu_4" in settings_mod.tree_choices() else "auto"
        screen.query_one("#field-theme").value = "medusa-light"
        screen.query_one("#field-system_prompt").load_text("You are terse.")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: pilot.app.screen is app.chat_screen)
        assert app.theme == "medusa-light"
        await send(pilot, "hi")
        await wait_idle(pilot)
        assert answers(app)[-1].stats["new_tokens"] <= 12

    run(app, scenario)
    saved, problems = settings_mod.load()
    assert problems == []
    assert (saved.generation.max_new_tokens, saved.theme, saved.system_prompt) == (12, "medusa-light", "You are terse.")
    conv = Store(tmp_path / "history.db").list_conversations()[0]
    assert conv.system_prompt == "You are terse."


def test_tuned_without_a_tuned_tree_loads_on_the_calibrated_tree_and_threads_apply(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    monkeypatch.setenv("MEDUSA_CHAT_CALIBRATION", "on")
    loads: list[LoadRequest] = []

    def factory(request):
        loads.append(request)
        return default_engine_factory(request)

    app = make_app(tmp_path, tiny_model_dir, factory=factory, tree="tuned", threads=2)
    notes: list[str] = []
    monkeypatch.setattr(app, "notify", lambda message, **_kw: notes.append(str(message)))

    async def scenario(pilot):
        await wait_loaded(pilot)
        used = app.loaded.tree_name
        assert used.startswith(("calibrated-", "plain (calibrated)")) and app.loaded.auto_tree.name == used
        assert any("no tuned tree" in n and f"using {used};" in n for n in notes), notes
        status = str(app.chat_screen.query_one("#status").render())
        assert f"lean cpu fp32 · 4 heads · tree {used} ·" in status
        app.request_tree("cpu_4")  # a named preset, then back to tuned: the calibrated tree again, said so
        assert "tree cpu_4" in str(app.chat_screen.query_one("#status").render())
        app.request_tree("tuned")
        await pilot.pause()
        assert app.loaded.tree_name == used and f"tree {used}" in str(app.chat_screen.query_one("#status").render())
        await send(pilot, "hi")
        await wait_idle(pilot)
        assert answers(app)[-1].content
        seen: list[int] = []  # what a new worker thread (each answer runs in one) gets from torch
        worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert seen == [2]  # --threads reached torch, from the load on

    try:
        run(app, scenario)
    finally:
        torch.set_num_threads(1)
    assert [(r.tree, r.threads) for r in loads] == [("tuned", 2)]
