"""The model's building blocks, each a thin nn.Module over one pyllm.ops call.

Weights are whatever the file holds: a `QWeight` of GGUF blocks (q4_0, q4_1, q8_0; on the CPU
also q5_0, q5_1, q4_k, q5_k, q6_k, converted to q8_0 when moved to a GPU) or a float matrix
(f32, f16, bf16) wrapped in a QWeight too, so `ops.linear` never re-wraps it per call.
Activations are float32 throughout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from pyllm import ops
from pyllm.ops.qlinear import FLOAT_QTYPES, QWeight
from pyllm.weights.quant import PLAIN_KERNEL_QTYPES, dequantize, quantize

_told_off_cpu = False  # the conversion notice is given once a process


def _for_device(w: QWeight, device: torch.device) -> QWeight:
    """A Q5_0/Q5_1/K-quant weight moving off the CPU becomes Q8_0 first: the GPU's tuned kernels
    take Q4_0/Q4_1/Q8_0 (the op's kernel for these types there is a plain, untuned one), and
    Q8_0's error is far below the source format's."""
    global _told_off_cpu
    if w.qtype not in PLAIN_KERNEL_QTYPES or device.type == "cpu" or not w.data.is_cpu:
        return w
    if not _told_off_cpu:
        _told_off_cpu = True
        print(
            f"pyllm: {w.qtype} weights are converted to q8_0 for {device.type} "
            f"(its tuned kernels take q4_0/q4_1/q8_0)",
            file=sys.stderr,
        )
    data = quantize(dequantize(w.data, w.qtype, w.in_features), "q8_0")
    return QWeight(data, "q8_0", w.out_features, w.in_features)


def as_qweight(w: QWeight | torch.Tensor) -> QWeight:
    """Wrap a float matrix [out, in] as a QWeight (a QWeight passes through)."""
    if isinstance(w, QWeight):
        return w
    names = {dtype: name for name, dtype in FLOAT_QTYPES.items()}
    if w.dtype not in names:
        w = w.float()
    return QWeight(w.contiguous(), names[w.dtype], w.shape[0], w.shape[1])


class _HoldsQWeight(nn.Module):
    """A module whose `weight` is a QWeight (not a Parameter): `.to(device)` moves it too."""

    weight: QWeight

    def _apply(self, fn: Callable, recurse: bool = True):
        super()._apply(fn, recurse)
        w = self.weight
        probe = fn(w.data[:0])  # where fn sends the weight (an empty view: nothing is copied)
        if probe.device != w.data.device:
            w = _for_device(w, probe.device)
        data = fn(w.data)
        if data.dtype != w.data.dtype:  # dtype casts (e.g. .float()) leave stored blocks alone
            data = w.data.to(data.device)
        self.weight = QWeight(data, w.qtype, w.out_features, w.in_features)
        return self


class Linear(_HoldsQWeight):
    """y = x @ W.T + b on the stored weight (blocks are dequantized inside the kernel)."""

    bias: torch.Tensor | None  # a buffer (register_buffer), declared for type checkers

    def __init__(self, weight: QWeight | torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = as_qweight(weight)
        self.register_buffer(
            "bias", None if bias is None else bias.float().contiguous(), persistent=False
        )

    @property
    def out_features(self) -> int:
        return self.weight.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)  # (T, out)


class Embedding(_HoldsQWeight):
    """Rows of a [V, C] table; a block-quantized table is dequantized row by row (exactly)."""

    def __init__(self, weight: QWeight | torch.Tensor) -> None:
        super().__init__()
        self.weight = as_qweight(weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.weight
        rows = w.data.index_select(0, ids)  # (T, row_bytes) or (T, C)
        if w.qtype in FLOAT_QTYPES:
            return rows.float()  # (T, C)
        from pyllm.weights.quant import dequantize

        return dequantize(rows, w.qtype, w.in_features)  # (T, C)


class Norm(nn.Module):
    """RMSNorm or LayerNorm over the last dim, with the residual add fused in `add_forward`."""

    weight: torch.Tensor  # buffers (register_buffer), declared for type checkers
    bias: torch.Tensor | None

    def __init__(
        self, kind: str, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
    ) -> None:
        super().__init__()
        self.kind, self.eps = kind, float(eps)
        self.register_buffer("weight", weight.float().contiguous(), persistent=False)
        self.register_buffer(
            "bias", None if bias is None else bias.float().contiguous(), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rms":
            return ops.rms_norm(x, self.weight, self.eps)
        return ops.layer_norm(x, self.weight, self.bias, self.eps)

    def add_forward(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual)."""
        if self.kind == "rms":
            return ops.fused_add_rms_norm(x, residual, self.weight, self.eps)
        summed = x + residual
        return ops.layer_norm(summed, self.weight, self.bias, self.eps), summed


def cat_rows(parts: list[QWeight]) -> QWeight:
    """Stack weights with the same input size and format along the output dim ([a; b; c]).

    Concatenating rows is exact for block formats (a block never spans rows); the rows are
    copied once at load, so the fused matrix is the only one read while computing.
    """
    first = parts[0]
    for p in parts[1:]:
        if p.qtype != first.qtype or p.in_features != first.in_features:
            raise ValueError(
                "cat_rows needs parts of one format and input size, got "
                f"{[(q.qtype, q.in_features) for q in parts]}"
            )
    data = torch.cat([p.data for p in parts], dim=0)
    return QWeight(data, first.qtype, sum(p.out_features for p in parts), first.in_features)


class ConcatLinear(nn.Module):
    """[A; B; ...] x for parts that cannot share one matrix (different storage formats, as in
    GGUF files that quantize V more finely than Q and K): one linear each, outputs concatenated."""

    def __init__(self, parts: list[Linear]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    @property
    def out_features(self) -> int:
        return sum(cast(Linear, p).out_features for p in self.parts)  # __init__ takes Linears

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)  # (T, sum of outs)


def fused_linear(
    weights: list[QWeight], biases: list[torch.Tensor | None]
) -> Linear | ConcatLinear:
    """One Linear over the row-concatenated weights when they share a format (the usual case),
    else a ConcatLinear. Missing biases of a partly-biased group count as zeros."""
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat(
            [
                b.float() if b is not None else torch.zeros(w.out_features)
                for w, b in zip(weights, biases)
            ]
        )
    if all(w.qtype == weights[0].qtype for w in weights):
        return Linear(cat_rows(weights), bias)
    parts, start = [], 0
    for w in weights:
        parts.append(Linear(w, None if bias is None else bias[start : start + w.out_features]))
        start += w.out_features
    return ConcatLinear(parts)
