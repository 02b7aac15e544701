"""Rough memory needs per precision, and the memory of the machine's GPU (or CPU RAM).

Estimates are weights x bytes per parameter plus a margin for the KV cache, activations and the
runtime (``OVERHEAD``): good enough to say whether a model will fit, not a promise.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BYTES_PER_PARAM = {"fp16": 2.0, "8-bit": 1.0, "4-bit": 0.5}
OVERHEAD = 1.2
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    name: str
    total_bytes: int
    available_bytes: int


@dataclass(frozen=True)
class Estimate:
    precision: str
    bytes: int
    fits: bool


def estimate_bytes(params: int, precision: str) -> int:
    """Memory to run a model of ``params`` parameters at ``precision`` (fp16, 8-bit or 4-bit)."""
    if precision not in BYTES_PER_PARAM:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(BYTES_PER_PARAM)}")
    return bytes_needed(params, BYTES_PER_PARAM[precision])


def bytes_needed(params: int, bytes_per_param: float) -> int:
    """Weights at ``bytes_per_param`` plus the runtime overhead."""
    return int(params * bytes_per_param * OVERHEAD)


def estimates(params: int, device: Device) -> list[Estimate]:
    """One estimate per precision, with whether it fits the device's available memory."""
    out = []
    for precision in BYTES_PER_PARAM:
        need = estimate_bytes(params, precision)
        out.append(Estimate(precision, need, need <= device.available_bytes))
    return out


def cpu_memory(meminfo: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    """(total, available) RAM in bytes, from ``/proc/meminfo`` where there is one."""
    try:
        fields = {
            line.split(":")[0]: int(line.split()[1]) * 1024
            for line in meminfo.read_text().splitlines()
            if line.endswith("kB")
        }
        return fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
    except (OSError, KeyError, ValueError, IndexError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return total, total


def detect_device() -> Device:
    """The first CUDA GPU when torch sees one, else the CPU with its RAM."""
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info(0)
        return Device("cuda", torch.cuda.get_device_name(0), total, free)
    total, available = cpu_memory()
    return Device("cpu", "CPU RAM", total, available)


def _libc():
    """glibc's functions, or None elsewhere (macOS, musl)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        if libc.mallopt and libc.malloc_trim:
            return libc
    return None


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc keeps the pages of freed temporaries)."""
    if libc := _libc():
        libc.malloc_trim(0)


@contextlib.contextmanager
def loading_heap(threshold: int = 128 * 1024, after: int = 32 * 1024 * 1024) -> Iterator[None]:
    """While weights are converted: blocks of ``threshold`` bytes or more are mapped on their own, so a freed
    temporary goes back to the system at once instead of raising the heap's high-water mark (the peak RSS
    of loading the default model fell by about 150 MB). Afterwards the threshold is ``after`` (glibc's own
    upper bound), so decoding steps keep reusing heap memory, and the heap is trimmed."""
    libc = _libc()
    if libc:
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)
    try:
        yield
    finally:
        if libc:
            libc.mallopt(_M_MMAP_THRESHOLD, after)
            libc.malloc_trim(0)
