"""The fast CPU forward: the GPT's decoder stack as one C++ call a step (`pyllm._C.Runner`).

`gpt.py`'s op-by-op forward is the meaning; it costs a few hundred Python op calls a step,
which at batch 1 is as long as the kernels themselves. `FastForward` hands the same kernels
(qlinear, RMSNorm / LayerNorm, RoPE, KV-cache write, paged attention, SiLU*mul / GELU) to a C++
runner that calls them in the same order on the same numbers, so its logits are the op-by-op
path's bit for bit (tests/test_fast_path.py). The weights' addresses, the config and the scratch
buffers are set up once; a step passes its ids and metadata as a dozen integers.

It is used on CPU with the native kernels (`PYLLM_KERNELS=native`, the default); anything
unusual (another device, a weight that is not a contiguous CPU tensor, a metadata tensor of an
unexpected dtype or layout) falls back to the op-by-op path, which raises the documented errors.
`PYLLM_FAST_FORWARD=0` or `ModelRunner.fast_path = False` turns it off (pyllm/model/runtime.py
decides when it runs).

Safety: the Python side checks dtypes, shapes and contiguity (cheap attribute reads); the runner
checks every value a kernel could index with (token ids, positions, slots, query offsets, context
lengths, block-table entries, logits rows) before any kernel runs, with the messages of
`GPT.check_step`. The runner borrows the tensors' memory; this object keeps them alive, and the
ModelRunner drops it whenever the model's tensors are replaced (`.to()`, `.float()`, ...).
"""

from __future__ import annotations

import os
from operator import is_
from typing import TYPE_CHECKING, cast

import torch

from pyllm.ops import _library as L
from pyllm.weights.quant import OP_QTYPE_CODES

if TYPE_CHECKING:  # pragma: no cover
    from pyllm.model.batch import AttentionMetadata, KVCaches
    from pyllm.model.gpt import GPT, Block

_CACHE_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def available() -> bool:
    """Whether this process may use the runner at all (native kernels, built, not disabled)."""
    return (
        L.native()
        and L._C is not None
        and hasattr(L._C, "Runner")
        and os.environ.get("PYLLM_FAST_FORWARD", "1") != "0"
    )


class Unsupported(Exception):
    """The model has something the runner does not take (it then runs op by op)."""


def _cpu_int64_vector(t: object) -> bool:
    """Whether t is a contiguous int64 CPU vector (what the runner reads ids and rows from)."""
    return (
        type(t) is torch.Tensor
        and t.dtype == torch.int64
        and t.dim() == 1
        and t.is_cpu
        and t.is_contiguous()
    )


def _cpu_f32(t: torch.Tensor | None, n: int | None = None) -> int:
    """The address of a contiguous float32 CPU vector (0 for None)."""
    if t is None:
        return 0
    if not (
        t.is_cpu
        and t.dtype == torch.float32
        and t.is_contiguous()
        and t.dim() == 1
        and (n is None or t.shape[0] == n)
    ):
        raise Unsupported("a norm or bias vector is not a contiguous float32 CPU vector")
    return t.data_ptr()


def _weight_args(w, keep: list) -> tuple[int, int, int]:
    """(address, GGML qtype, rows) of a QWeight's storage."""
    data = w.data
    if not (data.is_cpu and data.is_contiguous()):
        raise Unsupported("a weight is not a contiguous CPU tensor")
    if w.qtype not in OP_QTYPE_CODES:
        raise Unsupported(
            f"the fused CPU runner does not take {w.qtype} weights "
            f"(it takes {', '.join(sorted(OP_QTYPE_CODES))})"
        )
    keep.append(data)
    return data.data_ptr(), OP_QTYPE_CODES[w.qtype], w.out_features


def _linear_args(module, keep: list) -> tuple[int, int, list[tuple[int, int, int, int]]]:
    """(in, out, parts) for a Linear or a ConcatLinear of Linears."""
    from pyllm.model.layers import ConcatLinear, Linear

    parts: list[Linear] = []
    for p in list(module.parts) if isinstance(module, ConcatLinear) else [module]:
        if type(p) is not Linear:
            raise Unsupported(f"unexpected linear module {type(p).__name__}")
        parts.append(p)
    out = []
    for p in parts:
        ptr, qtype, rows = _weight_args(p.weight, keep)
        keep.append(p.bias)
        out.append((ptr, qtype, rows, _cpu_f32(p.bias, rows)))
    first = parts[0].weight
    if any(p.weight.in_features != first.in_features for p in parts):
        raise Unsupported("parts of a fused linear differ in input size")
    return first.in_features, sum(p.weight.out_features for p in parts), out


def _norm_args(norm, n: int, keep: list) -> tuple[int, int, bool, float]:
    keep += [norm.weight, norm.bias]
    return (_cpu_f32(norm.weight, n), _cpu_f32(norm.bias, n), norm.kind != "rms", float(norm.eps))


def _table_args(emb, keep: list) -> tuple[int, int, int, int]:
    ptr, qtype, rows = _weight_args(emb.weight, keep)
    return ptr, qtype, rows, emb.weight.in_features


class FastForward:
    """One model's runner; raises `Unsupported` when the model cannot use it."""

    def __init__(self, model: GPT) -> None:
        from pyllm.model.gpt import MLP, SandwichBlock

        cfg = model.config
        keep: list = []  # every tensor whose memory the runner reads
        cos_sin = model.cos_sin
        rope = cfg.position == "rope"
        table_dim = table_ptr = 0  # the RoPE table's row length and address (0: no RoPE)
        if rope:
            if not (
                cos_sin is not None
                and cos_sin.is_cpu
                and cos_sin.dtype == torch.float32
                and cos_sin.is_contiguous()
                and cos_sin.dim() == 2
                and cos_sin.shape[0] >= cfg.max_position
            ):
                raise Unsupported("the RoPE table is not a contiguous float32 CPU matrix")
            keep.append(cos_sin)
            table_dim, table_ptr = cos_sin.shape[1], cos_sin.data_ptr()
        C = cfg.n_embd
        blocks = cast("list[Block]", list(model.blocks))  # a GPT's layers are Blocks
        scale = blocks[0].attn.scale if blocks else 1.0
        self.runner = L._C.Runner(
            C,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.head_dim,
            cfg.n_ff,
            cfg.vocab_size,
            cfg.max_position,
            cfg.activation == "swiglu",
            rope,
            cfg.rope_layout == "neox",
            table_dim,
            table_ptr,
            scale,
        )
        wpe = _table_args(model.wpe, keep) if model.wpe is not None else None
        self.runner.set_embedding(_table_args(model.wte, keep), wpe)
        for block in blocks:
            attn, mlp = block.attn, block.mlp
            if type(mlp) is not MLP or attn.scale != scale or not attn.rope == rope:
                raise Unsupported("layers differ from one another")
            if attn.q_norm is not None or attn.k_norm is not None:
                raise Unsupported("the C++ runner has no per-head QK-norm")
            if isinstance(block, SandwichBlock) or mlp.activation == "geglu" or attn.local_rope:
                raise Unsupported("the C++ runner has no post-norms, GeGLU or second RoPE base")
            self.runner.add_layer(
                _norm_args(block.attn_norm, C, keep),
                _linear_args(attn.qkv, keep),
                _linear_args(attn.o, keep),
                _norm_args(block.mlp_norm, C, keep),
                _linear_args(mlp.up, keep),
                _linear_args(mlp.down, keep),
                int(attn.window),
            )
        self.runner.set_head(_norm_args(model.norm_f, C, keep), _linear_args(model.lm_head, keep))
        self._keep = keep
        self.config = cfg  # what the runner was built for (a replaced config means a rebuild)
        self.n_layer, self.n_embd, self.vocab = len(blocks), C, cfg.vocab_size
        self._cache_shape = (cfg.n_kv_head, cfg.head_dim)
        self._kv_pairs: list = []  # the caches the runner was last given
        self._kv_ptr0 = 0

    # ------------------------------------------------------------------ per step

    def _cache_ready(self, kv_caches: KVCaches) -> bool:
        """Give the runner `kv_caches` unless it has them already; False if they do not fit."""
        pairs = self._kv_pairs
        if (
            len(kv_caches) == len(pairs)
            and kv_caches[0][0].data_ptr() == self._kv_ptr0
            and (
                all(map(is_, kv_caches, pairs))  # the same pair objects: the usual case
                or all(p[0] is q[0] and p[1] is q[1] for p, q in zip(kv_caches, pairs))
            )
        ):
            return True
        if len(kv_caches) != self.n_layer:
            return False
        k0 = kv_caches[0][0]
        shape, dtype = k0.shape, k0.dtype
        if (
            dtype not in _CACHE_DTYPES
            or k0.dim() != 4
            or tuple(shape[2:]) != self._cache_shape
            or shape[1] < 1
        ):
            return False
        for pair in kv_caches:
            for t in pair:
                if not (
                    type(t) is torch.Tensor
                    and t.shape == shape
                    and t.dtype == dtype
                    and t.is_cpu
                    and t.is_contiguous()
                ):
                    return False
        self.runner.set_cache(
            [k.data_ptr() for k, _ in kv_caches],
            [v.data_ptr() for _, v in kv_caches],
            shape[0],
            shape[1],
            _CACHE_DTYPES[dtype],
        )
        # Holds them (the runner points into them); a pair that is not a tuple could change in
        # place, so only tuples are kept as they are (their identity then means the same tensors).
        self._kv_pairs = [p if type(p) is tuple else tuple(p) for p in kv_caches]
        self._kv_ptr0 = k0.data_ptr()
        return True

    def _step_args(
        self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_caches: KVCaches
    ) -> tuple | None:
        """The runner's step arguments, or None when anything is unusual (the caller then runs
        the op-by-op path, whose checks name the problem)."""
        ids, pos, slots = input_ids, meta.positions, meta.slot_mapping
        qs, ctx, bt = meta.query_start, meta.context_lens, meta.block_tables
        if not _cpu_int64_vector(ids):
            return None
        T = ids.shape[0]
        if T == 0:
            return None
        i64, i32 = torch.int64, torch.int32
        if not (
            pos.dtype == i64
            and slots.dtype == i64
            and qs.dtype == i32
            and ctx.dtype == i32
            and bt.dtype == i32
            and pos.dim() == 1
            and slots.dim() == 1
            and qs.dim() == 1
            and ctx.dim() == 1
            and bt.dim() == 2
            and pos.shape[0] == T
            and slots.shape[0] == T
        ):
            return None
        B = ctx.shape[0]
        if not (
            qs.shape[0] == B + 1
            and bt.shape[0] == B
            and pos.is_cpu
            and slots.is_cpu
            and qs.is_cpu
            and ctx.is_cpu
            and bt.is_cpu
            and pos.is_contiguous()
            and slots.is_contiguous()
            and qs.is_contiguous()
            and ctx.is_contiguous()
            and bt.is_contiguous()
        ):
            return None
        if not self._cache_ready(kv_caches):
            return None
        return (
            ids.data_ptr(),
            pos.data_ptr(),
            slots.data_ptr(),
            qs.data_ptr(),
            ctx.data_ptr(),
            bt.data_ptr(),
            T,
            B,
            bt.shape[1],
        )

    def logits(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: KVCaches,
        logits_at: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """Logits [R, V] as GPT.forward computes them, or None (run op by op instead)."""
        args = self._step_args(input_ids, meta, kv_caches)
        if args is None:
            return None
        if logits_at is None:
            rows, R = 0, args[6]
        else:
            if not _cpu_int64_vector(logits_at):
                return None
            rows, R = logits_at.data_ptr(), logits_at.shape[0]
        out = torch.empty((R, self.vocab))
        self.runner.forward_logits(*args, rows, R, out.data_ptr())
        return out

    def hidden(
        self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_caches: KVCaches
    ) -> torch.Tensor | None:
        """The final residual stream [T, C] as GPT.hidden_states computes it, or None."""
        args = self._step_args(input_ids, meta, kv_caches)
        if args is None:
            return None
        out = torch.empty((args[6], self.n_embd))
        self.runner.forward_hidden(*args, out.data_ptr())
        return out
