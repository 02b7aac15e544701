"""A lean decoder for the Llama family (Llama, Mistral, Qwen2) on CPUs, in the style of gpt-fast.

Plain tensors and functions instead of transformers' modules: fused q/k/v and gate/up weights,
RoPE from a precomputed table, a preallocated KV cache that grows in chunks, SDPA with
grouped-query attention (no repeated K/V), and weights that are dense (fp32/bf16) or int4
weight-only (:mod:`.quant`). One forward takes a batch of rows, each with its own positions, and
an optional attention mask over the cache, so the same code runs prefill, one-token steps, Medusa
tree steps (tree mask + depth positions) and batched greedy decoding with left padding.

Greedy decoding computes one-token steps and tree rows the same way (row-wise norms, the same
matmul kernels, the same attention over the cache), so Medusa on this decoder is lossless on its
own terms. Keys and values are cached in fp32 whatever the weights' dtype: attention runs in fp32
(as transformers' math attention does for bf16) without converting the whole cache every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .quant import Dense, Linear, Rows, make_linear

CACHE_CHUNK = 256  # cache positions added at a time
SUPPORTED = ("llama", "mistral", "qwen2")  # Qwen2 is Llama with biases on q, k and v


class UnsupportedModel(ValueError):
    """The lean decoder cannot take this model (architecture or option): use transformers."""


@dataclass(frozen=True)
class LlamaSpec:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float
    rms_eps: float
    max_positions: int
    qkv_bias: bool = False

    @classmethod
    def from_config(cls, config) -> LlamaSpec:
        """From a transformers config; raises :class:`UnsupportedModel` for what this decoder lacks."""
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED:
            raise UnsupportedModel(f"the lean decoder takes {', '.join(SUPPORTED)} models, not {model_type!r}")
        rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise UnsupportedModel(f"the lean decoder has no {rope.get('rope_type')!r} RoPE scaling")
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            raise UnsupportedModel("the lean decoder has no output-projection or MLP biases")
        if getattr(config, "use_sliding_window", False):
            raise UnsupportedModel("the lean decoder has no sliding-window attention")
        if getattr(config, "hidden_act", "silu") != "silu":
            raise UnsupportedModel(f"the lean decoder has no {config.hidden_act!r} activation")
        heads = config.num_attention_heads
        theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            intermediate_size=config.intermediate_size,
            rope_theta=float(theta),
            rms_eps=float(config.rms_norm_eps),
            max_positions=int(config.max_position_embeddings),
            qkv_bias=model_type == "qwen2",
        )


@dataclass
class Layer:
    attn_norm: torch.Tensor  # [H]
    wqkv: Linear  # H -> (heads + 2 kv_heads) * D
    wo: Linear  # heads * D -> H
    mlp_norm: torch.Tensor  # [H]
    w13: Linear  # H -> 2 I (gate, up)
    w2: Linear  # I -> H
    bqkv: torch.Tensor | None = None  # [(heads + 2 kv_heads) * D] q/k/v biases (Qwen2)


class KVCache:
    """Keys and values of every layer, [layers, B, kv_heads, capacity, D] in fp32; the first ``length`` are valid."""

    def __init__(self, spec: LlamaSpec, batch: int, device: torch.device) -> None:
        self.shape = (spec.num_layers, batch, spec.num_kv_heads, 0, spec.head_dim)
        self.k = torch.empty(self.shape, dtype=torch.float32, device=device)
        self.v = torch.empty_like(self.k)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def reserve(self, length: int) -> None:
        """Make room for ``length`` positions (grows in chunks of :data:`CACHE_CHUNK`)."""
        if length <= self.capacity:
            return
        capacity = -(-length // CACHE_CHUNK) * CACHE_CHUNK
        k = self.k.new_empty((*self.k.shape[:3], capacity, self.k.shape[4]))
        v = torch.empty_like(k)
        k[:, :, :, : self.length] = self.k[:, :, :, : self.length]
        v[:, :, :, : self.length] = self.v[:, :, :, : self.length]
        self.k, self.v = k, v

    def keep_path(self, start: int, slots: torch.Tensor) -> None:
        """After a tree step wrote T entries at ``start``, keep ``slots`` (ascending) at ``start, start+1, ...``."""
        kept = len(slots)
        if not torch.equal(slots, torch.arange(kept, device=slots.device)):
            src = slots + start
            self.k[:, :, :, start : start + kept] = self.k[:, :, :, src]
            self.v[:, :, :, start : start + kept] = self.v[:, :, :, src]
        self.length = start + kept

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch ``rows`` (finished rows leave a batched decode)."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]


class LeanLlama:
    """Llama/Mistral weights plus a KV cache, behind :class:`~.decoder.Decoder`."""

    engine = "lean"

    def __init__(
        self,
        spec: LlamaSpec,
        embed: Rows,
        layers: list[Layer],
        norm: torch.Tensor,
        lm_head: Linear,
        dtype: torch.dtype,
        config: object = None,
        quant: str | None = None,
    ) -> None:
        self.spec = spec
        self.quant = quant  # the linear layers' format: None (dense in ``dtype``), "int4" or "int8"
        self.config = config
        self.embed_table = embed  # [V, H] rows
        self.layers = layers
        self.norm = norm
        self.lm_head = lm_head
        self.dtype = dtype
        self.device = norm.device
        exponents = torch.arange(0, spec.head_dim, 2, dtype=torch.int64).float() / spec.head_dim
        inv_freq = 1.0 / (spec.rope_theta**exponents)
        self._inv_freq = inv_freq.to(self.device)
        self._rope_len = 0
        self._cos = self._sin = torch.empty(0)
        self.cache = KVCache(spec, 1, self.device)

    # -- cache -----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    @property
    def cache_length(self) -> int:
        return self.cache.length

    def new_cache(self, batch: int = 1) -> None:
        self.cache = KVCache(self.spec, batch, self.device)

    def output_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head.rows(ids)

    def linear(self, weight: torch.Tensor) -> Linear:
        """``weight`` [N, K] in this decoder's format (dense when the int kernels cannot take its shape)."""
        try:
            return make_linear(weight.detach(), self.dtype, self.quant)
        except ValueError:
            return Dense(weight.detach().to(self.dtype))

    def keep_path(self, start: int, slots: torch.Tensor) -> None:
        self.cache.keep_path(start, slots)

    def truncate(self, length: int) -> None:
        self.cache.truncate(length)

    def select_rows(self, rows: torch.Tensor) -> None:
        self.cache.select_rows(rows)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [B, q, 1, D] for ``positions`` [B, q] (see :func:`_apply_rope`; the table grows on
        demand and holds the values transformers computes)."""
        needed = int(positions.max()) + 1
        if needed > self._rope_len:
            length = -(-needed // CACHE_CHUNK) * CACHE_CHUNK
            freqs = torch.arange(length, device=self.device).float()[:, None] * self._inv_freq[None, :]
            emb = torch.cat([freqs, freqs], dim=-1)  # [P, D]
            half = freqs.shape[1]
            sin = emb.sin().to(self.dtype)
            self._cos, self._sin = emb.cos().to(self.dtype), torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)
            self._rope_len = length
        return self._cos[positions][:, :, None], self._sin[positions][:, :, None]

    # -- forward ---------------------------------------------------------------------------

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_table.rows(ids)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run ``ids`` [B, q] at ``positions`` [B, q] over the cache; they are appended to it.

        ``mask`` [B, 1, q, L + q] (bool: may attend, or additive float) over the cache plus the new
        tokens; ``None`` means causal over the new tokens with the whole cache visible.
        Returns final-norm hidden states [B, q, H].
        """
        s = self.spec
        batch, q = ids.shape
        start = self.cache.length
        end = start + q
        self.cache.reserve(end)
        tree = mask is not None and mask.dtype == torch.bool  # one-token steps and tree rows, computed alike
        if mask is None and q > 1 and start > 0:  # from an empty cache, SDPA's own causal mask (it skips blocks)
            mask = torch.ones(q, end, dtype=torch.bool, device=self.device).tril(start)[None, None]
        elif mask is not None and mask.dtype != torch.bool:
            mask = mask.float()
        cos, sin = self._rope(positions)
        plan = _row_plan(mask[0, 0]) if batch == 1 and tree else None
        x = self.embed(ids)  # [B, q, H]
        for i, layer in enumerate(self.layers):
            x = self._layer(i, layer, x, cos, sin, mask, plan, start, end)
        self.cache.length = end
        return _rms_norm(x, self.norm, s.rms_eps)

    def _layer(
        self,
        i: int,
        layer: Layer,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        plan: list[RowKeys] | None,
        start: int,
        end: int,
    ) -> torch.Tensor:
        """Layer ``i`` on ``x`` [B, q, H], writing its keys and values at cache positions ``start:end``."""
        s = self.spec
        batch, q, _ = x.shape
        heads_dim = s.num_heads * s.head_dim
        h = _rms_norm(x, layer.attn_norm, s.rms_eps)
        qkv = layer.wqkv(h) if layer.bqkv is None else layer.wqkv(h) + layer.bqkv
        qkv = qkv.view(batch, q, s.num_heads + 2 * s.num_kv_heads, s.head_dim)
        qk = _apply_rope(qkv[:, :, : s.num_heads + s.num_kv_heads], cos, sin)  # queries and keys at once
        xq, xk, xv = qk[:, :, : s.num_heads], qk[:, :, s.num_heads :], qkv[:, :, s.num_heads + s.num_kv_heads :]
        self.cache.k[i, :, :, start:end] = xk.transpose(1, 2)  # [B, kv, q, D], to fp32
        self.cache.v[i, :, :, start:end] = xv.transpose(1, 2)
        keys, values = self.cache.k[i, :, :, :end], self.cache.v[i, :, :, :end]  # [B, kv, L + q, D]
        attn = self._attend(xq.float(), keys, values, mask, plan).to(x.dtype)  # [B, q, heads, D]
        x = x + layer.wo(attn.reshape(batch, q, heads_dim))
        h = _rms_norm(x, layer.mlp_norm, s.rms_eps)
        gate, up = layer.w13(h).chunk(2, dim=-1)
        return x + layer.w2(F.silu(gate) * up)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def _attend(
        self,
        xq: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None,
        plan: list[RowKeys] | None,
    ) -> torch.Tensor:
        """Attention of ``xq`` [B, q, heads, D] over ``keys``/``values`` [B, kv, L + q, D] -> [B, q, heads, D], fp32.

        One-token steps and tree rows (``plan``) are computed so that a row's result depends only on the keys it
        sees, in their order: each row is attended alone over exactly those keys (torch's CPU flash attention
        takes another, differently rounding path from 4 query rows on, and that path makes a plain step slower,
        measured). A tree row then equals, bit for bit, the one-token step that would have computed it, so greedy
        Medusa equals plain decoding. Prefill and batched decoding attend all rows at once: ``mask`` None means
        causal for several rows (:meth:`forward` builds a mask once the cache holds earlier tokens) and every key
        for one.
        """
        s = self.spec
        if plan is None:
            causal = mask is None and xq.shape[1] > 1  # rows from an empty cache: top-left causal is theirs
            out = F.scaled_dot_product_attention(
                xq.transpose(1, 2), keys, values, attn_mask=mask, is_causal=causal,
                enable_gqa=s.num_kv_heads != s.num_heads,
            )
            return out.transpose(1, 2)
        if len(plan) == 1 and plan[0].extra is None:  # a one-token step
            seen = plan[0].prefix
            return _attention(xq[0], keys[:, :, :seen], values[:, :, :seen]).view(xq.shape)
        out = torch.empty_like(xq)
        for row, prefix, extra in plan:
            k, v = keys[:, :, :prefix], values[:, :, :prefix]  # a slice of the cache, as a one-token step sees it
            if extra is not None:  # then the row's tree ancestors: copied after it, contiguous, in order
                k = torch.cat([k, keys[:, :, extra]], dim=2)
                v = torch.cat([v, values[:, :, extra]], dim=2)
            out[0, row] = _attention(xq[0, row], k, v)
        return out


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One row's attention: ``q`` [heads, D] over ``k``/``v`` [1, kv, count, D] -> [heads, D].

    The query heads that share a kv head are its "positions" (grouped-query attention without repeating
    keys and values): one fused kernel call, no mask.
    """
    kv, d = k.shape[1], k.shape[-1]
    return F.scaled_dot_product_attention(q.view(1, kv, -1, d), k, v).view(-1, d)


class RowKeys(NamedTuple):
    """The keys one row of a tree step sees: the first ``prefix`` of the cache, then ``extra`` (ascending, or None)."""

    row: int
    prefix: int
    extra: torch.Tensor | None


def _row_plan(mask: torch.Tensor) -> list[RowKeys]:
    """Per row of a [q, L + q] bool mask, the keys it sees: a one-token step or a chain row sees a prefix (a slice
    of the cache, no copy); a row deeper in a tree sees a prefix (the cache and the root) and its ancestors."""
    q, total = mask.shape
    full = mask.all(-1)
    if q == 1 and bool(full[0]):
        return [RowKeys(0, total, None)]
    prefix = torch.where(full, total, (~mask).to(torch.int8).argmax(-1))  # [q] each row's leading run of keys
    beyond = mask & (torch.arange(total, device=mask.device) >= prefix[:, None])  # the keys after that run
    extras = torch.nonzero(beyond)[:, 1].split(beyond.sum(-1).tolist())  # one search for every row
    starts = prefix.tolist()
    return [RowKeys(row, starts[row], extra if len(extra) else None) for row, extra in enumerate(extras)]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: normalise in fp32, cast back, then scale (torch's own op: the same values
    as ``x * rsqrt(mean(x^2) + eps)`` in fewer kernel calls)."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """transformers' ``x * cos + rotate_half(x) * sin`` in fewer ops, with the same values: ``rotate_half(x)``
    is ``[-x2, x1]``, so the halves are swapped by a roll and the sign lives in ``signed_sin`` = ``[-sin, sin]``."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


def from_state_dict(config, state: dict[str, torch.Tensor], dtype: torch.dtype, quant: str | None = None) -> LeanLlama:
    """A lean decoder from a transformers Llama/Mistral/Qwen2 state dict (``model.layers.N...`` names).

    ``quant``: ``None`` keeps the weights dense in ``dtype``; ``"int4"`` quantises every linear layer
    (groups of 32; activations stay in ``dtype``).
    """
    spec = LlamaSpec.from_config(config)

    def w(name: str) -> torch.Tensor:
        return state[name].detach()

    def linear(*names: str) -> Linear:
        return make_linear(torch.cat([w(n) for n in names]), dtype, quant)

    layers = []
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        layers.append(
            Layer(
                attn_norm=w(p + "input_layernorm.weight").to(dtype),
                wqkv=linear(*(p + f"self_attn.{n}_proj.weight" for n in "qkv")),
                wo=linear(p + "self_attn.o_proj.weight"),
                mlp_norm=w(p + "post_attention_layernorm.weight").to(dtype),
                w13=linear(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                w2=linear(p + "mlp.down_proj.weight"),
                bqkv=torch.cat([w(p + f"self_attn.{n}_proj.bias") for n in "qkv"]).to(dtype) if spec.qkv_bias else None,
            )
        )
    embed = w("model.embed_tokens.weight")
    head = state.get("lm_head.weight", embed)
    norm = w("model.norm.weight").to(dtype)
    return LeanLlama(
        spec, Dense(embed.to(dtype)), layers, norm, make_linear(head, dtype, quant), dtype, config, quant
    )
