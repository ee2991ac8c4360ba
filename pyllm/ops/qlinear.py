"""Quantized linear: `x @ dequant(W).T + bias` computed on GGUF blocks.

The weight stays as GGUF stores it (Q4_0 / Q4_1 / Q8_0 blocks of 32, or an F32 / F16 / BF16
matrix); the kernels dequantize each block in registers and multiply it with float32
activations, so the result is the float32 product with the dequantized weight up to the order of
float32 additions (the "exact" path the model's parity with transformers relies on). The weight is
never expanded to float32 in memory.

Block layouts (32 weights a block, see docs/kernels.md):
    q8_0: fp16 d, 32 x int8 q                  -> q * d                         (34 bytes)
    q4_0: fp16 d, 16 bytes (j low, j+16 high)  -> (q - 8) * d                   (18 bytes)
    q4_1: fp16 d, fp16 m, 16 bytes as q4_0     -> q * d + m                     (20 bytes)

The CPU also computes on Q5_0 / Q5_1 (blocks of 32) and the K-quants Q4_K / Q5_K / Q6_K
(super-blocks of 256; layouts in pyllm/weights/quant.py) with a portable exact kernel, and CUDA
with a plain exact one (csrc/quant/qlinear_superblock.cu); the int8 path refuses those types.

The reference defines the behaviour for any bit pattern, non-finite fp16 scales included (they are
not rejected): an output the reference makes non-finite is non-finite from the kernels too, and
finite outputs agree. Which non-finite value (NaN or +-inf) may differ: the decode kernel applies a
chunk's scale to the chunk's dot product, so inf * (q . x) can be inf where the reference's
0 * inf weight gives NaN.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pyllm.ops import _library as L
from pyllm.weights.quant import (
    FLOAT_DTYPES,
    KERNEL_BLOCK,
    KERNEL_BLOCK_BYTES,
    OP_QTYPE_CODES,
    PLAIN_KERNEL_QTYPES,
    TYPES_BY_NAME,
    dequantize,
)
from pyllm.weights.quant import QTYPE_CODES as QTYPE_CODES  # the tuned CUDA kernels' types

# The kernels' types, all derived from pyllm/weights/quant.py's GGML table.
QTYPE_NAMES = {code: name for name, code in OP_QTYPE_CODES.items()}
BLOCK_BYTES = KERNEL_BLOCK_BYTES  # {"q4_0": ..., "q4_1": ..., "q8_0": ...}
FLOAT_QTYPES = FLOAT_DTYPES  # {"f32": torch.float32, "f16": ..., "bf16": ...}
BLOCK = KERNEL_BLOCK


def _row_bytes(qtype: str, cols: int) -> int:
    if qtype in FLOAT_QTYPES:
        return cols * FLOAT_QTYPES[qtype].itemsize
    t = TYPES_BY_NAME[qtype]
    return cols // t.block_size * t.block_bytes


@dataclass(frozen=True)
class QWeight:
    """A weight matrix [out_features, in_features] in its GGUF storage.

    data: uint8 [out_features, row_bytes] of blocks (q4_0, q4_1, q8_0, and on the CPU q5_0,
    q5_1, q4_k, q5_k, q6_k) or a float tensor
    [out_features, in_features] whose dtype matches qtype (f32, f16, bf16).
    """

    data: torch.Tensor
    qtype: str
    out_features: int
    in_features: int

    def __post_init__(self) -> None:
        if self.qtype not in OP_QTYPE_CODES:
            raise ValueError(f"qtype must be one of {sorted(OP_QTYPE_CODES)}, not {self.qtype!r}")
        _check_weight(self.data, OP_QTYPE_CODES[self.qtype], self.out_features, self.in_features)

    @property
    def code(self) -> int:
        """The GGML type id the op takes."""
        return OP_QTYPE_CODES[self.qtype]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def dequantize(self) -> torch.Tensor:
        """The float32 matrix [out_features, in_features] (for references and tests only)."""
        return dequantize_weight(self.data, self.code, self.in_features)

    def to(self, device: torch.device | str) -> QWeight:
        return QWeight(self.data.to(device), self.qtype, self.out_features, self.in_features)


# ------------------------------------------------------------------ checks


_fail = L.fail


def _check_weight(weight: torch.Tensor, qtype: int, out_features: int, in_features: int) -> None:
    # Plain `if`s rather than L.check(cond, f"..."): the messages are built only on failure,
    # since linear() runs these checks on every decode call.
    name = QTYPE_NAMES.get(qtype)
    if name is None:
        _fail(f"qtype must be one of {sorted(QTYPE_NAMES)} (GGML ids), not {qtype}")
    if out_features < 0 or in_features < 0:
        _fail(f"out_features and in_features must be >= 0, got {out_features}, {in_features}")
    if name not in FLOAT_QTYPES:
        t = TYPES_BY_NAME[name]
        if in_features % t.block_size:
            _fail(
                f"in_features (x's last dim) must be a multiple of {t.block_size} for {name}, "
                f"got {in_features}"
            )
        if weight.dtype != torch.uint8:
            _fail(f"weight must be uint8 blocks for {name}, not {weight.dtype}")
        cols = in_features // t.block_size * t.block_bytes
    else:
        if weight.dtype != FLOAT_QTYPES[name]:
            _fail(f"weight must be {FLOAT_QTYPES[name]} for {name}, not {weight.dtype}")
        cols = in_features
    if weight.dim() != 2 or weight.shape[0] != out_features or weight.shape[1] != cols:
        _fail(
            f"weight must be [{out_features}, {cols}] for {name} with in_features {in_features}, "
            f"got {list(weight.shape)}"
        )


def _check(
    x: torch.Tensor, weight: torch.Tensor, qtype: int, out_features: int, bias: torch.Tensor | None
) -> None:
    if x.dtype != torch.float32:
        _fail(f"x must be float32, not {x.dtype}")
    if x.dim() != 2:
        _fail(f"x must be [T, K], got {list(x.shape)}")
    _check_weight(weight, qtype, out_features, x.shape[1])
    if bias is not None:
        if bias.dtype != torch.float32:
            _fail(f"bias must be float32, not {bias.dtype}")
        if bias.dim() != 1 or bias.shape[0] != out_features:
            _fail(f"bias must be [{out_features}], got {list(bias.shape)}")
        if bias.device != x.device:
            L.check_same_device(x=x, bias=bias)
    if weight.device != x.device:
        L.check_same_device(x=x, weight=weight)


# --------------------------------------------------------------- reference


def dequantize_weight(weight: torch.Tensor, qtype: int, in_features: int) -> torch.Tensor:
    """float32 [N, K] from the stored weight (blocks or a float matrix)."""
    name = QTYPE_NAMES[qtype]
    if name in FLOAT_QTYPES:
        return weight.float()
    if in_features == 0:
        return torch.zeros(weight.shape[0], 0, dtype=torch.float32, device=weight.device)
    return dequantize(weight, name, in_features)


def qlinear_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    qtype: int,
    out_features: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The meaning of the op: float32 matmul with the dequantized weight (+ bias)."""
    w = dequantize_weight(weight, qtype, x.shape[-1])
    out = x.float() @ w.T
    if bias is not None:
        out = out + bias.float()
    return out


# The int8 path's types: every block type. An AVX-512 runner packs their matrices into panels
# once, when int8 is switched on (csrc/quant/qlinear_int8.h).
INT8_QTYPES = tuple(BLOCK_BYTES) + PLAIN_KERNEL_QTYPES


def quantize_activations_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8 path's activation quantization (csrc/quant/qlinear_int8.h), per 32-block of each
    row: codes = round_half_even(x * (127 / max|x_b|)), scale = max|x_b| / 127, all float32 math.
    Returns codes [T, K/32, 32] (float32 holding integers) and scale [T, K/32]."""
    t, k = x.shape
    xb = x.float().reshape(t, k // BLOCK, BLOCK)
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros_like(amax))
    codes = torch.round(xb * inv)
    return codes, (amax / 127.0).squeeze(-1)


def qlinear_int8_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    qtype: int,
    out_features: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """What the int8-activation kernels compute, in float64: the exactly dequantized weight against
    the dequantized activations x_hat = scale * codes. Its distance from qlinear_ref is the whole
    error of the int8 path."""
    name = QTYPE_NAMES[qtype]
    if name not in INT8_QTYPES:
        raise ValueError(f"the int8 path takes {INT8_QTYPES}, not {name}")
    t, k = x.shape
    codes, scale = quantize_activations_int8(x)
    x_hat = (codes.double() * scale.double().unsqueeze(-1)).reshape(t, k)
    out = x_hat @ dequantize_weight(weight, qtype, k).double().T
    if bias is not None:
        out = out + bias.double()
    return out.float()


def qlinear_int8(x: torch.Tensor, w: QWeight) -> torch.Tensor:
    """The opt-in int8-activation kernel on `x` [T, in] (CPU, the INT8_QTYPES): what the fast
    model path runs with int8 activations on; for tests and benchmarks."""
    if w.qtype not in INT8_QTYPES:
        _fail(f"the int8 path takes {INT8_QTYPES} weights, not {w.qtype}")
    _check(x, w.data, w.code, w.out_features, None)
    if not (_HAVE_CPU and x.is_cpu):
        _fail("the int8 path needs the native CPU kernels")
    x = x.float().contiguous()
    out = x.new_empty((x.shape[0], w.out_features))
    if out.numel():
        L._C.qlinear_cpu(
            L.view(x), L.view(w.data.contiguous()), w.code, None, L.view(out), int8_act=True
        )
    return out


# ------------------------------------------------------------------ the op

QLINEAR = L.define(
    "qlinear(Tensor x, Tensor weight, int qtype, int out_features, Tensor? bias) -> Tensor"
)


def _fake(x, weight, qtype, out_features, bias):
    _check(x, weight, qtype, out_features, bias)
    return x.new_empty((x.shape[0], out_features))


def _reference(x, weight, qtype, out_features, bias):
    _check(x, weight, qtype, out_features, bias)
    return qlinear_ref(x, weight, qtype, out_features, bias).contiguous()


def _cpu(x, weight, qtype, out_features, bias):
    _check(x, weight, qtype, out_features, bias)
    x = x.contiguous()
    weight = weight.contiguous()
    out = x.new_empty((x.shape[0], out_features))
    if out.numel():
        if bias is not None:
            bias = bias.contiguous()
        L._C.qlinear_cpu(
            L.view(x),
            L.view(weight),
            int(qtype),
            None if bias is None else L.view(bias),
            L.view(out),
        )
    return out


# With the tuned CUDA kernels, calls of more tokens than this (prefill) dequantize the weight
# into a float32 matrix and multiply with cuBLAS (float32, as torch's matmul precision setting
# says: full float32 unless the user chose TF32); fewer tokens stay on pyllm's kernels.
CUBLAS_MIN_TOKENS = 129


def _cuda(x, weight, qtype, out_features, bias):
    _check(x, weight, qtype, out_features, bias)
    x = x.contiguous()
    weight = weight.contiguous()
    if weight.data_ptr() % 16:  # the kernel reads 2- and 4-byte words of the blocks
        weight = weight.clone()
    if x.shape[0] >= CUBLAS_MIN_TOKENS and x.shape[1] and L.get_cuda_kernels() == "tuned":
        stream = L.cuda_stream()
        wf = torch.empty((out_features, x.shape[1]), dtype=torch.float32, device=x.device)
        L._C.dequantize_cuda(L.view(weight), int(qtype), L.view(wf), stream)
        if bias is None:
            return x @ wf.T
        return torch.addmm(bias.float(), x, wf.T)
    out = x.new_empty((x.shape[0], out_features))
    if out.numel():
        if bias is not None:
            bias = bias.contiguous()
        L._C.qlinear_cuda(
            L.view(x),
            L.view(weight),
            int(qtype),
            None if bias is None else L.view(bias),
            L.view(out),
            L.cuda_stream(),
        )
    return out


_HAVE_CPU = L.has_entry("qlinear_cpu")
L.register(
    QLINEAR,
    reference=_reference,
    fake=_fake,
    cpu=_cpu if _HAVE_CPU else None,
    cuda=_cuda,
    cuda_entry="qlinear_cuda",
)


def qlinear(
    x: torch.Tensor,
    weight: torch.Tensor,
    qtype: int,
    out_features: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [T, K] float32 @ dequant(weight).T (+ bias) -> [T, out_features] float32."""
    return torch.ops.pyllm.qlinear(x, weight, qtype, out_features, bias)


# ------------------------------------------------------- the model's entry

# The decode hot path skips the dispatcher (a few µs a call, hundreds of calls a token) when the
# call is plain eager CPU work; the registered op runs the same kernel and stays the tested entry.
_FAST = _HAVE_CPU and L.native() and os.environ.get("PYLLM_QLINEAR_FAST", "1") != "0"


def _fast_ok(
    x: torch.Tensor, w: QWeight, bias: torch.Tensor | None, out: torch.Tensor | None
) -> bool:
    """Whether linear() may call the kernel directly: eager CPU float32 work, every tensor
    contiguous and of the right shape. Only cheap attribute reads (each ~0.1 µs; a reshape or
    view would cost over 1 µs)."""
    if not (
        _FAST
        and type(x) is torch.Tensor
        and x.ndim == 2
        and x.is_cpu
        and x.dtype == torch.float32
        and x.shape[1] == w.in_features
        and x.is_contiguous()
        and not x.requires_grad
        and w.data.is_cpu
        and w.data.is_contiguous()
        and not torch.compiler.is_compiling()
    ):
        return False
    if bias is not None and not (
        type(bias) is torch.Tensor
        and bias.ndim == 1
        and bias.is_cpu
        and bias.dtype == torch.float32
        and bias.shape[0] == w.out_features
        and bias.is_contiguous()
    ):
        return False
    return out is None or (
        type(out) is torch.Tensor
        and out.ndim == 2
        and out.is_cpu
        and out.dtype == torch.float32
        and out.shape[0] == x.shape[0]
        and out.shape[1] == w.out_features
        and out.is_contiguous()
    )


def linear(
    x: torch.Tensor,
    w: QWeight | torch.Tensor,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ W.T + bias over the last dim of x [..., in] -> [..., out].

    `w` is a QWeight or a float tensor [out, in]. `out`, when given, is a float32 tensor of the
    result's shape that receives it (no allocation in the decode loop) and is returned.
    """
    if type(w) is not QWeight:
        w = _as_qweight(w)
    if _fast_ok(x, w, bias, out):  # the decode hot path: ~2 µs of Python
        y = torch.empty((x.shape[0], w.out_features)) if out is None else out
        if x.shape[0] and w.out_features:
            L._C.qlinear_cpu_ptr(*_ptr_args(x, w, bias, y))
        return y
    if x.shape[-1] != w.in_features:
        _fail(f"x's last dim must be in_features {w.in_features}, got {list(x.shape)}")
    lead = x.shape[:-1]
    x2 = x if x.dim() == 2 else x.reshape(lead.numel(), w.in_features)
    if x2.dtype != torch.float32:
        x2 = x2.float()
    if bias is not None and bias.dtype != torch.float32:
        bias = bias.float()
    y = torch.ops.pyllm.qlinear(x2, w.data, w.code, w.out_features, bias).view(
        *lead, w.out_features
    )
    if out is None:
        return y
    if out.shape != y.shape or out.dtype != torch.float32:
        _fail(
            f"out must be a float32 tensor of shape {list(y.shape)}, "
            f"got {out.dtype} {list(out.shape)}"
        )
    out.copy_(y)
    return out


def plan(
    x: torch.Tensor, w: QWeight, out: torch.Tensor, bias: torch.Tensor | None = None
) -> Callable[[], None]:
    """Validate once, return a zero-argument callable that writes linear(x, w, bias) into `out`
    from whatever `x` holds at call time: for a decode loop with static buffers (~0.5 µs a call
    instead of ~3). The tensors must stay alive and in place (no resize) while the plan is used.
    """
    if not (type(w) is QWeight and _fast_ok(x, w, bias, out)):
        _fail(
            "plan() needs contiguous CPU float32 x [T, in_features], out [T, out_features], "
            "bias [out_features] or None, and a QWeight (native kernels)"
        )
    keep = (x, w.data, bias, out)  # referenced by the closure so the pointers stay valid
    args = _ptr_args(x, w, bias, out)
    if x.shape[0] == 0 or w.out_features == 0:
        return lambda: None
    return functools.partial(_call_planned, L._C.qlinear_cpu_ptr, args, keep)


def _ptr_args(x: torch.Tensor, w: QWeight, bias: torch.Tensor | None, out: torch.Tensor) -> tuple:
    """qlinear_cpu_ptr's arguments for tensors _fast_ok accepted."""
    return (
        x.data_ptr(),
        w.data.data_ptr(),
        w.code,
        0 if bias is None else bias.data_ptr(),
        out.data_ptr(),
        x.shape[0],
        w.in_features,
        w.out_features,
    )


def _call_planned(fn, args, keep) -> None:
    fn(*args)


def _as_qweight(w: object) -> QWeight:
    if not (isinstance(w, torch.Tensor) and w.dim() == 2):
        _fail("w must be a QWeight or a float tensor [out, in]")
    name = {v: k for k, v in FLOAT_QTYPES.items()}.get(w.dtype)
    if name is None:
        _fail(f"w must be float32, float16 or bfloat16, not {w.dtype}")
    return QWeight(w.contiguous(), name, w.shape[0], w.shape[1])
