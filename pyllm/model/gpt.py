"""The GPT: one decoder-only transformer for every family (GPT-2, Llama-like, Gemma 3).

The forward pass runs on a flattened batch (vLLM style): `input_ids [T]` are the new tokens of B
sequences back to back, `AttentionMetadata` says which rows belong to which sequence and where
their K/V go in the paged cache. Prefill (many tokens a sequence) and decode (one) are the same
call. Every computation goes through `pyllm.ops`, so the compiled kernels (or the references,
with PYLLM_KERNELS=reference) run the whole model. This op-by-op forward is the meaning. How a
step is run (the C++ runner of `pyllm/model/fast.py`, int8 activations, page release, CUDA
graphs) is chosen outside the model, by `pyllm/model/runtime.py`'s `ModelRunner` and
`pyllm/model/cuda_graph.py`; this module imports neither.

Shape legend: T tokens in the step, C = n_embd, Hq / Hkv heads, D head dim, V vocabulary.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from pyllm import ops
from pyllm.model.batch import AttentionMetadata, KVCaches
from pyllm.model.config import ModelConfig
from pyllm.model.layers import Embedding, Linear, Norm
from pyllm.ops.attention import check_attention_metadata
from pyllm.ops.kv_cache import check_write_kv_cache


class CausalSelfAttention(nn.Module):
    """Multi-head attention over the paged KV cache. `q_norm` / `k_norm` (Qwen3's QK-norm): an
    RMSNorm over each head's D values of q and k, applied before RoPE."""

    def __init__(
        self,
        cfg: ModelConfig,
        layer: int,
        qkv: nn.Module,
        o: Linear,
        q_norm: Norm | None = None,
        k_norm: Norm | None = None,
    ) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.qkv = qkv  # fused [Wq; Wk; Wv]: C -> (Hq + 2 Hkv) D
        self.o = o  # Hq D -> C
        self.q_norm, self.k_norm = q_norm, k_norm  # weights [D], or None
        self.scale = cfg.attn_scale or 1.0 / math.sqrt(cfg.head_dim)
        self.window = cfg.window(layer)
        self.rope = cfg.position == "rope"
        # Gemma 3: sliding-window layers rotate with their own base (the GPT's cos_sin_local)
        self.local_rope = bool(self.window and cfg.rope_local_theta)
        self.neox = cfg.rope_layout == "neox"

    def forward(
        self,
        x: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        cos_sin: torch.Tensor | None,
        validated: bool,
    ) -> torch.Tensor:
        T = x.shape[0]
        Hq, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.qkv(x)  # (T, (Hq + 2 Hkv) D)
        q, k, v = qkv.split([Hq * D, Hkv * D, Hkv * D], dim=-1)
        q, k, v = q.view(T, Hq, D), k.view(T, Hkv, D), v.view(T, Hkv, D)
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q.reshape(T * Hq, D)).view(T, Hq, D)
            k = self.k_norm(k.reshape(T * Hkv, D)).view(T, Hkv, D)
        if self.rope:
            assert cos_sin is not None  # the loader builds the table for RoPE models
            q, k = ops.rope(
                q, k, meta.positions, cos_sin, self.neox, validated=validated
            )  # (T, Hq, D), (T, Hkv, D)
        k_cache, v_cache = kv_cache  # (num_blocks, block_size, Hkv, D)
        ops.write_kv_cache_(k, v, k_cache, v_cache, meta.slot_mapping, validated=validated)
        y = ops.paged_attention(
            q,
            k_cache,
            v_cache,
            meta.query_start,
            meta.context_lens,
            meta.block_tables,
            self.scale,
            self.window,
            validated=validated,
        )  # (T, Hq, D)
        return self.o(y.view(T, Hq * D))  # (T, C)


class MLP(nn.Module):
    """SwiGLU (Llama: down(silu(gate x) * up x)), GeGLU (Gemma: down(gelu_tanh(gate x) * up x))
    or GELU (GPT-2: proj(gelu(fc x)))."""

    def __init__(self, activation: str, up: nn.Module, down: Linear) -> None:
        super().__init__()
        self.activation = activation
        self.up = up  # swiglu / geglu: fused [W_gate; W_up] C -> 2F; gelu: C -> F
        self.down = down  # F -> C

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)  # (T, 2F) or (T, F)
        if self.activation == "swiglu":
            h = ops.silu_mul(h)  # (T, F)
        elif self.activation == "geglu":
            gate, up = h.chunk(2, dim=-1)  # (T, F) each
            h = ops.gelu_tanh(gate.contiguous()) * up  # (T, F)
        else:
            h = ops.gelu_tanh(h)  # (T, F)
        return self.down(h)  # (T, C)


class Block(nn.Module):
    """Pre-norm transformer block; the residual stream is carried separately so each norm can
    fuse the residual add (`x + residual` then normalize, in one op)."""

    def __init__(
        self, attn_norm: Norm, attn: CausalSelfAttention, mlp_norm: Norm, mlp: MLP
    ) -> None:
        super().__init__()
        self.attn_norm, self.attn, self.mlp_norm, self.mlp = attn_norm, attn, mlp_norm, mlp

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        meta: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        cos_sin: torch.Tensor | None,
        validated: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, residual = self._attn_input(x, residual)  # (T, C), (T, C)
        h = self.attn(h, meta, kv_cache, cos_sin, validated)
        h, residual = self.mlp_norm.add_forward(h, residual)
        return self.mlp(h), residual

    def _attn_input(
        self, x: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(normed attention input, residual stream) from the previous block's output x (the
        embeddings for block 0, whose residual is None)."""
        if residual is None:
            return self.attn_norm(x), x
        return self.attn_norm.add_forward(x, residual)


class SandwichBlock(Block):
    """Gemma 3's block: besides the pre-norms, a norm on the attention output and one on the MLP
    output, each before its residual add:
        s = s + post_attn_norm(attn(attn_norm(s)));  s = s + post_mlp_norm(mlp(mlp_norm(s)))
    It keeps Block's (output, residual) protocol, so the GPT loop is the same."""

    def __init__(
        self,
        attn_norm: Norm,
        attn: CausalSelfAttention,
        post_attn_norm: Norm,
        mlp_norm: Norm,
        mlp: MLP,
        post_mlp_norm: Norm,
    ) -> None:
        super().__init__(attn_norm, attn, mlp_norm, mlp)
        self.post_attn_norm, self.post_mlp_norm = post_attn_norm, post_mlp_norm

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        meta: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        cos_sin: torch.Tensor | None,
        validated: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, residual = self._attn_input(x, residual)  # (T, C), (T, C)
        h = self.post_attn_norm(self.attn(h, meta, kv_cache, cos_sin, validated))  # (T, C)
        h, residual = self.mlp_norm.add_forward(h, residual)  # (T, C), (T, C)
        return self.post_mlp_norm(self.mlp(h)), residual


class GPT(nn.Module):
    """Embeddings -> n_layer Blocks -> final norm -> lm_head, over a flattened batch."""

    cos_sin: torch.Tensor | None  # buffers (register_buffer), declared for type checkers
    cos_sin_local: torch.Tensor | None

    def __init__(
        self,
        cfg: ModelConfig,
        wte: Embedding,
        wpe: Embedding | None,
        blocks: list[Block],
        norm_f: Norm,
        lm_head: Linear,
        cos_sin: torch.Tensor | None,
        cos_sin_local: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = cfg
        self.wte, self.wpe = wte, wpe
        self.blocks = nn.ModuleList(blocks)
        self.norm_f = norm_f
        self.lm_head = lm_head  # C -> V (may share the embedding's storage)
        self.register_buffer("cos_sin", cos_sin, persistent=False)  # (max_position, R) or None
        # the sliding-window layers' table when they have their own RoPE base (Gemma 3)
        self.register_buffer("cos_sin_local", cos_sin_local, persistent=False)
        self.embed_scale = cfg.embed_scale  # Gemma 3 scales the embeddings by sqrt(C)

    @property
    def device(self) -> torch.device:
        return self.norm_f.weight.device

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: KVCaches,
        *,
        validated: bool = False,
    ) -> torch.Tensor:
        """The final-layer residual stream [T, C], before the last norm."""
        if len(kv_caches) != len(self.blocks):
            raise ValueError(
                f"need one KV cache per layer ({len(self.blocks)}), got {len(kv_caches)}"
            )
        if not validated:  # True: the caller ran check_step on this step (a CUDA graph's replay)
            self.check_step(input_ids, meta, kv_caches)
        x = self.wte(input_ids)  # (T, C)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        if self.wpe is not None:
            x = x + self.wpe(meta.positions)  # (T, C)
        residual = None
        blocks = cast("list[Block]", list(self.blocks))
        for block, kv_cache in zip(blocks, kv_caches):
            local = block.attn.local_rope and self.cos_sin_local is not None
            table = self.cos_sin_local if local else self.cos_sin
            x, residual = block(x, residual, meta, kv_cache, table, True)
        return x + residual  # (T, C)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[R, C] final-layer states -> [R, V] logits (float32)."""
        return self.lm_head(self.final_norm(hidden))  # (R, V)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """[R, C] final-layer states -> [R, C] normed states (what the head reads)."""
        return self.norm_f(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: KVCaches,
        logits_at: torch.Tensor | None = None,
        *,
        validated: bool = False,
    ) -> torch.Tensor:
        """Logits [R, V] at the rows `logits_at` (int64 indices into the T tokens; every row
        when None). `meta.last_token_rows()` gives each sequence's next-token row."""
        h = self.hidden_states(input_ids, meta, kv_caches, validated=validated)  # (T, C)
        if logits_at is not None:
            h = h.index_select(0, logits_at)  # (R, C)
        return self.logits(h)  # (R, V)

    def check_step(
        self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_caches: KVCaches
    ) -> None:
        """Validate this step's ids and metadata once, so every layer can take the ops' trusted
        path (the metadata is the same for all layers)."""
        cfg = self.config
        T = input_ids.shape[0]
        if input_ids.dim() != 1 or input_ids.dtype != torch.int64:
            raise ValueError(
                f"input_ids must be int64 [T], got {input_ids.dtype} {list(input_ids.shape)}"
            )
        if meta.positions.shape != (T,) or meta.slot_mapping.shape != (T,):
            raise ValueError(f"metadata positions/slot_mapping must have one entry per token ({T})")
        if T:
            lo_id, hi_id, lo_pos, hi_pos = torch.stack(
                [
                    input_ids.min(),
                    input_ids.max(),
                    meta.positions.min(),
                    meta.positions.max(),
                ]
            ).tolist()
            if lo_id < 0 or hi_id >= cfg.vocab_size:
                raise ValueError(
                    f"token ids must lie in [0, {cfg.vocab_size}), got [{lo_id}, {hi_id}]"
                )
            if lo_pos < 0 or hi_pos >= cfg.max_position:
                raise ValueError(
                    f"positions must lie in [0, {cfg.max_position}) (the context "
                    f"length), got [{lo_pos}, {hi_pos}]"
                )
        # The op checks run on stand-ins of the right shapes: what is checked is the metadata.
        k_cache, v_cache = kv_caches[0]
        kv_rows = torch.empty(
            (T, cfg.n_kv_head, cfg.head_dim), dtype=k_cache.dtype, device=k_cache.device
        )
        check_write_kv_cache(kv_rows, kv_rows, k_cache, v_cache, meta.slot_mapping)
        q_rows = torch.empty((T, cfg.n_head, cfg.head_dim), device=k_cache.device)
        check_attention_metadata(
            q_rows, k_cache, v_cache, meta.query_start, meta.context_lens, meta.block_tables
        )
        self.check_caches(kv_caches)

    @staticmethod
    def check_caches(kv_caches: KVCaches) -> None:
        """Every layer's K/V pools are contiguous and alike (layer 0 was checked by the ops)."""
        k_cache = kv_caches[0][0]
        for k, v in kv_caches[1:]:
            if (
                k.shape != k_cache.shape
                or v.shape != k_cache.shape
                or k.dtype != k_cache.dtype
                or v.dtype != k_cache.dtype
                or k.device != k_cache.device
                or v.device != k_cache.device
                or not (k.is_contiguous() and v.is_contiguous())
            ):
                raise ValueError(
                    "every layer's KV cache must match layer 0's shape, dtype and device"
                )
