"""Data shipped with the project: instruction prompts and the default model's distillation answers.

``prompts/`` holds ``train.jsonl.gz`` (self-distillation) and ``dev.jsonl`` (``bench``,
``eval-heads``, ``tune``), with their sources and licences in ``prompts/SOURCES.md``.
``distill/<model>/`` holds the base model's greedy answers to training prompts (see
:mod:`medusa_chat.training.distill_data`).
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
PROMPTS_DIR = DATA_DIR / "prompts"
DISTILL_DIR = DATA_DIR / "distill"
TRAIN_PROMPTS = PROMPTS_DIR / "train.jsonl.gz"
DEV_PROMPTS = PROMPTS_DIR / "dev.jsonl"
