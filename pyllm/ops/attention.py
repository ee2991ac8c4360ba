"""Varlen paged attention: one op for prefill and decode over the paged KV-cache.

q `[T, Hq, D]` holds the new query rows of B sequences back to back; sequence b owns rows
`query_start[b]:query_start[b+1]` (q_len rows) and has `context_lens[b]` tokens in the cache (its
new ones included, already written). Its keys/values live in the blocks
`block_tables[b, :ceil(context_len / block_size)]` of the pools `[num_blocks, block_size, Hkv, D]`.
Query i of the sequence sits at position `context_len - q_len + i` and attends to cache positions
`<= pos` (and `> pos - sliding_window` when sliding_window > 0). GQA/MQA: query head h reads KV
head `h // (Hq // Hkv)`. Cache slots beyond a sequence's context (NaN included) never reach the
output. Returns `[T, Hq, D]` in q's dtype; the kernels accumulate in float32.

Two entries:
- `paged_attention(...)` — the registered op `torch.ops.pyllm.paged_attention`: checks dtypes,
  shapes, devices and the metadata values (every block-table entry a sequence uses lies in
  `[0, num_blocks)`, `context_len >= q_len`, offsets consistent), so the kernel never reads out
  of bounds. The value checks cost 10-15 µs on CPU (one host read, a sync, on CUDA).
- `paged_attention(..., validated=True, out=None)` — the trusted hot path: the metadata is shared
  by every layer of a step, so the engine calls `check_attention_metadata` once per step and
  then each layer goes straight to the kernel (no dispatcher, no re-validation of the metadata
  values, only a few shape comparisons; `out` lets a decode loop reuse its output buffer). Same
  kernel as the op.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch

from pyllm.ops import _library as L
from pyllm.ops.kv_cache import check_cache_pair

PAGED_ATTENTION = L.define(
    "paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor query_start, "
    "Tensor context_lens, Tensor block_tables, float scale, int sliding_window) -> Tensor"
)


def paged_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int,
) -> torch.Tensor:
    """The meaning of the op in plain PyTorch: gather each sequence's context, masked softmax."""
    T, Hq, D = q.shape
    block_size, Hkv = k_cache.shape[1], k_cache.shape[2]
    group = Hq // Hkv
    compute = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for a float64 q
    out = torch.zeros(T, Hq, D, dtype=compute, device=q.device)
    starts = query_start.tolist()
    for b, ctx in enumerate(context_lens.tolist()):
        s, e = starts[b], starts[b + 1]
        if e == s:
            continue
        blocks = block_tables[b, : (ctx + block_size - 1) // block_size].long()
        k = k_cache[blocks].reshape(-1, Hkv, D)[:ctx].to(compute).repeat_interleave(group, dim=1)
        v = v_cache[blocks].reshape(-1, Hkv, D)[:ctx].to(compute).repeat_interleave(group, dim=1)
        qb = q[s:e].to(compute)  # (q_len, Hq, D)
        scores = torch.einsum("qhd,khd->hqk", qb, k) * scale  # (Hq, q_len, ctx)
        pos = torch.arange(ctx - (e - s), ctx, device=q.device)[:, None]  # (q_len, 1)
        kpos = torch.arange(ctx, device=q.device)[None, :]  # (1, ctx)
        allowed = kpos <= pos
        if sliding_window > 0:
            allowed &= kpos > pos - sliding_window
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[s:e] = torch.einsum("hqk,khd->qhd", probs, v)
    return out.to(q.dtype)


_FLOATS = L.FLOAT_DTYPES


_fail = L.fail


def _check_shapes(
    q, k_cache, v_cache, query_start, context_lens, block_tables, scale, sliding_window
) -> None:
    # Plain ifs with the message built only on failure: this runs every step.
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype not in _FLOATS:
            _fail(f"{name} must be float32, float16 or bfloat16, not {t.dtype}")
    if q.dim() != 3:
        _fail(f"q must be [T, Hq, D], got {list(q.shape)}")
    check_cache_pair(k_cache, v_cache)
    _, hq, d = q.shape
    _, block_size, hkv, dk = k_cache.shape
    if dk != d:
        _fail(f"k_cache's head dim {dk} must equal q's {d}")
    if block_size <= 0:
        _fail("k_cache's block_size must be positive")
    if hkv <= 0 or hq % hkv:
        _fail(f"q's {hq} heads must be a multiple of k_cache's {hkv} KV heads")
    for name, t, rank in (
        ("query_start", query_start, 1),
        ("context_lens", context_lens, 1),
        ("block_tables", block_tables, 2),
    ):
        if t.dtype != torch.int32:
            _fail(f"{name} must be int32, not {t.dtype}")
        if t.dim() != rank:
            _fail(f"{name} must have {rank} dimension(s), got {list(t.shape)}")
    b = context_lens.shape[0]
    if query_start.shape[0] != b + 1:
        _fail(
            f"query_start must be [{b + 1}] (context_lens has {b} sequences), "
            f"got {list(query_start.shape)}"
        )
    if block_tables.shape[0] != b:
        _fail(f"block_tables must have {b} rows (one per sequence), got {list(block_tables.shape)}")
    if not math.isfinite(scale):
        _fail(f"scale must be finite, got {scale}")
    if sliding_window < 0:
        _fail(f"sliding_window must be >= 0 (0 = off), got {sliding_window}")
    device = q.device
    if not (
        k_cache.device
        == v_cache.device
        == query_start.device
        == context_lens.device
        == block_tables.device
        == device
    ):
        L.check_same_device(
            q=q,
            k_cache=k_cache,
            v_cache=v_cache,
            query_start=query_start,
            context_lens=context_lens,
            block_tables=block_tables,
        )


def check_attention_metadata(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float = 1.0,
    sliding_window: int = 0,
) -> None:
    """Every check the op makes (ValueError naming the argument), shapes and values.

    Values: query_start starts at 0, never decreases and ends at T; context_len >= q_len for
    each sequence; a sequence's blocks fit its block_tables row; every block-table entry it uses
    lies in [0, num_blocks). Cheap: 10-15 µs for a decode step on CPU; on CUDA vectorised torch
    ops and a single host read, which synchronises. Run it once a step and pass
    `validated=True` to the per-layer calls.
    """
    _check_shapes(
        q, k_cache, v_cache, query_start, context_lens, block_tables, scale, sliding_window
    )
    b = context_lens.shape[0]
    if b == 0:
        if q.shape[0] != 0:
            _fail(f"q has {q.shape[0]} rows but there are no sequences")
        return
    num_blocks, block_size = k_cache.shape[0], k_cache.shape[1]
    if q.device.type == "cpu":
        flags = _metadata_flags_cpu(
            query_start, context_lens, block_tables, q.shape[0], num_blocks, block_size
        )
    else:
        flags = _metadata_flags_torch(
            query_start, context_lens, block_tables, q.shape[0], num_blocks, block_size
        )
    if not any(flags):
        return
    max_blocks = block_tables.shape[1]
    messages = (
        "query_start must start at 0",
        f"query_start must end at T = {q.shape[0]} (q's rows)",
        "query_start must not decrease",
        "context_lens must be >= each sequence's query length (query_start[b+1] - query_start[b]): "
        "the new tokens are in the cache",
        f"context_lens needs more blocks than block_tables' {max_blocks} columns of "
        f"{block_size}-token blocks",
        f"block_tables holds an entry outside [0, {num_blocks}) among the blocks a sequence uses",
    )
    _fail(next(m for m, bad in zip(messages, flags) if bad))


def _metadata_flags_cpu(query_start, context_lens, block_tables, T, num_blocks, block_size):
    # Python lists for the per-sequence scalars (cheaper than array ops at decode batch sizes),
    # numpy for the block table.
    qs = query_start.tolist()
    ctx = context_lens.tolist()
    q_len = [e - s for s, e in itertools.pairwise(qs)]
    max_blocks = block_tables.shape[1]
    used_blocks = [(c + block_size - 1) // block_size for c in ctx]
    flags = [
        qs[0] != 0,
        qs[-1] != T,
        min(q_len) < 0,
        any(c < n for c, n in zip(ctx, q_len)),
        max(used_blocks) > max_blocks,
        False,
    ]
    if not any(flags) and max_blocks:
        bt = block_tables.numpy()
        if int(bt.min()) < 0 or int(bt.max()) >= num_blocks:  # else every entry is fine
            used = np.arange(max_blocks)[None, :] < np.asarray(used_blocks)[:, None]
            flags[5] = bool((used & ((bt < 0) | (bt >= num_blocks))).any())
    return flags


def _metadata_flags_torch(query_start, context_lens, block_tables, T, num_blocks, block_size):
    qs = query_start.long()
    ctx = context_lens.long()
    q_len = qs[1:] - qs[:-1]
    used_blocks = (ctx + (block_size - 1)).div(block_size, rounding_mode="floor")
    used = torch.arange(block_tables.shape[1], device=ctx.device)[None, :] < used_blocks[:, None]
    bad_entry = used & ((block_tables < 0) | (block_tables >= num_blocks))
    return torch.stack(
        [
            qs[0] != 0,
            qs[-1] != T,
            (q_len < 0).any(),
            (ctx < q_len).any(),
            (used_blocks > block_tables.shape[1]).any(),
            bad_entry.any(),
        ]
    ).tolist()


def _run_kernel(
    q, k_cache, v_cache, query_start, context_lens, block_tables, scale, sliding_window, out=None
) -> torch.Tensor:
    """Call the compiled kernel on already-checked metadata (shapes are re-compared: cheap)."""
    q = q.contiguous()
    if (
        q.dim() != 3
        or k_cache.dim() != 4
        or q.shape[2] != k_cache.shape[3]
        or q.shape[1] % k_cache.shape[2]
        or v_cache.shape != k_cache.shape
        or v_cache.dtype != k_cache.dtype
        or not (k_cache.is_contiguous() and v_cache.is_contiguous())
    ):
        _fail(
            f"q {list(q.shape)} does not fit the caches "
            f"{list(k_cache.shape)} / {list(v_cache.shape)}"
        )
    if not (query_start.dtype == context_lens.dtype == block_tables.dtype == torch.int32):
        _fail("query_start, context_lens and block_tables must be int32")
    if out is None:
        out = torch.empty_like(q)
    elif (
        out.shape != q.shape
        or out.dtype != q.dtype
        or out.device != q.device
        or not out.is_contiguous()
    ):
        _fail(
            f"out must be a contiguous {q.dtype} tensor of q's shape {list(q.shape)} on {q.device}"
        )
    if not q.numel():
        return out
    query_start, context_lens = query_start.contiguous(), context_lens.contiguous()
    block_tables = block_tables.contiguous()
    T, Hq, D = q.shape
    if L.on_cuda(q):
        _launch_cuda(
            q, k_cache, v_cache, query_start, context_lens, block_tables, scale, sliding_window, out
        )
    else:  # raw addresses: seven TensorViews would cost more than a short decode's kernel
        codes = L._DTYPE_CODES
        L._C.paged_attention_cpu_ptr(
            q.data_ptr(),
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            query_start.data_ptr(),
            context_lens.data_ptr(),
            block_tables.data_ptr(),
            out.data_ptr(),
            T,
            Hq,
            k_cache.shape[2],
            D,
            k_cache.shape[1],
            context_lens.shape[0],
            block_tables.shape[1],
            codes[q.dtype],
            codes[k_cache.dtype],
            float(scale),
            int(sliding_window),
        )
    return out


def _launch_cuda(
    q, k_cache, v_cache, query_start, context_lens, block_tables, scale, sliding_window, out
) -> None:
    """The CUDA kernel into `out`, on contiguous checked inputs, with its split-K workspace."""
    T, Hq, D = q.shape
    max_context = block_tables.shape[1] * k_cache.shape[1]
    n = L._C.paged_attention_cuda_workspace(T, Hq, k_cache.shape[2], D, max_context)
    workspace = torch.empty(max(n, 1), dtype=torch.float32, device=q.device)
    L._C.paged_attention_cuda(
        L.view(q),
        L.view(k_cache),
        L.view(v_cache),
        L.view(query_start),
        L.view(context_lens),
        L.view(block_tables),
        L.view(out),
        float(scale),
        int(sliding_window),
        L.view(workspace),
        L.cuda_stream(),
    )


def _with_checks(impl: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`impl` (the kernel launch or the reference) behind the op's metadata checks."""

    def checked(*args):
        check_attention_metadata(*args)
        return impl(*args)

    return checked


_checked_ref = _with_checks(paged_attention_ref)
_checked_kernel = _with_checks(_run_kernel)


def _fake(q, k_cache, v_cache, query_start, context_lens, block_tables, scale, sliding_window):
    _check_shapes(
        q, k_cache, v_cache, query_start, context_lens, block_tables, scale, sliding_window
    )
    return torch.empty_like(q, memory_format=torch.contiguous_format)


_HAS_CPU = L.has_entry("paged_attention_cpu_ptr")
_HAS_CUDA = L.has_entry("paged_attention_cuda")

L.register(
    PAGED_ATTENTION,
    reference=_checked_ref,
    fake=_fake,
    cpu=_checked_kernel if _HAS_CPU else None,
    cuda=_checked_kernel,
    cuda_entry="paged_attention_cuda",
)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start: torch.Tensor,
    context_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int = 0,
    *,
    validated: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal varlen attention of q `[T, Hq, D]` over the paged cache; returns `[T, Hq, D]`.

    `validated=True` is the trusted hot path (see the module docstring): the caller has run
    `check_attention_metadata` on this step's metadata; the kernel is called directly and may
    write into `out` (contiguous, q's shape and dtype). Unchecked metadata this way can read
    out of bounds.
    """
    if not validated:
        result = torch.ops.pyllm.paged_attention(
            q, k_cache, v_cache, query_start, context_lens, block_tables, scale, sliding_window
        )
        if out is not None:
            out.copy_(result)
            return out
        return result
    native_here = _HAS_CUDA if L.on_cuda(q) else _HAS_CPU
    if L.native() and native_here:
        return _run_kernel(
            q, k_cache, v_cache, query_start, context_lens, block_tables, scale, sliding_window, out
        )
    result = paged_attention_ref(
        q, k_cache, v_cache, query_start, context_lens, block_tables, scale, sliding_window
    )
    if out is not None:
        out.copy_(result)
        return out
    return result
