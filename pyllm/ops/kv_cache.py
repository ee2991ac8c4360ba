"""Paged KV-cache write: scatter new K/V rows into the per-layer block pools by slot.

Pools are `[num_blocks, block_size, Hkv, D]` (one for K, one for V, per layer). Token row t of
`k`/`v` goes to slot `slot_mapping[t]`, i.e. block `slot // block_size`, offset
`slot % block_size`; a negative slot is padding and is skipped. The caches may be float32,
float16 or bfloat16 whatever `k`/`v` are (rows are converted, round-to-nearest-even).

Two entries:
- `write_kv_cache_(...)` — the registered op `torch.ops.pyllm.write_kv_cache_`: checks dtypes,
  shapes, devices and that every slot lies inside the pool (ValueError naming the argument).
- `write_kv_cache_(..., validated=True)` — the trusted hot path: the caller has already run
  `check_write_kv_cache` (or built the slot mapping itself from a block manager it trusts) and
  the kernel is called directly, skipping the dispatcher and the value checks. Same kernel.
"""

from __future__ import annotations

import torch

from pyllm.ops import _library as L

WRITE_KV_CACHE = L.define(
    "write_kv_cache_(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, "
    "Tensor slot_mapping) -> ()"
)


def write_kv_cache_ref_(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """The meaning of the op, in plain PyTorch (writes into k_cache and v_cache in place)."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[keep].to(v_cache.dtype)


_fail = L.fail


def check_cache_pair(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """One layer's K and V pools: [num_blocks, block_size, Hkv, D] alike, contiguous (the
    kernels index them as flat arrays). Shared by the cache write and attention checks."""
    if k_cache.dim() != 4:
        _fail(f"k_cache must be [num_blocks, block_size, Hkv, D], got {list(k_cache.shape)}")
    if v_cache.shape != k_cache.shape:
        _fail(
            f"v_cache must match k_cache's shape {list(k_cache.shape)}, got {list(v_cache.shape)}"
        )
    if v_cache.dtype != k_cache.dtype:
        _fail(f"v_cache must have k_cache's dtype {k_cache.dtype}, got {v_cache.dtype}")
    if not k_cache.is_contiguous():
        _fail("k_cache must be contiguous")
    if not v_cache.is_contiguous():
        _fail("v_cache must be contiguous")


def _check_shapes(k, v, k_cache, v_cache, slot_mapping) -> None:
    # Plain ifs with the message built only on failure: this runs every step.
    for name, t in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype not in L.FLOAT_DTYPES:
            _fail(f"{name} must be float32, float16 or bfloat16, not {t.dtype}")
    check_cache_pair(k_cache, v_cache)
    hkv, d = k_cache.shape[2], k_cache.shape[3]
    if k.dim() != 3 or k.shape[1] != hkv or k.shape[2] != d:
        _fail(f"k must be [T, {hkv}, {d}], got {list(k.shape)}")
    if v.shape != k.shape:
        _fail(f"v must match k's shape {list(k.shape)}, got {list(v.shape)}")
    if v.dtype != k.dtype:
        _fail(f"v must have k's dtype {k.dtype}, got {v.dtype}")
    if slot_mapping.dtype != torch.int64:
        _fail(f"slot_mapping must be int64, not {slot_mapping.dtype}")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != k.shape[0]:
        _fail(f"slot_mapping must be [{k.shape[0]}], got {list(slot_mapping.shape)}")
    device = k.device
    if not (v.device == k_cache.device == v_cache.device == slot_mapping.device == device):
        L.check_same_device(k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)


def check_write_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Every check the op makes: shapes, dtypes, devices, and slots < num_blocks * block_size.

    The value check reads one number (the largest slot); on CUDA it synchronises.
    """
    _check_shapes(k, v, k_cache, v_cache, slot_mapping)
    if slot_mapping.numel():
        capacity = k_cache.shape[0] * k_cache.shape[1]
        top = int(slot_mapping.max())
        L.check(
            top < capacity,
            f"slot_mapping holds slot {top}, beyond the cache's {capacity} slots "
            f"({k_cache.shape[0]} blocks of {k_cache.shape[1]})",
        )


def _write_cuda(k, v, k_cache, v_cache, slot_mapping) -> None:
    """The CUDA kernel on checked inputs; token rows may be strided (views of the fused QKV
    output), so they are not copied."""
    k, v = _dense_rows(k), _dense_rows(v)
    L._C.write_kv_cache_cuda(
        L.view(k),
        L.view(v),
        L.view(k_cache),
        L.view(v_cache),
        L.view(slot_mapping),
        L.cuda_stream(),
    )


def _kernel(k, v, k_cache, v_cache, slot_mapping) -> None:
    """Call the compiled kernel on already-checked slots (shapes are re-compared: cheap)."""
    if (
        k.dim() != 3
        or k_cache.dim() != 4
        or k.shape[1:] != k_cache.shape[2:]
        or v.shape != k.shape
        or v_cache.shape != k_cache.shape
        or slot_mapping.shape != k.shape[:1]
        or v.dtype != k.dtype
        or v_cache.dtype != k_cache.dtype
        or slot_mapping.dtype != torch.int64
        or not (k_cache.is_contiguous() and v_cache.is_contiguous())
    ):
        _fail(
            f"k {list(k.shape)} / v {list(v.shape)} / slot_mapping {list(slot_mapping.shape)} "
            f"do not fit the caches {list(k_cache.shape)} / {list(v_cache.shape)}"
        )
    if not k.shape[0] or not k_cache.numel():
        return
    slot_mapping = slot_mapping.contiguous()
    if L.on_cuda(k_cache):
        _write_cuda(k, v, k_cache, v_cache, slot_mapping)
    else:  # raw addresses: building five TensorViews would cost more than the copy
        k, v = k.contiguous(), v.contiguous()
        codes = L._DTYPE_CODES
        L._C.write_kv_cache_cpu_ptr(
            k.data_ptr(),
            v.data_ptr(),
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            slot_mapping.data_ptr(),
            k.shape[0],
            k.shape[1] * k.shape[2],
            codes[k.dtype],
            codes[k_cache.dtype],
        )


def _dense_rows(t: torch.Tensor) -> torch.Tensor:
    """t [T, Hkv, D] with each token row's elements contiguous (rows may be apart), as the CUDA
    kernel reads them; a copy only when they are not."""
    if t.stride(2) == 1 and (t.shape[1] == 1 or t.stride(1) == t.shape[2]) and t.stride(0) >= 0:
        return t
    return t.contiguous()


def _checked_ref(k, v, k_cache, v_cache, slot_mapping) -> None:
    check_write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    write_kv_cache_ref_(k, v, k_cache, v_cache, slot_mapping)


def _checked_kernel(k, v, k_cache, v_cache, slot_mapping) -> None:
    check_write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    _kernel(k, v, k_cache, v_cache, slot_mapping)


def _fake(k, v, k_cache, v_cache, slot_mapping) -> None:
    _check_shapes(k, v, k_cache, v_cache, slot_mapping)  # values are unknown while tracing
    return None


_HAS_CPU = L.has_entry("write_kv_cache_cpu_ptr")
_HAS_CUDA = L.has_entry("write_kv_cache_cuda")

L.register(
    WRITE_KV_CACHE,
    reference=_checked_ref,
    fake=_fake,
    cpu=_checked_kernel if _HAS_CPU else None,
    cuda=_checked_kernel,
    cuda_entry="write_kv_cache_cuda",
)


def write_kv_cache_(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    validated: bool = False,
) -> None:
    """Write k, v `[T, Hkv, D]` into the caches at `slot_mapping` `[T]` (int64; < 0 skipped).

    `validated=True` is for a trusted hot path that has already checked these arguments (with
    `check_write_kv_cache`, or by construction): it calls the kernel directly, skipping the
    dispatcher (about 2 µs) and the value check (a reduction and a host read). Passing unchecked
    slots this way can write out of bounds.
    """
    if not validated:
        torch.ops.pyllm.write_kv_cache_(k, v, k_cache, v_cache, slot_mapping)
        return
    native_here = _HAS_CUDA if L.on_cuda(k_cache) else _HAS_CPU
    if L.native() and native_here:
        _kernel(k, v, k_cache, v_cache, slot_mapping)
    else:
        write_kv_cache_ref_(k, v, k_cache, v_cache, slot_mapping)
