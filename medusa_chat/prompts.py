"""Instruction prompts in JSON Lines (``{"id": ..., "prompt": ...}``, optionally gzipped): one reader for all."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from .data import DEV_PROMPTS, TRAIN_PROMPTS

__all__ = ["DEV_PROMPTS", "TRAIN_PROMPTS", "Prompt", "read_prompts"]


@dataclass(frozen=True)
class Prompt:
    """One user turn; ``id`` is stable across releases (``<source>:<upstream id>``, or the line number)."""

    id: str
    text: str


def read_prompts(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """The first ``limit`` prompts of a JSONL file (``.gz`` allowed); a clear ``ValueError`` on bad lines."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    prompts: list[Prompt] = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    prompts.append(Prompt(str(record.get("id", f"line:{number}")), str(record["prompt"])))
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                    raise ValueError(f"{path}:{number}: not a JSON object with a \"prompt\" field") from exc
                if limit is not None and len(prompts) >= limit:
                    break
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise ValueError(f"{path}: not UTF-8 JSON Lines ({exc})") from exc
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts
