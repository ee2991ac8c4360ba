"""RMSNorm (optionally fused with the residual add) and LayerNorm, over the last dimension.

Inputs may be float32, float16 or bfloat16 (x, residual and weight each on their own); the
kernels compute in float32 and round once when they store, as the references do.
"""

from __future__ import annotations

import torch

from pyllm.ops import _library as L


def _vector_ok(v: torch.Tensor, x: torch.Tensor) -> bool:
    return (
        v.dtype in L.FLOAT_DTYPES
        and v.dim() == 1
        and v.shape[0] == x.shape[-1]
        and v.device == x.device
    )


def _check_norm_args(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> None:
    # One cheap test on the hot path; the messages are only built when something is wrong.
    if (
        x.dtype in L.FLOAT_DTYPES
        and x.dim() >= 1
        and _vector_ok(weight, x)
        and (bias is None or _vector_ok(bias, x))
    ):
        return
    L.check_float("x", x)
    L.check(x.dim() >= 1, "x must have at least one dimension")
    for name, v in (("weight", weight), ("bias", bias)):
        if v is None:
            continue
        L.check_float(name, v)
        L.check(
            v.dim() == 1 and v.shape[0] == x.shape[-1],
            f"{name} must have shape [{x.shape[-1]}] (x's last dimension), got {list(v.shape)}",
        )
        L.check(v.device == x.device, f"{name} must be on x's device {x.device}, got {v.device}")
    raise AssertionError("unreachable: the fast check and the detailed checks disagree")


# ---------------------------------------------------------------- rms_norm

RMS_NORM = L.define("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor")


def _rms(xf: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of a float32 tensor, float32 out."""
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The meaning of rms_norm: computed in float32, rounded to x's dtype."""
    return _rms(x.float(), weight, eps).to(x.dtype)


def _rms_norm_reference(x, weight, eps):
    _check_norm_args(x, weight)
    return rms_norm_ref(x, weight, eps)


def _rms_norm_fake(x, weight, eps):
    _check_norm_args(x, weight)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _rms_norm_cpu(x, weight, eps):
    _check_norm_args(x, weight)
    x, weight = x.contiguous(), weight.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        L._C.rms_norm_cpu(L.view(x), L.view(weight), L.view(out), float(eps))
    return out


def _rms_norm_cuda(x, weight, eps):
    _check_norm_args(x, weight)
    x, weight = x.contiguous(), weight.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        L._C.rms_norm_cuda(L.view(x), L.view(weight), L.view(out), float(eps), L.cuda_stream())
    return out


L.register(
    RMS_NORM,
    reference=_rms_norm_reference,
    fake=_rms_norm_fake,
    cpu=_rms_norm_cpu if L.has_entry("rms_norm_cpu") else None,
    cuda=_rms_norm_cuda,
    cuda_entry="rms_norm_cuda",
)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x**2) + eps) * weight over the last dimension; same shape and dtype as x."""
    return torch.ops.pyllm.rms_norm(x, weight, eps)


# ------------------------------------------------------ fused_add_rms_norm

FUSED_ADD_RMS_NORM = L.define(
    "fused_add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)"
)


def fused_add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """s = x + residual (rounded to residual's dtype); returns (rms_norm(s) in x's dtype, s).

    The norm reads the rounded sum, so the next layer's residual and this layer's norm input
    are the same numbers.
    """
    summed = (x.float() + residual.float()).to(residual.dtype)
    return _rms(summed.float(), weight, eps).to(x.dtype), summed


def _check_fused_args(x, residual, weight):
    _check_norm_args(x, weight)
    if (
        residual.dtype in L.FLOAT_DTYPES
        and residual.shape == x.shape
        and residual.device == x.device
    ):
        return
    L.check_float("residual", residual)
    L.check(
        residual.shape == x.shape,
        f"residual must have x's shape {list(x.shape)}, got {list(residual.shape)}",
    )
    L.check(
        residual.device == x.device,
        f"residual must be on x's device {x.device}, got {residual.device}",
    )


def _fused_reference(x, residual, weight, eps):
    _check_fused_args(x, residual, weight)
    return fused_add_rms_norm_ref(x, residual, weight, eps)


def _fused_fake(x, residual, weight, eps):
    _check_fused_args(x, residual, weight)
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(residual, memory_format=torch.contiguous_format),
    )


def _fused_cpu(x, residual, weight, eps):
    _check_fused_args(x, residual, weight)
    x, residual, weight = x.contiguous(), residual.contiguous(), weight.contiguous()
    out, residual_out = torch.empty_like(x), torch.empty_like(residual)
    if x.numel():
        L._C.fused_add_rms_norm_cpu(
            L.view(x),
            L.view(residual),
            L.view(weight),
            L.view(out),
            L.view(residual_out),
            float(eps),
        )
    return out, residual_out


def _fused_cuda(x, residual, weight, eps):
    _check_fused_args(x, residual, weight)
    x, residual, weight = x.contiguous(), residual.contiguous(), weight.contiguous()
    out, residual_out = torch.empty_like(x), torch.empty_like(residual)
    if x.numel():
        L._C.fused_add_rms_norm_cuda(
            L.view(x),
            L.view(residual),
            L.view(weight),
            L.view(out),
            L.view(residual_out),
            float(eps),
            L.cuda_stream(),
        )
    return out, residual_out


L.register(
    FUSED_ADD_RMS_NORM,
    reference=_fused_reference,
    fake=_fused_fake,
    cpu=_fused_cpu if L.has_entry("fused_add_rms_norm_cpu") else None,
    cuda=_fused_cuda,
    cuda_entry="fused_add_rms_norm_cuda",
)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual) * weight, x + residual): a pre-norm block's two outputs.

    The first output has x's dtype, the second residual's.
    """
    return torch.ops.pyllm.fused_add_rms_norm(x, residual, weight, eps)


# -------------------------------------------------------------- layer_norm

LAYER_NORM = L.define("layer_norm(Tensor x, Tensor weight, Tensor? bias, float eps) -> Tensor")


def layer_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """The meaning of layer_norm: (x - mean) / sqrt(var + eps) * weight + bias, in float32."""
    xf = x.float()
    mean = xf.mean(-1, keepdim=True)
    var = (xf - mean).pow(2).mean(-1, keepdim=True)  # biased, as torch.nn.LayerNorm
    out = (xf - mean) * torch.rsqrt(var + eps) * weight.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def _layer_norm_reference(x, weight, bias, eps):
    _check_norm_args(x, weight, bias)
    return layer_norm_ref(x, weight, bias, eps)


def _layer_norm_fake(x, weight, bias, eps):
    _check_norm_args(x, weight, bias)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _layer_norm_kernel(entry: str, x, weight, bias, eps, *stream):
    _check_norm_args(x, weight, bias)
    x, weight = x.contiguous(), weight.contiguous()
    bias = bias.contiguous() if bias is not None else None  # alive until the kernel returns
    out = torch.empty_like(x)
    if x.numel():
        getattr(L._C, entry)(
            L.view(x),
            L.view(weight),
            L.view(bias) if bias is not None else None,
            L.view(out),
            float(eps),
            *stream,
        )
    return out


def _layer_norm_cpu(x, weight, bias, eps):
    return _layer_norm_kernel("layer_norm_cpu", x, weight, bias, eps)


def _layer_norm_cuda(x, weight, bias, eps):
    return _layer_norm_kernel("layer_norm_cuda", x, weight, bias, eps, L.cuda_stream())


L.register(
    LAYER_NORM,
    reference=_layer_norm_reference,
    fake=_layer_norm_fake,
    cpu=_layer_norm_cpu if L.has_entry("layer_norm_cpu") else None,
    cuda=_layer_norm_cuda,
    cuda_entry="layer_norm_cuda",
)


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """LayerNorm over the last dimension (biased variance, as torch.nn.LayerNorm)."""
    return torch.ops.pyllm.layer_norm(x, weight, bias, eps)
