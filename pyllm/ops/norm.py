"""RMSNorm (optionally fused with the residual add) and LayerNorm."""

from __future__ import annotations

import torch

from pyllm.ops import _library as L

# ---------------------------------------------------------------- rms_norm

RMS_NORM = L.define("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor")


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return out.to(x.dtype)


def _check_rms(x: torch.Tensor, weight: torch.Tensor) -> None:
    L.check_float("x", x)
    L.check_float("weight", weight)
    L.check(x.dim() >= 1, "x must have at least one dimension")
    L.check(weight.dim() == 1 and weight.shape[0] == x.shape[-1],
            f"weight must be [{x.shape[-1]}], got {list(weight.shape)}")
    L.check_same_device(x=x, weight=weight)


def _rms_norm_fake(x, weight, eps):
    _check_rms(x, weight)
    return torch.empty_like(x)


def _rms_norm_cpu(x, weight, eps):
    _check_rms(x, weight)
    x = x.contiguous()
    weight = weight.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        L._C.rms_norm_cpu(L.view(x), L.view(weight), L.view(out), float(eps))
    return out


def _rms_norm_cuda(x, weight, eps):
    _check_rms(x, weight)
    x = x.contiguous()
    weight = weight.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        L._C.rms_norm_cuda(L.view(x), L.view(weight), L.view(out), float(eps),
                           torch.cuda.current_stream().cuda_stream)
    return out


L.register(RMS_NORM, reference=rms_norm_ref, fake=_rms_norm_fake, cpu=_rms_norm_cpu,
           cuda=_rms_norm_cuda if L.cuda_built() and hasattr(L._C, "rms_norm_cuda") else None)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x**2) + eps) * weight over the last dimension."""
    return torch.ops.pyllm.rms_norm(x, weight, eps)


# ------------------------------------------------------ fused_add_rms_norm

FUSED_ADD_RMS_NORM = L.define(
    "fused_add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)"
)


def fused_add_rms_norm_ref(x, residual, weight, eps):
    summed = (x.float() + residual.float()).to(residual.dtype)
    return rms_norm_ref(summed, weight, eps).to(x.dtype), summed


def _check_fused(x, residual, weight):
    _check_rms(x, weight)
    L.check_float("residual", residual)
    L.check(residual.shape == x.shape, f"residual must match x's shape {list(x.shape)}, got {list(residual.shape)}")
    L.check_same_device(x=x, residual=residual)


def _fused_fake(x, residual, weight, eps):
    _check_fused(x, residual, weight)
    return torch.empty_like(x), torch.empty_like(residual)


def _fused_cpu(x, residual, weight, eps):
    _check_fused(x, residual, weight)
    x, residual, weight = x.contiguous(), residual.contiguous(), weight.contiguous()
    out, residual_out = torch.empty_like(x), torch.empty_like(residual)
    if x.numel():
        L._C.fused_add_rms_norm_cpu(L.view(x), L.view(residual), L.view(weight), L.view(out),
                                    L.view(residual_out), float(eps))
    return out, residual_out


L.register(FUSED_ADD_RMS_NORM, reference=fused_add_rms_norm_ref, fake=_fused_fake, cpu=_fused_cpu)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual) * weight, x + residual): the pre-norm block's two outputs."""
    return torch.ops.pyllm.fused_add_rms_norm(x, residual, weight, eps)
