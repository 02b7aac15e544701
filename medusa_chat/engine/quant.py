"""Linear layers for the lean decoder: dense, or int4 weight-only in groups of 32 (torch's CPU kernel).

The int4 kernel computes ``w = (q - 8) * scale + zero`` per group of :data:`GROUP` input weights,
with ``q`` in 0..15. GGUF's Q4_1 blocks (``w = d * q + m``) map onto it exactly with ``scale = d``
and ``zero = m + 8 d``; Q4_0 (``w = d * (q - 8)``) with ``zero = 0``. Dense weights are quantised
the same way (min/max per group).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import torch
import torch.nn.functional as F

GROUP = 32
INNER_K_TILES = 2
ROWS_AT_A_TIME = 1024  # rows of a large matrix (de)quantised or read at once: bounds the peak memory (a multiple of 64)


class Linear(Protocol):
    out_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def rows(self, ids: torch.Tensor) -> torch.Tensor: ...  # dense weight rows [n, K]


class Rows(Protocol):
    """A table looked up by row (an embedding): :class:`Dense` or a GGUF Q8_0 table (``gguf_weights.Q8Table``)."""

    def rows(self, ids: torch.Tensor) -> torch.Tensor: ...


class Dense:
    """``x @ W.T`` with W [N, K]."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight.contiguous()
        self.out_features = weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids]


class Int4:
    """Weight-only int4 (groups of :data:`GROUP`): ``packed`` from ``q`` [N, K], ``scales_zeros`` [K/G, N, 2]."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype) -> None:
        """``q`` [N, K] ints in 0..15; ``scale`` and ``zero`` [N, K/G]; ``dtype``: activations' dtype."""
        n, k = q.shape
        if k % GROUP or n % 16:
            raise ValueError(f"int4 needs K divisible by {GROUP} and N by 16, not {k} x {n}")
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), INNER_K_TILES)
        self.scales_zeros = torch.stack([scale.t(), zero.t()], dim=-1).to(dtype).contiguous()
        self.out_features = n
        self.in_features = k

    @classmethod
    def quantized(cls, rows: Callable[[slice], torch.Tensor], out_features: int, dtype: torch.dtype) -> Int4:
        """A matrix of ``out_features`` rows quantised :data:`ROWS_AT_A_TIME` rows at a time, ``rows(slice)`` giving
        each block dense: the fp32 temporaries of a large matrix never exist whole."""
        blocks = (rows(slice(i, i + ROWS_AT_A_TIME)) for i in range(0, out_features, ROWS_AT_A_TIME))
        return cls.stack_rows((cls(*quantize_int4(block), dtype=dtype) for block in blocks), out_features)

    @classmethod
    def stack_rows(cls, parts: Iterable[Int4], out_features: int) -> Int4:
        """One layer of ``out_features`` rows, those of ``parts`` in order (each a multiple of 64 rows but the last):
        a large matrix quantised a block of rows at a time, so neither its dense copy nor a second packed copy
        ever exists whole (pass a generator: one part is alive at a time)."""
        layer: Int4 | None = None
        start = 0
        for part in parts:
            if layer is None:
                layer = cls._packed(part.packed.new_empty((out_features, *part.packed.shape[1:])),
                                    part.scales_zeros.new_empty((part.scales_zeros.shape[0], out_features, 2)),
                                    part.in_features)
            stop = start + part.out_features
            layer.packed[start:stop] = part.packed
            layer.scales_zeros[:, start:stop] = part.scales_zeros
            start = stop
        if layer is None or start != out_features:
            raise ValueError(f"the parts hold {start} rows, not {out_features}")
        return layer

    @classmethod
    def _packed(cls, packed: torch.Tensor, scales_zeros: torch.Tensor, in_features: int) -> Int4:
        """A layer over already packed weights [N, K/2] and their scales and zeros [K/G, N, 2]."""
        layer = cls.__new__(cls)
        layer.packed, layer.scales_zeros = packed, scales_zeros
        layer.out_features, layer.in_features = packed.shape[0], in_features
        return layer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        scales_zeros = self.scales_zeros if x.dtype == self.scales_zeros.dtype else self.scales_zeros.to(x.dtype)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]), self.packed, GROUP, scales_zeros)
        return out.view(*shape[:-1], self.out_features)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Dense rows ``ids`` [n] -> [n, K], dequantised :data:`ROWS_AT_A_TIME` rows at a time (never the whole)."""
        out = torch.empty(len(ids), self.in_features, dtype=self.scales_zeros.dtype)
        for start in range(0, self.out_features, ROWS_AT_A_TIME):
            chosen = (ids >= start) & (ids < start + ROWS_AT_A_TIME)
            if chosen.any():
                out[chosen] = self._row_block(start, start + ROWS_AT_A_TIME).dequantize()[ids[chosen] - start]
        return out

    def _row_block(self, start: int, stop: int) -> Int4:
        """Rows ``start:stop`` as a layer of their own (``start`` a multiple of 64: the packing's row tiles)."""
        return Int4._packed(self.packed[start:stop], self.scales_zeros[:, start:stop].contiguous(), self.in_features)

    def dequantize(self) -> torch.Tensor:
        """The dense weight [N, K] the kernel computes with (for tests and fallbacks)."""
        eye = torch.eye(self.in_features, dtype=self.scales_zeros.dtype)
        return self(eye).t().contiguous()


class Int8:
    """Weight-only int8 with one scale per output row (torch's ``_weight_int8pack_mm``)."""

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype) -> None:
        scale = (weight.float().abs().amax(dim=1) / 127).clamp(min=1e-8)
        self.q = (weight.float() / scale[:, None]).round().clamp(-128, 127).to(torch.int8).contiguous()
        self.scales = scale.to(dtype)
        self.out_features = weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.q, self.scales.to(x.dtype))
        return out.view(*shape[:-1], self.out_features)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.q[ids].float() * self.scales[ids, None].float()


def quantize_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min/max int4 quantisation per group: (q [N, K] in 0..15, scale [N, K/G], zero [N, K/G])."""
    n, k = weight.shape
    groups = weight.float().reshape(n, k // GROUP, GROUP)
    low, high = groups.amin(-1), groups.amax(-1)
    scale = ((high - low) / 15).clamp(min=1e-8)
    q = (groups - low[..., None]).div_(scale[..., None]).round_().clamp_(0, 15).reshape(n, k)  # one temporary
    return q.to(torch.int32), scale, low + 8 * scale


def make_linear(weight: torch.Tensor, dtype: torch.dtype, quant: str | None = None) -> Linear:
    """A dense layer in ``dtype``, or int4/int8 weight-only (``quant``) with activations in ``dtype``."""
    if quant is None:
        return Dense(weight.to(dtype))
    if quant == "int4":
        return Int4.quantized(weight.__getitem__, weight.shape[0], dtype)
    if quant == "int8":
        return Int8(weight, dtype)
    raise ValueError(f"unknown quantisation {quant!r}: use int4, int8 or none")
