"""The machinery every op family uses: one torch.library namespace, kernel selection, views.

Each op is declared once with a schema (`define`), gets a fake (meta) implementation so
`torch.compile` and CUDA graphs can trace it, a `_ref` reference in plain PyTorch that defines
what it means, and a kernel per device. `PYLLM_KERNELS=reference` registers the references as the
CPU/CUDA implementations instead (a debugging aid, chosen explicitly; never a silent fallback).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import NoReturn

import torch

from pyllm.errors import KernelUnavailableError

LIB = torch.library.Library("pyllm", "DEF")

_DTYPE_CODES = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.int32: 3,
    torch.int64: 4,
    torch.uint8: 5,
    torch.int8: 6,
    torch.float64: 7,  # scratch only (the CUDA sampler's workspace); no op takes float64 data
}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def kernel_mode() -> str:
    """'native' (the compiled kernels, the default) or 'reference' (plain-PyTorch references)."""
    mode = os.environ.get("PYLLM_KERNELS", "native").strip().lower() or "native"
    if mode not in ("native", "reference"):
        raise ValueError(f"PYLLM_KERNELS must be 'native' or 'reference', not {mode!r}")
    return mode


def _load_extension():
    try:
        from pyllm import _C
    except ImportError as exc:  # pragma: no cover - only on a broken install
        if kernel_mode() == "reference":
            return None
        raise KernelUnavailableError(
            f"pyllm's compiled kernels (pyllm._C) could not be imported: {exc}. "
            "Reinstall pyllm (pip install .) or set PYLLM_KERNELS=reference to run the slow "
            "plain-PyTorch reference ops."
        ) from exc
    return _C


_C = _load_extension()


def native() -> bool:
    """True when ops dispatch to the compiled kernels."""
    return kernel_mode() == "native" and _C is not None


def cuda_built() -> bool:
    return _C is not None and bool(getattr(_C, "has_cuda", False))


def on_cuda(t: torch.Tensor) -> bool:
    """Whether an op that bypasses the dispatcher (a validated hot path) takes its CUDA kernel
    for `t`: `t.is_cuda`. The ops ask only here, so the CUDA emulator's model test
    (tests/ops/test_model_emulated_cuda.py) can route a CPU model through their CUDA code."""
    return t.is_cuda


def has_entry(name: str) -> bool:
    """Whether the compiled extension has the kernel entry `name` (a `*_cuda` one only in a CUDA
    build)."""
    return _C is not None and hasattr(_C, name) and (not name.endswith("_cuda") or cuda_built())


def cuda_stream(device: torch.device | None = None) -> int:
    """The handle of torch's current CUDA stream, which every CUDA kernel launch takes.

    The CUDA ops reach `_C`, `view` and this only through this module, so the CUDA emulator's
    tests (tests/ops/test_cuda_emulated.py) can run their CUDA code on CPU tensors."""
    return torch.cuda.current_stream(device).cuda_stream


CUDA_KERNEL_FAMILIES = ("general", "tuned")


def _not_a_family(what: str, family: str) -> str:
    return f"{what} must be one of {', '.join(CUDA_KERNEL_FAMILIES)}, not {family!r}"


def set_cuda_kernels(family: str) -> None:
    """Choose the CUDA kernels the ops launch: "general" (every shape; the kernels measured on an
    H100) or "tuned" (decode-shaped fast paths: attention for head dims 64/128 and qlinear for
    9..128 tokens; prefill's qlinear through cuBLAS on the dequantized weight; other shapes still
    take the general kernels). A captured CUDA graph keeps the kernels it was captured with. No
    effect on the CPU."""
    check(family in CUDA_KERNEL_FAMILIES, _not_a_family("CUDA kernels", family))
    if _C is not None:
        _C.set_cuda_kernels(family)


def get_cuda_kernels() -> str:
    """The CUDA kernel family the ops launch now (see set_cuda_kernels)."""
    return _C.cuda_kernels() if _C is not None else "general"


@contextlib.contextmanager
def using_cuda_kernels(family: str) -> Iterator[None]:
    """set_cuda_kernels(family) for the duration of a with-block."""
    before = get_cuda_kernels()
    set_cuda_kernels(family)
    try:
        yield
    finally:
        set_cuda_kernels(before)


def _cuda_kernels_from_environment() -> None:
    family = os.environ.get("PYLLM_CUDA_KERNELS", "").strip().lower()
    if family:
        check(family in CUDA_KERNEL_FAMILIES, _not_a_family("PYLLM_CUDA_KERNELS", family))
        set_cuda_kernels(family)


def view(t: torch.Tensor):
    """A pyllm._C.TensorView over a tensor's memory (the caller keeps `t` alive)."""
    return _C.TensorView(
        t.data_ptr(), _DTYPE_CODES[t.dtype], list(t.shape), list(t.stride()), 1 if t.is_cuda else 0
    )


def define(schema: str) -> str:
    """Declare `pyllm::<name>` from a schema string; returns the qualified name."""
    LIB.define(schema)
    return "pyllm::" + schema.split("(", 1)[0].strip()


# Every op's CUDA implementation by op name, whether or not this build has its kernel: the CUDA
# emulator's model test registers them for CPU tensors.
CUDA_IMPLS: dict[str, Callable] = {}


def register(
    qualname: str,
    *,
    reference: Callable,
    fake: Callable,
    cpu: Callable | None = None,
    cuda: Callable | None = None,
    cuda_entry: str = "",
) -> None:
    """Register the fake impl and the per-device kernels of one op.

    `cuda` serves CUDA tensors when the extension has the entry `cuda_entry` (a CUDA build).
    With PYLLM_KERNELS=reference (or a device whose kernel is not built) the reference serves
    that device; with native kernels a missing CPU kernel is a programming error.
    """
    name = qualname.split("::", 1)[1]
    torch.library.register_fake(qualname, fake, lib=LIB)
    use_native = native()
    LIB.impl(name, cpu if (use_native and cpu is not None) else reference, "CPU")
    if cuda is not None:
        check(
            cuda_entry.endswith("_cuda"), f"{qualname}: name the CUDA kernel entry its impl calls"
        )
        CUDA_IMPLS[name] = cuda
    LIB.impl(
        name,
        cuda if (use_native and cuda is not None and has_entry(cuda_entry)) else reference,
        "CUDA",
    )


def check(cond: bool, message: str) -> None:
    """Raise a ValueError with `message` when `cond` is false (the op boundary's checks)."""
    if not cond:
        raise ValueError(message)


def fail(message: str) -> NoReturn:
    """Raise the op boundary's ValueError (for checks that build `message` only on failure)."""
    raise ValueError(message)


def check_float(name: str, t: torch.Tensor) -> None:
    check(t.dtype in FLOAT_DTYPES, f"{name} must be float32, float16 or bfloat16, not {t.dtype}")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {n: t.device for n, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors must be on one device, got {devices}")


_cuda_kernels_from_environment()  # last: it uses check() above
