"""The app keeps user data and tells the truth (issues 11 and 12): scripted engine, real SQLite, Pilot."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest
from typer.testing import CliRunner

from medusa_chat import settings as settings_mod
from medusa_chat.engine.events import GenerationStats, StepEvent
from medusa_chat.store import Store, StoredMessage
from medusa_chat.tui.app import MedusaChatApp
from medusa_chat.tui.screens import models as models_screen
from medusa_chat.tui.stats import Gauges, summary_lines
from medusa_chat.tui.widgets.gauges import GaugeBar, gauge_parts, pack
from medusa_chat.tui.widgets.message import MessageView, chat_markdown
from medusa_chat.tui.widgets.prompt import PromptInput
from tests.fakes import ScriptedModel, scripted_factory
from tests.pilot import wait_idle, wait_loaded, wait_until


def make_app(tmp_path, model=None, factory=None, **kwargs) -> MedusaChatApp:
    return MedusaChatApp(
        engine_factory=factory or scripted_factory(model or ScriptedModel()),
        store=Store(tmp_path / "h.db"),
        settings=settings_mod.Settings(),
        persist_settings=False,
        **kwargs,
    )


def run(app, scenario, size=(100, 32), loaded=True):
    async def main():
        async with app.run_test(size=size) as pilot:
            if loaded:
                await wait_loaded(pilot)
            await scenario(pilot)

    asyncio.run(main())


async def send(pilot, text):
    pilot.app.chat_screen.query_one(PromptInput).focus()
    await pilot.press(*text)
    await pilot.press("enter")


def answers(app):
    return [v for v in app.chat_screen.query(MessageView) if v.role == "assistant"]


def stored(tmp_path):
    store = Store(tmp_path / "h.db")
    [conv] = store.list_conversations()
    return store.get(conv.id).messages


# --- issue 11 ---------------------------------------------------------------------------------------


def test_quitting_mid_answer_stores_the_partial_answer_marked_stopped(tmp_path):
    model = ScriptedModel()
    model.generator.hold_after = 4
    app = make_app(tmp_path, model)

    async def scenario(pilot):
        await send(pilot, "a long answer please")
        chat = app.chat_screen
        await wait_until(pilot, lambda: chat.job is not None and chat.job.gauges.steps == 4)
        await pilot.press("ctrl+q")

    try:
        run(app, scenario)
    finally:
        model.generator.gate.set()
    messages = stored(tmp_path)
    assert [(m.role, m.stopped) for m in messages] == [("user", False), ("assistant", True)]
    assert messages[1].content and messages[1].content in model.generator.text


def test_deleting_the_open_conversation_clears_the_screen(tmp_path):
    app = make_app(tmp_path)

    async def scenario(pilot):
        await send(pilot, "first chat")
        await wait_idle(pilot)
        chat = app.chat_screen
        assert chat.conversation_id is not None
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: app.screen.id == "history")
        await pilot.press("d")
        await wait_until(pilot, lambda: app.screen.id == "confirm")
        question = str(app.screen.query_one(".dialog-title").render())
        assert "first chat" in question and "2 messages" in question
        assert app.screen.focused is app.screen.query_one("#no")  # the safe answer has the focus
        await pilot.press("enter")  # Enter presses the focused "Cancel": nothing is deleted
        await wait_until(pilot, lambda: app.screen.id == "history")
        assert len(app.store.list_conversations()) == 1
        await pilot.press("d")
        await wait_until(pilot, lambda: app.screen.id == "confirm")
        await pilot.press("y")
        await wait_until(pilot, lambda: app.screen.id == "history")
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is chat)
        await wait_until(pilot, lambda: not chat.query(MessageView))
        assert chat.turns == [] and chat.conversation_id is None
        await send(pilot, "second chat")
        await wait_idle(pilot)
        assert [t["content"] for t in chat.turns if t["role"] == "user"] == ["second chat"]

    run(app, scenario)
    [conv] = Store(tmp_path / "h.db").list_conversations()
    assert conv.title == "second chat"


def test_regenerate_deletes_only_the_messages_this_window_knows(tmp_path):
    app = make_app(tmp_path)

    async def scenario(pilot):
        await send(pilot, "hello")
        await wait_idle(pilot)
        cid = app.chat_screen.conversation_id
        # Another window on the same conversation adds a turn.
        other = Store(tmp_path / "h.db")
        other.add_message(cid, StoredMessage("user", "from the other window"))
        await pilot.press("ctrl+r")
        await wait_idle(pilot)

    run(app, scenario)
    messages = stored(tmp_path)
    assert [m.content for m in messages if m.role == "user"] == ["hello", "from the other window"]
    assert sum(m.role == "assistant" for m in messages) == 1


def test_store_delete_messages_by_id(tmp_path):
    store = Store(tmp_path / "s.db")
    cid = store.create_conversation()
    ids = [store.add_message(cid, StoredMessage("user", str(i))) for i in range(3)]
    assert store.delete_messages(cid, [ids[1], 999]) == 1
    assert [m.content for m in store.get(cid).messages] == ["0", "2"]
    assert store.delete_messages(cid, []) == 0


def test_history_that_cannot_be_written_never_stops_the_app(tmp_path, monkeypatch):
    app = make_app(tmp_path)

    def readonly(*args, **kwargs):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    async def scenario(pilot):
        await send(pilot, "hello")
        await wait_idle(pilot)
        for name in ("add_message", "create_conversation", "delete_messages", "set_system_prompt", "rename",
                     "delete", "get", "list_conversations"):
            monkeypatch.setattr(app.store, name, readonly)
        notes = []
        monkeypatch.setattr(app, "notify", lambda text, **kw: notes.append(text))
        await pilot.press("ctrl+r")  # regenerate: the old answer cannot be deleted, so it stays
        await pilot.pause()
        assert len(answers(app)) == 1 and "Could not replace the answer" in notes[-1]
        app.apply_settings(settings_mod.Settings(system_prompt="terse"))
        assert any("save the system prompt" in n for n in notes)
        await send(pilot, "again")  # cannot be saved: said, and the chat goes on
        await wait_idle(pilot)
        assert len(answers(app)) == 2 and any("save the message" in n for n in notes)
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: app.screen.id == "history")
        assert "unavailable" in str(app.screen.query_one("#history-empty").render())
        await pilot.press("escape")
        app.open_conversation(1)
        await pilot.pause(0.2)
        assert app.is_running

    run(app, scenario)


def test_a_tree_chosen_during_a_generation_applies_to_the_next_answer(tmp_path):
    model = ScriptedModel()
    model.generator.hold_after = 2
    trees = []
    set_tree = model.generator.set_tree

    def record(tree, name=None):
        trees.append((tree, model.generator.calls[-1] if model.generator.calls else None))
        set_tree(tree, name)

    model.generator.set_tree = record
    app = make_app(tmp_path, model)

    async def scenario(pilot):
        await send(pilot, "one")
        chat = app.chat_screen
        await wait_until(pilot, lambda: chat.job is not None and chat.job.gauges.steps == 2)
        app.apply_settings(settings_mod.Settings(tree="cpu_4"))
        assert trees == [] and app.pending_tree == "cpu_4"  # the running step's tree is untouched
        model.generator.gate.set()
        await wait_idle(pilot)
        assert model.generator.tree_name == "cpu_8"
        await send(pilot, "two")
        await wait_idle(pilot)
        assert model.generator.tree_name == "cpu_4" and app.pending_tree is None
        assert len(trees) == 1 and len(model.generator.calls) == 2

    try:
        run(app, scenario)
    finally:
        model.generator.gate.set()


# --- issue 12: loading ------------------------------------------------------------------------------


def test_enter_while_loading_is_sent_once_when_the_model_is_ready(tmp_path):
    gate = threading.Event()
    model = ScriptedModel()

    def slow(request):
        gate.wait(10)
        return model

    app = make_app(tmp_path, factory=slow)

    async def scenario(pilot):
        await wait_until(pilot, lambda: app.loading)
        await send(pilot, "queued")
        await pilot.press("enter")  # twice: still sent once
        assert "sent when the model is ready" in str(app.chat_screen.query_one("#status").render())
        gate.set()
        await wait_loaded(pilot)
        await wait_until(pilot, lambda: len(answers(app)) == 1 and not app.chat_screen.busy)
        assert len(model.generator.calls) == 1
        assert app.chat_screen.query_one(PromptInput).text == ""

    try:
        run(app, scenario, loaded=False)
    finally:
        gate.set()
    assert [m.role for m in stored(tmp_path)] == ["user", "assistant"]


def test_a_bad_tree_is_refused_before_the_model_loads(tmp_path):
    calls = []

    def factory(request):
        calls.append(request)
        return ScriptedModel()

    app = make_app(tmp_path, factory=factory, tree="bogus")

    async def scenario(pilot):
        await wait_until(pilot, lambda: app.load_error is not None)
        assert "unknown tree 'bogus'" in app.load_error and calls == []
        bar = app.chat_screen.query_one(GaugeBar)
        assert "measuring" not in bar.text()

    run(app, scenario, loaded=False)


def test_cli_version_trees_and_bad_options():
    from medusa_chat.cli import app as cli

    runner = CliRunner()
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("medusa-chat ")
    result = runner.invoke(cli, ["trees"])
    assert result.exit_code == 0 and "chain-N" in result.output and "\ntuned " in result.output
    for args in (["--tree", "bogus"], ["generate", "hi", "--tree", "bogus"], ["--quant", "2bit"], ["--threads", "0"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, args
        assert "Traceback" not in result.output
    assert "--threads must be a positive number" in runner.invoke(cli, ["--threads", "-1"]).output
    assert "--threads" in runner.invoke(cli, ["--help"]).output


# --- issue 12: gauges -------------------------------------------------------------------------------


def step(n, *, fallback=False, t=0.01):
    return StepEvent(list(range(n)), "x" * n, n, 8 if n > 1 else 1, t, [False] + [True] * (n - 1), fallback)


def stats(new_tokens, steps, decode, *, medusa=True, fallback_steps=0):
    return GenerationStats(new_tokens, steps, 0.01, decode, 5, 0, "eos", medusa, fallback_steps=fallback_steps)


def test_gauges_agree_with_the_answer_line():
    g = Gauges(baseline_tps=50.0)
    for n in (3, 1, 4):
        g.add(step(n, t=0.02))
    g.add(StepEvent([], "tail", 0, 0, 0.0, []))  # the text flushed at the end is no step
    assert g.steps == 3 and g.current == 4
    g.finish(stats(8, 3, 0.06))
    assert g.mean_accepted == pytest.approx(8 / 3) and g.speedup == pytest.approx(8 / 0.06 / 50)
    assert summary_lines(g.as_dict()) == [  # three steps against a plain speed from elsewhere: a first impression
        "8 tokens · 3 steps · 2.67 tok/step · 133.3 tok/s · ~2.67× plain (few steps) · Medusa on"
    ]
    one = Gauges()
    one.add(step(1))
    one.finish(stats(1, 1, 0.01, medusa=False))
    assert summary_lines(one.as_dict())[0].startswith("1 token · 1 step · ")


def test_a_fallback_answer_is_labelled_on_its_own_line_and_claims_no_speedup():
    g = Gauges(baseline_tps=20.0)
    for _ in range(4):
        g.add(step(1, fallback=True))
    g.finish(stats(4, 4, 0.04, fallback_steps=4))
    parts = gauge_parts(g, True, 20.0)
    assert parts["mode"] == "Medusa ON → plain" and "plain decoding" in parts["speedup"]
    assert g.speedup is None
    lines = summary_lines(g.as_dict())
    assert "decoded plainly" in lines[0] and "Medusa on" not in lines[0]
    assert lines[1].startswith("↳ automatic fallback: 4 of 4 steps")


def test_a_speedup_above_the_tokens_per_step_is_not_claimed():
    g = Gauges(baseline_tps=10.0)  # a stale plain speed (measured on a busy machine)
    g.add(step(1))
    g.finish(stats(50, 49, 1.0))  # 1.02 tok/step at 50 tok/s: 5x "speedup" is impossible
    assert g.raw_speedup == pytest.approx(5.0) and g.speedup is None and g.stale_baseline
    assert gauge_parts(g, True, 10.0)["speedup"] == "speedup ?"
    assert "speedup ?" in summary_lines(g.as_dict())[0]


def test_gauge_parts_without_a_model_and_packing():
    parts = gauge_parts(None, True, None)
    assert parts["plain"] == "plain speed –"
    assert gauge_parts(None, True, None, measuring=True)["plain"] == "plain speed: measuring…"
    assert pack(["aaaa", "bb", "cccc"], 8) == [["aaaa", "bb"], ["cccc"]]


def test_gauges_wrap_at_70_columns(tmp_path):
    app = make_app(tmp_path)

    async def scenario(pilot):
        await send(pilot, "hi")
        await wait_idle(pilot)
        bar = app.chat_screen.query_one(GaugeBar)
        assert bar.size.height == 2
        shown = str(bar.render())
        assert "speedup" in shown and "plain 50.0 tok/s" in shown
        footer = " ".join(str(k.render()) for k in app.chat_screen.query("FooterKey"))
        for key in ("Settings", "History", "Help", "Quit", "Medusa"):
            assert key in footer

    run(app, scenario, size=(70, 25))


# --- issue 12: conversation view, settings, picker ----------------------------------------------------


def test_single_newlines_are_line_breaks_and_markdown_still_works():
    tokens = chat_markdown().parse("Roses are red,\nviolets blue.\n\n- a\n- b\n\n```\nx\ny\n```\n")
    inline = next(t for t in tokens if t.type == "inline")
    assert [c.type for c in inline.children] == ["text", "hardbreak", "text"]
    assert any(t.type == "bullet_list_open" for t in tokens)
    assert [t.content for t in tokens if t.type == "fence"] == ["x\ny\n"]


def test_coloured_view_says_it_is_plain_text(tmp_path):
    app = make_app(tmp_path)

    async def scenario(pilot):
        await pilot.press("ctrl+g")
        await send(pilot, "hi")
        await wait_idle(pilot)
        coloured = str(answers(app)[0].query_one(".message--coloured").render())
        assert coloured.startswith("Coloured tokens (plain text, no Markdown)")
        keys = [b.action for (_, b, _, _) in app.chat_screen.active_bindings.values() if b.show]
        assert "regenerate" in keys  # Regenerate is in the footer

    run(app, scenario)


def test_settings_form_focuses_its_first_field_and_clears_stale_errors(tmp_path):
    app = make_app(tmp_path)

    async def scenario(pilot):
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.screen.id == "settings")
        screen = app.screen
        assert screen.focused is screen.query_one("#field-temperature")
        await pilot.press("end", "backspace", "backspace", "backspace", *"9")
        await pilot.press("ctrl+s")
        assert app.screen is screen
        assert "1 invalid value." in str(screen.query_one("#settings-message").render())
        await pilot.press("backspace", "0")
        assert str(screen.query_one("#settings-message").render()) == ""
        assert str(screen.query_one("#error-temperature").render()) == ""

    run(app, scenario)


def test_picker_typed_model_and_cpu_only_quantisation(tmp_path, monkeypatch):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert models_screen.parse_model_id(str(model_dir)) == (str(model_dir), "")
    assert models_screen.parse_model_id("org/name-1.5") == ("org/name-1.5", "")
    assert models_screen.parse_model_id(str(tmp_path / "missing"))[0] is None
    assert models_screen.parse_model_id("not a repo")[0] is None
    assert models_screen.parse_model_id(str(tmp_path))[0] is None  # no config.json

    rows = [models_screen.Row("smollm2-135m-instruct", "SmolLM2", "packaged", 98_000_000, 134_515_008, None,
                              architecture="llama"),
            models_screen.Row("medusa-vicuna-7b-v1.3", "Vicuna", "not downloaded", 13_500_000_000, 6_738_415_616,
                              None, architecture="llama"),
            models_screen.Row("tiny-gpt2", "GPT-2", "cached", 500_000_000, 124_000_000, None, architecture="gpt2")]
    monkeypatch.setattr(models_screen, "scan_catalog", lambda: rows)
    monkeypatch.setattr(models_screen, "machine_memory", lambda: 16 * 10**9)
    monkeypatch.setattr(models_screen, "machine_has_cuda", lambda: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    app = make_app(tmp_path)
    requests = []

    async def scenario(pilot):
        monkeypatch.setattr(app, "load_model", requests.append)
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: app.screen.id == "models")
        screen = app.screen
        table = screen.query_one("#models-table")
        await wait_until(pilot, lambda: table.row_count == 3)
        # On a CPU 4/8-bit runs on the lean decoder: Llama-family models get it, others say why not.
        assert table.get_row("smollm2-135m-instruct")[2:4] == ["80.7M✓", "161.4M✓"]  # 4-bit, 8-bit (narrow)
        assert table.get_row("tiny-gpt2")[2:4] == ["n/a", "n/a"]
        assert "4/8-bit for the Llama family" in str(screen.query_one("#models-summary").render())
        offline = type("OfflineError", (Exception,), {})("cannot reach")
        text = screen.download_failure("medusa-vicuna-7b-v1.3", offline)
        assert "cannot be reached" in text and "Usable offline now: smollm2-135m-instruct" in text
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert "HF_HUB_OFFLINE is set" in screen.download_failure("x", offline)
        table.move_cursor(row=table.get_row_index("tiny-gpt2"))
        await pilot.pause()
        assert "4-bit, 8-bit: n/a, on a CPU 4/8-bit runs on the lean decoder" in str(
            screen.query_one("#model-detail").render())
        screen.query_one("#precision").value = "4bit"
        await pilot.press("enter")
        assert "4bit cannot run tiny-gpt2 here" in str(screen.query_one("#models-message").render())
        assert app.screen is screen and requests == []
        screen.query_one("#precision").value = "auto"
        screen.query_one("#model-id").focus()
        await pilot.press(*"no such thing")
        await pilot.press("enter")
        assert "neither a local directory" in str(screen.query_one("#models-message").render())
        screen.query_one("#model-id").value = str(model_dir)
        screen.query_one("#precision").value = "16bit"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen is app.chat_screen)
        await pilot.press("ctrl+o")  # 4-bit for a Llama-family model on this CPU: loaded as asked
        await wait_until(pilot, lambda: app.screen.id == "models")
        await wait_until(pilot, lambda: app.screen.query_one("#models-table").row_count == 3)
        app.screen.query_one("#precision").value = "4bit"
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen is app.chat_screen)

    run(app, scenario, size=(70, 25))
    assert [(r.model, r.dtype, r.quant) for r in requests] == [
        (str(model_dir), "bf16", None), ("smollm2-135m-instruct", None, "4bit")]  # 16-bit is bf16 on a CPU
