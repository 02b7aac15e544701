"""SVG snapshots of the main screens, made deterministic with the scripted engine.

Update only after reviewing the report: ``pytest tests/test_tui_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import pytest

from medusa_chat.store import Store, StoredMessage
from medusa_chat.tui.app import MedusaChatApp
from medusa_chat.tui.screens import models as models_screen
from tests.fakes import ScriptedModel, scripted_factory
from tests.pilot import quiet, wait_idle, wait_loaded, wait_until

SIZE = (100, 32)
CPU_RULE = models_screen.precision_problems  # the loader's real rule for 4/8-bit


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch):
    monkeypatch.setenv("TEXTUAL_ANIMATIONS", "none")
    monkeypatch.setattr(models_screen, "machine_memory", lambda: 16 * 10**9)
    monkeypatch.setattr(models_screen, "machine_has_cuda", lambda: True)
    monkeypatch.setattr(models_screen, "precision_problems", lambda architecture, cuda: {})  # a GPU that has it all


def make_app(tmp_path, model=None, theme="medusa-dark", **kwargs) -> MedusaChatApp:
    clock = iter(range(1_700_000_000, 1_800_000_000, 60))
    store = Store(tmp_path / "history.db", clock=lambda: float(next(clock)))
    return MedusaChatApp(
        engine_factory=scripted_factory(model or ScriptedModel()),
        store=store,
        theme=theme,
        persist_settings=False,
        settings=None,
        **kwargs,
    )


async def send(pilot, text="Explain Medusa decoding with a code example"):
    await pilot.press(*text)
    await pilot.press("enter")


def test_empty_chat(snap_compare, tmp_path):
    async def run_before(pilot):
        await wait_loaded(pilot)
        await quiet(pilot)

    assert snap_compare(make_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_loading_state(snap_compare, tmp_path):
    import threading

    gate = threading.Event()

    def slow_factory(request):
        gate.wait(3)
        return ScriptedModel()

    app = MedusaChatApp(engine_factory=slow_factory, store=Store(tmp_path / "h.db"), theme="medusa-dark",
                        persist_settings=False)

    async def run_before(pilot):
        await pilot.press(*"typing while it loads")
        await quiet(pilot)

    try:
        assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
    finally:
        gate.set()


def test_finished_answer_with_gauges(snap_compare, tmp_path):
    async def run_before(pilot):
        await wait_loaded(pilot)
        await send(pilot)
        await wait_idle(pilot)
        await quiet(pilot)

    assert snap_compare(make_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_mid_stream(snap_compare, tmp_path):
    model = ScriptedModel()
    model.generator.hold_after = 6

    async def run_before(pilot):
        await wait_loaded(pilot)
        await send(pilot)
        chat = pilot.app.chat_screen
        await wait_until(pilot, lambda: chat.job is not None and chat.job.gauges.steps == 6)
        await quiet(pilot)

    app = make_app(tmp_path, model)
    try:
        assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
    finally:
        model.generator.gate.set()


def test_stopped_answer_coloured(snap_compare, tmp_path):
    model = ScriptedModel()
    model.generator.hold_after = 5

    async def run_before(pilot):
        await wait_loaded(pilot)
        await pilot.press("ctrl+g")
        await send(pilot)
        chat = pilot.app.chat_screen
        await wait_until(pilot, lambda: chat.job is not None and chat.job.gauges.steps == 5)
        await pilot.press("escape")
        await wait_idle(pilot)
        await quiet(pilot)

    assert snap_compare(make_app(tmp_path, model), terminal_size=SIZE, run_before=run_before)


def test_compare_screen(snap_compare, tmp_path):
    async def run_before(pilot):
        await wait_loaded(pilot)
        await send(pilot, "Fibonacci?")
        await wait_idle(pilot)
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: pilot.app.screen.id == "compare")
        await quiet(pilot)

    assert snap_compare(make_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare, tmp_path):
    async def run_before(pilot):
        await wait_loaded(pilot)
        await pilot.press("f1")
        await wait_until(pilot, lambda: pilot.app.screen.id == "help")
        await quiet(pilot)

    assert snap_compare(make_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_settings_validation(snap_compare, tmp_path):
    async def run_before(pilot):
        await wait_loaded(pilot)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: pilot.app.screen.id == "settings")
        screen = pilot.app.screen
        screen.query_one("#field-temperature").value = "5"
        screen.query_one("#field-max_new_tokens").value = "many"
        await pilot.press("ctrl+s")
        await quiet(pilot)

    assert snap_compare(make_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_models_screen_downloading(snap_compare, tmp_path, monkeypatch):
    from medusa_chat.hub import DownloadProgress

    rows = [
        models_screen.Row("smollm2-135m-instruct", "SmolLM2 135M Instruct", "packaged", 98_000_000, 134_515_008,
                          None, "Runs offline on a CPU."),
        models_screen.Row("medusa-vicuna-7b-v1.3", "Medusa Vicuna 7B v1.3", "not downloaded", 13_500_000_000,
                          6_738_415_616, None),
        models_screen.Row("medusa-vicuna-13b-v1.3", "Medusa Vicuna 13B v1.3", "cached", 26_000_000_000,
                          13_015_864_320, None),
    ]
    monkeypatch.setattr(models_screen, "scan_catalog", lambda: rows)

    async def run_before(pilot):
        await wait_loaded(pilot)
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: pilot.app.screen.id == "models")
        screen = pilot.app.screen
        await wait_until(pilot, lambda: screen.query_one("#models-table").row_count == 3)
        screen.downloading = "medusa-vicuna-7b-v1.3"
        screen.query_one("#download-panel").add_class("-active")
        progress = DownloadProgress("FasterDecoding/medusa-vicuna-7b-v1.3", "pytorch_model-00001-of-00002.bin",
                                    4_200_000_000, 9_900_000_000, 5_670_000_000, 13_500_000_000, 52_000_000, 150.6)
        screen.post_message(models_screen.DownloadProgressed("medusa-vicuna-7b-v1.3", progress))
        await quiet(pilot)

    assert snap_compare(make_app(tmp_path), terminal_size=SIZE, run_before=run_before)


def test_history_screen(snap_compare, tmp_path):
    app = make_app(tmp_path)
    for title in ("Fibonacci in Rust", "What are Medusa heads?"):
        cid = app.store.create_conversation(model="scripted-tiny")
        app.store.add_message(cid, StoredMessage("user", title))
        app.store.add_message(cid, StoredMessage("assistant", "…"))

    async def run_before(pilot):
        await wait_loaded(pilot)
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: pilot.app.screen.id == "history")
        await quiet(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


@pytest.mark.parametrize("theme", ["medusa-light", "medusa-high-contrast"])
def test_themes(snap_compare, tmp_path, theme):
    async def run_before(pilot):
        await wait_loaded(pilot)
        await send(pilot)
        await wait_idle(pilot)
        await quiet(pilot)

    assert snap_compare(make_app(tmp_path, theme=theme), terminal_size=SIZE, run_before=run_before)


def test_narrow_terminal(snap_compare, tmp_path):
    async def run_before(pilot):
        await wait_loaded(pilot)
        await send(pilot, "hi")
        await wait_idle(pilot)
        await quiet(pilot)

    assert snap_compare(make_app(tmp_path), terminal_size=(80, 24), run_before=run_before)


SMALL_SIZES = [(70, 25), (80, 24)]


@pytest.mark.parametrize("size", SMALL_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_small_chat(snap_compare, tmp_path, size):
    async def run_before(pilot):
        await wait_loaded(pilot)
        await send(pilot, "Explain Medusa")
        await wait_idle(pilot)
        await quiet(pilot)

    assert snap_compare(make_app(tmp_path), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SMALL_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_small_picker(snap_compare, tmp_path, monkeypatch, size):
    rows = [
        models_screen.Row("smollm2-135m-instruct", "SmolLM2 135M Instruct", "packaged", 98_000_000, 134_515_008,
                          None, "Runs offline on a CPU.", "llama"),
        models_screen.Row("medusa-vicuna-7b-v1.3", "Medusa Vicuna 7B v1.3", "not downloaded", 13_500_000_000,
                          6_738_415_616, None, architecture="llama"),
        models_screen.Row("medusa-vicuna-13b-v1.3", "Medusa Vicuna 13B v1.3", "cached", 26_000_000_000,
                          13_015_864_320, None, architecture="llama"),
        models_screen.Row("tiny-gpt2", "GPT-2 with heads", "cached", 500_000_000, 124_000_000, None,
                          architecture="gpt2"),
    ]
    monkeypatch.setattr(models_screen, "scan_catalog", lambda: rows)
    monkeypatch.setattr(models_screen, "machine_has_cuda", lambda: False)  # a CPU: 4/8-bit by the loader's rule
    monkeypatch.setattr(models_screen, "precision_problems", CPU_RULE)

    async def run_before(pilot):
        await wait_loaded(pilot)
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: pilot.app.screen.id == "models")
        table = pilot.app.screen.query_one("#models-table")
        await wait_until(pilot, lambda: table.row_count == 4)
        table.move_cursor(row=3)  # the model 4/8-bit cannot run here: the detail says why
        await quiet(pilot)

    assert snap_compare(make_app(tmp_path), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SMALL_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_small_settings(snap_compare, tmp_path, size):
    async def run_before(pilot):
        await wait_loaded(pilot)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: pilot.app.screen.id == "settings")
        await quiet(pilot)

    assert snap_compare(make_app(tmp_path), terminal_size=size, run_before=run_before)
