"""Helpers for driving the app in tests (Pilot): polling for background work, quieting the screen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def wait_until(pilot: Any, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``predicate`` while letting the app run; raises TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.02)
    await pilot.pause()


async def wait_loaded(pilot: Any, timeout: float = 60.0) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: app.loaded is not None or app.load_error is not None, timeout, "model load")
    if app.load_error:
        raise AssertionError(app.load_error)


async def wait_idle(pilot: Any, timeout: float = 60.0) -> None:
    """Until no generation or compare run is in flight."""
    chat = pilot.app.chat_screen
    await wait_until(pilot, lambda: not chat.busy, timeout, "generation to end")


async def quiet(pilot: Any) -> None:
    """Make the screen deterministic: no toasts, no blinking cursors, no pending animations."""
    app = pilot.app
    app.clear_notifications()
    for widget in app.screen.query("TextArea, Input"):
        widget.cursor_blink = False
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()
    await asyncio.sleep(0)
    await pilot.pause()
