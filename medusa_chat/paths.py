"""Per-user locations (platformdirs), each overridable by an environment variable.

``MEDUSA_CHAT_CONFIG_DIR``, ``MEDUSA_CHAT_DATA_DIR`` and ``MEDUSA_CHAT_CACHE_DIR`` replace the
platform defaults. Every function creates its directory before returning it when it can; one that
cannot be created (a read-only home, a file in the way) is returned all the same, so commands that only
read still run: readers find nothing there and writers report their own error.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

APP_NAME = "medusa-chat"


def _ensure(path: Path) -> Path:
    """``path``, created when possible (see the module docstring)."""
    with contextlib.suppress(OSError):
        path.mkdir(parents=True, exist_ok=True)
    return path


def _location(env_var: str, default: str) -> Path:
    override = os.environ.get(env_var)
    return _ensure(Path(override).expanduser() if override else Path(default))


def config_dir() -> Path:
    """Settings and user catalogue entries (``config_dir() / "models"``)."""
    import platformdirs

    return _location("MEDUSA_CHAT_CONFIG_DIR", platformdirs.user_config_dir(APP_NAME, appauthor=False))


def data_dir() -> Path:
    """Persistent user data: conversations, trained heads."""
    import platformdirs

    return _location("MEDUSA_CHAT_DATA_DIR", platformdirs.user_data_dir(APP_NAME, appauthor=False))


def cache_dir() -> Path:
    """Disposable data that can be rebuilt."""
    import platformdirs

    return _location("MEDUSA_CHAT_CACHE_DIR", platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def user_models_dir() -> Path:
    """Directory holding user catalogue entries (one TOML per model)."""
    return _ensure(config_dir() / "models")
