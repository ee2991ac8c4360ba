"""Activations: SiLU gated by a multiply (SwiGLU's core) and GELU with the tanh approximation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyllm.ops import _library as L

# ---------------------------------------------------------------- silu_mul

SILU_MUL = L.define("silu_mul(Tensor x) -> Tensor")


def silu_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2F] -> silu(x[..., :F]) * x[..., F:], computed in float32, in x's dtype."""
    half = x.shape[-1] // 2
    xf = x.float()
    return (F.silu(xf[..., :half]) * xf[..., half:]).to(x.dtype)


def _check_silu_mul(x: torch.Tensor) -> None:
    if x.dtype in L.FLOAT_DTYPES and x.dim() >= 1 and x.shape[-1] % 2 == 0:
        return
    L.check_float("x", x)
    L.check(
        x.dim() >= 1 and x.shape[-1] % 2 == 0,
        f"x's last dimension must be even ([..., 2F]: gate then up), got shape {list(x.shape)}",
    )


def _silu_mul_reference(x):
    _check_silu_mul(x)
    return silu_mul_ref(x)


def _silu_mul_fake(x):
    _check_silu_mul(x)
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


def _silu_mul_kernel(entry: str, x, *stream):
    _check_silu_mul(x)
    x = x.contiguous()
    out = x.new_empty((*x.shape[:-1], x.shape[-1] // 2))
    if out.numel():
        getattr(L._C, entry)(L.view(x), L.view(out), *stream)
    return out


def _silu_mul_cpu(x):
    return _silu_mul_kernel("silu_mul_cpu", x)


def _silu_mul_cuda(x):
    return _silu_mul_kernel("silu_mul_cuda", x, L.cuda_stream())


L.register(
    SILU_MUL,
    reference=_silu_mul_reference,
    fake=_silu_mul_fake,
    cpu=_silu_mul_cpu if L.has_entry("silu_mul_cpu") else None,
    cuda=_silu_mul_cuda,
    cuda_entry="silu_mul_cuda",
)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2F] (gate and up projections side by side) -> silu(gate) * up, [..., F]."""
    return torch.ops.pyllm.silu_mul(x)


# --------------------------------------------------------------- gelu_tanh

GELU_TANH = L.define("gelu_tanh(Tensor x) -> Tensor")


def gelu_tanh_ref(x: torch.Tensor) -> torch.Tensor:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), computed in float32, in x's dtype."""
    return F.gelu(x.float(), approximate="tanh").to(x.dtype)


def _gelu_reference(x):
    L.check_float("x", x)
    return gelu_tanh_ref(x)


def _gelu_fake(x):
    L.check_float("x", x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _gelu_kernel(entry: str, x, *stream):
    L.check_float("x", x)
    x = x.contiguous()
    out = torch.empty_like(x)
    if out.numel():
        getattr(L._C, entry)(L.view(x), L.view(out), *stream)
    return out


def _gelu_cpu(x):
    return _gelu_kernel("gelu_tanh_cpu", x)


def _gelu_cuda(x):
    return _gelu_kernel("gelu_tanh_cuda", x, L.cuda_stream())


L.register(
    GELU_TANH,
    reference=_gelu_reference,
    fake=_gelu_fake,
    cpu=_gelu_cpu if L.has_entry("gelu_tanh_cpu") else None,
    cuda=_gelu_cuda,
    cuda_entry="gelu_tanh_cuda",
)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (GPT-2's), elementwise; same shape and dtype as x."""
    return torch.ops.pyllm.gelu_tanh(x)
