"""What CPU this is (model name, instruction-set flags), read once from ``/proc/cpuinfo`` where there is one."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.cache
def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    for line in _cpuinfo():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def kernel_capability() -> str:
    """The instruction set torch's CPU kernels use (``AVX512``, ``AVX2``, ``DEFAULT``, ...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def int4_kernel_fast() -> bool:
    """Whether torch's int4 weight-only CPU kernel runs vectorised here (its AVX2 or AVX-512 build; it honours
    ``ATEN_CPU_CAPABILITY``). Measured on one 2-core Zen 4 (2026-12-03): with the AVX2 build the default model
    decodes 2.8x faster on its 4-bit weights than dense fp32; without a vectorised build one int4 matmul is about
    15x slower than fp32 dense."""
    return kernel_capability() in ("AVX2", "AVX512")

