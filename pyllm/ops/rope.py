"""Rotary position embeddings (RoPE) for q and k together, and the cos/sin table they read.

Layouts: NeoX (Hugging Face) rotates the pairs (i, i + R/2) of the first R dims of a head;
"normal" (GPT-J / llama.cpp, what Llama GGUF weights are permuted for) rotates (2i, 2i + 1).
Dims at or past R pass through unchanged (partial rotary, e.g. rotary_dim < head_dim).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from pyllm.ops import _library as L

ROPE = L.define(
    "rope(Tensor q, Tensor k, Tensor positions, Tensor cos_sin, bool neox) -> (Tensor, Tensor)"
)


# ------------------------------------------------------------- the table


def rope_inv_freq(
    rotary_dim: int, theta: float, scaling: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """The R/2 rotation frequencies (radians per position), float64, scaling applied."""
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even and >= 2, got {rotary_dim}")
    if not theta > 0:
        raise ValueError(f"theta must be > 0, got {theta}")
    half = rotary_dim // 2
    inv_freq = 1.0 / (float(theta) ** (torch.arange(0, half, dtype=torch.float64) * 2 / rotary_dim))
    if not scaling:
        return inv_freq
    kind = str(scaling.get("type", scaling.get("rope_type", "default"))).lower()
    if kind in ("default", "none", ""):
        pass
    elif kind == "linear":
        inv_freq = inv_freq / _positive(scaling, "factor")
    elif kind == "llama3":
        inv_freq = _llama3(inv_freq, scaling)
    else:
        raise ValueError(f"rope scaling type {kind!r} is not supported (default, linear, llama3)")
    freq_factors = scaling.get("freq_factors")
    if freq_factors is not None:
        ff = torch.as_tensor(freq_factors, dtype=torch.float64).flatten()
        if ff.numel() != half:
            raise ValueError(f"rope scaling freq_factors must have {half} values, got {ff.numel()}")
        inv_freq = inv_freq / ff
    return inv_freq


def _positive(scaling: Mapping[str, Any], key: str, default: float | None = None) -> float:
    value = scaling.get(key, default)
    if value is None:
        raise ValueError(f"rope scaling needs {key!r}")
    value = float(value)
    if not value > 0:
        raise ValueError(f"rope scaling {key!r} must be > 0, got {value}")
    return value


def _llama3(inv_freq: torch.Tensor, scaling: Mapping[str, Any]) -> torch.Tensor:
    """Llama 3.1's frequency-dependent scaling: long wavelengths are divided by `factor`,
    short ones kept, and the band between low_freq_factor and high_freq_factor blended."""
    factor = _positive(scaling, "factor")
    low = _positive(scaling, "low_freq_factor", 1.0)
    high = _positive(scaling, "high_freq_factor", 4.0)
    original = scaling.get(
        "original_max_position_embeddings", scaling.get("original_context_length")
    )
    if original is None:
        raise ValueError("rope scaling 'llama3' needs 'original_max_position_embeddings'")
    original = float(original)
    if not high > low:
        raise ValueError(
            f"rope scaling needs high_freq_factor > low_freq_factor, got {high} <= {low}"
        )
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = original / low, original / high
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, out)


def rope_cos_sin(
    max_pos: int, rotary_dim: int, theta: float, scaling: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """The table `rope` reads: float32 [max_pos, rotary_dim], cos in [:, :R/2], sin in [:, R/2:].

    Row p holds cos(p * f_i) and sin(p * f_i) for the R/2 frequencies f_i = theta^(-2i/R)
    (computed in float64, rounded once). `scaling` (None for none) is a dict:

    - ``{"type": "linear", "factor": s}``: positions divided by s (f_i / s).
    - ``{"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}``: Llama 3.1's scaling (Hugging Face's
      ``rope_scaling`` dict works as is; ``rope_type`` is accepted for ``type`` and
      ``original_context_length``, the GGUF name, for ``original_max_position_embeddings``).
    - ``{"freq_factors": [R/2 values]}``: divide each f_i by its factor (a GGUF
      ``rope_freqs.weight`` tensor); combines with any type.
    - ``{"type": "none"}`` / ``"default"``: no scaling.
    The table lives on the CPU; move it to the model's device once.
    """
    if max_pos < 1:
        raise ValueError(f"max_pos must be >= 1, got {max_pos}")
    inv_freq = rope_inv_freq(rotary_dim, theta, scaling)
    half = inv_freq.shape[0]
    table = torch.empty(max_pos, 2 * half, dtype=torch.float32)
    # Rows are made in float64 a slice at a time: the float64 temporaries stay a few MB
    # whatever the context (a whole-context float64 pass took 5x the table's size).
    step = max(1, (1 << 16) // half)
    for lo in range(0, max_pos, step):
        hi = min(max_pos, lo + step)
        angles = torch.arange(lo, hi, dtype=torch.float64)[:, None] * inv_freq[None, :]
        table[lo:hi, :half] = angles.cos()
        table[lo:hi, half:] = angles.sin()
    return table


# -------------------------------------------------------------- the op


def rope_ref(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor, neox: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The meaning of rope: rotate the first R dims of every head of q and k, in float32."""
    rotary = cos_sin.shape[-1]
    half = rotary // 2
    table = cos_sin[positions].float()  # (T, R)
    cos, sin = table[:, None, :half], table[:, None, half:]  # (T, 1, R/2)

    def rotate(x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        rot, rest = xf[..., :rotary], xf[..., rotary:]
        if neox:
            x1, x2 = rot[..., :half], rot[..., half:]
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
        o1 = x1 * cos - x2 * sin
        o2 = x2 * cos + x1 * sin
        rot = torch.cat([o1, o2], dim=-1) if neox else torch.stack([o1, o2], dim=-1).flatten(-2)
        return torch.cat([rot, rest], dim=-1).to(x.dtype)  # (T, H, D)

    return rotate(q), rotate(k)


def _check_rope_args(q, k, positions, cos_sin) -> None:
    # One cheap test on the hot path; the messages are only built when something is wrong.
    floats, dev = L.FLOAT_DTYPES, q.device
    if (
        q.dtype in floats
        and k.dtype in floats
        and q.dim() == 3
        and k.dim() == 3
        and k.shape[0] == q.shape[0]
        and k.shape[2] == q.shape[2]
        and positions.dtype == torch.int64
        and positions.dim() == 1
        and positions.shape[0] == q.shape[0]
        and cos_sin.dtype == torch.float32
        and cos_sin.dim() == 2
        and 2 <= cos_sin.shape[1] <= q.shape[2]
        and cos_sin.shape[1] % 2 == 0
        and k.device == dev
        and positions.device == dev
        and cos_sin.device == dev
    ):
        return
    L.check_float("q", q)
    L.check_float("k", k)
    L.check(q.dim() == 3, f"q must be [T, Hq, D], got shape {list(q.shape)}")
    L.check(k.dim() == 3, f"k must be [T, Hk, D], got shape {list(k.shape)}")
    L.check(
        k.shape[0] == q.shape[0] and k.shape[2] == q.shape[2],
        f"k must be [T, Hk, D] with q's T={q.shape[0]} and D={q.shape[2]}, got {list(k.shape)}",
    )
    L.check(positions.dtype == torch.int64, f"positions must be int64, not {positions.dtype}")
    L.check(
        positions.dim() == 1 and positions.shape[0] == q.shape[0],
        f"positions must be [{q.shape[0]}] (one per token), got shape {list(positions.shape)}",
    )
    L.check(cos_sin.dtype == torch.float32, f"cos_sin must be float32, not {cos_sin.dtype}")
    L.check(cos_sin.dim() == 2, f"cos_sin must be [max_pos, R], got shape {list(cos_sin.shape)}")
    rotary = cos_sin.shape[1]
    L.check(
        rotary >= 2 and rotary % 2 == 0 and rotary <= q.shape[2],
        f"cos_sin's rotary dims R={rotary} must be even, >= 2 and <= the head dim {q.shape[2]}",
    )
    for name, t in (("k", k), ("positions", positions), ("cos_sin", cos_sin)):
        L.check(t.device == dev, f"{name} must be on q's device {dev}, got {t.device}")
    raise AssertionError("unreachable: the fast check and the detailed checks disagree")


def _check_positions(positions: torch.Tensor, max_pos: int) -> None:
    """Positions index cos_sin rows: refuse any outside [0, max_pos) before a kernel reads them.

    A data check: on CUDA it syncs, so it is skipped while a CUDA graph is being captured (the
    CUDA kernel clamps indices, so a bad position there gives wrong numbers, never a bad read).
    """
    if positions.numel() == 0:
        return
    if positions.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    lo, hi = (int(v) for v in torch.aminmax(positions))
    L.check(
        lo >= 0 and hi < max_pos,
        f"positions must lie in [0, {max_pos}) (cos_sin has {max_pos} rows), got [{lo}, {hi}]",
    )


def _rope_reference(q, k, positions, cos_sin, neox):
    _check_rope_args(q, k, positions, cos_sin)
    _check_positions(positions, cos_sin.shape[0])
    return rope_ref(q, k, positions, cos_sin, neox)


def _rope_fake(q, k, positions, cos_sin, neox):
    _check_rope_args(q, k, positions, cos_sin)
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(k, memory_format=torch.contiguous_format),
    )


def _rope_kernel(entry: str, q, k, positions, cos_sin, neox, *stream, trusted: bool = False):
    _check_rope_args(q, k, positions, cos_sin)
    if not trusted:
        _check_positions(positions, cos_sin.shape[0])
    q, k = q.contiguous(), k.contiguous()
    positions, cos_sin = positions.contiguous(), cos_sin.contiguous()
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    if q.shape[0]:
        getattr(L._C, entry)(
            L.view(q),
            L.view(k),
            L.view(positions),
            L.view(cos_sin),
            L.view(q_out),
            L.view(k_out),
            bool(neox),
            *stream,
        )
    return q_out, k_out


def _rope_cpu(q, k, positions, cos_sin, neox, trusted: bool = False):
    return _rope_kernel("rope_cpu", q, k, positions, cos_sin, neox, trusted=trusted)


def _rope_cuda(q, k, positions, cos_sin, neox, trusted: bool = False):
    return _rope_kernel(
        "rope_cuda", q, k, positions, cos_sin, neox, L.cuda_stream(), trusted=trusted
    )


_HAS_CPU = L.has_entry("rope_cpu")
_HAS_CUDA = L.has_entry("rope_cuda")

L.register(
    ROPE,
    reference=_rope_reference,
    fake=_rope_fake,
    cpu=_rope_cpu if _HAS_CPU else None,
    cuda=_rope_cuda,
    cuda_entry="rope_cuda",
)


def rope(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    neox: bool,
    *,
    validated: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, Hq, D] and k [T, Hk, D] by their tokens' positions; returns new (q, k).

    positions: int64 [T], each in [0, cos_sin.shape[0]); cos_sin: `rope_cos_sin(...)`'s table,
    float32 [max_pos, R] with R even and <= D. neox: True for the NeoX / Hugging Face layout
    (pairs i, i + R/2), False for the normal GPT-J / llama.cpp layout (pairs 2i, 2i + 1).

    `validated=True` is the trusted hot path (as for `write_kv_cache_` and `paged_attention`):
    the caller has checked once for this step that every position lies in [0, max_pos) (the
    model does, for all its layers), so the kernel is called directly, without the dispatcher
    and without the positions check, which reads the positions back to the host (a device
    sync per call on CUDA). Shapes, dtypes and devices are still checked (no device read).
    """
    if not validated:
        return torch.ops.pyllm.rope(q, k, positions, cos_sin, neox)
    on_cuda = L.on_cuda(q)
    if L.native() and (_HAS_CUDA if on_cuda else _HAS_CPU):
        kernel = _rope_cuda if on_cuda else _rope_cpu
        return kernel(q, k, positions, cos_sin, neox, trusted=True)
    _check_rope_args(q, k, positions, cos_sin)
    return rope_ref(q, k, positions, cos_sin, neox)
