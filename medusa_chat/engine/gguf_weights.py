"""Llama/Mistral weights straight from a GGUF file, for the lean decoder: no dequantise-and-save step.

Q4_0 and Q4_1 blocks map exactly onto the int4 weight-only kernel (see :mod:`.quant`); Q8_0 (a scale
per 32 weights, which the int8 kernel cannot take) and every other type are dequantised to dense
(the ``gguf`` package's own code) and, for linear layers, requantised to int4 with a one-line note.
llama.cpp stores q/k rows permuted for its RoPE layout; they are permuted back as transformers does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .lean import Layer, LeanLlama, LlamaSpec
from .quant import GROUP, ROWS_AT_A_TIME, Dense, Int4, Linear, Rows, quantize_int4

Q4_0, Q4_1, Q8_0 = "Q4_0", "Q4_1", "Q8_0"


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
    """Q8_0 rows [N, blocks * 34] -> dense fp32 [N, K] (w = d * q, an fp16 scale d per block of 32 int8 q)."""
    blocks = raw.reshape(raw.shape[0], -1, 34)
    d = _f16(blocks[..., :2])  # [N, blocks, 1]
    q = torch.from_numpy(np.ascontiguousarray(blocks[..., 2:]).view(np.int8)).float()  # [N, blocks, 32]
    return (d * q).flatten(-2)


class Q8Table:
    """An embedding table of GGUF Q8_0 blocks [N, blocks * 34] left in the file, memory-mapped: only the pages of the
    rows looked up are ever read (about 30 MB of the default model's memory saved); rows dequantised on lookup
    exactly as :func:`unpack_q8_0` does (``d * q`` in fp32, then ``dtype``)."""

    def __init__(self, blocks: np.ndarray, dtype: torch.dtype) -> None:
        self.blocks, self.dtype = blocks, dtype

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of ``ids`` [...] -> [..., K] in ``dtype``, on ``ids``' device."""
        flat = ids.reshape(-1).cpu().numpy()
        return unpack_q8_0(self.blocks[flat]).to(self.dtype).reshape(*ids.shape, -1).to(ids.device)


def dequantize(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``d * q + m`` per block of 32, fp32 [N, K]."""
    n = q.shape[0]
    return (d[..., None] * q.reshape(n, -1, GROUP).float() + m[..., None]).reshape(n, -1)


def _unpermute(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """Row order of transformers' q/k weights from llama.cpp's (``reverse_permute_weights``)."""
    index = torch.arange(rows.shape[0]).reshape(heads, -1, 2).transpose(1, 2).reshape(-1)
    return rows[index]


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class _TensorInfo:
    name: str
    dims: tuple[int, ...]  # GGUF order: the innermost (columns) first
    kind: object  # gguf.GGMLQuantizationType
    offset: int  # of its data in the file

    @property
    def rows(self) -> int:
        return int(np.prod(self.dims[1:], dtype=np.int64)) if len(self.dims) > 1 else 1

    @property
    def row_bytes(self) -> int:
        from gguf.constants import GGML_QUANT_SIZES

        block, size = GGML_QUANT_SIZES[self.kind]
        return self.dims[0] // block * size


def _read_header(path: Path) -> tuple[dict[str, object], dict[str, _TensorInfo]]:
    """The scalar metadata (arrays skipped) and tensor table of a GGUF file (versions 2 and 3).

    Only the header is read: no memory map of the whole file and no Python object per vocabulary
    entry, so reading the table costs a few MB (the ``gguf`` package's reader holds ~160 MB for
    this model). Raises :class:`GGUFError` on a truncated or foreign file.
    """
    from gguf.constants import GGMLQuantizationType

    with path.open("rb") as f:
        def take(fmt: str):
            raw = f.read(struct.calcsize(fmt))
            if len(raw) != struct.calcsize(fmt):
                raise GGUFError(f"{path} is truncated (its header ends early): re-install or re-download it")
            return struct.unpack(fmt, raw)[0]

        def string() -> str:
            raw = f.read(take("<Q"))
            return raw.decode("utf-8", errors="replace")

        def value(kind: int):
            if kind == _STRING:
                return string()
            if kind == _ARRAY:
                item, count = take("<I"), take("<Q")
                if item in _SCALARS:  # skipped: arrays are the vocabulary and its scores
                    f.seek(struct.calcsize(_SCALARS[item]) * count, 1)
                else:
                    for _ in range(count):
                        value(item)
                return None
            if kind not in _SCALARS:
                raise GGUFError(f"{path} is not a readable GGUF file (value type {kind}): re-install or re-download it")
            return take(_SCALARS[kind])

        if f.read(4) != b"GGUF" or take("<I") not in (2, 3):
            raise GGUFError(f"{path} is not a GGUF file (version 2 or 3): re-install or re-download it")
        tensor_count, kv_count = take("<Q"), take("<Q")
        fields = {}
        for _ in range(kv_count):
            key = string()
            fields[key] = value(take("<I"))
        infos = []
        for _ in range(tensor_count):
            name = string()
            dims = tuple(take("<Q") for _ in range(take("<I")))
            try:
                kind = GGMLQuantizationType(take("<I"))
            except ValueError as exc:
                raise GGUFError(f"{path}: tensor {name!r} has an unknown type ({exc})") from exc
            infos.append((name, dims, kind, take("<Q")))
        alignment = int(fields.get("general.alignment") or 32)
        start = -(-f.tell() // alignment) * alignment
    tensors = {name: _TensorInfo(name, dims, kind, start + offset) for name, dims, kind, offset in infos}
    return fields, tensors


class _Reader:
    """Tensors of one GGUF file by name, as int4 layers or dense tensors, read from the file one at a time."""

    def __init__(self, path: Path, dtype: torch.dtype, note: Callable[[str], None]) -> None:
        self.path, self.dtype, self.note = path, dtype, note
        self.fields, self.tensors = _read_header(path)
        self.size = path.stat().st_size
        self.dequantised: set[str] = set()

    def _data(self, name: str, rows: slice = slice(None)) -> np.ndarray:
        """Raw rows of a tensor: [rows, bytes] for block types, plain values for F32/F16."""
        t = self._tensor(name)
        first, stop, _ = rows.indices(t.rows)
        count = max(0, stop - first)
        start = t.offset + first * t.row_bytes
        if start + count * t.row_bytes > self.size:
            raise GGUFError(f"{self.path} is truncated (tensor {name!r} ends past its end): re-install it")
        raw = np.fromfile(self.path, dtype=np.uint8, count=count * t.row_bytes, offset=start).reshape(count, -1)
        if t.kind.name in ("F32", "F16"):
            values = raw.view(np.float32 if t.kind.name == "F32" else np.float16)
            return values[0] if len(t.dims) == 1 else values
        return raw

    def _tensor(self, name: str):
        if name not in self.tensors:
            raise GGUFError(f"{self.path} has no tensor {name!r}: not a complete Llama-family GGUF")
        return self.tensors[name]

    def rows(self, name: str) -> int:
        return self._tensor(name).rows

    def dense(self, name: str, rows: slice = slice(None)) -> torch.Tensor:
        """Any tensor, or a slice of its rows, as fp32 [rows, cols] (or [n] for vectors)."""
        from gguf.quants import dequantize as gguf_dequantize

        t = self._tensor(name)
        kind = t.kind.name
        data = self._data(name, rows)
        if kind == Q8_0:
            return unpack_q8_0(data)
        if kind in (Q4_0, Q4_1):
            return dequantize(*(unpack_q4_0 if kind == Q4_0 else unpack_q4_1)(data))
        if kind not in ("F32", "F16", "BF16"):
            self.dequantised.add(kind)
        return torch.from_numpy(np.asarray(gguf_dequantize(data, t.kind), dtype=np.float32).copy())

    def table(self, name: str, dtype: torch.dtype) -> Rows:
        """An embedding table: Q8_0 left in the file (:class:`Q8Table`), any other type dense in ``dtype``, read
        :data:`~.quant.ROWS_AT_A_TIME` rows at a time."""
        t = self._tensor(name)
        if t.kind.name == Q8_0:
            self._data(name, slice(t.rows - 1, None))  # the bounds check: a truncated file fails here, not on lookup
            blocks = np.memmap(self.path, dtype=np.uint8, mode="r", offset=t.offset, shape=(t.rows, t.row_bytes))
            return Q8Table(blocks, dtype)
        dense = torch.empty(t.rows, t.dims[0], dtype=dtype)
        for start in range(0, t.rows, ROWS_AT_A_TIME):
            dense[start : start + ROWS_AT_A_TIME] = self.dense(name, slice(start, start + ROWS_AT_A_TIME))
        return Dense(dense)

    def int4_in_blocks(self, name: str) -> Int4:
        """A large matrix as int4, read and quantised a block of rows at a time (no whole fp32 copy ever exists)."""
        return Int4.quantized(lambda rows: self.dense(name, rows), self.rows(name), self.dtype)

    def int4_parts(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, scale, zero) for the int4 kernel: exact for Q4_0/Q4_1, requantised from dense otherwise."""
        kind = self._tensor(name).kind.name
        if kind in (Q4_0, Q4_1):
            q, d, m = (unpack_q4_0 if kind == Q4_0 else unpack_q4_1)(self._data(name))
            return q, d, m + 8 * d
        return quantize_int4(self.dense(name))


def load_gguf(
    path: str | Path, config, dtype: torch.dtype = torch.float32, note: Callable[[str], None] = lambda _: None
) -> LeanLlama:
    """A lean decoder with int4 linear layers from a Llama/Mistral GGUF; ``config`` is its transformers config."""
    path = Path(path)
    reader = _Reader(path, dtype, note)
    spec = LlamaSpec.from_config(config)
    if spec.qkv_bias:  # llama.cpp stores Qwen2's q/k rows unpermuted, with biases: not read here
        raise GGUFError(f"{path}: only Llama and Mistral GGUF files are read directly; load a Qwen2 checkpoint instead")
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
    embed = reader.table("token_embd.weight", dtype)
    tied = "output.weight" not in reader.tensors
    head = reader.int4_in_blocks("token_embd.weight") if tied else int4("output.weight")
    if reader.dequantised:
        reader.note(f"{reader.path.name}: {', '.join(sorted(reader.dequantised))} weights dequantised and requantised "
                    "to int4 (only Q4_0/Q4_1 map exactly)")
    norm = reader.dense("output_norm.weight").to(dtype)
    return LeanLlama(spec, embed, layers, norm, head, dtype, config, quant="int4")
