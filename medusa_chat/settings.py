"""The user's saved settings: a small TOML file under ``config_dir()``.

Read with :mod:`tomllib`, written by a tiny writer below (strings, numbers, booleans, string lists
and tables). Every field is validated by ``validate``; the settings form shows those messages and
refuses to save invalid values. A broken or partly invalid file never stops the app: bad fields fall
back to their defaults and the problems are reported. A file that cannot be parsed (a TOML syntax
error, not UTF-8) is never overwritten without a copy of its exact bytes in ``config.toml.bak`` (the
problem message says where), and a save keeps every key and table this version does not know.
"""

from __future__ import annotations

import datetime
import math
import os
import tempfile
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .engine.config import FIELDS, GenerationConfig, value_problem
from .errors import UserError
from .trees import AUTO, TUNED, tree_names, tree_problem

FILE_NAME = "config.toml"
DEFAULT_THEME = "medusa-dark"
TREE_AUTO = AUTO
TREE_TUNED = TUNED

GENERATION_FIELDS = (
    "temperature",
    "top_p",
    "max_new_tokens",
    "posterior_threshold",
    "posterior_alpha",
    "acceptance",
    "prompt_lookup",
    "auto_fallback",
)
"""The ``GenerationConfig`` fields a user sets: saved under ``[generation]`` (with ``tree``)."""
_GENERATION_KEYS = (*GENERATION_FIELDS[:3], "tree", *GENERATION_FIELDS[3:])  # the file's order
_TOP_LEVEL = ("system_prompt", "theme", "medusa", "colour_tokens", "model", "quant")


class SettingsError(UserError, ValueError):
    """One or more invalid settings; ``errors`` maps field name to a message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass
class Settings:
    """Everything the user can change from the settings form (plus remembered choices).

    ``generation`` holds the generation settings (``medusa`` is the app's Medusa switch); the file keeps
    them flat: ``medusa`` at the top level, the others under ``[generation]``.
    """

    generation: GenerationConfig = field(default_factory=GenerationConfig.for_chat)
    tree: str = TREE_AUTO
    system_prompt: str = ""
    theme: str = DEFAULT_THEME
    colour_tokens: bool = False
    model: str = ""
    quant: str = ""
    keymap: dict[str, str] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        """Every setting by its name in the file and the form (generation fields included)."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "generation"}
        return {**own, "medusa": self.generation.medusa, **{k: getattr(self.generation, k) for k in GENERATION_FIELDS}}

    def with_values(self, values: dict[str, Any]) -> Settings:
        """A copy with ``values`` (already checked by :func:`coerce`) set by name."""
        generation = {k: v for k, v in values.items() if k in GENERATION_FIELDS or k == "medusa"}
        own = {k: v for k, v in values.items() if k not in generation}
        return replace(self, generation=replace(self.generation, **generation), **own)

    def validated(self) -> Settings:
        """``self`` if every field is valid, else raises :class:`SettingsError`."""
        errors = validate(self.values())
        if errors:
            raise SettingsError(errors)
        return self


def record(config: GenerationConfig) -> dict[str, Any]:
    """What a stored answer keeps of the settings it was generated with."""
    return {**{k: getattr(config, k) for k in GENERATION_FIELDS}, "medusa": config.medusa}


def _number(value: Any, kind: type) -> float | int:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, str):
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError("must be an integer" if kind is int else "must be a number") from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError("must be an integer")
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def coerce(name: str, value: Any) -> Any:
    """Parse one field from form text or TOML into its type; raises ValueError with a user message."""
    if name in GENERATION_FIELDS or name == "medusa":
        bounds = FIELDS[name].metadata.get("bounds")
        if bounds is not None:
            value = _number(value, bounds.kind)
        if problem := value_problem(name, value):
            raise ValueError(problem)
        return value
    if name == "colour_tokens":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if name == "keymap":
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ValueError("must map binding ids to keys")
        return dict(value)
    if not isinstance(value, str):
        raise ValueError("must be text")
    if name == "tree":
        value = value.strip() or TREE_AUTO
        if tree_problem(value):
            raise ValueError(f"unknown tree {value!r}")
    if name == "theme" and not value.strip():
        raise ValueError("must not be empty")
    if name == "system_prompt" and len(value) > 20000:
        raise ValueError("is too long (20000 characters at most)")
    return value


def tree_choices() -> list[str]:
    """Tree names the form offers: auto (the model's default), tuned (this machine's), then the presets."""
    return tree_names()


def validate(values: dict[str, Any]) -> dict[str, str]:
    """Messages for every invalid field in ``values`` (empty when all are valid)."""
    errors: dict[str, str] = {}
    names = set(Settings().values())
    for name, value in values.items():
        if name not in names:
            continue
        try:
            coerce(name, value)
        except ValueError as exc:
            errors[name] = str(exc)
    return errors


def parse_form(current: Settings, values: dict[str, Any]) -> Settings:
    """A new Settings from form values (text), or SettingsError with every field's problem."""
    parsed: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, value in values.items():
        try:
            parsed[name] = coerce(name, value)
        except ValueError as exc:
            errors[name] = str(exc)
    if errors:
        raise SettingsError(errors)
    return current.with_values(parsed)


def settings_path() -> Path:
    from .paths import config_dir

    return config_dir() / FILE_NAME


def load(path: Path | None = None) -> tuple[Settings, list[str]]:
    """The saved settings and a list of problems found (bad fields keep their defaults).

    A file that cannot be parsed is copied byte for byte to a backup first; the problem names it.
    """
    path = path or settings_path()
    problems: list[str] = []
    if not path.exists():
        return Settings(), problems
    try:
        data = _parse(path.read_bytes())
    except OSError as exc:
        return Settings(), [f"{path}: unreadable, using defaults for now; it will not be overwritten ({exc})"]
    except ValueError as exc:
        return Settings(), [_backup_message(path, exc)]
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "generation" and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    names = set(Settings().values())
    good: dict[str, Any] = {}
    for key, value in flat.items():
        if key not in names:
            problems.append(f"{path}: unknown setting {key!r} ignored (kept in the file)")
            continue
        try:
            good[key] = coerce(key, value)
        except ValueError as exc:
            problems.append(f"{path}: {key} {exc}; using the default")
    return Settings().with_values(good), problems


def _parse(raw: bytes) -> dict[str, Any]:
    """TOML from raw bytes; ValueError (UnicodeDecodeError, TOMLDecodeError) when it is not UTF-8 TOML."""
    return tomllib.loads(raw.decode("utf-8"))


def _backup_message(path: Path, exc: Exception) -> str:
    reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else f"not valid TOML ({exc})"
    try:
        backup = backup_file(path)
    except OSError as err:
        return f"{path} is {reason}; using defaults for now (it could not be backed up: {err})"
    return f"{path} is {reason}; your file was copied to {backup}; using defaults for now"


def backup_file(path: Path) -> Path:
    """Copy ``path``'s exact bytes to ``path.bak`` (``.bak.1``, ... when another backup is there); returns it.

    An existing backup with the same bytes is reused.
    """
    raw = path.read_bytes()
    for n in range(1000):
        backup = path.with_name(path.name + (".bak" if n == 0 else f".bak.{n}"))
        if backup.exists():
            if backup.is_file() and backup.read_bytes() == raw:
                return backup
            continue
        _write_atomic(backup, raw)
        return backup
    raise OSError(f"too many backups of {path}")


def save(settings: Settings, path: Path | None = None) -> Path:
    """Write ``settings`` atomically (temporary file + rename) and return the path.

    Keys and tables this version does not know are kept. A file that cannot be parsed is backed up
    first (:func:`backup_file`); one that cannot be read at all is not replaced (OSError).
    """
    path = path or settings_path()
    data = settings.values()
    ours = {
        **{k: data[k] for k in _TOP_LEVEL},
        "generation": {k: data[k] for k in _GENERATION_KEYS},
        "keymap": data["keymap"],
    }
    doc = _merge_unknown(ours, _existing(path))
    text = "# medusa-chat settings (written by the app; edit freely)\n" + dumps(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, text.encode("utf-8"))
    return path


def _existing(path: Path) -> dict[str, Any]:
    """What the file holds now ({} when absent or unparseable, after a backup); OSError when unreadable."""
    if not path.exists():
        return {}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read {path} ({exc}); not overwriting it") from exc
    try:
        return _parse(raw)
    except ValueError:
        backup_file(path)
        return {}


def _merge_unknown(ours: dict[str, Any], existing: dict[str, Any]) -> dict[str, Any]:
    """``ours`` plus every key of ``existing`` that is not a setting (top level and in ``[generation]``)."""
    known = set(Settings().values()) | {"generation"}
    doc = {**ours, **{k: v for k, v in existing.items() if k not in known}}
    generation = existing.get("generation")
    if isinstance(generation, dict):
        doc["generation"] = {**ours["generation"], **{k: v for k, v in generation.items() if k not in known}}
    return doc


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` through a temporary file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- a tiny TOML writer -------------------------------------------------------------------------


def _string(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _key(key: str) -> str:
    if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key):
        return key
    return _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"TOML writer: unsupported value {value!r}")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(prefix: list[str], table: dict[str, Any], lines: list[str]) -> None:
    """Lines for ``table``: its plain keys, then its sub-tables and arrays of tables under dotted headers."""
    for k, v in table.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        name = [*prefix, _key(k)]
        if isinstance(v, dict):
            lines += ["", f"[{'.'.join(name)}]"]
            _table(name, v, lines)
        elif _is_table_array(v):
            for item in v:
                lines += ["", f"[[{'.'.join(name)}]]"]
                _table(name, item, lines)


def dumps(doc: dict[str, Any]) -> str:
    """TOML text for a dict of anything :mod:`tomllib` reads (tables, arrays of tables, dates)."""
    lines: list[str] = []
    _table([], doc, lines)
    return "\n".join(lines) + "\n"
