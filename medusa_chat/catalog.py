"""The model catalogue: built-in entries (``models/*.toml``), user entries, local dirs and Hub ids.

Each entry becomes a :class:`ModelSpec`. :func:`resolve` turns whatever the user passed to
``--model`` into one: a catalogue name, a local directory (a transformers model dir, with Medusa
heads inside it or as ``medusa_lm_head.*`` files, or a heads-only dir naming its base model), or a
Hub repo id ``owner/name``. Head counts in a spec are informative only: the loader reads them from
the weights.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import UserError
from .paths import user_models_dir

HEAD_FORMATS = ("medusa1-heads", "medusa2-full", "gguf-package", "local", "auto")
"""``medusa1-heads``: heads repo + separate base repo; ``medusa2-full``: one repo with ``medusa_head.*``
keys in its shards; ``gguf-package``: a GGUF shipped by a Python package; ``local``: a local directory;
``auto``: a Hub repo whose layout is decided from its files when downloading."""

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# FastChat's ``vicuna_v1.1`` (ADD_COLON_TWO, sep " ", sep2 "</s>"): "{system} USER: {u} ASSISTANT: {a}</s>USER: ...".
# It starts with the BOS token because ``apply_chat_template`` adds no special tokens of its own.
VICUNA_V1_1_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '" + VICUNA_SYSTEM.replace("'", "\\'") + "' %}{% set turns = messages %}{% endif %}"
    "{{ system }} "
    "{% for message in turns %}"
    "{% if message['role'] == 'user' %}USER: {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: {{ message['content'] }}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# FastChat's ``zephyr``: "<|system|>\n{system}</s>\n<|user|>\n{u}</s>\n<|assistant|>\n{a}</s>\n"; empty default system.
ZEPHYR_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "<|system|>\n{{ system }}</s>\n"
    "{% for message in turns %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CHAT_TEMPLATES = {"vicuna_v1.1": VICUNA_V1_1_TEMPLATE, "zephyr": ZEPHYR_TEMPLATE}

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
_HEAD_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")


class CatalogError(UserError, ValueError):
    """A catalogue entry that is malformed, or a ``--model`` value that names nothing."""


_problems: dict[str, str] = {}  # user entry file -> why it was skipped (the last scan)


def catalog_problems() -> list[str]:
    """Why user catalogue files were skipped at the last scan (one line each), for a warning."""
    return list(_problems.values())


@dataclass(frozen=True)
class ModelSpec:
    """One model the app can run: where its weights come from and how to use them."""

    name: str
    display_name: str = ""
    repo_id: str | None = None
    revision: str = "main"
    head_format: str = "auto"
    base_repo_id: str | None = None
    architecture: str = ""
    params: int = 0
    download_size: int = 0
    num_heads: int | None = None
    default_tree: str | None = None
    chat_template: str = "tokenizer"
    license: str = ""
    note: str = ""
    package: str | None = None
    file: str | None = None
    heads: str | None = None
    local_path: Path | None = None
    source: str = "builtin"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        return self.display_name or self.name

    @property
    def hub_repos(self) -> list[str]:
        """Hub repos to fetch for this model (heads repo first), none for local or packaged models."""
        if self.head_format in ("gguf-package", "local") or self.repo_id is None:
            return []
        return [r for r in (self.repo_id, self.base_repo_id) if r]

    def heads_dir(self) -> Path | None:
        """The packaged heads directory (``heads`` names a folder inside ``models/``), if any."""
        if not self.heads:
            return None
        return Path(str(resources.files("medusa_chat.models").joinpath(self.heads)))


def is_repo_id(value: object) -> bool:
    """Whether ``value`` looks like a Hub repo id ``owner/name`` (no ``..``: it becomes a cache folder name)."""
    return isinstance(value, str) and bool(_REPO_ID.match(value)) and ".." not in value


def spec_from_dict(data: dict[str, Any], source: str) -> ModelSpec:
    """A spec from one TOML table, checked; unknown keys are kept in ``extra``."""
    known = {f.name for f in fields(ModelSpec)} - {"local_path", "source", "extra"}
    if "name" not in data or not isinstance(data["name"], str):
        raise CatalogError(f"{source}: a catalogue entry needs a string 'name'")
    values = {k: v for k, v in data.items() if k in known}
    _check_types(values, source)
    spec = ModelSpec(**values, source=source, extra={k: v for k, v in data.items() if k not in known})
    if spec.head_format not in HEAD_FORMATS:
        raise CatalogError(f"{source}: head_format {spec.head_format!r} is not one of {', '.join(HEAD_FORMATS)}")
    if spec.chat_template != "tokenizer" and spec.chat_template not in CHAT_TEMPLATES:
        choices = ", ".join(["tokenizer", *CHAT_TEMPLATES])
        raise CatalogError(f"{source}: chat_template {spec.chat_template!r} is not one of {choices}")
    if spec.head_format in ("medusa1-heads", "medusa2-full", "auto") and not spec.repo_id:
        raise CatalogError(f"{source}: head_format {spec.head_format!r} needs a repo_id")
    if spec.head_format == "medusa1-heads" and not spec.base_repo_id:
        raise CatalogError(f"{source}: heads-only entries need base_repo_id (the base model)")
    hub_ids = [spec.repo_id] if spec.head_format in ("medusa2-full", "auto") else []
    hub_ids += [spec.repo_id, spec.base_repo_id] if spec.head_format == "medusa1-heads" else []
    for repo in hub_ids:
        if not is_repo_id(repo):
            raise CatalogError(f"{source}: {repo!r} is not a Hub repo id (owner/name)")
    if spec.head_format == "gguf-package" and not (spec.package and spec.file):
        raise CatalogError(f"{source}: gguf-package entries need 'package' and 'file'")
    return spec


_INT_FIELDS = ("params", "download_size", "num_heads")


def _check_types(values: dict[str, Any], source: str) -> None:
    """Each known field has the type it needs: whole numbers >= 0 for sizes, text for the rest."""
    for key, value in values.items():
        if key in _INT_FIELDS:
            if value is None and key == "num_heads":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CatalogError(f"{source}: {key} must be a whole number >= 0, not {value!r}")
        elif not isinstance(value, str):
            raise CatalogError(f"{source}: {key} must be text, not {value!r}")
    if "revision" in values:
        from .hub_names import HubError, check_revision

        try:
            check_revision(values["revision"])
        except HubError as exc:
            raise CatalogError(f"{source}: {exc}") from None


def _read_toml(text: str, source: str) -> ModelSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{source}: invalid TOML ({exc})") from exc
    return spec_from_dict(data, source)


def builtin_specs() -> dict[str, ModelSpec]:
    """The catalogue shipped in ``models/`` (package ``medusa_chat.models``)."""
    root = resources.files("medusa_chat.models")
    specs = [_read_toml(p.read_text(), "builtin") for p in root.iterdir() if p.name.endswith(".toml")]
    return {s.name: s for s in sorted(specs, key=lambda s: s.name)}


def user_specs(directory: Path | None = None) -> dict[str, ModelSpec]:
    """Entries the user added as TOML files in ``config_dir()/models/``.

    A file that cannot be read or is not a valid entry is skipped; :func:`catalog_problems` says why.
    """
    directory = directory or user_models_dir()
    specs: dict[str, ModelSpec] = {}
    _problems.clear()
    try:
        files = sorted(directory.glob("*.toml"))
    except OSError:
        files = []
    for path in files:
        try:
            spec = _read_toml(path.read_text(encoding="utf-8"), str(path))
        except (CatalogError, OSError, UnicodeDecodeError) as exc:
            reason = str(exc) if isinstance(exc, CatalogError) else f"{path}: unreadable ({exc})"
            _problems[str(path)] = f"skipped the catalogue entry {reason}"
            continue
        specs[spec.name] = spec
    return specs


def catalog() -> dict[str, ModelSpec]:
    """Built-in and user entries by name; a user entry replaces a built-in one of the same name."""
    return {**builtin_specs(), **user_specs()}


def get(name: str) -> ModelSpec:
    """The catalogue entry called ``name``."""
    specs = catalog()
    if name not in specs:
        raise CatalogError(f"no model called {name!r} in the catalogue; known: {', '.join(specs)}")
    return specs[name]


def resolve(name_or_path: str) -> ModelSpec:
    """A spec for a catalogue name, a local directory or a Hub repo id ``owner/name[@revision]``."""
    specs = catalog()
    if name_or_path in specs:
        return specs[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return spec_from_dir(path)
    if path.exists():
        raise CatalogError(f"{path} is a file: point --model at the directory holding the model")
    repo, _, revision = name_or_path.partition("@")
    if is_repo_id(repo):
        if revision:
            _check_types({"revision": revision}, name_or_path)
        return ModelSpec(name=name_or_path, display_name=repo, repo_id=repo, revision=revision or "main", source="hub")
    raise CatalogError(
        f"{name_or_path!r} is not a catalogue model, a local directory or a Hub repo id (owner/name); "
        f"catalogue: {', '.join(specs)}"
    )


def _read_config(directory: Path) -> dict[str, Any]:
    config = directory / "config.json"
    if not config.is_file():
        return {}
    try:
        value = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError, UnicodeDecodeError, unreadable
        raise CatalogError(f"{config} is not valid JSON ({exc}): fix or replace it") from exc
    if not isinstance(value, dict):
        raise CatalogError(f"{config} holds a JSON {type(value).__name__}, not an object: fix or replace it")
    return value


def _has_weights(directory: Path) -> bool:
    return any(p.name not in _HEAD_FILES for g in _WEIGHT_GLOBS for p in directory.glob(g))


def spec_from_dir(directory: Path) -> ModelSpec:
    """A spec for a local directory.

    Either a model (its heads as ``medusa_head.*`` keys in the shards or ``medusa_lm_head.*`` files
    beside them: ``base_repo_id`` is None) or heads only, whose config names the base
    (``base_repo_id``: a Hub id or a path). The heads are read from ``local_path`` in both cases.
    """
    directory = directory.resolve()
    config = _read_config(directory)
    has_heads = any((directory / f).is_file() for f in _HEAD_FILES)
    common = {"name": directory.name, "display_name": str(directory), "local_path": directory, "source": "local"}
    arch = config.get("model_type", "")
    if _has_weights(directory):
        return ModelSpec(**common, head_format="local", architecture=arch)
    if has_heads:
        base = config.get("base_model_name_or_path")
        if not base:
            raise CatalogError(f"{directory} holds Medusa heads but its config.json names no base_model_name_or_path")
        return ModelSpec(**common, head_format="local", base_repo_id=base, architecture=arch)
    raise CatalogError(f"{directory} holds neither model weights nor Medusa heads (medusa_lm_head.*)")


def chat_template_for(spec: ModelSpec, tokenizer: Any) -> str:
    """The Jinja chat template to use: the entry's named one, else the tokenizer's, else a guess by name."""
    if spec.chat_template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[spec.chat_template]
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own:
        return own
    names = " ".join(filter(None, (spec.name, spec.repo_id, spec.base_repo_id))).lower()
    for key in ("vicuna", "zephyr"):
        if key in names:
            return CHAT_TEMPLATES["vicuna_v1.1" if key == "vicuna" else key]
    raise CatalogError(
        f"{spec.label} has no chat template: add a catalogue entry with chat_template = one of "
        f"{', '.join(CHAT_TEMPLATES)}"
    )
