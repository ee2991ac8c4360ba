"""pyllm.ops: every kernel as a torch.library op (`torch.ops.pyllm.*`) with a `_ref` beside it.

Import this package to register the ops. See docs/kernels.md for the contract each op follows.
One import line per op family below; keep it a plain list.
"""

from pyllm.ops._library import (
    cuda_built,
    get_cuda_kernels,
    kernel_mode,
    native,
    set_cuda_kernels,
    using_cuda_kernels,
)
from pyllm.ops.activation import gelu_tanh, gelu_tanh_ref, silu_mul, silu_mul_ref
from pyllm.ops.attention import paged_attention
from pyllm.ops.kv_cache import write_kv_cache_
from pyllm.ops.norm import (
    fused_add_rms_norm,
    fused_add_rms_norm_ref,
    layer_norm,
    layer_norm_ref,
    rms_norm,
    rms_norm_ref,
)
from pyllm.ops.qlinear import QWeight, linear, qlinear
from pyllm.ops.rope import rope, rope_cos_sin, rope_ref
from pyllm.ops.sampling import sample_tokens, sample_tokens_ref

__all__ = [
    "QWeight",
    "cuda_built",
    "fused_add_rms_norm",
    "fused_add_rms_norm_ref",
    "gelu_tanh",
    "gelu_tanh_ref",
    "get_cuda_kernels",
    "kernel_mode",
    "layer_norm",
    "layer_norm_ref",
    "linear",
    "native",
    "paged_attention",
    "qlinear",
    "rms_norm",
    "rms_norm_ref",
    "rope",
    "rope_cos_sin",
    "rope_ref",
    "sample_tokens",
    "sample_tokens_ref",
    "set_cuda_kernels",
    "silu_mul",
    "silu_mul_ref",
    "using_cuda_kernels",
    "write_kv_cache_",
]
