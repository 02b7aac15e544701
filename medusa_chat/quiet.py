"""transformers kept off the console: no progress bars or log warnings of its own, its loops reported as counts.

transformers draws tqdm bars while it reads a GGUF, loads weights and writes shards, and logs
warnings a user cannot act on; the loader shows one bar per stage of its own instead
(:mod:`medusa_chat.progress`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType

_LIBRARIES = r"(transformers|torch|huggingface_hub|accelerate|gguf)(\.|$)"


def quiet_transformers() -> None:
    """Turn off transformers' progress bars, its log warnings and libraries' FutureWarnings (idempotent)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=_LIBRARIES)


@contextlib.contextmanager
def counted_loop(module: ModuleType, on_item: Callable[[int, int], None]) -> Iterator[None]:
    """Inside, ``module``'s ``tqdm(items, ...)`` loops draw nothing and call ``on_item(done, total)`` per item.

    For a library module that loops over ``tqdm(...)`` with no way to pass a callback (transformers'
    GGUF reader); where it has no module-level ``tqdm`` the loop is left alone.
    """
    original = getattr(module, "tqdm", None)
    if original is None:
        yield
        return

    def counted(iterable: Iterable, *_args, **_kwargs) -> Iterator:
        items = list(iterable)
        on_item(0, len(items))
        for done, item in enumerate(items, 1):
            yield item
            on_item(done, len(items))

    module.tqdm = counted
    try:
        yield
    finally:
        module.tqdm = original
