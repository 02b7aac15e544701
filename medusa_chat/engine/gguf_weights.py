"""Llama/Mistral weights straight from a GGUF file, for the lean decoder: no dequantise-and-save step.

Q4_0 and Q4_1 blocks map exactly onto the int4 weight-only kernel (see :mod:`.quant`); Q8_0 (a scale
per 32 weights, which the int8 kernel cannot take) and every other type are dequantised to dense
(the ``gguf`` package's own code) and, for linear layers, requantised to int4 with a one-line note.
llama.cpp stores q/k rows permuted for its RoPE layout; they are permuted back as transformers does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .lean import Layer, LeanLlama, LlamaSpec
from .quant import GROUP, Int4, Linear

Q4_0, Q4_1, Q8_0 = "Q4_0", "Q4_1", "Q8_0"
BLOCK_ROWS = 4096  # rows of a large matrix (the embedding) converted at a time: bounds the peak memory


class GGUFError(ValueError):
    """A GGUF file that is truncated, corrupt or not a Llama-family model."""


def _f16(raw: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(raw).view(np.float16).astype(np.float32))


def _nibbles(qs: np.ndarray) -> torch.Tensor:
    """[N, blocks, 16] bytes -> [N, blocks * 32] ints: low nibbles are weights 0-15, high nibbles 16-31."""
    q = torch.from_numpy(np.ascontiguousarray(qs))
    return torch.cat([q & 0x0F, q >> 4], dim=-1).reshape(q.shape[0], -1).to(torch.int32)


def unpack_q4_0(raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_0 rows [N, blocks * 18] -> (q [N, K] in 0..15, d [N, blocks], m [N, blocks]) with w = d * q + m."""
    blocks = raw.reshape(raw.shape[0], -1, 18)
    d = _f16(blocks[..., :2]).squeeze(-1)
    return _nibbles(blocks[..., 2:]), d, -8 * d


def unpack_q4_1(raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1 rows [N, blocks * 20] -> (q [N, K] in 0..15, d [N, blocks], m [N, blocks]) with w = d * q + m."""
    blocks = raw.reshape(raw.shape[0], -1, 20)
    return _nibbles(blocks[..., 4:]), _f16(blocks[..., :2]).squeeze(-1), _f16(blocks[..., 2:4]).squeeze(-1)


def unpack_q8_0(raw: np.ndarray) -> torch.Tensor:
    """Q8_0 rows [N, blocks * 34] -> dense fp32 [N, K] (w = d * q)."""
    blocks = raw.reshape(raw.shape[0], -1, 34)
    d = _f16(blocks[..., :2])  # [N, blocks, 1]
    q = torch.from_numpy(np.ascontiguousarray(blocks[..., 2:]).view(np.int8).astype(np.float32))
    return (d * q).reshape(raw.shape[0], -1)


def dequantize(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``d * q + m`` per block of 32, fp32 [N, K]."""
    n = q.shape[0]
    return (d[..., None] * q.reshape(n, -1, GROUP).float() + m[..., None]).reshape(n, -1)


def _unpermute(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """Row order of transformers' q/k weights from llama.cpp's (``reverse_permute_weights``)."""
    index = torch.arange(rows.shape[0]).reshape(heads, -1, 2).transpose(1, 2).reshape(-1)
    return rows[index]


class _Reader:
    """Tensors of one GGUF file by name, as int4 layers or dense tensors."""

    def __init__(self, path: Path, dtype: torch.dtype, note: Callable[[str], None]) -> None:
        from gguf import GGUFReader

        self.path, self.dtype, self.note = path, dtype, note
        try:
            reader = GGUFReader(str(path))
        except Exception as exc:  # the gguf package raises assorted errors on bad files
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise GGUFError(f"{path} is not a readable GGUF file ({reason}): re-install or re-download it") from exc
        self.fields = reader.fields
        self.tensors = {t.name: t for t in reader.tensors}
        self.dequantised: set[str] = set()

    def _tensor(self, name: str):
        if name not in self.tensors:
            raise GGUFError(f"{self.path} has no tensor {name!r}: not a complete Llama-family GGUF")
        return self.tensors[name]

    def rows(self, name: str) -> int:
        return int(self._tensor(name).data.shape[0])

    def dense(self, name: str, rows: slice = slice(None)) -> torch.Tensor:
        """Any tensor, or a slice of its rows, as fp32 [rows, cols] (or [n] for vectors)."""
        from gguf.quants import dequantize as gguf_dequantize

        t = self._tensor(name)
        kind = t.tensor_type.name
        data = t.data[rows]
        if kind == Q8_0:
            return unpack_q8_0(data)
        if kind in (Q4_0, Q4_1):
            return dequantize(*(unpack_q4_0 if kind == Q4_0 else unpack_q4_1)(data))
        if kind not in ("F32", "F16", "BF16"):
            self.dequantised.add(kind)
        return torch.from_numpy(np.asarray(gguf_dequantize(data, t.tensor_type), dtype=np.float32).copy())

    def dense_in_blocks(self, name: str, dtype: torch.dtype, int4_blocks: bool = False) -> tuple[torch.Tensor, list]:
        """A large matrix in ``dtype`` and, if asked, as int4 layers of :data:`BLOCK_ROWS` rows each (for
        :meth:`Int4.stack_rows`), dequantised a block at a time so no whole fp32 copy ever exists."""
        from .quant import quantize_int4

        n = self.rows(name)
        out: torch.Tensor | None = None
        blocks = []
        for start in range(0, n, BLOCK_ROWS):
            block = self.dense(name, slice(start, start + BLOCK_ROWS))  # fp32
            if out is None:
                out = torch.empty(n, block.shape[1], dtype=dtype)
            out[start : start + len(block)] = block
            if int4_blocks:
                blocks.append(Int4(*quantize_int4(block), dtype=dtype))
        assert out is not None
        return out, blocks

    def int4_parts(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, scale, zero) for the int4 kernel: exact for Q4_0/Q4_1, requantised from dense otherwise."""
        from .quant import quantize_int4

        t = self._tensor(name)
        kind = t.tensor_type.name
        if kind in (Q4_0, Q4_1):
            q, d, m = (unpack_q4_0 if kind == Q4_0 else unpack_q4_1)(t.data)
            return q, d, m + 8 * d
        return quantize_int4(self.dense(name))


def load_gguf(
    path: str | Path, config, dtype: torch.dtype = torch.float32, note: Callable[[str], None] = lambda _: None
) -> LeanLlama:
    """A lean decoder with int4 linear layers from a Llama/Mistral GGUF; ``config`` is its transformers config."""
    path = Path(path)
    reader = _Reader(path, dtype, note)
    spec = LlamaSpec.from_config(config)
    try:
        return _build(reader, spec, dtype, config)
    except (ValueError, RuntimeError) as exc:  # short reads, wrong shapes
        if isinstance(exc, GGUFError):
            raise
        raise GGUFError(f"{path} could not be read as {spec.num_layers} Llama layers ({exc}): re-install it") from exc


def _build(reader: _Reader, spec: LlamaSpec, dtype: torch.dtype, config) -> LeanLlama:
    def int4(*names: str, permute: tuple[int | None, ...] = ()) -> Linear:
        parts = [reader.int4_parts(n) for n in names]
        fixed = []
        for i, (q, scale, zero) in enumerate(parts):
            heads = permute[i] if i < len(permute) else None
            fixed.append((q, scale, zero) if heads is None else tuple(_unpermute(x, heads) for x in (q, scale, zero)))
        q, scale, zero = (torch.cat([p[j] for p in fixed]) for j in range(3))
        return Int4(q, scale, zero, dtype)

    layers = []
    for i in range(spec.num_layers):
        b = f"blk.{i}."
        layers.append(
            Layer(
                attn_norm=reader.dense(b + "attn_norm.weight").to(dtype),
                wqkv=int4(b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight",
                          permute=(spec.num_heads, spec.num_kv_heads)),
                wo=int4(b + "attn_output.weight"),
                mlp_norm=reader.dense(b + "ffn_norm.weight").to(dtype),
                w13=int4(b + "ffn_gate.weight", b + "ffn_up.weight"),
                w2=int4(b + "ffn_down.weight"),
            )
        )
    tied = "output.weight" not in reader.tensors
    embed, head_blocks = reader.dense_in_blocks("token_embd.weight", dtype, int4_blocks=tied)
    head = Int4.stack_rows(head_blocks) if tied else int4("output.weight")
    if reader.dequantised:
        reader.note(f"{reader.path.name}: {', '.join(sorted(reader.dequantised))} weights dequantised and requantised "
                    "to int4 (only Q4_0/Q4_1 map exactly)")
    norm = reader.dense("output_norm.weight").to(dtype)
    return LeanLlama(spec, embed, layers, norm, head, dtype, config)
