"""A model directory's config and tokenizer read without transformers (about 100 MB less memory).

For the offline default, whose directory holds ``config.json``, ``tokenizer.json``,
``tokenizer_config.json`` and ``chat_template.jinja`` (written once from its GGUF): the lean decoder
needs only the config's numbers, and chat needs only the subset of a transformers fast tokenizer
that :class:`LightTokenizer` implements, on the ``tokenizers`` library transformers itself uses.
The chat template is rendered the way transformers renders it (a sandboxed Jinja environment with
``trim_blocks`` and ``lstrip_blocks``). Other models keep transformers' own classes.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def has_light_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in FILES)


class ModelConfig(SimpleNamespace):
    """``config.json`` as attributes (what the lean decoder and the generator read of a transformers config)."""

    def get_text_config(self) -> ModelConfig:
        return self


def read_config(directory: Path) -> ModelConfig:
    return ModelConfig(**json.loads((directory / "config.json").read_text(encoding="utf-8")))


def _token(value: Any) -> str | None:
    """A special token as written in ``tokenizer_config.json``: a string or an AddedToken-like dict."""
    return value.get("content") if isinstance(value, dict) else value


class LightTokenizer:
    """Encoding, decoding and chat templates of a ``tokenizer.json`` (the transformers fast-tokenizer API subset)."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        template = directory / "chat_template.jinja"
        self.chat_template: str | None = (
            template.read_text(encoding="utf-8") if template.is_file() else config.get("chat_template")
        )
        self.special_tokens = {
            name: _token(config.get(name))
            for name in ("bos_token", "eos_token", "unk_token", "pad_token")
            if config.get(name) is not None
        }
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))

    def _id(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self._tokenizer.token_to_id(token)

    bos_token = property(lambda self: self.special_tokens.get("bos_token"))
    eos_token = property(lambda self: self.special_tokens.get("eos_token"))
    pad_token = property(lambda self: self.special_tokens.get("pad_token"))
    bos_token_id = property(lambda self: self._id("bos_token"))
    eos_token_id = property(lambda self: self._id("eos_token"))
    pad_token_id = property(lambda self: self._id("pad_token"))

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        text = self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return _clean_up(text) if self.clean_up_tokenization_spaces else text

    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
    ) -> str | list[int]:
        """``messages`` rendered with the template (and encoded without adding special tokens, like transformers)."""
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template")
        text = _compiled(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **self.special_tokens
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _clean_up(text: str) -> str:
    """transformers' ``clean_up_tokenization``."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


_TEMPLATES: dict[str, Any] = {}


def _compiled(template: str):
    """A chat template compiled as transformers compiles it (cached)."""
    if template not in _TEMPLATES:
        from jinja2.exceptions import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str):
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent
        )
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        _TEMPLATES[template] = env.from_string(template)
    return _TEMPLATES[template]
