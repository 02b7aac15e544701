import os
from pathlib import Path

# No test may reach the real Hub: point huggingface_hub at a closed loopback port before it is imported.
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest
import torch

torch.set_num_threads(int(os.environ.get("MEDUSA_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    """Keep every test's config, data and cache out of the user's real directories."""
    root = tmp_path_factory.mktemp("medusa-home")
    for name in ("CONFIG", "DATA", "CACHE"):
        monkeypatch.setenv(f"MEDUSA_CHAT_{name}_DIR", str(root / name.lower()))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A local tiny random Llama directory with a chat-template tokenizer and heads in ./medusa."""
    from tests.tiny import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """A cache directory holding the converted offline default model, converted once per test session.

    A finished conversion in the user's own cache is linked rather than redone (it is only read).
    """
    import platformdirs

    from medusa_chat import default_model
    from medusa_chat.paths import APP_NAME

    root = tmp_path_factory.mktemp("smollm2-cache")
    user_cache = Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))
    for name in (default_model.NAME, default_model.metadata_dir().name):
        if default_model.is_complete(user_cache / name):
            (root / name).symlink_to(user_cache / name, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDUSA_CHAT_CACHE_DIR", str(root))
        default_model.ensure_converted()
        default_model.ensure_metadata()
    return root


@pytest.fixture(autouse=True)
def _no_calibration_at_load(monkeypatch):
    """Loads in tests use the preset trees; tests of calibration turn it back on."""
    monkeypatch.setenv("MEDUSA_CHAT_CALIBRATION", "off")
